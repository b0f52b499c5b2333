"""Live use: incremental level 1, causal level 2 on a growing prefix, fixed-lag decoding,
and a stream that ends cleanly whatever its source does.

The sources here are real frames pushed through the real face encoder and a real (randomly
initialised, causal) two-level model saved and loaded as a run's ``deploy_causal`` is;
speech recognition is scripted where the policy is what is tested. The end-to-end stream
of a demo video with Whisper is in ``test_pipeline.py`` (slow).
"""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import nnx

from ahjax import streaming as live_stream
from level1_affect.errors import MediaError
from level1_affect.media import MediaSource
from level1_affect.live import LocalAgreement
from level2_conflict import hsmm
from level2_conflict.model import TwoLevelConfig, TwoLevelModel
from level2_conflict.runtime import DecodeConfig, Durations, decode_hsmm, load_trained, save_trained

FPS = 12.0


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    """A causal two-level model saved as ``two_level`` deploys it (random weights)."""
    cfg = TwoLevelConfig(fps=FPS, hidden=8, n_blocks=2, causal=True)
    model = TwoLevelModel(cfg, rngs=nnx.Rngs(3))
    durations = Durations(hsmm.DurationPrior((2.0, 3.0), (2.0, 0.5), 8.0), [0.8, 0.2])
    folder = tmp_path_factory.mktemp("run") / "deploy_causal"
    return save_trained(model, cfg, durations, DecodeConfig(), folder).parent


@pytest.fixture(scope="module")
def face_encoder():
    from level1_affect.face import FaceEncoder
    return FaceEncoder(batch_size=16)


def _frames(n, seed=0, size=64):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _tone_speech(seconds, seed=0):
    """Voiced-sounding audio (a gliding 140-220 Hz tone with bursts), 16 kHz."""
    t = np.arange(int(seconds * 16000)) / 16000
    f = 140 + 80 * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    env = (np.sin(2 * np.pi * 1.5 * t) > -0.3).astype(np.float32)
    return (0.2 * env * np.sin(2 * np.pi * np.cumsum(f) / 16000)).astype(np.float32)


def _run(source, checkpoint, tmp_path, **cfg):
    config = live_stream.StreamConfig(**{"asr": False, **cfg})
    return list(live_stream.stream(source, checkpoint, config, out=tmp_path / "out"))


# ------------------------------ speech: local agreement -------------------------------
TRUTH = [("I", 0.0, 0.3), ("want", 0.3, 0.6), ("to", 0.6, 0.8), ("stop.", 0.8, 1.2),
         ("but", 1.6, 1.9), ("it", 1.9, 2.1), ("helps", 2.1, 2.6), ("me", 2.6, 2.9)]


def _scripted(asr_ref, garble="stuff"):
    """A recogniser that knows the truth: the words fully heard in the buffer, and a wrong
    guess for a word cut by its end (as Whisper does with half a word)."""
    def transcribe(audio, language):
        asr = asr_ref[0]
        t0, t1 = asr.offset, asr.offset + len(audio) / 16000
        out = []
        for w, a, b in TRUTH:
            if a >= t0 - 1e-6 and b <= t1:
                out.append({"word": w, "start": a - t0, "end": b - t0})
            elif a >= t0 - 1e-6 and a < t1:
                out.append({"word": garble, "start": a - t0, "end": t1 - t0})
        return "en", out
    return transcribe


def test_local_agreement_confirms_agreed_words_once_with_their_times():
    ref = [None]
    asr = LocalAgreement(None, transcribe=_scripted(ref), trim_s=1.5)
    ref[0] = asr
    emitted = []
    for _ in range(7):   # 0.5 s of audio per step
        asr.push(np.zeros(8000, np.float32))
        emitted.append(asr.step())
    emitted.append(asr.finish())
    words = [w for step in emitted for w in step]
    assert [w["word"] for w in words] == [w for w, _, _ in TRUTH]
    assert [(w["start"], w["end"]) for w in words] == [(a, b) for _, a, b in TRUTH]
    # A word is confirmed only once two passes agree: never in the pass that first hears it.
    assert emitted[0] == [] and "stuff" not in [w["word"] for w in words]
    # The buffer was trimmed once past trim_s, after the confirmed sentence end "stop.".
    assert asr.offset >= 1.2 and asr.language == "en"


def test_local_agreement_drops_a_reread_of_confirmed_words():
    reread = [{"word": "it", "start": 2.02, "end": 2.2}, {"word": "helps", "start": 2.2, "end": 2.6}]
    asr = LocalAgreement(None, transcribe=lambda audio, language: ("en", reread))
    asr.confirmed = [{"word": "but", "start": 1.6, "end": 1.9}, {"word": "it", "start": 1.9, "end": 2.1}]
    asr.push(np.zeros(16000, np.float32))
    assert [w["word"] for w in asr._pass()] == ["helps"]   # "it" again, 0.1 s later: a repeat


def test_a_stream_left_early_stops_its_threads(causal_dir, face_encoder):
    import threading
    src = MediaSource(_frames(48, 6), FPS, _tone_speech(4.0), name="noise")
    calls = []

    class Quiet:   # a recogniser stand-in: the thread must stop without a last pass
        def transcribe(self, audio, language=None, **kw):
            calls.append(len(audio))
            from level1_affect.whisper.transcribe import Transcript
            return Transcript("en", "", [], [])
    gen = live_stream.stream(src, causal_dir, live_stream.StreamConfig(asr=True, asr_every_s=0.5),
                             face_encoder=face_encoder, whisper=Quiet())
    line = next(gen)
    assert set(line["asr"]) == {"passes", "pass_s", "buffer_s", "words_lag_s"}
    assert line["asr"]["words_lag_s"] >= 0 and line["asr"]["passes"] >= 0
    before = len(calls)
    gen.close()
    assert not any(t.name in ("ahjax-asr", "ahjax-stream-reader") and t.is_alive()
                   for t in threading.enumerate())
    assert len(calls) <= before + 1   # no last pass after the close


def test_local_agreement_settles_words_when_passes_never_agree():
    passes = iter(range(1000))

    def fickle(audio, language):   # the last word changes every pass: no agreement at all
        n = len(audio) / 16000
        k = next(passes)
        return "en", [{"word": f"w{k}_{i}", "start": i * 0.5, "end": i * 0.5 + 0.4}
                      for i in range(int(n / 0.5))]
    asr = LocalAgreement(None, transcribe=fickle, trim_s=3.0, max_buffer_s=4.0, settle_s=1.0)
    got = []
    for _ in range(12):
        asr.push(np.zeros(8000, np.float32))
        got += asr.step()
    assert got, "a long buffer without agreement must still confirm its settled words"
    assert all(w["end"] <= asr.heard_s for w in got)
    assert len(asr.buffer) / 16000 <= 4.5 + 0.5   # cut back near max_buffer_s


# ------------------------------ level 2 and decoding ----------------------------------
def test_stream_equals_offline_scores_and_decoding(causal_dir, face_encoder, tmp_path):
    """No speech, so level 1 never revises a frame: the causal model's values streamed chunk
    by chunk equal its values on the whole video, and with an unbounded lag the decoding
    equals the offline semi-Markov decoding of those values."""
    frames = _frames(50)
    audio = _tone_speech(50 / FPS + 0.1)
    src = MediaSource(frames, FPS, audio, name="noise")
    lines = list(live_stream.stream(src, causal_dir,
                                    live_stream.StreamConfig(asr=False, chunk_s=1.0,
                                                             lag_s=float("inf")),
                                    out=tmp_path / "out", face_encoder=face_encoder))
    final = lines[-1]
    assert final["final"] and final["ended"] == "end of source"
    assert [ln["frames"] for ln in lines[:-1]] == [[0, 12], [12, 24], [24, 36], [36, 48],
                                                   [48, 50]]
    assert final["frames"] == [50, 50] and final["summary"]["frames"] == 50
    prob = np.concatenate([ln["ah_prob"] for ln in lines])
    model = load_trained(causal_dir / "deploy_causal")
    res = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert res["frames"] == 50
    # The whole video's level 1, as the stream saw it, through the model at once.
    import csv
    with open(tmp_path / "out" / "tracks.csv") as f:
        rows = list(csv.DictReader(f))
    np.testing.assert_allclose([float(r["ah_prob"]) for r in rows], prob, atol=1e-5)
    from level1_affect.face import FaceEncoder  # noqa: F401 - the stream used it
    offline = decode_hsmm(prob, FPS, model.durations, model.decode.evidence_rate)
    np.testing.assert_array_equal([int(r["ah_decoded"]) for r in rows], offline)
    for g, values in lines[-2]["contributions"].items():
        assert len(values) == 2, g
    # Voice rows exist for every frame and see the tone as voiced.
    assert np.mean([float(r["voice_voiced"]) for r in rows]) > 0.3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ah.png", "segments.json", "summary.json", "tracks.csv", "transcript.json"]


def test_prefix_scores_of_a_causal_model_do_not_change(causal_dir):
    model = live_stream.load_live_model(causal_dir)   # prefers deploy_causal/
    assert model.causal
    rng = np.random.default_rng(0)
    n = 300
    arrays = {"face_present": np.ones((n, 1), np.float32),
              "face_desc": rng.normal(size=(n, 9)).astype(np.float32),
              "face_expr": rng.dirichlet(np.ones(7), n).astype(np.float32),
              "voice_prosody": np.abs(rng.normal(size=(n, 6))).astype(np.float32),
              "text_affect": rng.normal(size=(n, 18)).astype(np.float32) * 0.3}
    whole = model.scores(arrays, FPS)
    for m in (40, 170):
        part = model.scores({k: v[:m] for k, v in arrays.items()}, FPS, bucket="pow2")
        np.testing.assert_allclose(part["prob"], whole["prob"][:m], atol=1e-5)
        for g in whole["contributions"]:
            np.testing.assert_allclose(part["contributions"][g], whole["contributions"][g][:m],
                                       atol=1e-5)


def test_fixed_lag_labels_are_final_lag_seconds_behind(causal_dir, face_encoder, tmp_path):
    import ahjax
    src = MediaSource(_frames(60, 1), FPS, None, name="noise")
    lines = list(ahjax.stream(src, causal_dir,   # the Python API
                                    live_stream.StreamConfig(asr=False, chunk_s=1.0, lag_s=2.0),
                                    face_encoder=face_encoder))
    # Decided up to 2 s behind the newest frame of each line, everything at the end.
    assert [ln["decided_until_s"] for ln in lines[:-1]] == [0.0, 0.0, 1.0, 2.0, 3.0]
    assert lines[-1]["decided_until_s"] == 5.0
    assert lines[0]["latency_s"] is None   # played as fast as possible: no capture clock
    assert any("noise: no audio" in w for w in lines[-1]["summary"]["warnings"])


# ------------------------------ sources that misbehave --------------------------------
def test_a_stalled_source_ends_the_stream_with_what_was_decided(causal_dir, face_encoder,
                                                                tmp_path):
    def stalls():
        yield from _frames(30, 2)
        time.sleep(60)   # the camera froze
        yield from _frames(10, 3)
    src = MediaSource(stalls(), FPS, None, name="frozen")
    t0 = time.monotonic()
    lines = list(live_stream.stream(src, causal_dir,
                                    live_stream.StreamConfig(asr=False, stall_s=1.0),
                                    out=tmp_path / "out", face_encoder=face_encoder))
    assert time.monotonic() - t0 < 30
    final = lines[-1]
    assert final["ended"].startswith("stalled") and final["summary"]["frames"] == 30
    assert any("stalled" in w for w in final["summary"]["warnings"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames"] == 30 and "segments" in summary


def test_a_source_that_ends_early_or_drops_frames_ends_cleanly(causal_dir, face_encoder,
                                                               tmp_path):
    def breaks():
        frames = _frames(20, 4)
        frames[5] = frames[6] = None   # two frames the device dropped
        yield from frames
        raise MediaError("cut.mp4: decoding failed after 20 frames (truncated)")
    src = MediaSource(breaks(), FPS, None, name="cut.mp4")
    lines = list(live_stream.stream(src, causal_dir, live_stream.StreamConfig(asr=False),
                                    out=tmp_path / "out", face_encoder=face_encoder))
    final = lines[-1]
    assert final["ended"].startswith("source ended early: cut.mp4: decoding failed")
    assert final["summary"]["frames"] == 20 and final["dropped"] == 2
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["frames"] == 20


def test_a_source_that_never_delivers_writes_nothing(causal_dir, face_encoder, tmp_path):
    def frozen():
        time.sleep(60)
        yield from _frames(1)
    lines = list(live_stream.stream(MediaSource(frozen(), FPS, None), causal_dir,
                                    live_stream.StreamConfig(asr=False, stall_s=0.5),
                                    out=tmp_path / "out", face_encoder=face_encoder))
    assert len(lines) == 1 and lines[0]["ended"].startswith("stalled")
    assert lines[0]["summary"]["frames"] == 0 and "written" not in lines[0]
    assert "no frame arrived: nothing written" in lines[0]["summary"]["warnings"]
    assert not (tmp_path / "out").exists()


def test_realtime_play_reports_latency_and_degrades_when_behind(causal_dir, face_encoder):
    src = MediaSource(_frames(24, 5), FPS, None, realtime=True, name="live")
    lines = list(live_stream.stream(src, causal_dir,
                                    live_stream.StreamConfig(asr=False, chunk_s=0.5),
                                    face_encoder=face_encoder))
    s = lines[-1]["summary"]
    assert 0 <= s["latency_median_s"] <= s["latency_p95_s"]
    assert s["wall_s"] >= 2.0 - 0.1   # played at its own pace, not faster
    assert all(ln["behind_s"] is not None for ln in lines[:-1])
    # Where each chunk's time went, and no Whisper without speech recognition.
    assert all(set(ln["cost_s"]) == {"face", "voice", "text", "level2", "output"}
               and min(ln["cost_s"].values()) >= 0 for ln in lines)
    assert sum(ln["cost_s"]["face"] for ln in lines) > 0 and lines[0]["asr"] is None

    # The degradation ladder: behind by more than behind_s -> one level lighter, at most
    # the last level; three calm chunks -> one level back.
    run = live_stream._Run(MediaSource([], FPS), None,
                           live_stream.StreamConfig(asr=False, behind_s=1.0), face_encoder)
    for _ in range(5):
        run.adapt(2.0)
    assert run.level == len(live_stream.DEGRADE) - 1
    assert run.live.face.detect_every == live_stream.DEGRADE[-1][0]
    for _ in range(3):
        run.adapt(0.1)
    assert run.level == len(live_stream.DEGRADE) - 2


def test_cli_refuses_bad_sources_and_settings_in_one_line(tmp_path, capsys):
    res = subprocess.run([sys.executable, "-m", "ahjax", "stream", str(tmp_path / "missing.mp4")],
                         capture_output=True, text=True, timeout=120)   # the real command
    assert res.returncode == 2 and "missing.mp4: no such video file" in res.stderr
    assert res.stdout == ""

    def cli(*args):   # the rest in this process: the same main(), without the start-up
        code = live_stream.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    res = cli("cam:front")
    assert res.returncode == 2 and "cam:front: a capture device is cam:N" in res.stderr
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 50)
    res = cli(bad)
    assert res.returncode == 2 and "bad.mp4" in res.stderr and "Traceback" not in res.stderr
    res = cli(bad, "--chunk-s", "0")
    assert res.returncode == 2 and "chunk_s=0.0: must be positive" in res.stderr
    res = cli(bad, "--detect-every", "0")
    assert res.returncode == 2 and "detect_every=0: must be at least 1" in res.stderr


def test_session_growth_compares_minute_two_with_the_last_full_minute():
    from ahjax.session_bench import growth

    def minute(k, chunks, s, rss, lo, p95=None):
        return {"minute": k, "chunks": chunks, "process_s_mean": s, "rss_mb": rss,
                "rss_min_mb": lo, "latency_p95_s": p95}
    rows = [minute(1, 60, 0.9, 3000, 2900), minute(2, 60, 0.5, 3100, 2950),
            minute(3, 60, 0.55, 3400, 3000, 1.4), minute(4, 12, 0.8, 3500, 3490)]
    got = growth({"per_minute": rows})   # minute 4 holds 12 chunks: minute 3 is the last
    assert got["last_minute"] == 3 and got["process_ratio"] == pytest.approx(1.1)
    assert got["rss_growth_mb"] == 300 and got["rss_min_growth_mb"] == 50
    assert got["last_latency_p95_s"] == 1.4
