"""The trainer on tiny stores: a real step, learning, padding, resumption, devices, NaN."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ahjax.core import metrics as metrics_lib
from ahjax.core.data import windows as win
from ahjax.core.train import trainer as T
from baselines.tcn import ConcatTCN, TCNConfig
from test_windows import SPEC, make_store

ROOT = Path(__file__).resolve().parents[1]
CHILD_PATH = os.pathsep.join([str(ROOT), str(ROOT / "tests")])   # child scripts import test_windows
WCFG = win.WindowConfig(window=16, hop=8, batch_size=4, seed=0)
TCFG = T.TrainConfig(epochs=3, lr=0.05, progress=False, log_every=3)
RESUME_CFG = dataclasses.replace(TCFG, checkpoint_every=4)


def tiny_model(dims, rngs):
    return ConcatTCN(dims, TCNConfig(video=(8, 8), text=(4,), dropout=0.1), rngs=rngs)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    make_store(root, lengths=(50, 40, 60, 30), learnable=True)
    return make_store(root, lengths=(45, 35), split="val", seed=3, learnable=True)


@pytest.fixture(scope="module")
def full_run(store, tmp_path_factory):
    """One uninterrupted 3-epoch run (with mid-epoch checkpoints), shared by two tests."""
    workdir = tmp_path_factory.mktemp("full")
    return T.train(tiny_model, store, SPEC, WCFG, RESUME_CFG, workdir), workdir


def test_masked_cross_entropy_ignores_masked_frames():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 6, 2)), jnp.float32)
    labels = jnp.asarray([[0, 1, 1, -1, -1, -1], [1, 0, -1, 0, -1, -1]])
    mask = (labels >= 0).astype(jnp.float32)
    loss, n = T.masked_cross_entropy(logits, labels, mask)
    keep = np.asarray(mask) > 0
    ref = optax.softmax_cross_entropy_with_integer_labels(logits[keep], labels[keep]).mean()
    assert int(n) == 6
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    garbage = logits.at[~keep].set(1e4)
    np.testing.assert_allclose(T.masked_cross_entropy(garbage, labels, mask)[0], loss, rtol=1e-6)


def test_one_train_step_updates_state(store):
    ws = win.make_windows(store, SPEC, "train", WCFG)
    batch = next(win.WindowLoader(ws, WCFG).iterator())
    model = tiny_model(ws.dims, nnx.Rngs(params=0, dropout=1))
    opt = nnx.Optimizer(model, T.make_optimizer(TCFG, 10), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))
    mesh = T.make_mesh(1)
    step = T.make_train_step(graphdef, tuple(SPEC), TCFG, mesh)
    before = jax.tree.map(np.array, nnx.to_pure_dict(state.split(nnx.Param, ...)[0]))
    new, m = step(state, T._put(batch, (*SPEC, "labels", "mask"), mesh), jax.random.key(0))
    after = nnx.to_pure_dict(new.split(nnx.Param, ...)[0])
    assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0
    assert int(m["frames"]) == int(batch["mask"].sum())
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), before, after))
    assert all(changed)
    _, opt2 = nnx.merge(graphdef, new)
    assert int(opt2.step[...]) == 1


def test_training_learns_and_writes_metrics(store, full_run):
    res, workdir = full_run
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0]
    assert res.best_val["AP"] > 0.8 and res.best_epoch in (0, 1, 2)
    assert res.best_val["AP"] == max(h["val"]["AP"] for h in res.history)
    lines = [json.loads(ln) for ln in (workdir / T.METRICS_FILE).read_text().splitlines()]
    assert [ln["epoch"] for ln in lines if ln["kind"] == "epoch"] == [0, 1, 2]
    assert any(ln["kind"] == "train" for ln in lines)
    # The returned model is the best epoch's: it reproduces the best validation metrics.
    val = win.Windows(store, SPEC, "val", window=16, hop=16, stats=res.stats)
    again, _ = T.evaluate(res.model, val)
    assert again["AP"] == pytest.approx(res.best_val["AP"], abs=1e-9)


def test_padding_is_never_counted(store, tmp_path):
    model = tiny_model({"video": 5, "text": 4}, nnx.Rngs(params=3, dropout=4))
    vids = store.video_ids("val")
    logits = T.predict_videos(model, store, vids, SPEC, 16)
    ws = win.Windows(store, SPEC, "val", window=16, hop=16)
    labels, scores = [], []
    for vi, vid in enumerate(vids):
        n = ws.n_frames[vi]
        assert logits[vid].shape == (n, 2)
        feats = {m: np.concatenate([np.asarray(store.read(vid, a)) for a in names], axis=1)
                 for m, names in SPEC.items()}
        for s in range(0, n, 16):  # the same windows, cut to their real frames, no padding
            out, _ = model({m: jnp.asarray(x[None, s:s + 16]) for m, x in feats.items()},
                           train=False)
            np.testing.assert_allclose(logits[vid][s:s + 16], out[0], atol=1e-5)
            scores.append(np.asarray(out[0]))
        labels.append(ws.labels(vi))
    direct = metrics_lib.bah_metrics(np.concatenate(labels), np.concatenate(scores))
    got, _ = T.evaluate(model, ws)
    assert got["N"] == direct["N"] == sum(int((ws.labels(i) >= 0).sum()) for i in range(2))
    for k in ("AP", "AVGF1", "WAR"):
        assert got[k] == pytest.approx(direct[k], abs=1e-9)
    # Overlapping windows are averaged back to one row per frame.
    over = T.predict_videos(model, store, vids, SPEC, 16, hop=4)
    assert all(over[v].shape == logits[v].shape for v in vids)


def _latest(workdir):
    from ahjax.core.train.checkpoint import Checkpointer
    with Checkpointer(workdir / "checkpoints") as ckpt:
        return ckpt.latest_step()


def _lines(path):
    out = []
    for ln in path.read_text().splitlines():
        rec = json.loads(ln)
        rec.pop("seconds", None)
        out.append(rec)
    return out


class Killed(RuntimeError):
    pass


def _kill_at(k):
    def hook(step):
        if step == k:
            raise Killed(f"simulated kill after step {k}")
    return hook


def test_killed_run_resumes_to_the_same_result(store, full_run, tmp_path):
    full, full_dir = full_run
    # 5 steps an epoch, checkpoints at the end of each epoch and every 4 steps. A kill
    # after step 7 resumes from the epoch-end checkpoint (step 5); a kill after step 9
    # from the mid-epoch one (step 8, batch 3 of epoch 1).
    with pytest.raises(Killed):
        T.train(tiny_model, store, SPEC, WCFG, RESUME_CFG, tmp_path, on_step=_kill_at(7))
    assert _latest(tmp_path) == 5
    with pytest.raises(Killed):
        T.train(tiny_model, store, SPEC, WCFG, RESUME_CFG, tmp_path, on_step=_kill_at(9))
    assert _latest(tmp_path) == 8
    resumed = T.train(tiny_model, store, SPEC, WCFG, RESUME_CFG, tmp_path)
    assert resumed.best_epoch == full.best_epoch
    for a, b in zip(resumed.history, full.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val"]["AP"] == pytest.approx(b["val"]["AP"], abs=1e-6)
    pa = nnx.to_pure_dict(nnx.state(resumed.model, nnx.Not(nnx.RngState)))
    pb = nnx.to_pure_dict(nnx.state(full.model, nnx.Not(nnx.RngState)))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), pa, pb)
    la, lb = _lines(tmp_path / T.METRICS_FILE), _lines(full_dir / T.METRICS_FILE)
    assert [(r["kind"], r["step"]) for r in la] == [(r["kind"], r["step"]) for r in lb]
    for a, b in zip(la, lb):
        assert a["loss" if a["kind"] == "train" else "train_loss"] == pytest.approx(
            b["loss" if b["kind"] == "train" else "train_loss"], abs=1e-6)
    # Running again after completion trains nothing and returns the same best model.
    again = T.train(tiny_model, store, SPEC, WCFG, RESUME_CFG, tmp_path)
    assert again.best_val["AP"] == resumed.best_val["AP"]
    assert len(_lines(tmp_path / T.METRICS_FILE)) == len(la)


def test_resume_keeps_a_best_epoch_from_before_the_kill(store, tmp_path, monkeypatch):
    # Validation scripted to peak after epoch 0: the best checkpoint (step 5) predates the
    # kill, and the resumed run's saves must not evict it (they did when orbax kept the
    # metrics in memory only).
    real = T.evaluate

    def scripted(*args, where="", **kwargs):
        metrics, out = real(*args, where=where, **kwargs)
        if where.startswith("validation after epoch"):
            metrics = dict(metrics, AP={0: 0.9, 1: 0.5, 2: 0.4}[int(where.split()[3])])
        return metrics, out

    monkeypatch.setattr(T, "evaluate", scripted)
    with pytest.raises(Killed):
        T.train(tiny_model, store, SPEC, WCFG, RESUME_CFG, tmp_path, on_step=_kill_at(7))
    resumed = T.train(tiny_model, store, SPEC, WCFG, RESUME_CFG, tmp_path)
    assert resumed.best_epoch == 0 and resumed.best_val["AP"] == 0.9
    assert [r["val"]["AP"] for r in resumed.history] == [0.9, 0.5, 0.4]
    from ahjax.core.train.checkpoint import Checkpointer
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.best_step() == 5 and 5 in ckpt.all_steps()


class NaNModel(nnx.Module):
    def __init__(self, dims, rngs):
        self.head = nnx.Linear(sum(dims.values()), 2, rngs=rngs)

    def __call__(self, inputs, *, train):
        x = jnp.concatenate([inputs[m] for m in sorted(inputs)], axis=-1)
        return self.head(x), {"aux_loss": jnp.log(-jnp.ones(()))}


def test_non_finite_loss_names_step_and_epoch(store, tmp_path):
    raising = dataclasses.replace(TCFG, on_nonfinite="raise")
    with pytest.raises(T.NonFiniteLossError, match=r"step 1 \(epoch 0\)"):
        T.train(NaNModel, store, SPEC, WCFG, raising, tmp_path / "raise")
    # "stop" (the default) with no validated epoch to fall back on says why.
    with pytest.raises(RuntimeError, match=r"no epoch was trained.*step 1 \(epoch 0\)"):
        T.train(NaNModel, store, SPEC, WCFG, TCFG, tmp_path / "stop")
    with pytest.raises(ValueError, match="on_nonfinite"):
        T.train(NaNModel, store, SPEC, WCFG, dataclasses.replace(TCFG, on_nonfinite="skip"),
                tmp_path / "bad")


def test_debug_mode_stops_at_the_first_non_finite_step(store, tmp_path):
    """``TrainConfig.debug``: chex checks every step's metrics on the host, so the NaN is
    caught at step 1 by an assertion naming the leaf, before any logging or checkpoint."""
    with pytest.raises(AssertionError, match="finite"):
        T.train(NaNModel, store, SPEC, WCFG, dataclasses.replace(TCFG, debug=True),
                tmp_path / "debug")
    assert not (tmp_path / "debug" / "checkpoints").exists() or not any(
        (tmp_path / "debug" / "checkpoints").iterdir())


class LateNaNModel(nnx.Module):
    """Finite while training; its eval outputs turn NaN after ``limit`` training calls."""

    def __init__(self, dims, rngs, limit):
        self.head = nnx.Linear(sum(dims.values()), 2, rngs=rngs)
        self.calls = nnx.BatchStat(jnp.zeros(()))
        self.limit = limit

    def __call__(self, inputs, *, train):
        logits = self.head(jnp.concatenate([inputs[m] for m in sorted(inputs)], axis=-1))
        if train:
            self.calls.value = self.calls.value + 1
            return logits, {}
        return jnp.where(self.calls.value > self.limit, jnp.nan, logits), {}


def test_nan_validation_outputs_stop_at_the_best_earlier_epoch(store, tmp_path):
    per_epoch = win.WindowLoader(win.make_windows(store, SPEC, "train", WCFG), WCFG).num_batches(0)
    build = lambda dims, rngs: LateNaNModel(dims, rngs, limit=per_epoch)   # NaN from epoch 1
    res = T.train(build, store, SPEC, WCFG, TCFG, tmp_path / "stop")
    assert res.best_epoch == 0 and len(res.history) == 1
    assert "validation after epoch 1" in res.diverged and "NaN or inf" in res.diverged
    logs = [json.loads(l) for l in (tmp_path / "stop" / T.METRICS_FILE).read_text().splitlines()]
    assert logs[-1]["kind"] == "diverged"
    assert float(res.model.calls.value) == per_epoch      # the parameters of epoch 0
    with pytest.raises(T.NonFiniteLossError, match="validation after epoch 1"):
        T.train(build, store, SPEC, WCFG, dataclasses.replace(TCFG, on_nonfinite="raise"),
                tmp_path / "raise")


def test_checkpointer_best_step_is_one_it_kept(tmp_path):
    from ahjax.core.train.checkpoint import Checkpointer
    state = {"w": jnp.zeros(3)}
    with Checkpointer(tmp_path / "c", keep=1, keep_best=1) as ckpt:
        assert ckpt.best_step() is None
        ckpt.save(1, state, {}, {"val_AP": 0.4})
        ckpt.save(2, state, {}, {"val_AP": 0.7})
        ckpt.save(3, state, {}, None)                    # mid-epoch: no metrics
        ckpt.save(4, state, {}, {"val_AP": 0.7})         # ties the best: the later wins
        ckpt.save(5, state, {}, {"val_AP": 0.1})
        assert ckpt.best_step() == 4 and 4 in ckpt.all_steps() and 2 not in ckpt.all_steps()
    with Checkpointer(tmp_path / "c", keep=1, keep_best=1) as ckpt:   # reopened, as on resume
        assert ckpt.best_step() == 4
        ckpt.save(6, state, {}, {"val_AP": 0.2})         # must not evict the earlier best
        assert ckpt.all_steps() == [4, 6] and ckpt.best_step() == 4
    with Checkpointer(tmp_path / "d", keep=3, keep_best=2) as ckpt:   # both tied steps kept
        for step, ap in ((1, 0.7), (2, 0.7), (3, 0.2)):
            ckpt.save(step, state, {}, {"val_AP": ap})
        assert ckpt.best_step() == 2


def test_checkpoint_packs_leaves_and_reads_one_array_per_leaf(tmp_path):
    import orbax.checkpoint as ocp
    from ahjax.core.train.checkpoint import Checkpointer
    state = {"w": jnp.arange(6.0).reshape(2, 3), "opt": {"step": jnp.asarray(3, jnp.uint32),
             "mu": np.ones((4,), np.float32)}, "empty": jnp.zeros((0, 2), jnp.int32)}
    target = jax.tree.map(jnp.zeros_like, state)
    with Checkpointer(tmp_path / "new") as ckpt:
        ckpt.save(1, state, {"epoch": 1}, {"val_AP": 0.5})
    with Checkpointer(tmp_path / "new") as ckpt:  # a fresh manager, as on resume
        got, meta = ckpt.restore(1, target)
        assert meta == {"epoch": 1}
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state)):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        with pytest.raises(ValueError, match=r"\['w'\] \[2, 3\] float32 saved vs \['w'\] \[3, 2\]"):
            ckpt.restore(1, dict(target, w=jnp.zeros((3, 2))))
    # Checkpoints written one array per leaf (before packing) still restore.
    old = ocp.CheckpointManager(tmp_path / "old", item_names=("state", "meta"),
                                options=ocp.CheckpointManagerOptions(create=True))
    state.pop("empty")  # orbax cannot store zero-size arrays one per leaf
    target.pop("empty")
    old.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave({"epoch": 2})))
    old.wait_until_finished()
    old.close()
    with Checkpointer(tmp_path / "old") as ckpt:
        got, meta = ckpt.restore(None, target)
    assert meta == {"epoch": 2} and np.array_equal(got["w"], state["w"])


def test_train_or_reuse_reuses_only_identical_trainings(store, full_run, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = dataclasses.replace(TCFG, epochs=2)
    describe = {"method": "tiny"}
    first = T.train_or_reuse(tiny_model, store, SPEC, WCFG, cfg, tmp_path / "a",
                             describe=describe, cache_dir=cache)
    assert first.reused_from is None and len(list(cache.iterdir())) == 1
    again = T.train_or_reuse(tiny_model, store, SPEC, WCFG, cfg, tmp_path / "b",
                             describe=describe, cache_dir=cache)
    assert again.reused_from is not None and not (tmp_path / "b" / "checkpoints").exists()
    assert (again.best_epoch, again.best_val, again.history) == (
        first.best_epoch, json.loads(json.dumps(first.best_val)), first.history)
    assert (tmp_path / "b" / T.METRICS_FILE).read_text() == (tmp_path / "a" / T.METRICS_FILE).read_text()
    val = win.Windows(store, SPEC, "val", window=16, hop=16, stats=again.stats)
    np.testing.assert_array_equal(T.predict_windows(again.model, val)[val.video_ids[0]],
                                  T.predict_windows(first.model, val)[val.video_ids[0]])
    # A different recipe, model description or no cache at all trains afresh; with one
    # entry kept per description, the new recipe's entry replaces the first one.
    monkeypatch.setattr(T, "REUSE_KEEP", 1)
    other = T.train_or_reuse(tiny_model, store, SPEC, WCFG, dataclasses.replace(cfg, lr=0.04),
                             tmp_path / "c", describe=describe, cache_dir=cache)
    renamed = T.train_or_reuse(tiny_model, store, SPEC, WCFG, cfg, tmp_path / "d",
                               describe={"method": "other"}, cache_dir=cache)
    off = T.train_or_reuse(tiny_model, store, SPEC, WCFG, cfg, tmp_path / "e",
                           describe=describe, cache_dir=None)
    assert other.reused_from is None and renamed.reused_from is None and off.reused_from is None
    assert len(list(cache.iterdir())) == 2 and not again.reused_from.exists()


def test_training_key_follows_the_features(tmp_path):
    model = tiny_model({"video": 5, "text": 4}, nnx.Rngs(0))
    keys = []
    for labels_flip in (False, False, True):
        store = make_store(tmp_path / f"s{len(keys)}", lengths=(20, 12))
        if labels_flip:  # one changed label of one training video
            labels = np.array(store.read("vtrain0", "labels"))
            labels[0] = 1 - labels[0]
            np.save(store.path("vtrain0") / "labels.npy", labels)
        keys.append(T.training_key(store, SPEC, WCFG, TCFG, {"m": 1}, ["train"], model))
    assert keys[0] == keys[1] != keys[2]


MULTI = textwrap.dedent("""
    import json
    import jax, numpy as np
    from flax import nnx
    from ahjax.core.data import windows as win
    from ahjax.core.train import trainer as T
    from test_windows import SPEC, make_store
    from test_trainer import tiny_model
    assert jax.device_count() == 4, jax.devices()
    root = {root!r}
    make_store(root + "/s", lengths=(50, 40, 60, 30), learnable=True)
    store = make_store(root + "/s", lengths=(45, 35), split="val", seed=3, learnable=True)
    out = {{}}
    for n in (1, 4):
        cfg = T.TrainConfig(epochs=1, lr=0.05, progress=False, num_devices=n)
        res = T.train(tiny_model, store, SPEC, win.WindowConfig(window=16, hop=8, batch_size=4),
                      cfg, root + f"/w{{n}}")
        out[n] = (res, nnx.to_pure_dict(nnx.state(res.model, nnx.Param)))
    diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                                            out[1][1], out[4][1])))
    print(json.dumps({{"param_diff": diff,
                      "loss": [[h["train_loss"] for h in out[n][0].history] for n in (1, 4)],
                      "ap": [out[n][0].best_val["AP"] for n in (1, 4)]}}))
""")


@pytest.mark.slow
def test_four_devices_match_one(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=CHILD_PATH)
    code = MULTI.format(root=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["param_diff"] < 1e-4
    np.testing.assert_allclose(got["loss"][0], got["loss"][1], atol=1e-5)
    assert got["ap"][0] == pytest.approx(got["ap"][1], abs=1e-4)


ENGINE_MULTI = textwrap.dedent("""
    import json
    import jax, numpy as np
    from flax import nnx
    from baselines import adapt as A, backbones as bb, face_pretrain as fp
    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=96) > 0).astype(np.int32)
    source = A.Domain.from_arrays({"x": x}, y)
    images = [{"image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
               "label": np.int32(i % 2)} for i in range(16)]
    diffs, losses = {}, {}
    for name in ("adapt", "image"):
        params = {}
        for n in (1, 4):
            if name == "adapt":
                # SGD: Adam would turn the float noise in gradients that are exactly zero in
                # exact arithmetic (a Linear bias before BatchNorm) into full-size steps.
                cfg = A.AdaptConfig(batch_size=16, source_epochs=2, num_devices=n,
                                    optimizer="sgd", lr=0.05)
                model, hist = A.fit(A.SourceTraining(cfg), A.make_net(source.dims, cfg, 0),
                                    None, source, None, jax.random.key(0))
            else:
                cfg = fp.ImageTrainConfig(image_size=32, batch_size=8, epochs=2,
                                          optim=fp.TrainConfig(optimizer="adam", lr=3e-3,
                                                               weight_decay=0.0, num_devices=n))
                model = bb.build_backbone("resnet18", 2, rngs=nnx.Rngs(0), **bb.TINY["resnet18"])
                hist = fp.fit(model, images, cfg, None, log=lambda _: None)
            params[n] = nnx.to_pure_dict(nnx.state(model, nnx.Param))
            losses.setdefault(name, []).append([h["loss"] for h in hist])
        diffs[name] = max(jax.tree.leaves(jax.tree.map(
            lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), params[1], params[4])))
    print(json.dumps({"param_diff": diffs, "loss": losses}))
""")


@pytest.mark.slow
def test_adaptation_and_image_training_on_four_devices_match_one():
    # The engine's data parallelism: the same training on 1 and 4 devices (batches split,
    # parameters replicated, BatchNorm over the global batch) ends with the same weights.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", ENGINE_MULTI], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("adapt", "image"):
        assert got["param_diff"][name] < 1e-4, (name, got)
        np.testing.assert_allclose(got["loss"][name][0], got["loss"][name][1], rtol=1e-4)


PROCESS = textwrap.dedent("""
    import json, sys
    pid, nproc, root = int(sys.argv[1]), int(sys.argv[2]), {root!r}
    from ahjax.core.train import engine
    engine.initialize_distributed({coordinator!r}, nproc, pid)
    import jax, numpy as np
    from flax import nnx
    from ahjax.core.data import windows as win
    from ahjax.core.data.store import FeatureStore
    from ahjax.core.train import trainer as T
    from test_trainer import tiny_model
    from test_windows import SPEC
    cfg = T.TrainConfig(epochs=2, lr=0.05, progress=False)
    res = T.train(tiny_model, FeatureStore(root + "/s"), SPEC,
                  win.WindowConfig(window=16, hop=8, batch_size=4), cfg, root + f"/w{{nproc}}")
    params = nnx.to_pure_dict(engine.local_copy(nnx.state(res.model, nnx.Param)))
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
    np.save(root + f"/params_{{nproc}}_{{pid}}.npy", flat)
    print(json.dumps({{"loss": [h["train_loss"] for h in res.history],
                      "ap": res.best_val["AP"], "devices": jax.device_count()}}))
""")


@pytest.mark.slow
def test_two_processes_on_loopback_train_like_one(tmp_path):
    # Multi-process JAX on CPU: the mesh spans both processes' devices, each process reads
    # only its rows of every batch, only process 0 writes metrics.jsonl; the parameters
    # end as one process's with the same global batch.
    import socket
    from test_windows import make_store
    make_store(str(tmp_path / "s"), lengths=(50, 40, 60, 30), learnable=True)
    make_store(str(tmp_path / "s"), lengths=(45, 35), split="val", seed=3, learnable=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = PROCESS.format(root=str(tmp_path),
                          coordinator=f"127.0.0.1:{port}")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=CHILD_PATH)
    env.pop("XLA_FLAGS", None)
    run = lambda pid, n: subprocess.Popen(  # noqa: E731
        [sys.executable, "-c", code, str(pid), str(n)], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = [run(0, 2), run(1, 2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    single = run(0, 1)
    out1, err1 = single.communicate(timeout=300)
    assert single.returncode == 0, err1[-3000:]
    two = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    one = json.loads(out1.strip().splitlines()[-1])
    assert two[0]["devices"] == 2 and one["devices"] == 1
    np.testing.assert_allclose(two[0]["loss"], one["loss"], rtol=1e-5)
    assert two[0]["ap"] == pytest.approx(one["ap"], abs=1e-5) == two[1]["ap"]
    p1 = np.load(tmp_path / "params_1_0.npy")
    for pid in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"params_2_{pid}.npy"), p1, atol=1e-5)
    assert len((tmp_path / "w2" / "metrics.jsonl").read_text().splitlines()) == \
        len((tmp_path / "w1" / "metrics.jsonl").read_text().splitlines())


def test_concat_tcn_experiment_end_to_end(tmp_path):
    from experiments import concat_tcn
    root = tmp_path / "store"
    make_store(root, lengths=(50, 40, 60, 30), learnable=True)
    make_store(root, lengths=(45, 35), split="val", seed=3, learnable=True)
    make_store(root, lengths=(38,), split="test", seed=4, learnable=True)
    cfg = concat_tcn.get_config(quick=True)
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, store=str(root)), modalities=("video", "text"),
        video_arrays=SPEC["video"], text_arrays=SPEC["text"],
        model=dataclasses.replace(cfg.model, video=(8,), text=(4,)),
        windows=dataclasses.replace(cfg.windows, window=16, hop=8),
        train=dataclasses.replace(cfg.train, epochs=1, lr=0.05))
    out = concat_tcn.run(cfg, tmp_path / "run")
    for split in ("val", "test"):
        row = out[split]["concat_tcn"]
        assert 0.0 <= row["AP"] <= 1.0 and row["N"] > 0
        assert all(isinstance(v, (int, float)) for v in row.values())
    assert out["test"]["concat_tcn"]["N"] == 37  # 38 frames, one unlabelled
    assert (tmp_path / "run" / T.METRICS_FILE).is_file()


def test_progress_bar_names_what_trains(store, tmp_path, capsys):
    T.train(tiny_model, store, SPEC, WCFG, dataclasses.replace(TCFG, epochs=1, progress=True),
            tmp_path / "table2" / "V+A+T")
    assert "training table2/V+A+T epoch 1/1" in capsys.readouterr().err


def test_epoch_loop_hands_back_freed_memory_after_compiling_and_each_epoch(monkeypatch):
    # Once the first step has run (so XLA has compiled and freed its working memory) and
    # after every epoch; the loss of that first step still counts.
    from ahjax.core.train import engine
    if sys.platform == "linux":   # glibc here: the real call goes through
        assert engine.release_freed_memory() is True
    events = []
    monkeypatch.setattr(engine, "release_freed_memory", lambda: events.append("release"))

    def step(batch, epoch):
        events.append(("step", epoch, batch))
        return {"loss": jnp.float32(batch)}

    res = engine.run_epochs(epochs=2, batches=lambda e: [1.0, 3.0, 5.0], step=step)
    assert events == [("step", 0, 1.0), "release", ("step", 0, 3.0), ("step", 0, 5.0), "release",
                      ("step", 1, 1.0), ("step", 1, 3.0), ("step", 1, 5.0), "release"]
    assert [r["loss"] for r in res.history] == [3.0, 3.0]


def test_epochs_without_gain_counts_from_the_first_best():
    hist = [{"val": {"AP": a}} for a in (0.5, 0.7, 0.6, 0.7)] + [{"train_loss": 1.0}]
    assert T.epochs_without_gain(hist) == 2          # the first 0.7 is the best
    assert T.epochs_without_gain(hist[:2]) == 0 and T.epochs_without_gain([]) == 0


def test_early_stopping_on_val_keeps_the_best_epoch(store, tmp_path):
    cfg = dataclasses.replace(TCFG, epochs=12, patience=1)
    res = T.train(tiny_model, store, SPEC, WCFG, cfg, tmp_path / "run")
    n = len(res.history)
    assert n < cfg.epochs, "val AP rose in every one of 12 epochs on this tiny store"
    # It stopped at the first epoch that had `patience` validated epochs without a gain.
    assert T.epochs_without_gain(res.history) == cfg.patience
    assert all(T.epochs_without_gain(res.history[:k]) < cfg.patience for k in range(1, n))
    assert res.best_val["AP"] == max(h["val"]["AP"] for h in res.history)
    lines = [json.loads(ln) for ln in (tmp_path / "run" / T.METRICS_FILE).read_text().splitlines()]
    assert [ln["epoch"] for ln in lines if ln["kind"] == "early_stop"] == [n]
    with pytest.raises(ValueError, match="patience=-1"):
        T.TrainConfig(patience=-1)
