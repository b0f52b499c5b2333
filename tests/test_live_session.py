"""A whole session live: level 2 carries its state, text re-encodes only what changed, the
decoder and the level-1 rows stay bounded, and a stream's files are appended as it goes.

Level 2 is a real (randomly initialised, causal) model on a demo video's real level-1
tracks; the text tests use the phrase rules and a scripted talk-type model, so nothing
here needs a trained asset.
"""

import numpy as np
import pytest
from flax import nnx

from level1_affect.live import LiveText
from level1_affect.text import TextEncoder, words_from_chunks
from level2_conflict import hsmm
from level2_conflict.model import TwoLevelConfig, TwoLevelModel
from level2_conflict.runtime import DecodeConfig, Durations, TrainedTwoLevel
from level2_conflict.stateful import LiveScorer

FPS = 24.0
CHUNKS = (5, 30, 1, 64, 65, 24, 100, 7, 250)   # uneven, some longer than a block


@pytest.fixture(scope="module")
def demo_tracks(tmp_path_factory):
    """Level-1 tracks of a generated demo video: face and voice through the live level 1,
    text from the video's own timed transcript."""
    from ahjax.core.data import demo
    from ahjax.core.data.bah import load_bah
    from level1_affect.face import FaceEncoder
    from level1_affect.live import LiveLevel1
    from level1_affect.media import TAIL, file_source
    root = demo.make_demo(tmp_path_factory.mktemp("demo") / "bah", seed=3, participants=1,
                          questions=(4,), min_duration=8.0, max_duration=8.0, size=128,
                          workers=1)
    video = load_bah(root).videos[0]
    src = file_source(video.video_path)
    live = LiveLevel1(src.fps, FaceEncoder(batch_size=16), audio=src.has_audio)
    for frame, audio, _ in src.frames():
        live.push([] if frame is TAIL else [frame], audio)
    live.finish()
    arrays = live.arrays()
    n = len(arrays["face_present"])
    words = words_from_chunks(video.chunks, n / src.fps)
    arrays["text_affect"] = TextEncoder(embeddings=False, talk_type="lexicon").encode(
        words, src.fps, n)["text_affect"]
    assert arrays["text_affect"][:, -1].sum() > 0 and arrays["face_present"].sum() > 0
    return arrays, src.fps


def _trained(remainder: bool, fps: float) -> TrainedTwoLevel:
    cfg = TwoLevelConfig(fps=fps, hidden=8, n_blocks=3, causal=True, use_remainder=remainder)
    durations = Durations(hsmm.DurationPrior((2.0, 3.0), (2.0, 0.5), 8.0), [0.8, 0.2])
    return TrainedTwoLevel(TwoLevelModel(cfg, rngs=nnx.Rngs(3)), durations, DecodeConfig())


@pytest.mark.parametrize("remainder", [False, True])
def test_stateful_level2_equals_the_whole_prefix_in_uneven_chunks(demo_tracks, remainder):
    arrays, fps = demo_tracks
    trained = _trained(remainder, fps)
    scorer = LiveScorer(trained.model, fps, block=64)
    got, n = [], 0
    for m in CHUNKS:
        m = min(m, len(arrays["face_present"]) - n)
        if m <= 0:
            break
        start, out = scorer.scores({k: v[scorer.settled:n + m] for k, v in arrays.items()},
                                   n + m, final=n + m, revised_from=n + m)
        assert start == n and scorer.settled == n + m   # nothing recomputed, nothing kept
        got.append(out)
        n += m
    whole = trained.scores({k: v[:n] for k, v in arrays.items()}, fps)
    np.testing.assert_allclose(np.concatenate([g["prob"] for g in got]), whole["prob"],
                               atol=1e-5)
    # The terms of the score before the sigmoid, values up to about 1: float32 sums of the
    # running statistics taken in another order round differently (seen: 1.4e-5 on 0.43,
    # depending on the programs XLA compiled earlier in the process), so relative here.
    for g, c in whole["contributions"].items():
        np.testing.assert_allclose(np.concatenate([o["contributions"][g] for o in got]), c,
                                   rtol=1e-4, atol=1e-5, err_msg=g)


def test_stateful_level2_resumes_where_late_rows_were_revised(demo_tracks):
    """Text arrives after its frames: rows not final yet are revised by later calls, and
    the scores then equal the whole prefix as known at that call."""
    arrays, fps = demo_tracks
    trained = _trained(True, fps)
    scorer = LiveScorer(trained.model, fps, block=32)
    known = {k: v.copy() for k, v in arrays.items()}
    known["text_affect"][:] = 0.0                 # no word confirmed yet
    lag = 40                                      # text is known 40 frames after its frame
    n, total = 0, len(arrays["face_present"])
    for m in CHUNKS:
        m = min(m, total - n)
        if m <= 0:
            break
        revised = max(0, n - lag)
        hi = max(revised, n + m - lag)
        known["text_affect"][revised:hi] = arrays["text_affect"][revised:hi]
        start, out = scorer.scores({k: v[scorer.settled:n + m] for k, v in known.items()},
                                   n + m, final=max(0, n + m - lag), revised_from=revised)
        assert start <= max(revised, 0) or start == n
        whole = trained.scores({k: v[:n + m] for k, v in known.items()}, fps)
        np.testing.assert_allclose(out["prob"], whole["prob"][start:], atol=1e-5)
        assert scorer.settled <= max(0, n + m - lag)
        n += m
    assert scorer.resumed > 0


def test_stateful_level2_work_stays_bounded_when_text_arrives_late(demo_tracks):
    """Words confirmed seconds after their frames revise rows behind the newest chunk in
    every call: each call resumes from the state at the last final frame, so its work and
    the rows it keeps stay within the text's lag, however long the stream (before, every
    call resumed from an ever older state)."""
    arrays, fps = demo_tracks
    trained = _trained(False, fps)
    scorer = LiveScorer(trained.model, fps, block=16)
    chunk, lag, late = 12, 60, 30   # rows final 60 frames behind; words revise 30 back
    total = len(arrays["face_present"])
    for n in range(chunk, total + 1, chunk):
        final = max(0, n - lag)
        start, out = scorer.scores({k: v[scorer.settled:n] for k, v in arrays.items()}, n,
                                   final=final, revised_from=max(0, n - chunk - late))
        # It stepped frames [start, n): from the previous call's final frame, no further.
        assert n - start <= lag + chunk and start == max(0, n - chunk - lag)
        assert scorer.settled == final
    whole = trained.scores({k: v[:n] for k, v in arrays.items()}, fps)
    np.testing.assert_allclose(out["prob"], whole["prob"][start:], atol=1e-5)


def test_bounded_decoder_commits_what_the_whole_decoding_says():
    log_dur = np.asarray(hsmm.DurationPrior((2.0, 3.0), (2.0, 0.5), 8.0).log_pmf(12.0))
    log_prior = np.log([0.7, 0.3])
    rng = np.random.default_rng(1)
    n = 4000
    prob = np.clip(np.convolve(rng.random(n), np.ones(15) / 15, "same")
                   + 0.2 * rng.standard_normal(n), 0, 1)
    dec = hsmm.OnlineDecoder(log_dur, log_prior, lag=24, emission_weight=0.2)
    pos = 0
    for m in rng.integers(1, 60, 400):
        m = min(int(m), n - pos)
        if m == 0:
            break
        new = dec.push(prob[pos:pos + m])
        pos += m
        if len(new) and pos % 7 == 0:   # the one-shot decoding of the same prefix
            ref = hsmm.OnlineDecoder(log_dur, log_prior, lag=0, emission_weight=0.2)
            np.testing.assert_array_equal(new, ref.push(prob[:pos])[dec.n_committed - len(new):
                                                                    dec.n_committed])
    assert pos == n and len(dec.delta) == 1024 and dec.base > n - 1024   # never grown


SCRIPT = ("I want to stop smoking, I really do. But honestly it helps me relax after work, "
          "um, and I guess I am not sure I can. My doctor says I should quit. I have been "
          "putting it off for years, you know, and I keep putting it off. Maybe next month "
          "I will try, but I do not know. It is not that big a deal, I suppose. I could "
          "cut down, I think I could, although I like it a lot").split()


class _ScriptedTalk:
    """A talk-type model that depends on the whole sentence (as the learned one does)."""

    def predict_proba(self, texts, contexts):
        out = []
        for t in texts:
            h = sum(map(ord, t)) % 97 / 97.0
            out.append([h, 1.0 - h - 0.1 * (len(t) % 3), 0.1 * (len(t) % 3)])
        return np.asarray(out, np.float32)


@pytest.mark.parametrize("talk", ["lexicon", "scripted"])
def test_live_text_equals_encoding_every_word(talk):
    enc = TextEncoder(embeddings=False, talk_type="lexicon",
                      talk_model=_ScriptedTalk() if talk == "scripted" else None)
    if talk == "scripted":
        enc.talk_type = "scripted"
    fps, rng = 10.0, np.random.default_rng(0)
    t, words = 0.0, []
    for w in SCRIPT:
        t += rng.uniform(0.05, 0.4) + (2.0 if w.endswith(".") else 0.0)
        words.append({"word": w, "start": round(t, 3), "end": round(t + 0.3, 3)})
        t += 0.3
    live, final, pos = LiveText(enc, fps), 0, 0
    while pos < len(words):
        m = int(rng.integers(1, 6))
        live.add(words[pos:pos + m])
        pos += m
        n_frames = int(np.ceil(words[min(pos, len(words)) - 1]["end"] * fps)) + 3
        want = enc.encode(words[:pos], fps, n_frames)["text_affect"]
        # Frames before the open words' first are final: later words must not change them.
        final = max(final, min(int(live.first_open_frame()), n_frames))
        np.testing.assert_allclose(live.rows(final, n_frames), want[final:], atol=1e-6)
        live.forget(final)
    assert live.w0 > 0   # words no frame can need any more were dropped


# ------------------------------ the stream's memory and files --------------------------
def test_a_stream_keeps_only_the_rows_not_final_yet(tmp_path):
    """Level-1 rows and pending values leave memory as the stream goes; the files at the
    end hold every frame."""
    import csv
    from ahjax import streaming as live_stream
    from level1_affect.face import FaceEncoder
    from level1_affect.media import MediaSource
    from level2_conflict.runtime import save_trained
    trained = _trained(False, 12.0)
    run_dir = tmp_path / "run"
    save_trained(trained.model, trained.model.cfg, trained.durations, DecodeConfig(),
                 run_dir / "deploy_causal")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(150)]
    src = MediaSource(frames, 12.0, None, name="noise")
    kept = []
    gen = live_stream.stream(src, run_dir, live_stream.StreamConfig(asr=False, lag_s=1.0),
                             out=tmp_path / "out", face_encoder=FaceEncoder(batch_size=16))
    for line in gen:
        if not line["final"]:
            run = gen.gi_frame.f_locals["run"]
            kept.append((line["frames"][1], run.live.row0, len(run.prob)))
    assert all(end - row0 <= 12 + 12 + 1 for end, row0, _ in kept)   # a chunk and the lag
    assert all(pending <= 12 + 12 for _, _, pending in kept)
    with open(tmp_path / "out" / "tracks.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(150))
    assert (tmp_path / "out" / "ah.png").is_file()


def test_thin_keeps_every_kth_frame_within_its_cap():
    from ahjax.streaming import _Thin
    thin = _Thin(cap=100)
    for a in range(0, 1000, 37):
        idx = np.arange(a, min(a + 37, 1000))
        thin.add({"x": idx.astype(np.float32), "_c": {"g": -idx}, "_frame": idx})
    got = thin.values()
    assert thin.k == 16 and len(got["_frame"]) <= 100
    np.testing.assert_array_equal(got["_frame"], np.arange(0, 1000, 16))
    np.testing.assert_array_equal(got["_c"]["g"], -got["x"])


def test_a_missing_talk_type_model_is_named_not_trained(tmp_path, monkeypatch):
    from ahjax import streaming as live_stream
    from level1_affect import talk_type
    monkeypatch.setattr(talk_type, "default_dir", lambda: tmp_path / "nothing")
    video = tmp_path / "answer.mp4"
    video.write_bytes(b"not opened: the models come first")
    with pytest.raises(FileNotFoundError, match="ensure_default"):
        next(live_stream.stream(video, None))
    assert not (tmp_path / "nothing").exists()
