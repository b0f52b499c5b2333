"""Many trainings of the two-level model as one vmapped JAX program.

Every run of one model configuration (a seed on the default split, a seed within a
participant fold, ...) is one slice of a stacked parameter tree, and a train step is
``jax.vmap`` of the single-run step: one compiled program trains them all, each on its own
videos, with its own dropout keys, data order and best epoch (docs/two_level.md, "Evidence
over seeds and participants"). Level-2 inputs are computed once per whole video into a
:class:`Bank` (frames end to end), exactly as inference computes them; windows are start
offsets into it. ``train_runs(model_cfg, bank, runs, cfg) -> Trained``;
:func:`make_runs` builds the runs of a split and its participant folds.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from ahjax.core import dropout as dropout_lib, metrics as metrics_lib
from ahjax.core.data.store import FeatureStore
from ahjax.core.data.windows import window_starts
from ahjax.core.train import trainer as trainer_lib
from ahjax.core.train.trainer import (NonFiniteLossError, TrainConfig, make_optimizer,
                                      masked_cross_entropy)
from level2_conflict import features as features_lib, hsmm, model as model_lib
from level2_conflict.features import TRACKS
from level2_conflict.hsmm import DurationPrior
from level2_conflict.model import AFFECT_KEYS, REMAINDER, TwoLevelConfig, TwoLevelModel
from level2_conflict.runtime import padded_length, video_inputs


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one video lies in a :class:`Bank`."""
    offset: int
    n: int
    fps: float
    split: str
    participant: str


@dataclasses.dataclass
class Bank:
    """Level-2 inputs of many videos, frames end to end.

    ``arrays``: name (feature group or ``AFFECT_KEYS`` value, ``fps`` (each frame's video
    frame rate) and ``cues`` when present) -> (T, k) float32; ``valid`` (T,) 1 on real frames; ``labels`` (T,) int (-1 where
    unlabelled or padding); ``slots``: video id -> :class:`Slot`. Each video's block is at
    least ``min_block`` frames (zero-padded), so a window never reads another video.
    """
    arrays: dict
    valid: np.ndarray
    labels: np.ndarray
    slots: dict

    @property
    def has_cues(self) -> bool:
        return "cues" in self.arrays

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the arrays, valid frames, labels and slots (once per bank)."""
        h = hashlib.sha256()
        for name in sorted(self.arrays):
            arr = np.ascontiguousarray(self.arrays[name])
            h.update(f"{name}{arr.shape}{arr.dtype}".encode())
            h.update(memoryview(arr).cast("B"))
        for arr in (self.valid, self.labels):
            h.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
        h.update(repr(sorted((v, dataclasses.astuple(s)) for v, s in self.slots.items())).encode())
        return h.hexdigest()

    @functools.cached_property
    def device(self) -> tuple:
        """``(arrays, valid, labels)`` on the device, put there once per bank."""
        return ({k: jnp.asarray(v) for k, v in self.arrays.items()}, jnp.asarray(self.valid),
                jnp.asarray(self.labels))


def build_bank(store: FeatureStore, video_ids: Sequence[str], *, min_block: int,
               use_cues: bool = False, progress: bool = True, causal: bool = False) -> Bank:
    """A :class:`Bank` of ``video_ids`` from ``store`` (level-1 tracks, labels, meta);
    ``causal``: level-2 inputs from the past only (for causal models)."""
    parts: dict[str, list] = {}
    valid, labels, slots, offset = [], [], {}, 0
    for vid in tqdm(video_ids, desc="level-2 features", disable=not progress, leave=False):
        meta = store.meta(vid)
        n = int(meta["n_frames"])
        store.verify(vid, [k for k in TRACKS if k in meta.get("shapes", {})] + ["labels"])
        tracks = {k: np.asarray(store.read(vid, k), np.float32).reshape(n, -1) for k in TRACKS}
        try:
            arrays = video_inputs(tracks, float(meta["fps"]), causal)
        except ValueError as err:
            raise ValueError(f"{vid}: {err}") from None
        arrays["fps"] = np.full((n, 1), float(meta["fps"]), np.float32)
        if use_cues:
            arrays["cues"] = np.asarray(store.read(vid, "cues"), np.float32).reshape(n, -1)
        block = max(n, min_block)
        for name, arr in arrays.items():
            parts.setdefault(name, []).append(np.pad(arr, ((0, block - n), (0, 0))))
        v = np.zeros(block, np.float32)
        v[:n] = 1.0
        lab = np.full(block, -1, np.int32)
        lab[:n] = np.asarray(store.read(vid, "labels"), np.int32).reshape(-1)[:n]
        valid.append(v)
        labels.append(lab)
        slots[vid] = Slot(offset, n, float(meta["fps"]), str(meta.get("split", "")),
                          str(meta.get("participant", "")))
        offset += block
    return Bank({k: np.concatenate(v) for k, v in parts.items()}, np.concatenate(valid),
                np.concatenate(labels), slots)


@dataclasses.dataclass(frozen=True)
class Run:
    """One training: its seed and its videos (train, val for the best epoch, test)."""
    name: str
    seed: int
    train: tuple
    val: tuple
    test: tuple


def participant_folds(store: FeatureStore, n_folds: int) -> list[dict]:
    """``n_folds`` folds over the store's participants (sorted, dealt round-robin): fold k
    tests its participants, validates on the first participant of fold k+1 and trains on
    the rest. ``[]`` with fewer than 2 folds or ``n_folds + 1`` participants."""
    by_participant: dict = {}
    for vid in store.video_ids():
        by_participant.setdefault(str(store.meta(vid).get("participant", "")), []).append(vid)
    people = sorted(by_participant)
    if n_folds < 2 or len(people) < n_folds + 1:
        return []
    groups = [people[k::n_folds] for k in range(n_folds)]
    folds = []
    for k, test_people in enumerate(groups):
        val_person = groups[(k + 1) % n_folds][0]
        train_people = [p for p in people if p not in test_people and p != val_person]
        folds.append({"participants": test_people, "val_participant": val_person,
                      "test": tuple(v for p in test_people for v in by_participant[p]),
                      "val": tuple(by_participant[val_person]),
                      "train": tuple(v for p in train_people for v in by_participant[p])})
    return folds


def make_runs(store: FeatureStore, seeds: int, folds: int = 0,
              fold_seeds: int = 1) -> tuple[list[Run], list[dict]]:
    """``seeds`` runs on the store's split (``default/seed<s>``) and ``fold_seeds`` in each
    of :func:`participant_folds` (``fold<k>/seed<s>``); returns (runs, folds)."""
    split = {s: tuple(store.video_ids(s)) for s in ("train", "val", "test")}
    runs = [Run(f"default/seed{s}", s, split["train"], split["val"], split["test"])
            for s in range(seeds)]
    fold_list = participant_folds(store, folds) if folds else []
    for k, fold in enumerate(fold_list):
        runs += [Run(f"fold{k}/seed{s}", 1000 * (k + 1) + s, fold["train"], fold["val"],
                     fold["test"]) for s in range(fold_seeds)]
    return runs, fold_list


@dataclasses.dataclass(frozen=True)
class MultiConfig:
    """How the runs are trained (the optimiser is a :class:`TrainConfig`)."""
    # 15 epochs: on the demo the same pooled val AP, within noise, as 25 (0.686 against
    # 0.700 over 13 runs) for 40% less training time.
    train: TrainConfig = TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.0, epochs=15,
                                     clip_norm=1.0)
    window: int = 240
    hop: int = 48
    batch_size: int = 8
    eval_every: int = 1          # epochs between validations (the best epoch is among them)
    progress: bool = True


def _model_inputs(bank_arrays: Mapping, valid, frames, keys) -> dict:
    """Gather ``frames`` (any shape of bank indices) of ``keys`` into model inputs."""
    out = {k: jnp.take(bank_arrays[k], frames, axis=0, mode="clip") for k in keys}
    out["valid"] = jnp.take(valid, frames, axis=0, mode="clip")
    return out


def _input_keys(model: TwoLevelModel, bank: Bank) -> tuple:
    keys = tuple(model.groups) + tuple(AFFECT_KEYS.values())
    return keys + (("cues",) if model.cfg.use_cues and bank.has_cues else ())


class Trained:
    """The runs of one configuration after training (best epoch of each run)."""

    def __init__(self, graphdef, params, rest, runs: Sequence[Run], keys: tuple,
                 history: list, best_epochs: np.ndarray):
        self.graphdef, self.params, self.rest = graphdef, params, rest
        self.runs, self.keys = list(runs), keys
        self.history, self.best_epochs = history, best_epochs

    def model(self, r: int) -> TwoLevelModel:
        """Run ``r`` as an ordinary model (its best epoch's parameters)."""
        take = lambda t: jax.tree.map(lambda x: x[r], t)  # noqa: E731
        return nnx.merge(self.graphdef, take(self.params), take(self.rest))

    def outputs(self, bank: Bank, videos: Sequence[Sequence[str]]) -> list[dict]:
        """Whole-video outputs: ``videos[r]`` are run ``r``'s videos; returns per run
        ``{video: {"prob", "score", "bias", "remainder", "contributions": {group: ...}}}``
        as numpy (n,) arrays (``bias`` a float)."""
        out: list[dict] = [{} for _ in self.runs]
        slots = max((len(v) for v in videos), default=0)
        if slots == 0:
            return out
        length = padded_length(max(bank.slots[v].n for vs in videos for v in vs))
        # (R, J) offsets and lengths; empty slots read nothing (length 0).
        offs = np.zeros((len(self.runs), slots), np.int32)
        lens = np.zeros((len(self.runs), slots), np.int32)
        for r, vs in enumerate(videos):
            for j, v in enumerate(vs):
                offs[r, j], lens[r, j] = bank.slots[v].offset, bank.slots[v].n
        res = jax.device_get(_forward_slots(self.graphdef, self.params, self.rest,
                                            bank.device, offs, lens, length, self.keys))
        for r, vs in enumerate(videos):
            for j, v in enumerate(vs):
                n = lens[r, j]
                out[r][v] = {"prob": res["prob"][r, j, :n], "score": res["score"][r, j, :n],
                             "remainder": res["remainder"][r, j, :n],
                             "bias": float(res["bias"][r]),
                             "contributions": {g: c[r, j, :n]
                                               for g, c in res["contributions"].items()}}
        return out

    def save_history(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(h) + "\n" for h in self.history))


@functools.partial(jax.jit, static_argnames=("graphdef", "length", "keys"))
def _forward_slots(graphdef, params, rest, dbank, offs, lens, length, keys):
    arrays, valid, _ = dbank

    def one(p, s, off, n):   # one run: (J,) offsets -> (J, L) outputs
        t = jnp.arange(length)
        frames = off[:, None] + t[None, :]
        inputs = _model_inputs(arrays, valid, frames, keys)
        inputs["valid"] = inputs["valid"] * (t[None, :] < n[:, None])
        model = nnx.merge(graphdef, p, s)
        logits, aux = model(inputs, train=False)
        prob = jax.nn.sigmoid(aux["score"])
        return {"prob": prob, "score": aux["score"], "remainder": aux["remainder"],
                "bias": aux["bias"], "contributions": aux["contributions"]}

    return jax.vmap(one)(params, rest, offs, lens)


def _windows(bank: Bank, videos: Sequence[str], window: int, hop: int) -> np.ndarray:
    """Bank offsets of the training windows of ``videos``."""
    out = [bank.slots[v].offset + s for v in videos
           for s in window_starts(bank.slots[v].n, window, hop)]
    return np.asarray(out, np.int64)


def _epoch_indices(per_run: Sequence[np.ndarray], seeds: Sequence[int], epoch: int,
                   batch: int) -> np.ndarray:
    """(steps, R, batch) window offsets: each run's own shuffle, cycled to a common length."""
    steps = max(math.ceil(len(w) / batch) for w in per_run)
    out = np.zeros((steps, len(per_run), batch), np.int64)
    for r, (w, seed) in enumerate(zip(per_run, seeds)):
        rng = np.random.default_rng([seed, epoch, 7919])
        need = steps * batch
        order = np.concatenate([rng.permutation(w) for _ in range(-(-need // len(w)))])
        out[:, r, :] = order[:need].reshape(steps, batch)
    return out


def _init(model_cfg: TwoLevelConfig, seeds: Sequence[int]):
    """(graphdef, stacked params, stacked rest) of one model per seed."""
    models = [TwoLevelModel(model_cfg, rngs=nnx.Rngs(int(s))) for s in seeds]
    splits = [nnx.split(m, nnx.Param, ...) for m in models]
    graphdef = splits[0][0]
    stack = lambda i: jax.tree.map(lambda *x: jnp.stack(x), *[s[i] for s in splits])  # noqa
    return graphdef, stack(1), stack(2)


def train_runs(model_cfg: TwoLevelConfig, bank: Bank, runs: Sequence[Run],
               cfg: MultiConfig = MultiConfig(), *, desc: str = "two_level",
               durations: Sequence[DurationPrior] | None = None) -> Trained:
    """Train every run of ``runs`` with ``model_cfg`` as one vmapped program; each run
    samples its own ``train`` windows and keeps its best epoch by val AP. ``durations``:
    each run's duration prior (seconds), needed when ``model_cfg.crf_weight > 0``. Raises
    :class:`NonFiniteLossError` naming the runs whose loss stops being finite."""
    runs = list(runs)
    if not runs:
        raise ValueError("train_runs: no runs")
    crf = None
    if model_cfg.crf_weight > 0:
        if durations is None or len(durations) != len(runs):
            raise ValueError("train_runs: crf_weight > 0 needs one duration prior per run "
                             f"(durations=), got {None if durations is None else len(durations)}"
                             f" for {len(runs)} runs")
        if len({(d.max_s, d.floor) for d in durations}) != 1:
            raise ValueError("train_runs: the runs' duration priors must share max_s and floor")
        crf = {"shape": jnp.asarray([d.shape for d in durations], jnp.float32),
               "scale_s": jnp.asarray([d.scale_s for d in durations], jnp.float32),
               "max_s": float(durations[0].max_s), "floor": float(durations[0].floor)}
    for run in runs:
        if not run.train:
            raise ValueError(f"run {run.name!r} has no training videos")
        missing = [v for v in (*run.train, *run.val, *run.test) if v not in bank.slots]
        if missing:
            raise KeyError(f"run {run.name!r}: videos not in the bank: {missing[:3]}")
    graphdef, params, rest = _init(model_cfg, [r.seed for r in runs])
    keys = _input_keys(nnx.merge(graphdef, jax.tree.map(lambda x: x[0], params),
                                 jax.tree.map(lambda x: x[0], rest)), bank)
    per_run = [_windows(bank, r.train, cfg.window, cfg.hop) for r in runs]
    steps = max(math.ceil(len(w) / cfg.batch_size) for w in per_run)
    tx = make_optimizer(cfg.train, steps * cfg.train.epochs)
    opt_state = jax.vmap(tx.init)(params)
    dbank = bank.device
    epoch_fn = _epoch_fn(graphdef, tx, keys, cfg.window,
                         None if crf is None else (crf["max_s"], crf["floor"]),
                         model_cfg.fps)
    dur_params = ((crf["shape"], crf["scale_s"]) if crf is not None else
                  (jnp.ones((len(runs), 2)), jnp.ones((len(runs), 2))))

    best = (params, rest)
    best_ap = np.full(len(runs), -np.inf)
    best_epochs = np.zeros(len(runs), np.int64)
    history = []
    val_labels = [np.concatenate([bank.labels[bank.slots[v].offset:][:bank.slots[v].n]
                                  for v in r.val]) if r.val else None for r in runs]
    bar = tqdm(range(cfg.train.epochs), desc=f"training {desc} ({len(runs)} runs)",
               disable=not cfg.progress, leave=False)
    for epoch in bar:
        idx = _epoch_indices(per_run, [r.seed for r in runs], epoch, cfg.batch_size)
        params, rest, opt_state, losses = epoch_fn(params, rest, opt_state, dbank, idx,
                                                   dur_params)
        losses = np.asarray(losses)                   # (steps, R)
        bad = [runs[r].name for r in np.flatnonzero(~np.isfinite(losses).all(0))]
        if bad:
            raise NonFiniteLossError(f"{desc}: training loss not finite at epoch {epoch} "
                                     f"in runs {bad[:5]}")
        record = {"epoch": epoch, "loss": [float(x) for x in losses.mean(0)]}
        last = epoch == cfg.train.epochs - 1
        if any(v is not None for v in val_labels) and (epoch % cfg.eval_every == 0 or last):
            trained = Trained(graphdef, params, rest, runs, keys, history, best_epochs)
            outs = trained.outputs(bank, [r.val for r in runs])
            aps = np.full(len(runs), -np.inf)
            for r, run in enumerate(runs):
                if val_labels[r] is not None:
                    p = np.concatenate([outs[r][v]["prob"] for v in run.val])
                    aps[r] = metrics_lib.frame_ap(val_labels[r], p)
            aps = np.nan_to_num(aps, nan=-np.inf)
            better = aps > best_ap
            best_ap = np.where(better, aps, best_ap)
            best_epochs = np.where(better, epoch, best_epochs)
            pick = jnp.asarray(better)
            best = jax.tree.map(
                lambda b, p: jnp.where(pick.reshape((-1,) + (1,) * (p.ndim - 1)), p, b),
                best, (params, rest))
            record["val_AP"] = [float(x) for x in aps]
        elif not any(v is not None for v in val_labels):
            best, best_epochs = (params, rest), np.full(len(runs), epoch)
        history.append(record)
        bar.set_postfix(loss=f"{np.mean(losses):.3f}")
    return Trained(graphdef, best[0], best[1], runs, keys, history, best_epochs)


# Modules whose change changes what a training gives (this one besides): part of every
# cache key. The level-2 code, and the core's that it trains with: the dropout, the
# optimiser and loss (trainer) and the val AP that picks each run's best epoch (metrics).
_KEY_MODULES = (model_lib, features_lib, hsmm, dropout_lib, trainer_lib, metrics_lib)


def training_key(model_cfg: TwoLevelConfig, bank: Bank, runs: Sequence[Run],
                 cfg: MultiConfig, durations: Sequence[DurationPrior] | None = None) -> str:
    """sha256 of everything :func:`train_runs` reads: the configs, the runs, the duration
    priors, the bank's arrays, the level-2 training code, the core code it trains with and
    the libraries' versions."""
    h = hashlib.sha256()
    cfg = dataclasses.replace(cfg, progress=False)
    h.update(repr((model_cfg, cfg, [dataclasses.astuple(r) for r in runs],
                   None if durations is None else list(durations))).encode())
    h.update(bank.digest.encode())
    h.update(trainer_lib.source_digest((sys.modules[__name__], *_KEY_MODULES)).encode())
    h.update(repr(trainer_lib.library_versions()).encode())
    return h.hexdigest()


def train_runs_or_reuse(model_cfg: TwoLevelConfig, bank: Bank, runs: Sequence[Run],
                        cfg: MultiConfig = MultiConfig(), *, cache_dir: str | Path | None,
                        desc: str = "two_level",
                        durations: Sequence[DurationPrior] | None = None
                        ) -> tuple[Trained, Path | None]:
    """:func:`train_runs`, or an identical earlier training read back from ``cache_dir``
    (keyed by :func:`training_key`); returns ``(trained, entry reused or None)``."""
    if cache_dir is None:
        return train_runs(model_cfg, bank, runs, cfg, desc=desc, durations=durations), None
    runs = list(runs)
    entry = Path(cache_dir) / training_key(model_cfg, bank, runs, cfg, durations)
    if (entry / "trained.json").is_file():
        graphdef, params, rest = _init(model_cfg, [r.seed for r in runs])
        like = jax.tree.leaves((params, rest))
        with np.load(entry / "params.npz") as saved:
            leaves = [_from_saved(saved[f"a{i}"], x) for i, x in enumerate(like)]
        params, rest = jax.tree.unflatten(jax.tree.structure((params, rest)), leaves)
        meta = json.loads((entry / "trained.json").read_text())
        keys = _input_keys(nnx.merge(graphdef, jax.tree.map(lambda x: x[0], params),
                                     jax.tree.map(lambda x: x[0], rest)), bank)
        os.utime(entry)
        return Trained(graphdef, params, rest, runs, keys, meta["history"],
                       np.asarray(meta["best_epochs"], np.int64)), entry
    trained = train_runs(model_cfg, bank, runs, cfg, desc=desc, durations=durations)
    entry.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the entry, then renamed: a killed run leaves no half entry.
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    leaves = jax.tree.leaves((trained.params, trained.rest))
    np.savez(tmp / "params.npz", **{f"a{i}": _to_saved(x) for i, x in enumerate(leaves)})
    (tmp / "trained.json").write_text(json.dumps(
        {"desc": desc, "history": trained.history,
         "best_epochs": [int(e) for e in trained.best_epochs]}))
    try:
        os.replace(tmp, entry)
    except OSError:   # the same training stored by another run meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(Path(cache_dir), keep=REUSE_KEEP)
    return trained, None


REUSE_KEEP = 64   # newest cached trainings kept (a default run stores about 7)


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_saved(x) -> np.ndarray:
    return np.asarray(jax.random.key_data(x) if _is_key(x) else x)


def _from_saved(saved: np.ndarray, like):
    return jax.random.wrap_key_data(saved) if _is_key(like) else jnp.asarray(saved)


def _prune(cache_dir: Path, keep: int) -> None:
    entries = sorted((p.parent for p in cache_dir.glob("*/trained.json")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _epoch_fn(graphdef, tx, keys: tuple, window: int, crf: tuple | None = None,
              default_fps: float = 24.0):
    """The jitted epoch: ``lax.scan`` over steps of the vmapped single-run step.
    ``crf``: ``(max_s, floor)`` of the runs' duration priors when the batch must carry
    what the semi-Markov CRF loss needs (labels and per-window duration log-probs)."""

    def loss_fn(model, inputs, labels, mask):
        logits, aux = model(inputs, train=True)
        loss, _ = masked_cross_entropy(logits, labels, mask)
        return loss + aux["aux_loss"] if "aux_loss" in aux else loss

    def run_step(p, s, o, starts, dur_shape, dur_scale, arrays, valid, labels):
        frames = starts[:, None] + jnp.arange(window)[None, :]          # (B, W)
        inputs = _model_inputs(arrays, valid, frames, keys)
        lab = jnp.take(labels, frames, mode="clip")
        mask = (lab >= 0).astype(jnp.float32) * inputs["valid"]
        if crf is not None:
            fps = (jnp.take(arrays["fps"][:, 0], starts, mode="clip") if "fps" in arrays
                   else jnp.full(starts.shape, default_fps, jnp.float32))
            inputs["log_dur"], inputs["log_surv"] = hsmm.duration_log_probs(
                dur_shape, dur_scale, fps, window, max_s=crf[0], floor=crf[1])
            inputs["labels"] = jnp.where(inputs["valid"] > 0, lab, -1)
        # nnx.value_and_grad, so dropout may advance its RNG count inside the trace.
        model = nnx.merge(graphdef, p, s)
        loss, grads = nnx.value_and_grad(loss_fn)(model, inputs, lab, mask)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), nnx.state(model, nnx.Not(nnx.Param)), o, loss

    @jax.jit
    def epoch(params, rest, opt_state, dbank, idx, dur_params):
        arrays, valid, labels = dbank

        def body(carry, starts):
            p, s, o = carry
            p, s, o, loss = jax.vmap(run_step, in_axes=(0, 0, 0, 0, 0, 0, None, None, None))(
                p, s, o, starts, *dur_params, arrays, valid, labels)
            return (p, s, o), loss

        (params, rest, opt_state), losses = jax.lax.scan(body, (params, rest, opt_state), idx)
        return params, rest, opt_state, losses

    return epoch


def named_share(outputs: Mapping[str, Mapping]) -> float:
    """Share of the score that the named contributions carry, over ``outputs``' frames:
    ``mean |sum of named contributions| / mean |score - bias|`` (1.0 without remainder)."""
    named, total = [], []
    for o in outputs.values():
        s = sum(o["contributions"].values(), np.zeros_like(o["score"]))
        named.append(np.abs(s))
        total.append(np.abs(o["score"] - o["bias"]))
    den = float(np.mean(np.concatenate(total))) if total else 0.0
    return float(np.mean(np.concatenate(named)) / den) if den > 0 else 1.0


def without_remainder(outputs: Mapping[str, Mapping]) -> dict[str, np.ndarray]:
    """Frame probabilities with the remainder dropped at inference: sigmoid(score - rem)."""
    return {v: 1.0 / (1.0 + np.exp(-(o["score"] - o["remainder"]))) for v, o in outputs.items()}


__all__ = ["Bank", "MultiConfig", "REMAINDER", "Run", "Slot", "Trained", "build_bank",
           "make_runs", "named_share", "participant_folds", "train_runs", "without_remainder"]
