"""End to end on real media: demo tree -> level 1 extraction -> two-level run -> predict.

One small demo tree (4 participants x questions 4 and 7, 6-8 s videos) is generated once
into the ahjax cache and shared by these tests, exactly as the main job would.
"""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ahjax.core.data.bah import load_bah
from ahjax.core.data.store import FeatureStore
from experiments import run as runner
from experiments import two_level
from level1_affect import schema
from level1_affect.dataset import extract_dataset
from level1_affect.extract import ExtractConfig, LabelLengthError, fit_labels
from level1_affect.whisper.transcribe import wer

QUICK = two_level.get_config(quick=True)
# End to end on the demo: minutes on 2 cores; `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_root():
    from level1_affect.dataset import demo_root as make
    return make(QUICK.data)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, demo_root):
    workdir = tmp_path_factory.mktemp("runs")
    results, run_dir = runner.run("two_level", QUICK, workdir)
    return results, run_dir


def test_fit_labels_pads_within_slack_and_names_the_video():
    out = fit_labels(np.array([0, 1, 1], np.int8), 5, slack=3, where="v.mp4")
    np.testing.assert_array_equal(out, [0, 1, 1, -1, -1])
    np.testing.assert_array_equal(fit_labels(None, 2, 3, "v"), [-1, -1])
    with pytest.raises(LabelLengthError, match="v.mp4: 3 frame labels for a video of 10 frames"):
        fit_labels(np.zeros(3, np.int8), 10, slack=3, where="v.mp4")


def test_extraction_is_resumable_and_survives_a_corrupt_video(tmp_path, demo_root):
    root = tmp_path / "bah"
    shutil.copytree(demo_root, root)
    index = load_bah(root)
    val = [r for r in index.videos if r.split == "val"]
    assert len(val) == 2
    # Break one video: the other must still be extracted and the failure reported.
    val[1].video_path.write_bytes(b"\x00not an mp4" * 100)
    cfg = ExtractConfig(voice_embeddings=False, text_embeddings=False, detect_every=2)
    out = tmp_path / "store"
    summary = extract_dataset(root, out, cfg, splits=("val",), progress=False)
    assert summary["done"] == 1 and list(summary["failed"]) == [val[1].video_id]
    assert "MediaError" in summary["failed"][val[1].video_id]
    assert json.loads((out / "failures.json").read_text()) == summary["failed"]

    store = FeatureStore(out)
    vid = val[0].video_id
    meta = store.meta(vid)
    n = meta["n_frames"]
    assert meta["fps"] == 24.0 and meta["split"] == "val" and meta["transcript_source"] == "dataset"
    for name in ("face_present", "face_expr", "face_blend", "face_desc", "voice_mel",
                 "voice_prosody", "text_affect"):
        width = schema.ARRAYS[name][0]
        assert store.read(vid, name).shape == (n, width), name
    labels = np.asarray(store.read(vid, "labels"))
    np.testing.assert_array_equal(labels, val[0].frame_labels[:n])
    # A real face, speech and words were found where the demo put them.
    assert store.read(vid, "face_present").mean() > 0.9
    assert np.asarray(store.read(vid, "voice_prosody"))[:, 4].mean() > 0.3
    assert np.asarray(store.read(vid, "text_affect"))[:, -1].mean() > 0.3

    again = extract_dataset(root, out, cfg, splits=("val",), progress=False)
    assert again["skipped"] == 1 and again["done"] == 0 and len(again["failed"]) == 1
    # An array corrupted after extraction (NaN written over it) is found and re-extracted.
    path = store.path(vid) / "voice_prosody.npy"
    bad = np.load(path)
    bad[:] = np.nan
    np.save(path, bad)
    healed = extract_dataset(root, out, cfg, splits=("val",), progress=False)
    assert list(healed["reextracted"]) == [vid] and "NaN" in healed["reextracted"][vid]
    assert healed["done"] == 1 and np.isfinite(np.asarray(store.read(vid, "voice_prosody"))).all()


def test_videos_in_flight_give_the_arrays_of_one_at_a_time(tmp_path, demo_root, monkeypatch):
    from level1_affect import dataset as dataset_lib
    cfg = ExtractConfig(voice_embeddings=False, text_embeddings=False, detect_every=2)
    stores = {}
    for k in (1, 3):
        monkeypatch.setattr(dataset_lib, "VIDEOS_IN_FLIGHT", k)
        summary = extract_dataset(demo_root, tmp_path / f"store{k}", cfg, splits=("test",),
                                  progress=False)
        assert summary["done"] == 2 and not summary["failed"]
        stores[k] = FeatureStore(tmp_path / f"store{k}")
    one, many = stores[1], stores[3]
    assert one.video_ids() == many.video_ids()
    for vid in one.video_ids():
        assert one.meta(vid)["shapes"] == many.meta(vid)["shapes"]
        for name in one.meta(vid)["shapes"]:
            np.testing.assert_array_equal(np.asarray(one.read(vid, name)),
                                          np.asarray(many.read(vid, name)), err_msg=name)


def test_two_level_quick_run_writes_tables_figures_report(quick_run):
    results, run_dir = quick_run
    for split in ("test", "val"):
        rows = results[split]
        for method in ("two_level", "two_level/no_duration_prior", "two_level/threshold_on_val",
                       "two_level/median_filter", "no_cross_modal", "no_within_modality",
                       "two_level/with_remainder", "concat_tcn", "text_only"):
            assert method in rows, (split, method)
            for metric in ("AVGF1", "AP", "WAR"):
                assert 0.0 <= rows[method][metric] <= 1.0
        assert any(m.startswith("best_fusion") for m in rows)
    # The results contract: two-level rows are means over seeds with their spread.
    test = results["test"]
    for row in ("two_level", "no_cross_modal", "no_within_modality"):
        assert test[row]["n_runs"] == QUICK.seeds and "AP_sd" in test[row] and "AVGF1_sd" in test[row]
        folds = results["test_folds"][row]
        assert folds["n_runs"] == QUICK.folds * QUICK.fold_seeds
    assert test["concat_tcn"]["n_runs"] == 1
    # Faithfulness: the default model has no remainder, so every score is named.
    assert test["two_level"]["named_share"] == pytest.approx(1.0)
    assert test["two_level"]["AP_without_remainder"] == pytest.approx(test["two_level"]["AP"])
    rem = test["two_level/with_remainder"]
    assert 0.0 <= rem["named_share"] and 0.0 <= rem["AP_without_remainder"] <= 1.0
    paired = results["paired_test"]
    assert paired["no_cross_modal - two_level"]["n_runs"] == QUICK.seeds
    # Every participant is tested in exactly one fold.
    tested = [p for f in results["folds"] for p in f["test_participants"]]
    assert len(tested) == len(set(tested)) == 4
    assert set(results["verdict"]) >= {"test: AP above no_cross_modal", "test: AP above concat_tcn"}

    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk["test"]["two_level"]["AP"] == pytest.approx(results["test"]["two_level"]["AP"])
    assert "| two_level |" in (run_dir / "results.md").read_text()
    figures = sorted((run_dir / "plots").glob("*.png"))
    assert 1 <= len(figures) <= QUICK.max_figures
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures) and "http://" not in html
    config = json.loads((run_dir / "config.json").read_text())
    assert config["quick"] is True
    assert config["decode"]["max_duration_s"] == QUICK.decode.max_duration_s
    assert results["duration_prior"]["pos_segments"] > 0
    # Each run chose its readings' hyperparameters on its own val; the deployed decoder
    # is the chosen one of the deployed run.
    chosen = results["decoding_selected_on_val"]
    deployed_run = results["deployed_run"]["run"]
    assert set(chosen["two_level"][deployed_run]) == {"hsmm", "median", "threshold", "video_min_s"}
    assert set(chosen["no_cross_modal"][deployed_run]) == {"hsmm", "video_min_s"}
    deployed = json.loads((run_dir / "deploy" / "level2.json").read_text())
    assert deployed["decode"]["evidence_rate"] == chosen["two_level"][deployed_run]["hsmm"]
    assert deployed["decode"]["evidence_rate"] in QUICK.decode.evidence_rates
    assert deployed["durations"]["max_s"] == QUICK.decode.max_duration_s
    # The live model: trained on the past only, scored beside the offline one, deployed.
    assert test["two_level/causal"]["n_runs"] == QUICK.seeds
    causal = json.loads((run_dir / "deploy_causal" / "level2.json").read_text())
    assert causal["model"]["causal"] is True and deployed["model"]["causal"] is False


def test_predict_one_video_with_and_without_checkpoint(tmp_path, quick_run, demo_root):
    _, run_dir = quick_run
    index = load_bah(demo_root)
    rec = index.split("test")[0]
    out = tmp_path / "pred"
    proc = subprocess.run([sys.executable, "-m", "ahjax", "predict", str(rec.video_path),
                           "--out", str(out), "--checkpoint", str(run_dir)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "tracks.csv") as f:
        rows = list(csv.DictReader(f))
    n = len(rows)
    assert n == len(rec.frame_labels)
    for col in ("frame", "time_s", "face_present", "face_happy", "face_sad", "face_angry",
                "face_surprise", "face_fear", "face_disgust", "face_neutral", "voice_active",
                "voice_pitch_hz", "voice_energy", "text_sentiment", "ah_prob", "ah_decoded",
                "contrib_face_text", "contrib_within_voice", "contrib_remainder"):
        assert col in rows[0], col
    face_rate = np.mean([float(r["face_present"]) for r in rows])
    assert face_rate > 0.9
    probs = np.array([float(r["ah_prob"]) for r in rows])
    assert np.all((probs >= 0) & (probs <= 1))
    transcript = json.loads((out / "transcript.json").read_text())
    assert transcript["language"] == "en"
    words = transcript["words"]
    assert all(w["start"] <= w["end"] for w in words)
    assert all(a["start"] <= b["start"] for a, b in zip(words, words[1:]))
    # The transcript is about what was said (one short sentence: WER is noisy; the
    # corpus-level bound is in test_whisper_on_demo_speech).
    assert wer(rec.transcript, transcript["text"]) < 0.85
    segments = json.loads((out / "segments.json").read_text())
    decoded = np.array([int(float(r["ah_decoded"])) for r in rows])
    assert sum(s["end_frame"] - s["start_frame"] + 1 for s in segments) == decoded.sum()
    assert (out / "ah.png").is_file()
    # Another video into the same folder, without a checkpoint: none of the first run's
    # files stay beside the second's.
    other = index.split("test")[1]
    proc = subprocess.run([sys.executable, "-m", "ahjax", "predict", str(other.video_path),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "tracks.csv",
                                                     "tracks.png", "transcript.json"]
    assert json.loads((out / "summary.json").read_text())["video"] == str(other.video_path)


def test_stream_a_demo_video_in_real_time(tmp_path, quick_run, demo_root):
    """``python -m ahjax stream VIDEO --checkpoint RUN --realtime``: JSON lines on stdout,
    the causal model's A/H, words confirmed as they are heard, predict's files at the end."""
    _, run_dir = quick_run
    assert (run_dir / "deploy_causal" / "level2.json").is_file()
    rec = load_bah(demo_root).split("test")[0]
    out = tmp_path / "live"
    proc = subprocess.run([sys.executable, "-m", "ahjax", "stream", str(rec.video_path),
                           "--checkpoint", str(run_dir), "--realtime", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(lines) >= 3 and lines[-1]["final"] and not any(x["final"] for x in lines[:-1])
    n = len(rec.frame_labels)
    assert lines[-1]["summary"]["frames"] == n
    ends = [x["frames"][1] for x in lines]
    assert ends == sorted(ends) and ends[-1] == n
    for x in lines[:-1]:
        k = x["frames"][1] - x["frames"][0]
        assert len(x["ah_prob"]) == k and all(0 <= p <= 1 for p in x["ah_prob"])
        assert set(x["contributions"]) >= {"face_text", "within_voice", "remainder"}
        assert all(len(v) == k for v in x["contributions"].values())
        assert len(x["tracks"]["face_present"]) == k and x["latency_s"]["median"] >= 0
    s = lines[-1]["summary"]
    assert 0 <= s["latency_median_s"] <= s["latency_p95_s"]
    assert s["wall_s"] >= n / 24.0 * 0.95   # played at its own pace
    words = [w for x in lines for w in x["words"]]
    transcript = json.loads((out / "transcript.json").read_text())
    assert [w["word"] for w in words] == [w["word"] for w in transcript["words"]]
    assert wer(rec.transcript, transcript["text"]) < 0.85
    with open(out / "tracks.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    np.testing.assert_allclose([float(r["ah_prob"]) for r in rows],
                               [p for x in lines for p in x.get("ah_prob", [])], atol=1e-4)
    assert (out / "ah.png").is_file() and (out / "segments.json").is_file()


def test_whisper_on_demo_speech(demo_root):
    """Corpus word error rate of our JAX Whisper over the held-out demo videos."""
    from level1_affect.media import load_audio
    from level1_affect.whisper.transcribe import WhisperJax
    index = load_bah(demo_root)
    from level1_affect.whisper.transcribe import transcribe_speech
    whisper = WhisperJax.load()
    edits = gated_edits = words = 0
    for rec in index.split("val") + index.split("test"):
        n = len(rec.transcript.split())
        audio = load_audio(rec.video_path)
        edits += wer(rec.transcript, whisper.transcribe(audio).text) * n
        gated, _ = transcribe_speech(whisper, audio)
        gated_edits += wer(rec.transcript, gated.text) * n
        words += n
    assert words > 20 and edits / words < 0.3
    # The speech gate (Whisper only where there is speech) costs no accuracy on real speech.
    assert gated_edits / words <= edits / words + 0.02


def test_predict_checks_its_arguments_first_and_fails_in_one_line(tmp_path, demo_root):
    video = load_bah(demo_root).split("test")[0].video_path
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for args, message in (([str(video), "--out", str(a_file)], "is not a folder"),
                          ([str(video), "--out", str(tmp_path / "o"), "--checkpoint",
                            str(not_a_run)], "not a two_level run folder")):
        proc = subprocess.run([sys.executable, "-m", "ahjax", "predict", *args],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1500:]
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
        # Refused before level 1: nothing extracted, nothing written.
        assert not (tmp_path / "o").exists()
    debug = subprocess.run([sys.executable, "-m", "ahjax", "predict", str(video), "--out",
                            str(a_file), "--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_predict_rejects_missing_and_corrupt_video(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"garbage" * 50)
    for path, message in ((tmp_path / "missing.mp4", "no such video file"), (bad, "broken.mp4")):
        proc = subprocess.run([sys.executable, "-m", "ahjax", "predict", str(path), "--out",
                               str(tmp_path / "o")], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "o").exists()      # a failure leaves no half-written folder


def test_readme_python_example_runs(tmp_path, quick_run, demo_root, monkeypatch):
    """The README's Python example, run as written on the quick run and a demo video."""
    import re
    from pathlib import Path
    _, run_dir = quick_run
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"## Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    video = load_bah(demo_root).split("test")[0].video_path
    code = code.replace('"runs/two_level-20261206-081500"', repr(str(run_dir)))
    code = code.replace('"answer.mp4"', repr(str(video)))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert (tmp_path / "answer.png").stat().st_size > 10_000
    n = result.n_frames
    assert set(result.contributions) >= {"face_voice", "face_text", "voice_text", "within_face",
                                         "within_voice", "within_text"}
    assert all(c.shape == (n,) for c in result.contributions.values())
    assert result.prob.shape == (n,) and result.decoded.shape == (n,)
    assert sum(s["end_frame"] - s["start_frame"] + 1 for s in result.segments) == result.decoded.sum()
    rows = result.table()
    assert len(rows) == n and {"ah_prob", "contrib_within_text", "text_change_talk"} <= set(rows[0])
    import ahjax
    assert repr(namespace["model"]).startswith("ahjax.Model(")
    level1 = ahjax.extract(video)
    assert level1.prob is None and set(level1.tracks) == set(result.tracks)


def test_one_data_config_resolves_every_kind_of_data(tmp_path, monkeypatch):
    from level1_affect.dataset import DataConfig, annomi_source, transcript_splits
    # Transcript splits: the flag, else $AHJAX_SPLITS, else the folder beside the repository.
    assert transcript_splits(DataConfig(splits=str(tmp_path))) == tmp_path.resolve()
    monkeypatch.setenv("AHJAX_SPLITS", str(tmp_path / "env"))
    assert transcript_splits(DataConfig()) == (tmp_path / "env").resolve()
    monkeypatch.delenv("AHJAX_SPLITS")
    assert transcript_splits(DataConfig()).parts[-3:] == ("shared", "data", "bah-video-splits")
    # AnnoMI: the bundled copy by default, a folder's full file, a clear error otherwise.
    assert annomi_source(DataConfig()).name.startswith("AnnoMI-full.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no AnnoMI-full.csv or AnnoMI-simple.csv"):
        annomi_source(DataConfig(annomi=str(empty)))
    (tmp_path / "AnnoMI-full.csv").write_text("transcript_id\n")
    assert annomi_source(DataConfig(annomi=str(tmp_path))) == tmp_path / "AnnoMI-full.csv"
    with pytest.raises(ValueError, match="max_eval must be >= 0"):
        DataConfig(max_eval=-1)
    # Every experiment that reads data takes this one config as its ``data``.
    for name in runner.EXPERIMENTS:
        cfg = runner.load(name).get_config(quick=True)
        if hasattr(cfg, "data"):
            assert type(cfg.data) is DataConfig, name
