"""ahjax inside an application: threads sharing a model, damaged checkpoints, speech in
another language, signals, settings and counts (issue #30). Beside test_bad_input.py,
whose helpers these tests share; real media, real models, messages checked."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from conftest import REPO, encode_frames, run_python as _run
from test_bad_input import _write_video

from ahjax.core.config import ConfigError, apply_overrides
from level2_conflict import hsmm
from level2_conflict.model import TwoLevelConfig, TwoLevelModel
from level2_conflict.runtime import DecodeConfig, Durations, save_trained

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A two_level run folder whose deploy/ holds an offline model (random weights)."""
    cfg = TwoLevelConfig(hidden=8, n_blocks=2)
    durations = Durations(hsmm.DurationPrior((2.0, 3.0), (2.0, 0.5), 8.0), [0.8, 0.2])
    run = tmp_path_factory.mktemp("run")
    save_trained(TwoLevelModel(cfg, rngs=nnx.Rngs(0)), cfg, durations, DecodeConfig(),
                 run / "deploy")
    return run


def _speech_video(path, text, voice="en", sr=16000, layout="mono", seconds_pad=0.5):
    """An MP4 of grey frames (no face) and espeak speech at ``sr`` Hz in ``layout``."""
    import av
    import librosa

    from ahjax.core.data.speech import synthesize
    sp = synthesize(text, voice=voice)
    x = librosa.resample(np.asarray(sp.samples, np.float32), orig_sr=sp.sample_rate,
                         target_sr=sr)
    pad = np.zeros(int(seconds_pad * sr), np.float32)
    x = np.concatenate([pad, 0.6 * x, pad])
    fps, n = 12, int(len(x) / sr * 12)
    nch = len(av.AudioLayout(layout).channels)
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = out.add_stream("aac", rate=sr, layout=layout)
        for i in range(n):
            img = np.full((48, 64, 3), 90 + i % 7, np.uint8)
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        for i in range(0, len(x), 1024):
            block = np.repeat(x[None, i:i + 1024], nch, 0).copy()
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = sr, i
            for pkt in aus.encode(frame):
                out.mux(pkt)
        for pkt in aus.encode():
            out.mux(pkt)
    return path


# ------------------------------ 1. threads ---------------------------------------------

def test_overlapping_quiet_blocks_in_threads_give_stderr_back():
    """Thread A silences fd 2, B too, A leaves first, B last: fd 2 reaches the pipe again
    (before the fix B restored the /dev/null it had saved)."""
    code = textwrap.dedent("""
        import os, threading
        from level1_affect.quiet import quiet_native_stderr
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        def a():
            with quiet_native_stderr():
                a_in.set(); b_in.wait()
                os.write(2, b"hidden while silenced\\n")
            a_out.set()
        def b():
            a_in.wait()
            with quiet_native_stderr():
                b_in.set(); a_out.wait()
        ts = [threading.Thread(target=f) for f in (a, b)]
        [t.start() for t in ts]; [t.join() for t in ts]
        os.write(2, b"fd 2 is back\\n")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env=ENV, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "fd 2 is back" in res.stderr and "hidden while silenced" not in res.stderr


@pytest.mark.slow
def test_two_threads_make_the_first_predict_calls_of_a_process(run_dir):
    """Two demo videos predicted at once by one shared Model, as a thread pool would: both
    succeed, match a sequential predict, and stderr still reaches the captured pipe."""
    from ahjax.core.data.bah import load_bah
    from level1_affect.dataset import QUICK_DATA, demo_root
    recs = load_bah(demo_root(QUICK_DATA)).split("test")[:2]
    code = textwrap.dedent("""
        import json, os, sys, threading, warnings
        import ahjax
        model = ahjax.load(sys.argv[1])
        out, errors = {}, []
        def go(video):
            try:
                r = model.predict(video)
                out[video] = {"n": r.n_frames, "words": len(r.transcript["words"]),
                              "prob": r.prob.tolist()}
            except BaseException as err:
                errors.append(f"{type(err).__name__}: {err}")
        ts = [threading.Thread(target=go, args=(v,)) for v in sys.argv[2:]]
        [t.start() for t in ts]; [t.join() for t in ts]
        again = model.predict(sys.argv[2]).prob.tolist()
        print(json.dumps({"out": out, "errors": errors, "again": again}))
        os.write(2, b"fd 2 after the threads\\n")
        warnings.warn("a Python warning after the threads")
    """)
    res = subprocess.run([sys.executable, "-c", code, str(run_dir),
                          *[str(r.video_path) for r in recs]], capture_output=True,
                         text=True, cwd=REPO, env=ENV, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["errors"] == []
    first = str(recs[0].video_path)
    assert set(got["out"]) == {str(r.video_path) for r in recs}
    for rec in recs:
        o = got["out"][str(rec.video_path)]
        assert o["n"] == len(rec.frame_labels) and o["words"] > 0
    np.testing.assert_allclose(got["out"][first]["prob"], got["again"], atol=1e-5)
    assert "fd 2 after the threads" in res.stderr
    assert "a Python warning after the threads" in res.stderr


# ------------------------------ 2. damaged checkpoints ---------------------------------

def _damage(folder: Path, how: str) -> str:
    """Damage a copy of a deploy folder ``how``; returns what the error must name."""
    params = sorted(p for p in (folder / "params").rglob("*") if p.is_file())
    biggest = max(params, key=lambda p: p.stat().st_size)
    level2 = folder / "level2.json"
    saved = json.loads(level2.read_text())
    if how == "truncated":
        biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
        return f"{biggest.name}: "
    if how == "replaced":
        biggest.write_bytes(os.urandom(biggest.stat().st_size))
        return "contents changed since it was saved"
    if how == "deleted":
        biggest.unlink()
        return f"{biggest.name}: missing"
    if how == "wrong_type":
        saved["model"]["hidden"] = "eight"
        level2.write_text(json.dumps(saved))
        return "level2.json: model.hidden: expected an int, got 'eight'"
    if how == "unknown_key":
        saved["decode"]["treshold"] = 0.5
        level2.write_text(json.dumps(saved))
        return "level2.json: decode.treshold: unknown key"
    if how == "malformed":
        level2.write_text(level2.read_text()[:-40])
        return "level2.json: malformed JSON at line"
    if how == "nan":
        saved["decode"]["threshold"] = float("nan")
        level2.write_text(json.dumps(saved))
        return "level2.json: decode.threshold=nan: must be a finite number"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "replaced", "deleted", "wrong_type",
                                 "unknown_key", "malformed", "nan"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(run_dir, tmp_path, how):
    import shutil

    import ahjax
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert (copy / "deploy" / "manifest.json").is_file()
    ahjax.load(copy)                                    # intact: loads
    message = _damage(copy / "deploy", how)
    with pytest.raises(ValueError) as err:
        ahjax.load(copy)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(copy / "deploy") in str(err.value)


@pytest.mark.parametrize("how", ["truncated", "replaced", "nan"])
def test_predict_with_a_damaged_checkpoint_fails_in_one_line(run_dir, tmp_path, how):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    message = _damage(copy / "deploy", how)
    video = _write_video(tmp_path / "v.mp4", np.arange(6) / 12.0)
    res = _run("ahjax", "predict", video, "--out", tmp_path / "out", "--checkpoint", copy)
    assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "Event loop" not in res.stderr and not (tmp_path / "out").exists()


# ------------------------------ 3. language --------------------------------------------

@pytest.fixture(scope="module")
def french_video(tmp_path_factory):
    return _speech_video(tmp_path_factory.mktemp("fr") / "fr.mp4",
                         "Je voudrais arrêter de fumer, mais honnêtement cela me détend "
                         "beaucoup le soir.", voice="fr")


def _word_present(result):
    from level1_affect import schema
    return result.arrays["text_affect"][:, schema.TEXT_AFFECT.index("word_present")]


@pytest.mark.slow
def test_french_speech_is_transcribed_but_not_read_as_english(french_video, tmp_path):
    """Detected (``--language auto``) or forced French: a French transcript, a warning in
    transcript.json and on stderr, and the text tracks absent (word_present 0)."""
    import ahjax
    from level1_affect.extract import ExtractConfig
    forced = ahjax.extract(french_video, ExtractConfig(asr="always", language="fr",
                                                       voice_embeddings=False))
    assert forced.transcript["language"] == "fr" and forced.transcript["words"]
    assert any("language 'fr' (set by language=)" in w for w in forced.warnings)
    assert _word_present(forced).max() == 0 and not forced.arrays["text_emb"].any()
    res = _run("ahjax", "predict", french_video, "--out", tmp_path / "out", "--language", "auto")
    assert res.returncode == 0, res.stderr[-2000:]
    transcript = json.loads((tmp_path / "out" / "transcript.json").read_text())
    assert transcript["language"] == "fr" and transcript["words"]
    assert any("text evidence is not used" in w for w in transcript["warnings"])
    assert "warning: speech in language 'fr' (detected)" in res.stderr


@pytest.mark.slow
def test_english_at_8_khz_stereo_is_read_as_english_by_default(tmp_path):
    import ahjax
    from level1_affect.extract import ExtractConfig
    video = _speech_video(tmp_path / "phone.mp4", "I want to cut down on drinking, but "
                          "honestly it helps me relax after work.", sr=8000, layout="stereo")
    result = ahjax.extract(video, ExtractConfig(asr="always",
                                                voice_embeddings=False))
    assert result.transcript["language"] == "en"
    assert {"drinking", "relax"} & {w["word"].strip(" ,.").lower()
                                    for w in result.transcript["words"]}
    assert _word_present(result).max() == 1
    assert not any("language" in w for w in result.warnings)


def test_a_language_setting_is_checked():
    from level1_affect.extract import ExtractConfig
    with pytest.raises(ValueError, match="language='French': 'auto' or a language code"):
        ExtractConfig(language="French")


# ------------------------------ 4. signals and settings --------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_predict_ends_in_one_line_and_leaves_nothing(tmp_path, sig, code):
    video = _write_video(tmp_path / "v.mp4", np.arange(90) / 30.0)
    proc = subprocess.Popen([sys.executable, "-m", "ahjax", "predict", str(video), "--out",
                             str(tmp_path / "out")], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Wait (as long as it takes) for the temporary folder predict writes into.
    deadline = time.monotonic() + 300
    while not any(p.name.startswith(".out-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-2000:]
    assert err.strip().splitlines()[-1] == f"error: interrupted by {signal.Signals(sig).name}"
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_non_finite_settings_are_refused():
    from experiments import two_level
    cfg = two_level.get_config(quick=True)
    for raw in ("1e999", "-1e999"):
        with pytest.raises(ConfigError, match=r"multi.train.lr=-?inf: must be a finite number"):
            apply_overrides(cfg, [f"--config.multi.train.lr={raw}"])
    with pytest.raises(ConfigError, match="expected a float, got 'nan'"):
        apply_overrides(cfg, ["--config.multi.train.lr=nan"])
    assert apply_overrides(cfg, ["--config.multi.train.lr=1e-3"]).multi.train.lr == 1e-3


def test_an_empty_split_warns_in_inspect_and_extract(tmp_path, capsys):
    from bah_fixture import make_bah_fixture
    from level1_affect.dataset import dataset_records
    root = tmp_path / "BAH"
    make_bah_fixture(root)
    (root / "split" / "val.txt").write_text("")
    res = _run("ahjax", "inspect", root)
    assert res.returncode == 0
    assert f"warning: {root / 'split' / 'val.txt'}: lists no video (an empty split)" in res.stderr
    dataset_records(root)
    assert "val.txt: lists no video (an empty split)" in capsys.readouterr().err


def test_extract_over_many_unreadable_files_summarises_and_exits_non_zero(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(300):
        (folder / f"bad{i:03d}.mp4").write_bytes(b"not a video" * (i + 1))
    _write_video(folder / "good.mp4", np.arange(12) / 12.0)
    store = tmp_path / "store"
    res = _run("ahjax", "extract", "--root", folder, "--out", store, "--talk-type", "lexicon")
    assert res.returncode == 1, res.stderr[-2000:]
    # Five failures named, then a count (the progress bar's redraws are not lines: they
    # end in a carriage return, which text mode reads as a newline).
    lines = [x for x in res.stderr.splitlines()
             if x.strip() and not x.startswith(("extracting level 1", "loading the level-1",
                                                "level-1 models loaded"))]
    assert len(lines) == 7 and res.stderr.count("failed: bad") == 5, lines
    assert "Traceback" not in res.stderr
    assert f"300 of 301 videos failed; every one with its error: {store / 'failures.json'}" \
        in res.stderr
    summary = json.loads(res.stdout)
    assert summary["failed"] == 300 and summary["done"] == 1
    assert len(json.loads((store / "failures.json").read_text())) == 300
    assert (store / "good").is_dir() or any("good" in p.name for p in store.rglob("*"))


# ------------------------------ 5. smaller ---------------------------------------------

def test_no_face_in_the_whole_video_is_said(tmp_path):
    import ahjax
    from level1_affect.extract import ExtractConfig
    video = _write_video(tmp_path / "wall.mp4", np.arange(12) / 12.0)
    result = ahjax.extract(video, ExtractConfig(voice_embeddings=False, talk_type="lexicon"))
    assert any(w.startswith("no face detected in the whole video") for w in result.warnings)


def test_a_constant_rate_avi_is_constant_rate(tmp_path):
    import av

    from level1_affect.extract import ExtractConfig, Extractor
    from level1_affect.media import is_variable_rate
    path = tmp_path / "cfr.avi"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25, options={"bf": "2"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        encode_frames(out, stream, [np.full((48, 64, 3), i * 5, np.uint8) for i in range(50)])
    cfg = ExtractConfig(face=False, voice=False, text=False, asr="never")
    _, info = Extractor(cfg).video(path)
    assert info["n_frames"] == 50 and not any("variable" in w for w in info["warnings"])
    # Equal intervals are a constant rate even when the header's mean rate is slightly off
    # them (20 s at 30 fps read with 29.97 strays by more than half a frame at the end).
    assert not is_variable_rate(np.arange(600) / 30.0, 29.97)


def test_speech_has_one_level_in_mono_stereo_and_six_channels(tmp_path):
    from level1_affect.media import load_audio
    text = "I want to cut down on drinking, but it helps me relax."
    db = {}
    for layout in ("mono", "stereo", "5.1"):
        audio = load_audio(_speech_video(tmp_path / f"{layout}.mp4", text, layout=layout,
                                         sr=22050))
        db[layout] = 20 * np.log10(np.sqrt(np.mean(audio ** 2)))
    assert abs(db["stereo"] - db["mono"]) < 0.5 and abs(db["5.1"] - db["mono"]) < 0.5, db


def test_out_with_dot_dot_and_a_failed_write_name_out(tmp_path):
    video = _write_video(tmp_path / "v.mp4", np.arange(6) / 12.0)
    res = _run("ahjax", "predict", video, "--out", tmp_path / "a" / ".." / "b")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "b" / "tracks.csv").is_file() and not (tmp_path / "a").exists()
    # Files may not grow past 4 KB (as on a full disk): the figure cannot be written.
    limit = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, "
             "signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
             "from ahjax.cli import main; sys.exit(main(['predict'] + sys.argv[1:]))")
    out = tmp_path / "full"
    res = subprocess.run([sys.executable, "-c", limit, str(video), "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**ENV, "AHJAX_JAX_CACHE": "0"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.startswith(f"error: {out}: cannot write the output (File too large)")
    assert ".full-" not in res.stderr and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "v.mp4"]


def test_stream_says_why_the_model_is_not_causal(run_dir, tmp_path):
    """deploy_causal/ holding an offline model is not called missing."""
    import shutil

    from ahjax import streaming as live_stream
    run = tmp_path / "run"
    shutil.copytree(run_dir / "deploy", run / "deploy_causal")
    video = _write_video(tmp_path / "v.mp4", np.arange(12) / 12.0)
    chunks = list(live_stream.stream(video, run, live_stream.StreamConfig(asr=False)))
    warnings = chunks[-1]["summary"]["warnings"]
    assert any("not causal (its deploy_causal/ holds an offline model)" in w for w in warnings)
    assert not any("no deploy_causal/" in w for w in warnings)
