"""Bad input through every command line: one line naming the problem, exit 2, no traceback
(``--debug`` shows it), nothing half-written. Media-level cases (silence, tone, noise,
corrupt and missing videos) are in test_speech_gate.py and test_pipeline.py."""

import pytest

from bah_fixture import make_bah_fixture
from conftest import encode_frames


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "BAH"
    make_bah_fixture(root, "label_length")
    return root


@pytest.mark.slow
def test_runner_on_a_malformed_tree_fails_in_one_line_and_marks_the_run(run_module, bad_tree,
                                                                        tmp_path):
    res = run_module("experiments.run", "two_level", f"--config.data.root={bad_tree}",
               "--workdir", tmp_path / "runs")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    first = res.stderr.strip().splitlines()[0]
    assert first.startswith("error: ") and "split-frames/train.txt:1:" in first
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "marked failed" in res.stderr and str(run_dir) in res.stderr
    failed = (run_dir / "FAILED.txt").read_text()
    assert failed.startswith("BahFormatError: ") and "Traceback" in failed
    assert not (run_dir / "results.json").exists()
    debug = run_module("experiments.run", "two_level", f"--config.data.root={bad_tree}",
                 "--workdir", tmp_path / "runs2", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_extract_on_a_malformed_tree_fails_in_one_line(run_module, bad_tree, tmp_path):
    res = run_module("ahjax", "extract", "--root", bad_tree, "--out", tmp_path / "store")
    assert res.returncode == 2 and res.stdout == ""
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    assert "split-frames/train.txt:1:" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["--detect-every", "0"], "detect_every=0: must be at least 1"),
    (["--talk-type", "nowhere"], "talk_type='nowhere'"),
])
def test_extract_checks_its_settings_first(run_module, bad_tree, tmp_path, args, message):
    res = run_module("ahjax", "extract", "--root", bad_tree, "--out", tmp_path / "store", *args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("override, message", [
    ("--config.multi.train.epochs=-1", "epochs=-1: must be at least 1"),
    ("--config.extract.detect_every=0", "detect_every=0: must be at least 1"),
    ("--config.baseline_train.optimizer=rmsprop", "optimizer='rmsprop'"),
    ("--config.multi.train.lr=1e999", "multi.train.lr=inf: must be a finite number"),
])
@pytest.mark.slow
def test_runner_refuses_out_of_range_settings_before_any_work(run_module, tmp_path, override,
                                                              message):
    res = run_module("experiments.run", "two_level", override, "--workdir", tmp_path / "runs")
    assert res.returncode == 2 and message in res.stderr, res.stderr[-1500:]
    assert "Traceback" not in res.stderr and not (tmp_path / "runs").exists()


def test_talk_type_on_a_malformed_annomi_fails_in_one_line(run_module, tmp_path):
    (tmp_path / "AnnoMI-full.csv").write_text(
        "transcript_id,utterance_id,interlocutor,utterance_text,client_talk_type\n"
        "1,0,client,I will stop.,maybe\n")
    res = run_module("experiments.run", "talk_type", f"--config.data.annomi={tmp_path}",
               "--workdir", tmp_path / "runs")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "AnnoMI-full.csv: line 2, column client_talk_type: 'maybe'" in res.stderr


def _write_video(path, times, size=(64, 48)):
    """An H.264 MP4 whose frames sit at the given presentation times (seconds)."""
    from fractions import Fraction

    import av
    import numpy as np
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        encode_frames(out, stream, [np.full((size[1], size[0], 3), (i * 6) % 255, np.uint8)
                                    for i in range(len(times))], times)
    return path


def test_variable_frame_rate_places_frames_by_presentation_time(tmp_path):
    import numpy as np

    from ahjax.core.data.transcript import Chunk
    from level1_affect import schema
    from level1_affect.extract import ExtractConfig, Extractor
    from level1_affect.media import Video, frame_times, is_variable_rate

    # 20 frames 50 ms apart, then 20 frames 150 ms apart: frame 30 is at 2.45 s, while
    # frame / mean fps would put it near 1.8 s.
    times = np.concatenate([np.arange(20) * 0.05, 0.95 + np.arange(1, 21) * 0.15])
    vfr = _write_video(tmp_path / "vfr.mp4", times)
    got = frame_times(Video(vfr).pts, len(times), 30.0)
    np.testing.assert_allclose(got, times, atol=1.5e-3)
    assert is_variable_rate(got, len(times) / (times[-1] + 0.15))
    cfr = _write_video(tmp_path / "cfr.mp4", np.arange(40) / 30.0)
    assert not is_variable_rate(frame_times(Video(cfr).pts, 40, 30.0), 30.0)

    # A word spoken from 2.3 s to 2.7 s covers exactly the frames shown in that span.
    cfg = ExtractConfig(face=False, voice=False, text_embeddings=False, talk_type="lexicon")
    arrays, info = Extractor(cfg).video(vfr, chunks=[Chunk(2.3, 2.7, "hello")])
    present = arrays["text_affect"][:, schema.TEXT_AFFECT.index("word_present")]
    fps = info["fps"]
    on = np.flatnonzero(present > 0)
    assert len(present) == len(times)
    assert set(on) >= set(np.flatnonzero((times >= 2.3 + 1 / fps) & (times < 2.7 - 1 / fps)))
    assert np.all((times[on] > 2.3 - 1.5 / fps) & (times[on] < 2.7 + 1.5 / fps))
    assert any("variable frame rate" in w for w in info["warnings"])
    np.testing.assert_allclose(info["frame_times"], times, atol=1.5e-3)


@pytest.mark.parametrize("case", ["short_0.2s", "portrait", "60fps", "spaces and ünïcode"])
def test_odd_but_valid_videos_go_through_level_one(tmp_path, case):
    """A 0.2 s clip, a portrait frame, 60 fps and a path with spaces and non-ASCII letters:
    level 1 runs, one row per frame, finite values, a warning for the missing audio."""
    import numpy as np

    import ahjax
    from level1_affect.extract import ExtractConfig
    fps, n, size = 30, 30, (64, 48)
    if case == "short_0.2s":
        n = 6
    elif case == "portrait":
        size = (48, 96)
    elif case == "60fps":
        fps, n = 60, 60
    folder = tmp_path / ("dir with spaces ünïcode" if case.startswith("spaces") else "plain")
    folder.mkdir()
    video = _write_video(folder / f"{case.replace('.', '_')}.mp4", np.arange(n) / fps, size)
    cfg = ExtractConfig(voice_embeddings=False, text_embeddings=False, talk_type="lexicon")
    result = ahjax.extract(video, cfg)
    assert result.n_frames == n and result.fps == pytest.approx(fps, rel=0.02)
    assert all(np.isfinite(a).all() and len(a) == n for a in result.arrays.values())
    assert result.tracks["time_s"][-1] == pytest.approx((n - 1) / fps, abs=2e-3)
    assert any("audio" in w for w in result.warnings)     # no audio track: said, not fatal
    assert any(w.startswith("no face detected in the whole video") for w in result.warnings)
    assert result.transcript["words"] == []


@pytest.mark.parametrize("content", [b"", b"this is a text file, not a video\n" * 20])
def test_zero_byte_and_renamed_text_files_are_refused_in_one_line(run_module, tmp_path, content):
    video = tmp_path / "clip.mp4"
    video.write_bytes(content)
    res = run_module("ahjax", "predict", video, "--out", tmp_path / "out")
    assert res.returncode == 2 and "clip.mp4" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_truncated_video_is_refused_or_read_to_where_it_breaks(run_module, tmp_path):
    import numpy as np
    full = _write_video(tmp_path / "full.mp4", np.arange(60) / 30.0)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    res = run_module("ahjax", "predict", cut, "--out", tmp_path / "out")
    assert res.returncode == 2 and "cut.mp4" in res.stderr and "Traceback" not in res.stderr


def test_extraction_progress_names_the_dataset_and_failures_name_the_video(tmp_path, capsys):
    from level1_affect.dataset import extract_dataset
    from level1_affect.extract import ExtractConfig
    root = tmp_path / "BAH"
    make_bah_fixture(root)            # annotations only: every video file is missing
    summary = extract_dataset(root, tmp_path / "store", ExtractConfig(talk_type="lexicon"))
    out = capsys.readouterr()
    assert "extracting level 1 of BAH" in out.err
    assert summary["failed"] and all("video file not found" in m for m in summary["failed"].values())
    assert "failed: " in out.out + out.err


@pytest.mark.parametrize("args, message", [
    (["--participants", "0"], "--participants must be >= 1"),
    (["--questions", "9"], "--questions in 1..7"),
    ([], "is not empty"),
])
def test_demo_generator_refuses_bad_input_in_one_line(run_module, tmp_path, args, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = run_module("ahjax", "demo", "--out", out, *args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
