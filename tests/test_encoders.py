"""Our NNX encoders (MiniLM, MPNet) against transformers' PyTorch models on real sentences."""

from __future__ import annotations

import json

import numpy as np
import pytest

from level1_affect import annomi, encoders

SENTENCES = [
    "I want to cut down on drinking, but honestly it helps me relax after work.",
    "The weather is nice today.",
    "I don't know... my whole family smokes, it's how we spend time together, so quitting "
    "would mean giving that up, and I'm not sure I'm ready for that yet.",
    "Yes.",
]


def _reference(folder):
    torch = pytest.importorskip("torch")
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    return torch, tok, model


@pytest.mark.parametrize("name", ["minilm", "mpnet"])
def test_matches_pytorch(name):
    enc = encoders.load(name)
    torch, tok, ref = _reference(enc.path)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref(**batch).last_hidden_state
    mask = batch["attention_mask"]
    # token states, each sentence with its own specials
    ids = [row[:int(m.sum())].tolist() for row, m in zip(batch["input_ids"], mask)]
    ours = enc.token_states(ids, [[0] * len(i) for i in ids], enc.config.num_hidden_layers)
    for k, states in enumerate(ours):
        np.testing.assert_allclose(states, hidden[k, :len(states)].numpy(), atol=1e-4)
    # sentence embeddings: mean pooling + L2 norm, as sentence-transformers does
    m = mask[..., None].float()
    pooled = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=1).numpy()
    np.testing.assert_allclose(enc.encode_sentences(SENTENCES), pooled, atol=1e-4)
    # a sentence pair with the architecture's specials (MPNet: <s> A </s></s> B </s>)
    a = tok("How do you feel about it?", add_special_tokens=False)["input_ids"]
    b = tok("I want to quit.", add_special_tokens=False)["input_ids"]
    pair_ids, segments = enc.pair(a, b)
    theirs = tok("How do you feel about it?", "I want to quit.", return_tensors="pt")
    assert pair_ids == theirs["input_ids"][0].tolist()
    assert segments[-len(b) - 1:] == [1] * (len(b) + 1) and set(segments[:-len(b) - 1]) == {0}
    with torch.no_grad():
        ref_pair = ref(**theirs).last_hidden_state[0].numpy()
    np.testing.assert_allclose(
        enc.token_states([pair_ids], [segments], enc.config.num_hidden_layers)[0], ref_pair,
        atol=1e-4)


def test_mpnet_relative_buckets_match_transformers():
    pytest.importorskip("torch")
    import torch
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder
    n = 300
    pos = torch.arange(n)
    theirs = MPNetEncoder.relative_position_bucket(pos[None, :] - pos[:, None], num_buckets=32)
    np.testing.assert_array_equal(encoders.relative_buckets(n, 32), theirs.numpy())


def test_bucketing_compiles_a_handful_of_shapes():
    enc = encoders.load("minilm")
    texts = [e.text for e in annomi.read_annomi(None)[:300]]
    enc._hidden.clear_cache() if hasattr(enc._hidden, "clear_cache") else None
    before = enc._hidden._cache_size()
    out = enc.encode_sentences(texts)
    assert out.shape == (300, 384)
    lengths = {len(t.split()) for t in texts}
    assert len(lengths) > 30                       # many input lengths ...
    assert enc._hidden._cache_size() - before <= 12  # ... a few compiled shapes


def test_layers_in_between_and_words():
    enc = encoders.load("mpnet")
    assert enc.dim == 768 and enc.max_length == 384
    ids = enc.pair([], enc.tokenizer.encode("I might.", add_special_tokens=False).ids)[0]
    zero = enc.token_states([ids], [[0] * len(ids)], 0)[0]
    top = enc.token_states([ids], [[0] * len(ids)], 12)[0]
    assert zero.shape == top.shape == (len(ids), 768) and not np.allclose(zero, top)
    words, vecs = enc.encode_words("I want to, but... it's hard")
    assert words == ["I", "want", "to,", "but...", "it's", "hard"] and vecs.shape == (6, 768)
    with pytest.raises(ValueError, match="layer=13: the encoder has 12 layers"):
        enc.token_states([ids], [[0] * len(ids)], 13)


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks config.json"):
        encoders.load(tmp_path)
    src = encoders.resolve("minilm")
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(Exception, match="model.safetensors|header"):
        encoders.PretrainedEncoder(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "roberta"}))
    with pytest.raises(ValueError, match="model_type 'roberta' is not read here"):
        encoders.PretrainedEncoder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not a readable JSON config"):
        encoders.PretrainedEncoder(tmp_path)


def test_an_encoder_built_abstract_must_be_filled_whole(monkeypatch):
    """The network is built from shapes only and filled from the weight file; an array
    the file's names do not reach is named, never left abstract."""
    names = encoders._torch_names
    monkeypatch.setattr(encoders, "_torch_names", lambda config: {
        k: v for k, v in names(config).items() if k != "embeddings.LayerNorm.bias"})
    with pytest.raises(ValueError, match=r"no weights for 1 arrays of the bert encoder, "
                                         r"e.g. \[\"\['emb_norm'\]\['bias'\]"):
        encoders.PretrainedEncoder(encoders.resolve("minilm"))


def test_the_main_job_never_imports_transformers():
    """Our encoders and Whisper stand alone: the modules of the main job import no
    transformers (whose Flax classes are deprecated), and no module outside the tests
    names a transformers Flax class."""
    import subprocess
    import sys
    from pathlib import Path
    code = ("import sys, experiments.two_level, level1_affect.extract, level1_affect.live, "
            "level1_affect.talk_type, level2_conflict.text_video, ahjax.api; "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
    import re
    flax_class = re.compile(r"from transformers[\w.]* import [^\n]*Flax|transformers\.Flax")
    root = Path(__file__).parents[1]
    for folder in ("ahjax", "level1_affect", "level2_conflict", "baselines", "experiments"):
        for path in (root / folder).rglob("*.py"):
            assert not flax_class.search(path.read_text()), path
