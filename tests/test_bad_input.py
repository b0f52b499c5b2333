"""Bad input through every command line: one line naming the problem, exit 2, no traceback
(``--debug`` shows it), nothing half-written. Media-level cases (silence, tone, noise,
corrupt and missing videos) are in test_speech_gate.py and test_pipeline.py."""

import subprocess
import sys
from pathlib import Path

import pytest

from bah_fixture import make_bah_fixture

REPO = Path(__file__).parent.parent


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "BAH"
    make_bah_fixture(root, "label_length")
    return root


def test_runner_on_a_malformed_tree_fails_in_one_line_and_marks_the_run(bad_tree, tmp_path):
    res = _run("experiments.run", "two_level", f"--config.data.root={bad_tree}",
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
    debug = _run("experiments.run", "two_level", f"--config.data.root={bad_tree}",
                 "--workdir", tmp_path / "runs2", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_extract_on_a_malformed_tree_fails_in_one_line(bad_tree, tmp_path):
    res = _run("ahjax.extract", "--root", bad_tree, "--out", tmp_path / "store")
    assert res.returncode == 2 and res.stdout == ""
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    assert "split-frames/train.txt:1:" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["--detect-every", "0"], "detect_every=0: must be at least 1"),
    (["--talk-type", "nowhere"], "talk_type='nowhere'"),
])
def test_extract_checks_its_settings_first(bad_tree, tmp_path, args, message):
    res = _run("ahjax.extract", "--root", bad_tree, "--out", tmp_path / "store", *args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("override, message", [
    ("--config.multi.train.epochs=-1", "epochs=-1: must be at least 1"),
    ("--config.extract.detect_every=0", "detect_every=0: must be at least 1"),
    ("--config.baseline_train.optimizer=rmsprop", "optimizer='rmsprop'"),
])
def test_runner_refuses_out_of_range_settings_before_any_work(tmp_path, override, message):
    res = _run("experiments.run", "two_level", override, "--workdir", tmp_path / "runs")
    assert res.returncode == 2 and message in res.stderr, res.stderr[-1500:]
    assert "Traceback" not in res.stderr and not (tmp_path / "runs").exists()


def test_talk_type_on_a_malformed_annomi_fails_in_one_line(tmp_path):
    (tmp_path / "AnnoMI-full.csv").write_text(
        "transcript_id,utterance_id,interlocutor,utterance_text,client_talk_type\n"
        "1,0,client,I will stop.,maybe\n")
    res = _run("experiments.run", "talk_type", f"--config.data.annomi={tmp_path}",
               "--workdir", tmp_path / "runs")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "AnnoMI-full.csv: line 2, column client_talk_type: 'maybe'" in res.stderr
