"""Whisper base in JAX from the CTranslate2 asset: reader, weight mapping, encoder,
transcription with word timestamps; checked against transformers and synthesised speech."""

from __future__ import annotations

import dataclasses
import itertools
import time

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict
import numpy as np
import pytest

from level1_affect.errors import MediaError
from level1_affect.whisper import model as wm
from level1_affect.whisper.ct2 import read_ct2
from level1_affect.whisper.transcribe import WhisperJax, dtw, states_to_frames, wer

SR = 16000
SENTENCE = "I want to exercise more but I do not have the time"


@pytest.fixture(scope="module")
def asset():
    from ahjax.core.assets import fetch
    return fetch("whisper_base")


@pytest.fixture(scope="module")
def whisper(asset):
    return WhisperJax.load(asset)


@pytest.fixture(scope="module")
def speech():
    import librosa
    from ahjax.core.data.speech import synthesize
    sp = synthesize(SENTENCE, rate_wpm=150)
    x = librosa.resample(sp.samples, orig_sr=sp.sample_rate, target_sr=SR).astype(np.float32)
    # espeak times are at its own rate; resampling keeps them
    return x, sp.words


def test_ct2_reader(asset, tmp_path):
    m = read_ct2(asset / "model.bin")
    assert m.spec == "WhisperSpec" and m.n_stored == 212
    v = m.variables
    assert v["encoder/conv1/weight"].shape == (512, 80, 3)
    assert v["decoder/layer_5/self_attention/linear_0/weight"].shape == (1536, 512)
    assert v["decoder/layer_0/attention/linear_1/weight"].shape == (1024, 512)
    assert v["decoder/embeddings/weight"].dtype == np.float16
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]  # alias
    assert int(v["decoder/num_heads"]) == 8
    cut = tmp_path / "model.bin"
    cut.write_bytes((asset / "model.bin").read_bytes()[:100_000])
    with pytest.raises(MediaError, match="truncated"):
        read_ct2(cut)


def test_ct2_mapping_fills_every_parameter(asset):
    variables = read_ct2(asset / "model.bin").variables
    dims = wm.dims_from_ct2(variables)
    assert dims == wm.WhisperDims()
    params = wm.params_from_ct2(variables, dims)
    flat = flatten_dict(params)
    assert len(flat) == 245 and all(v.dtype == np.float32 for v in flat.values())
    assert {k: v.shape for k, v in flat.items()} == wm.param_shapes(dims)
    # our shape table is transformers' Flax Whisper tree for the same dimensions
    hf = _hf_model(dims)
    tree = jax.eval_shape(lambda: hf.init_weights(jax.random.PRNGKey(0), (1, dims.n_mels, 3000)))
    assert {k: tuple(v.shape) for k, v in flatten_dict(tree).items()} == wm.param_shapes(dims)
    # fused q/k/v really split: q of layer 0 equals the first third of the fused matrix
    fused = variables["encoder/layer_0/self_attention/linear_0/weight"].astype(np.float32)
    np.testing.assert_array_equal(params["model"]["encoder"]["layers"]["0"]["self_attn"]["v_proj"]["kernel"],
                                  fused[1024:].T)
    with pytest.raises(MediaError, match="not mapped"):
        wm.params_from_ct2({**variables, "decoder/extra/weight": np.zeros(3)}, dims)


def _openai_state(dims, rng):
    """A random openai-whisper state dict (numpy) with the real key names."""
    d, f = dims.n_audio_state, 4 * dims.n_audio_state
    s = {"encoder.conv1.weight": (d, dims.n_mels, 3), "encoder.conv1.bias": (d,),
         "encoder.conv2.weight": (d, d, 3), "encoder.conv2.bias": (d,),
         "encoder.positional_embedding": (dims.n_audio_ctx, d),
         "encoder.ln_post.weight": (d,), "encoder.ln_post.bias": (d,),
         "decoder.token_embedding.weight": (dims.n_vocab, d),
         "decoder.positional_embedding": (dims.n_text_ctx, d),
         "decoder.ln.weight": (d,), "decoder.ln.bias": (d,)}
    for side, n in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(n):
            p = f"{side}.blocks.{i}"
            for att in ("attn", "cross_attn") if side == "decoder" else ("attn",):
                for o in ("query", "key", "value", "out"):
                    s[f"{p}.{att}.{o}.weight"] = (d, d)
                    if o != "key":
                        s[f"{p}.{att}.{o}.bias"] = (d,)
                s[f"{p}.{att}_ln.weight"] = s[f"{p}.{att}_ln.bias"] = (d,)
            s[f"{p}.mlp.0.weight"], s[f"{p}.mlp.0.bias"] = (f, d), (f,)
            s[f"{p}.mlp.2.weight"], s[f"{p}.mlp.2.bias"] = (d, f), (d,)
            s[f"{p}.mlp_ln.weight"] = s[f"{p}.mlp_ln.bias"] = (d,)
    return {k: rng.normal(size=shape).astype(np.float32) for k, shape in s.items()}


def _ct2_from_openai(s, dims):
    """The same weights laid out as CTranslate2 stores them (fused attention)."""
    v = {"encoder/conv1/weight": s["encoder.conv1.weight"], "encoder/conv1/bias": s["encoder.conv1.bias"],
         "encoder/conv2/weight": s["encoder.conv2.weight"], "encoder/conv2/bias": s["encoder.conv2.bias"],
         "encoder/position_encodings/encodings": s["encoder.positional_embedding"],
         "decoder/position_encodings/encodings": s["decoder.positional_embedding"],
         "decoder/embeddings/weight": s["decoder.token_embedding.weight"],
         "encoder/layer_norm/gamma": s["encoder.ln_post.weight"], "encoder/layer_norm/beta": s["encoder.ln_post.bias"],
         "decoder/layer_norm/gamma": s["decoder.ln.weight"], "decoder/layer_norm/beta": s["decoder.ln.bias"],
         "encoder/num_heads": np.int16(dims.n_audio_head), "decoder/num_heads": np.int16(dims.n_text_head)}
    zero = np.zeros(dims.n_audio_state, np.float32)
    for side, n in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(n):
            o, c = f"{side}.blocks.{i}", f"{side}/layer_{i}"
            a = f"{o}.attn"
            v[f"{c}/self_attention/linear_0/weight"] = np.concatenate([s[f"{a}.query.weight"], s[f"{a}.key.weight"], s[f"{a}.value.weight"]])
            v[f"{c}/self_attention/linear_0/bias"] = np.concatenate([s[f"{a}.query.bias"], zero, s[f"{a}.value.bias"]])
            v[f"{c}/self_attention/linear_1/weight"], v[f"{c}/self_attention/linear_1/bias"] = s[f"{a}.out.weight"], s[f"{a}.out.bias"]
            v[f"{c}/self_attention/layer_norm/gamma"], v[f"{c}/self_attention/layer_norm/beta"] = s[f"{o}.attn_ln.weight"], s[f"{o}.attn_ln.bias"]
            if side == "decoder":
                x = f"{o}.cross_attn"
                v[f"{c}/attention/linear_0/weight"], v[f"{c}/attention/linear_0/bias"] = s[f"{x}.query.weight"], s[f"{x}.query.bias"]
                v[f"{c}/attention/linear_1/weight"] = np.concatenate([s[f"{x}.key.weight"], s[f"{x}.value.weight"]])
                v[f"{c}/attention/linear_1/bias"] = np.concatenate([zero, s[f"{x}.value.bias"]])
                v[f"{c}/attention/linear_2/weight"], v[f"{c}/attention/linear_2/bias"] = s[f"{x}.out.weight"], s[f"{x}.out.bias"]
                v[f"{c}/attention/layer_norm/gamma"], v[f"{c}/attention/layer_norm/beta"] = s[f"{o}.cross_attn_ln.weight"], s[f"{o}.cross_attn_ln.bias"]
            for j, m in ((0, 0), (1, 2)):
                v[f"{c}/ffn/linear_{j}/weight"], v[f"{c}/ffn/linear_{j}/bias"] = s[f"{o}.mlp.{m}.weight"], s[f"{o}.mlp.{m}.bias"]
            v[f"{c}/ffn/layer_norm/gamma"], v[f"{c}/ffn/layer_norm/beta"] = s[f"{o}.mlp_ln.weight"], s[f"{o}.mlp_ln.bias"]
    return v


def test_openai_state_dict_mapping_agrees_with_ct2_mapping():
    # A tiny model with openai-whisper's key names: two independent mappings must agree.
    dims = wm.WhisperDims(n_mels=8, n_vocab=50, n_audio_ctx=6, n_audio_state=16, n_audio_head=2,
                          n_audio_layer=2, n_text_ctx=5, n_text_state=16, n_text_head=2, n_text_layer=2)
    state = _openai_state(dims, np.random.default_rng(0))
    a = wm.params_from_openai(state, dims)
    b = wm.params_from_ct2(_ct2_from_openai(state, dims), dims)
    fa, fb = flatten_dict(a), flatten_dict(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))
    with pytest.raises(MediaError, match="not mapped"):
        wm.params_from_openai({**state, "encoder.extra": np.zeros(2)}, dims)
    with pytest.raises(MediaError, match="missing"):
        wm.params_from_openai({k: v for k, v in state.items() if k != "decoder.ln.bias"}, dims)


def _hf_model(dims):
    """transformers' FlaxWhisperForConditionalGeneration for ``dims`` (the reference only)."""
    import warnings
    from transformers import WhisperConfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import FlaxWhisperForConditionalGeneration
    config = WhisperConfig(
        vocab_size=dims.n_vocab, num_mel_bins=dims.n_mels, d_model=dims.n_audio_state,
        encoder_layers=dims.n_audio_layer, decoder_layers=dims.n_text_layer,
        encoder_attention_heads=dims.n_audio_head, decoder_attention_heads=dims.n_text_head,
        encoder_ffn_dim=4 * dims.n_audio_state, decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx, max_target_positions=dims.n_text_ctx)
    return FlaxWhisperForConditionalGeneration(config, _do_init=False)


@pytest.mark.slow
def test_forward_matches_transformers(whisper):
    # Our lean forward against transformers' FlaxWhisperForConditionalGeneration on the
    # same params: encoder, full decoder (with the alignment heads' cross-attention) and
    # the incremental decoder with its cache. Our side reuses the jitted functions that
    # transcription compiles anyway.
    import jax
    dims, params = whisper.dims, whisper.params
    hf = _hf_model(dims)
    mel = np.random.default_rng(0).normal(scale=0.5, size=(1, 3000, 80)).astype(np.float32)
    enc = whisper._encode(params, jnp.asarray(mel))
    ref = jax.jit(lambda p, m: hf.encode(m, params=p).last_hidden_state)(
        params, jnp.asarray(mel.transpose(0, 2, 1)))
    assert float(jnp.abs(enc - ref).max()) < 2e-3
    toks = np.full((1, 32), whisper.eot, np.int32)
    toks[0, :6] = [50258, 50259, 50359, 50364, 40, 765]
    xk, xv = whisper._xkv(params, enc)
    heads, logp = whisper._align(params, xk, xv, jnp.asarray(toks))
    out = jax.jit(lambda p, t, e: hf.decode(t, (e,), params=p, output_attentions=True))(
        params, jnp.asarray(toks), enc)
    ref_logp = jax.nn.log_softmax(out.logits[0, :, :whisper.eot], axis=-1)
    assert float(jnp.abs(logp[:6] - ref_logp[:6]).max()) < 1e-3
    ref_heads = jnp.stack([out.cross_attentions[l][0, h] for l, h in whisper.alignment_heads])
    assert float(jnp.abs(jax.nn.softmax(heads, -1) - ref_heads).max()) < 1e-4
    step = jax.jit(lambda p, t, o, c, k, v: wm.decode(p, t, o, c, k, v, dims)[:2])
    cache, steps = wm.empty_cache(dims, 1, 8), []
    for i in range(6):
        logits, cache = step(params, jnp.asarray(toks[:, i:i + 1]), i, cache, xk, xv)
        steps.append(jax.nn.log_softmax(logits[0, 0, :whisper.eot]))
    assert float(jnp.abs(jnp.stack(steps) - ref_logp[:6]).max()) < 1e-3


def test_embed_shape_and_content(whisper, speech):
    x, _ = speech
    fps, n = 25.0, 150  # 6 s of video over 3.4 s of speech
    emb = whisper.embed(x, fps, n)
    assert emb.shape == (n, 512) and emb.dtype == np.float32 and np.isfinite(emb).all()
    # speech frames and trailing-silence frames are encoded differently
    talk, quiet = emb[10:70].mean(0), emb[110:].mean(0)
    assert np.linalg.norm(talk - quiet) > 0.1 * np.linalg.norm(quiet)


def test_embedding_states_computed_ahead_give_the_same_frames(whisper, speech):
    """Extraction encodes the audio for the voice embeddings beside the face track, for
    the container's guessed length; states covering more give the same frames, states
    covering too little are refused (and computed again)."""
    x, _ = speech
    fps, n = 25.0, 150
    wide = whisper.embed_states(x, 40.0)            # two 30 s windows
    assert len(wide) == 3000
    np.testing.assert_array_equal(whisper.states_on_frames(wide, fps, n), whisper.embed(x, fps, n))
    short = whisper.embed_states(x, 0.0)            # one window: 30 s
    assert whisper.states_on_frames(short, fps, 31 * 25) is None


@pytest.mark.slow
def test_speech_in_another_language_is_detected_and_transcribed_in_it(whisper):
    """Documented outcome for non-English speech: the language is detected and reported
    (``transcript.json`` carries it) and the words come out in that language; the English
    text lexicons then simply find little, which the language field explains."""
    import librosa
    from ahjax.core.data.speech import synthesize
    french = "Je voudrais faire plus de sport, mais je n'ai jamais le temps le soir."
    sp = synthesize(french, voice="fr")
    x = librosa.resample(sp.samples, orig_sr=sp.sample_rate, target_sr=SR).astype(np.float32)
    tr = whisper.transcribe(x)
    assert tr.language == "fr"
    assert wer(french, tr.text) < 0.4, tr.text


def test_transcribe_synthesised_sentence(whisper, speech):
    x, truth = speech
    clip = np.concatenate([x, np.zeros(10 * SR - len(x), np.float32)])  # a 10 s clip
    t0 = time.perf_counter()
    tr = whisper.transcribe(clip)
    print(f"transcribe 10 s: {time.perf_counter() - t0:.2f} s (first call compiles)")
    assert tr.language == "en"
    assert wer(SENTENCE, tr.text) < 0.35, tr.text
    assert tr.segments and all(s["start"] <= s["end"] for s in tr.segments)
    words = tr.words
    assert len(words) >= 8
    starts = np.array([w["start"] for w in words])
    ends = np.array([w["end"] for w in words])
    assert (np.diff(starts) >= 0).all() and (ends >= starts).all()
    assert starts[0] < 1.0 and ends[-1] <= len(x) / SR + 0.5
    assert all(0 < w["prob"] <= 1 for w in words)
    # word starts against espeak's own word events
    ref = {w.word.lower(): w.start for w in truth}
    errs = [abs(w["start"] - ref[k]) for w in words
            if (k := w["word"].lower().strip(".,")) in ref and list(ref).count(k) == 1]
    assert len(errs) >= 5 and np.median(errs) < 0.3


def test_silence_gives_no_words(whisper):
    tr = whisper.transcribe(np.zeros(5 * SR, np.float32), language="en")
    assert tr.words == [] and tr.text == ""


def test_helpers():
    assert wer("the cat sat", "the cat sat") == 0.0
    assert wer("the cat sat", "The cat, sat!") == 0.0
    assert abs(wer("a b c d", "a x c") - 0.5) < 1e-9
    # dtw equals a brute-force dynamic programme on a small matrix
    x = np.random.default_rng(1).random((5, 7)).astype(np.float32)
    rows, cols = dtw(x)
    assert rows[0] == cols[0] == 0 and rows[-1] == 4 and cols[-1] == 6
    assert (np.diff(rows) >= 0).all() and (np.diff(cols) >= 0).all()
    best = np.full((6, 8), np.inf)
    best[0, 0] = 0
    for i, j in itertools.product(range(1, 6), range(1, 8)):
        best[i, j] = x[i - 1, j - 1] + min(best[i - 1, j - 1], best[i - 1, j], best[i, j - 1])
    assert np.isclose(x[rows, cols].sum(), best[5, 7], atol=1e-5)
    # 50 Hz states onto 25 fps frames average pairs; onto 100 fps frames repeat
    s = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_allclose(states_to_frames(s, 25, 5)[:, 0], [0.5, 2.5, 4.5, 6.5, 8.5])
    np.testing.assert_allclose(states_to_frames(s, 100, 4)[:, 0], [0, 0, 1, 1])


def test_voice_encoder_arrays(whisper, speech):
    import librosa
    from level1_affect.schema import ARRAYS
    from level1_affect.voice import VoiceEncoder
    x, _ = speech
    x44 = librosa.resample(x, orig_sr=SR, target_sr=44100)  # any input rate
    out = VoiceEncoder(25, whisper=whisper).encode(x44, 44100, 100)
    assert set(out) == {"voice_mel", "voice_prosody", "voice_emb"}
    for name, arr in out.items():
        assert arr.shape == (100, ARRAYS[name][0]) and arr.dtype == np.float32
    assert out["voice_prosody"][:, 4].mean() > 0.5


def test_openai_checkpoint_loader_errors(tmp_path):
    from level1_affect.voice import load_openai_whisper
    with pytest.raises(MediaError, match="no openai-whisper checkpoint"):
        load_openai_whisper(tmp_path / "small.pt")
    (tmp_path / "junk.pt").write_bytes(b"not really")
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"ahjax\[openai-whisper\]"):
            load_openai_whisper(tmp_path / "junk.pt")
    else:
        with pytest.raises(Exception):
            load_openai_whisper(tmp_path / "junk.pt")


def test_openai_checkpoint_roundtrip(tmp_path):
    # A tiny random checkpoint written the way openai-whisper stores them.
    torch = pytest.importorskip("torch")
    from level1_affect.voice import load_openai_whisper
    dims = wm.WhisperDims(n_vocab=60, n_audio_state=16, n_audio_head=2, n_audio_layer=1,
                          n_text_ctx=8, n_text_state=16, n_text_head=2, n_text_layer=1)
    state = _openai_state(dims, np.random.default_rng(2))
    torch.save({"dims": dataclasses.asdict(dims),
                "model_state_dict": {k: torch.from_numpy(v).half() for k, v in state.items()}},
               tmp_path / "tiny.pt")
    model = load_openai_whisper(tmp_path / "tiny.pt")
    assert model.dims == dims and not model.can_transcribe
    want = flatten_dict(wm.params_from_openai({k: v.astype(np.float16) for k, v in state.items()}, dims))
    got = flatten_dict(model.params)
    assert all(np.array_equal(np.asarray(got[k]), want[k]) for k in want)
    emb = model.embed(np.random.default_rng(3).normal(size=SR).astype(np.float32) * 0.1, 25, 25)
    assert emb.shape == (25, 16) and np.isfinite(emb).all()
