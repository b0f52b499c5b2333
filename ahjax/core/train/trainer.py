"""The one trainer: frame-level A/H models on windows of a feature store, data-parallel.

A model is any ``nnx.Module`` built by ``model_fn(dims, rngs)`` whose ``__call__(inputs, *,
train)`` maps ``{modality: (B, W, d)}`` to ``(logits (B, W, 2), aux)``. Every epoch ends
with validation, a line in ``metrics.jsonl`` and a checkpoint; a run started again resumes
exactly where it stopped. :func:`train_or_reuse` caches finished trainings. More:
docs/training.md, "The frame-level loop".
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
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Mapping, Sequence

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from ahjax.core import metrics as metrics_lib
from ahjax.core.data import windows as win
from ahjax.core.data.store import FeatureStore
from ahjax.core.train import engine
from ahjax.core.train.checkpoint import Checkpointer, load_params, save_params
from ahjax.core.train.engine import NonFiniteLossError

ModelFn = Callable[[Mapping[str, int], nnx.Rngs], nnx.Module]
METRICS_FILE = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, evaluation and bookkeeping; defaults are the paper's recipe.

    SGD lr 0.008, momentum 0.9, Nesterov, weight decay 1e-4 (added to the gradient before
    momentum, as torch's SGD does), 60 epochs, best epoch by validation AP.
    """
    optimizer: str = "sgd"           # sgd | adam | adamw
    lr: float = 0.008
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    schedule: str = "constant"       # constant | cosine (over all epochs)
    clip_norm: float = 0.0           # global gradient-norm clip; 0 = off
    aux_loss_weight: float = 1.0     # weight of aux["aux_loss"] from the model
    epochs: int = 60
    seed: int = 0                    # parameters, dropout (data order: WindowConfig.seed)
    eval_hop: int = 0                # hop of validation windows; 0 = window (no overlap)
    num_devices: int = 0             # data-parallel devices; 0 = all
    log_every: int = 10              # steps per train line in metrics.jsonl
    checkpoint_every: int = 0        # extra mid-epoch checkpoints every N steps; 0 = off
    keep_checkpoints: int = 2
    progress: bool = True            # tqdm bar
    # Early stopping: end training after this many validated epochs without a higher val
    # AP than the best so far (0 = off: every epoch). The best epoch is kept either way.
    patience: int = 0
    # When the training loss or the validation outputs stop being finite: "stop" ends
    # training there and keeps the best validated epoch before it (TrainResult.diverged says
    # so); "raise" raises NonFiniteLossError.
    on_nonfinite: str = "stop"
    # Debug mode: after every step, check on the host that the parameters and the step's
    # metrics are finite (chex), naming the first bad leaf; slow, for finding a NaN's origin.
    debug: bool = False

    def __post_init__(self):
        # Checked when the config is made (overrides included), not steps into training.
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs}: must be at least 1")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: must be positive")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer={self.optimizer!r}: one of sgd, adam, adamw")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule={self.schedule!r}: one of constant, cosine")
        if self.on_nonfinite not in ("stop", "raise"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'raise', got {self.on_nonfinite!r}")
        if self.patience < 0:
            raise ValueError(f"patience={self.patience}: must be at least 0 (0 = off)")
        if self.num_devices < 0 or self.keep_checkpoints < 1 or self.log_every < 1:
            raise ValueError("num_devices must be >= 0, keep_checkpoints and log_every >= 1")


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns; ``model`` holds the parameters of ``best_epoch``."""
    best_epoch: int
    best_val: dict
    model: nnx.Module
    history: list[dict]
    stats: dict | None
    workdir: Path
    reused_from: Path | None = None   # set by train_or_reuse when nothing was trained
    diverged: str | None = None       # why training stopped early on NaN/inf, else None


# ----------------------------------------------------------------------------------------
# Pieces: mesh, optimiser, loss, steps.

def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D ``data`` mesh over the first ``num_devices`` devices (all when 0): the
    engine's :func:`~ahjax.core.train.engine.data_mesh`, which every training shares."""
    return engine.data_mesh(num_devices)


@functools.lru_cache(maxsize=16)
def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax transformation of ``cfg`` (weight decay, optional clip and cosine schedule).

    Cached: the same transformation object makes equal graph definitions, which lets a
    restarted run in the same process reuse the compiled steps (see :func:`_cached`).
    """
    lr = cfg.lr
    if cfg.schedule == "cosine":
        lr = optax.cosine_decay_schedule(cfg.lr, max(total_steps, 1))
    elif cfg.schedule != "constant":
        raise ValueError(f"unknown schedule {cfg.schedule!r}; use constant or cosine")
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    if cfg.optimizer == "sgd":
        parts += [optax.add_decayed_weights(cfg.weight_decay),
                  optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)]
    elif cfg.optimizer == "adam":
        parts += [optax.add_decayed_weights(cfg.weight_decay), optax.adam(lr)]
    elif cfg.optimizer == "adamw":
        parts += [optax.adamw(lr, weight_decay=cfg.weight_decay)]
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use sgd, adam or adamw")
    return optax.chain(*parts)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    """(mean cross-entropy over frames with mask 1, number of such frames).

    Labels of masked frames may be -1; they are clipped to a valid class and weighted 0.
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.clip(labels, 0, 1))
    n = mask.sum()
    return (ce * mask).sum() / jnp.maximum(n, 1.0), n


def _inputs(batch: Mapping[str, jax.Array], modalities: Sequence[str]) -> dict:
    return {m: batch[m] for m in modalities}


def input_keys(model: nnx.Module, modalities: Sequence[str]) -> tuple[str, ...]:
    """The batch keys a model reads: its modalities plus its ``extra_inputs``."""
    return tuple(modalities) + tuple(k for k in getattr(model, "extra_inputs", ())
                                     if k not in modalities)


def make_train_step(graphdef: nnx.GraphDef, modalities: Sequence[str], cfg: TrainConfig,
                    mesh: Mesh) -> Callable:
    """The jitted ``(state, batch, rng) -> (state, metrics)`` for models split to ``graphdef``.

    ``state`` is ``nnx.split((model, optimizer))[1]``; ``batch`` holds the modalities,
    ``labels`` and ``mask``; dropout keys are ``rng`` folded with the optimiser's step, so
    they do not depend on how the run was interrupted.
    """
    modalities = tuple(modalities)

    def step(state, batch, rng):
        model, opt = nnx.merge(graphdef, state)
        nnx.reseed(model, dropout=jax.random.fold_in(rng, opt.step[...]))

        def loss_fn(model):
            logits, aux = model(_inputs(batch, modalities), train=True)
            ce, n = masked_cross_entropy(logits, batch["labels"], batch["mask"])
            aux_loss = jnp.asarray(aux.get("aux_loss", 0.0), jnp.float32)
            return ce + cfg.aux_loss_weight * aux_loss, (ce, aux_loss, n)

        (loss, (ce, aux_loss, n)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        opt.update(model, grads)
        metrics = {"loss": loss, "ce": ce, "aux_loss": aux_loss, "frames": n,
                   "grad_norm": optax.global_norm(grads)}
        return nnx.state((model, opt)), metrics

    replicated = NamedSharding(mesh, P())
    return jax.jit(step, in_shardings=(replicated, NamedSharding(mesh, P("data")), replicated),
                   out_shardings=(replicated, replicated), donate_argnums=0)


def make_eval_step(graphdef: nnx.GraphDef, modalities: Sequence[str]) -> Callable:
    """The jitted ``(state, batch) -> logits (B, W, 2)`` in eval mode.

    ``graphdef``/``state`` come from ``nnx.split(model)`` or ``nnx.split((model,
    optimizer))``. :func:`eval_step_for` memoises the first form, which the trainer's
    per-epoch validation and later predictions share, so they compile once.
    """
    modalities = tuple(modalities)

    @jax.jit
    def eval_step(state, batch):
        model = nnx.merge(graphdef, state)
        if isinstance(model, tuple):  # (model, optimizer)
            model = model[0]
        logits, _ = model(_inputs(batch, modalities), train=False)
        return logits.astype(jnp.float32)

    return eval_step


def eval_step_for(model: nnx.Module, keys: Sequence[str]) -> Callable:
    """The memoised :func:`make_eval_step` of ``model``'s graph definition and ``keys``."""
    return _cached(make_eval_step, nnx.graphdef(model), tuple(keys))


_COMPILED: dict = {}


def _cached(builder: Callable, *key) -> Callable:
    """``builder(*key)``, memoised when ``key`` is hashable (graph definitions of models with
    unhashable static attributes are not; those just build afresh)."""
    try:
        hash(key)
    except TypeError:
        return builder(*key)
    if key not in _COMPILED:
        if len(_COMPILED) > 32:
            _COMPILED.clear()
        _COMPILED[key] = builder(*key)
    return _COMPILED[key]


def _put(batch: Mapping[str, np.ndarray], keys: Sequence[str], mesh: Mesh) -> dict:
    return engine.put_batch(batch, mesh, keys)


# ----------------------------------------------------------------------------------------
# Prediction and evaluation on whole videos.

def predict_windows(model: nnx.Module, windows: win.Windows, *, batch_size: int = 4,
                    mesh: Mesh | None = None,
                    step: tuple[Callable, Any] | None = None) -> dict[str, np.ndarray]:
    """Frame logits of every video of ``windows``: video id -> (n_frames, 2) float32.

    Windows are run in eval mode and stitched back by their start frames; padding is
    dropped and a frame covered by several windows (hop < window) gets their mean.
    ``step`` = ``(eval_step, state[, input keys])`` from :func:`make_eval_step` replaces ``model`` (the
    trainer passes its own to avoid recompiling each epoch).
    """
    mesh = mesh or make_mesh(1)
    n_dev = mesh.devices.size
    batch_size = -(-batch_size // n_dev) * n_dev  # a multiple of the device count
    loader = win.WindowLoader(windows, win.WindowConfig(
        window=windows.window, hop=windows.hop, batch_size=batch_size, shuffle=False,
        standardize=False))
    if step is None:
        modalities = input_keys(model, windows.spec)
        step = (eval_step_for(model, modalities), nnx.state(model))
    else:
        modalities = step[2] if len(step) > 2 else tuple(windows.spec)
    eval_step, state = step[:2]
    state = jax.device_put(state, NamedSharding(mesh, P()))
    sums = [np.zeros((n, 2), np.float64) for n in windows.n_frames]
    counts = [np.zeros(n, np.int32) for n in windows.n_frames]
    for batch in loader.iterator():
        logits = np.asarray(eval_step(state, _put(batch, modalities, mesh)))
        for row, vi, start in zip(logits, batch["video_index"], batch["start"]):
            if vi < 0:
                continue
            real = min(windows.window, windows.n_frames[vi] - int(start))
            sums[vi][start:start + real] += row[:real]
            counts[vi][start:start + real] += 1
    out = {}
    for vi, vid in enumerate(windows.video_ids):
        assert counts[vi].min() > 0, f"{vid}: some frames were in no window"
        out[vid] = (sums[vi] / counts[vi][:, None]).astype(np.float32)
    return out


def predict_videos(model: nnx.Module, store: FeatureStore, video_ids: Sequence[str],
                   spec: win.Spec, window: int, *, hop: int | None = None,
                   stats: Mapping | None = None, batch_size: int = 4,
                   mesh: Mesh | None = None) -> dict[str, np.ndarray]:
    """Frame logits of ``video_ids`` from ``store``: video id -> (n_frames, 2) float32.

    ``stats`` are the standardisation statistics the model was trained with (None: raw
    features); ``hop`` defaults to ``window`` (each frame predicted once).
    """
    windows = win.Windows(store, spec, None, window=window, hop=hop or window,
                          video_ids=video_ids, stats=stats)
    return predict_windows(model, windows, batch_size=batch_size, mesh=mesh)


def evaluate(model: nnx.Module | None, windows: win.Windows, *, batch_size: int = 4,
             mesh: Mesh | None = None, step: tuple[Callable, Any] | None = None,
             where: str = "evaluation") -> tuple[dict, dict[str, np.ndarray]]:
    """(``bah_metrics`` over all labelled frames of ``windows``' videos, per-video logits).

    ``model`` or ``step`` as in :func:`predict_windows`. Raises :class:`NonFiniteLossError`
    (naming ``where`` and the first video) when an output is NaN or inf.
    """
    logits = predict_windows(model, windows, batch_size=batch_size, mesh=mesh, step=step)
    labels = [windows.labels(vi) for vi in range(len(windows.video_ids))]
    scores = np.concatenate([logits[v] for v in windows.video_ids])
    if not np.isfinite(scores).all():
        bad = next(v for v in windows.video_ids if not np.isfinite(logits[v]).all())
        raise NonFiniteLossError(f"{where}: the model's outputs hold NaN or inf (first in "
                                 f"video {bad})")
    return metrics_lib.bah_metrics(np.concatenate(labels), scores), logits


# ----------------------------------------------------------------------------------------
# The training loop.

class _Log:
    """Appends JSON lines to ``metrics.jsonl``; on resume drops lines past the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        self.active = engine.is_main_process()   # one writer in a multi-process run
        if not self.active:
            return
        if resume_step is None:
            path.write_text("")
        elif path.is_file():
            # Lines written after the checkpoint describe steps that will be redone.
            keep = [ln for ln in path.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["step"] <= resume_step]
            path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, record: Mapping) -> None:
        if not self.active:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")


def _model_of(graphdef, state):
    model, _ = nnx.merge(graphdef, state)
    return model


def train(model_fn: ModelFn, store: FeatureStore, spec: win.Spec, windows_cfg: win.WindowConfig,
          cfg: TrainConfig, workdir: str | Path, *, train_split: str = "train",
          val_split: str | None = "val",
          on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``model_fn``'s model on ``train_split`` windows; return the best epoch's model.

    ``spec`` maps modality -> store arrays; writes ``metrics.jsonl`` and ``checkpoints/`` into
    ``workdir`` and resumes there. ``on_step(step)`` runs after every step; non-finite loss or
    outputs follow ``cfg.on_nonfinite`` (docs/training.md, "The frame-level trainer").
    """
    if cfg.on_nonfinite not in ("stop", "raise"):
        raise ValueError(f"on_nonfinite must be 'stop' or 'raise', got {cfg.on_nonfinite!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(cfg.num_devices)
    n_dev = mesh.devices.size
    if windows_cfg.batch_size % n_dev:
        raise ValueError(f"batch size {windows_cfg.batch_size} is not divisible by the "
                         f"{n_dev} devices of the mesh")
    # Validation runs whole on each process, on its own devices (the same numbers on all,
    # so every process keeps the same best epoch).
    eval_mesh = mesh if jax.process_count() == 1 else engine.data_mesh(local=True)
    train_ws = win.make_windows(store, spec, train_split, windows_cfg)
    val_ws = None
    if val_split is not None:
        val_ws = win.Windows(store, spec, val_split, window=windows_cfg.window,
                             hop=cfg.eval_hop or windows_cfg.window, stats=train_ws.stats)
    # In a multi-process run each process reads only its rows of every batch.
    loader = win.WindowLoader(train_ws, windows_cfg,
                              shard=(jax.process_index(), jax.process_count()))
    model = model_fn(dict(train_ws.dims), nnx.Rngs(params=cfg.seed, dropout=cfg.seed + 1))
    modalities = input_keys(model, spec)
    tx = make_optimizer(cfg, loader.num_batches(0) * cfg.epochs)
    graphdef, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))
    # RNG streams are reseeded every step, so only the rest is checkpointed (typed PRNG keys
    # would also need special handling in orbax).
    rng_state, saved = state.split(nnx.RngState, ...)

    ckpt = Checkpointer(workdir / "checkpoints", keep=cfg.keep_checkpoints)
    meta = {"epoch": 0, "position": 0, "step": 0, "history": [], "loss_sum": 0.0, "loss_n": 0}
    resume_step = ckpt.latest_step()
    if resume_step is not None:
        restored, meta = ckpt.restore(resume_step, nnx.to_pure_dict(saved))
        nnx.replace_by_pure_dict(saved, restored)
    log = _Log(workdir / METRICS_FILE, resume_step)
    state = engine.replicate(nnx.merge_state(saved, rng_state), mesh)
    step_fn = _cached(make_train_step, graphdef, modalities, cfg, mesh)
    # Validation runs the model part of the state through the same compiled step that
    # predict_windows uses on the trained model afterwards.
    eval_step = eval_step_for(model, modalities)
    base_rng = jax.random.key(cfg.seed + 2)
    batch_keys = (*modalities, "labels", "mask")

    def checkpoint(metrics=None):
        # Drop the RNG streams again: they are reseeded from (seed, step) anyway.
        pure = nnx.to_pure_dict(engine.local_copy(state.split(nnx.RngState, ...)[1]))
        ckpt.save(meta["step"], pure, meta, metrics)

    pending: list[tuple[int, int, dict]] = []

    def flush():
        # Losses stay on device between flushes so the host does not wait on every step.
        if not pending:
            return
        got = jax.device_get(engine.local_copy([m for _, _, m in pending]))
        for (s, e, _), m in zip(pending, got):
            if not math.isfinite(float(m["loss"])):
                raise NonFiniteLossError(
                    f"loss is {float(m['loss'])} at step {s} (epoch {e}); last checkpoint: "
                    f"step {ckpt.latest_step()} in {ckpt.directory}")
            meta["loss_sum"] += float(m["loss"])
            meta["loss_n"] += 1
        means = {k: float(np.mean([m[k] for m in got])) for k in got[0]}
        log.write({"kind": "train", "epoch": pending[-1][1], "step": pending[-1][0], **means})
        pending.clear()

    def epochs():
        nonlocal state
        for epoch in range(meta["epoch"], cfg.epochs):
            # Checked before each epoch, from the history, so a resumed run stops alike.
            if cfg.patience and val_ws is not None \
                    and epochs_without_gain(meta["history"]) >= cfg.patience:
                log.write({"kind": "early_stop", "epoch": epoch, "step": meta["step"],
                           "patience": cfg.patience})
                break
            it = loader.iterator({"epoch": epoch, "position": meta["position"]})
            # The bar names what trains: the run folder's last two parts ("table2/V+A+T").
            what = "/".join(workdir.parts[-2:])
            bar = tqdm(total=it.length, initial=it.position,
                       desc=f"training {what} epoch {epoch + 1}/{cfg.epochs}",
                       disable=not cfg.progress, leave=False)
            t0 = time.time()
            for batch in it:
                state, m = step_fn(state, _put(batch, batch_keys, mesh), base_rng)
                if cfg.debug:
                    chex.assert_tree_all_finite(m)
                    chex.assert_tree_all_finite(state.filter(nnx.Param))
                meta["step"] += 1
                meta["position"] = it.position
                pending.append((meta["step"], epoch, m))
                bar.update(1)
                if meta["step"] % cfg.log_every == 0:
                    flush()
                    bar.set_postfix(loss=f"{meta['loss_sum'] / max(meta['loss_n'], 1):.4f}")
                if cfg.checkpoint_every and meta["step"] % cfg.checkpoint_every == 0 \
                        and it.position < it.length:
                    flush()
                    checkpoint()
                if on_step is not None:
                    on_step(meta["step"])
            bar.close()
            flush()
            record = {"kind": "epoch", "epoch": epoch, "step": meta["step"],
                      "train_loss": meta["loss_sum"] / max(meta["loss_n"], 1),
                      "seconds": time.time() - t0}
            val_metrics = None
            if val_ws is not None:
                val_metrics, _ = evaluate(None, val_ws, batch_size=windows_cfg.batch_size,
                                          mesh=eval_mesh,
                                          step=(eval_step, engine.local_copy(state[0]),
                                                modalities),
                                          where=f"validation after epoch {epoch} (step "
                                                f"{meta['step']})")
                record["val"] = val_metrics
            meta["history"].append(record)
            meta.update(epoch=epoch + 1, position=0, loss_sum=0.0, loss_n=0)
            checkpoint({"val_AP": val_metrics["AP"]} if val_metrics else None)
            log.write(record)

    diverged = None
    try:
        try:
            epochs()
        except NonFiniteLossError as err:
            if cfg.on_nonfinite == "raise":
                raise
            diverged = str(err)
            log.write({"kind": "diverged", "epoch": meta["epoch"], "step": meta["step"],
                       "reason": diverged})
        if not meta["history"]:
            raise RuntimeError(f"no epoch was trained (epochs={cfg.epochs})"
                               + (f"; {diverged}" if diverged else ""))
        # The best epoch: without validation the last one; with it, the checkpointer's own
        # answer (the step it kept with the highest val_AP), so what is restored and what is
        # reported cannot differ.
        if val_ws is None:
            best = meta["history"][-1]
        else:
            best_step = ckpt.best_step()
            if best_step is None:
                raise RuntimeError(f"{ckpt.directory}: no validated checkpoint to restore")
            best = next(r for r in meta["history"] if r["step"] == best_step)
        if diverged:
            print(f"training stopped: {diverged}; keeping the best validated epoch "
                  f"({best['epoch']})", flush=True)
        restored, _ = ckpt.restore(best["step"], nnx.to_pure_dict(saved))
        nnx.replace_by_pure_dict(saved, restored)
        best_model = _model_of(graphdef, nnx.merge_state(saved, rng_state))
    finally:
        ckpt.close()
    return TrainResult(best_epoch=best["epoch"], best_val=best.get("val", {}),
                       model=best_model, history=meta["history"], stats=train_ws.stats or None,
                       workdir=workdir, diverged=diverged)


# ----------------------------------------------------------------------------------------
# Reusing a finished training.

REUSE_RESULT = "result.json"
REUSE_KEEP = 3   # entries kept per method description; older ones are stale code or data


def source_digest(modules: Iterable[ModuleType]) -> str:
    """Hash of the names and sources of ``modules`` (those loaded from ``.py`` files): the
    code part of a reuse key."""
    h = hashlib.blake2b(digest_size=16)
    for module in sorted(modules, key=lambda m: m.__name__):
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py"):
            h.update(module.__name__.encode())
            h.update(Path(path).read_bytes())
    return h.hexdigest()


def _source_digest(packages: Sequence[str]) -> str:
    """:func:`source_digest` of every loaded module of the named top-level packages.

    Loaded rather than all modules: the code a training can depend on has been imported
    by the time its key is computed, and unrelated files of the same package (another
    experiment's baseline, say) then do not invalidate it.
    """
    return source_digest(m for name, m in list(sys.modules.items())
                         if name.split(".")[0] in packages)


def epochs_without_gain(history: Sequence[Mapping]) -> int:
    """Validated epochs in ``history`` after the first one with the highest val AP (0 when
    that is the last, or when none was validated)."""
    aps = [r["val"]["AP"] for r in history if r.get("val")]
    return len(aps) - 1 - int(np.argmax(aps)) if aps else 0


def library_versions() -> list:
    """The libraries and backend a training's numbers depend on: part of every reuse key."""
    return [jax.__version__, flax.__version__, optax.__version__, np.__version__,
            jax.default_backend(), jax.device_count()]


def training_key(store: FeatureStore, spec: win.Spec, windows_cfg: win.WindowConfig,
                 cfg: TrainConfig, describe: Mapping, splits: Sequence[str],
                 model: nnx.Module) -> str:
    """Content hash of everything a :func:`train` result depends on (docs/training.md, "Reuse")."""
    h = hashlib.blake2b(digest_size=16)
    blob = {"spec": {m: list(a) for m, a in spec.items()},
            "windows": dataclasses.asdict(windows_cfg), "train": dataclasses.asdict(cfg),
            "describe": describe,
            "code": _source_digest(("ahjax", type(model).__module__.split(".")[0])),
            "versions": library_versions()}
    # Bookkeeping that cannot change the trained parameters stays out of the key.
    for k in ("progress", "log_every", "checkpoint_every", "keep_checkpoints"):
        blob["train"].pop(k)
    if not cfg.patience:   # off: keys made before the field existed stay valid
        blob["train"].pop("patience")
    for k in ("num_threads", "prefetch"):
        blob["windows"].pop(k)
    h.update(json.dumps(blob, sort_keys=True, default=str).encode())
    names = sorted({a for arrays in spec.values() for a in arrays} | {"labels"})
    for split in splits:
        for vid in store.video_ids(split):
            h.update(f"{split}/{vid}".encode())
            for name in names:
                arr = np.ascontiguousarray(store.read(vid, name))
                h.update(f"{name}{arr.shape}{arr.dtype}".encode())
                h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def train_or_reuse(model_fn: ModelFn, store: FeatureStore, spec: win.Spec,
                   windows_cfg: win.WindowConfig, cfg: TrainConfig, workdir: str | Path, *,
                   describe: Mapping, cache_dir: str | Path | None,
                   train_split: str = "train", val_split: str | None = "val") -> TrainResult:
    """:func:`train`, or the result of an identical earlier training read from ``cache_dir``.

    An entry ``<cache_dir>/<training_key(...)>/`` holds the best parameters and the history;
    ``describe`` must name whatever ``model_fn`` depends on beyond the configs. ``cache_dir=None``
    always trains (docs/training.md, "Reuse").
    """
    if cache_dir is None:
        return train(model_fn, store, spec, windows_cfg, cfg, workdir,
                     train_split=train_split, val_split=val_split)
    workdir = Path(workdir)
    splits = [s for s in (train_split, val_split) if s is not None]
    train_ws = win.make_windows(store, spec, train_split, windows_cfg)
    model = model_fn(dict(train_ws.dims), nnx.Rngs(params=cfg.seed, dropout=cfg.seed + 1))
    key = training_key(store, spec, windows_cfg, cfg, describe, splits, model)
    entry = Path(cache_dir) / key
    if (entry / REUSE_RESULT).is_file():
        saved = json.loads((entry / REUSE_RESULT).read_text())
        model = load_params(lambda: model, entry / "params")
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry / METRICS_FILE, workdir / METRICS_FILE)
        (workdir / "reused.json").write_text(json.dumps({"from": str(entry), "key": key}))
        os.utime(entry)  # recently used: kept by _prune
        return TrainResult(best_epoch=saved["best_epoch"], best_val=saved["best_val"],
                           model=model, history=saved["history"],
                           stats=train_ws.stats or None, workdir=workdir, reused_from=entry,
                           diverged=saved.get("diverged"))
    res = train(model_fn, store, spec, windows_cfg, cfg, workdir,
                train_split=train_split, val_split=val_split)
    # Written beside the entry, then renamed: a killed run leaves no half entry behind.
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=_mkdir(Path(cache_dir))))
    save_params(res.model, tmp / "params")
    shutil.copyfile(workdir / METRICS_FILE, tmp / METRICS_FILE)
    (tmp / REUSE_RESULT).write_text(json.dumps(
        {"best_epoch": res.best_epoch, "best_val": res.best_val, "history": res.history,
         "diverged": res.diverged, "describe": _plain(describe)}, default=_json_number))
    try:
        os.replace(tmp, entry)
    except OSError:  # another run stored the same training meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(Path(cache_dir), describe, keep=REUSE_KEEP)
    return res


def _prune(cache_dir: Path, describe: Mapping, keep: int) -> None:
    """Delete all but the ``keep`` newest entries of ``describe`` (older code or data)."""
    same = []
    for path in cache_dir.glob(f"*/{REUSE_RESULT}"):
        try:
            if json.loads(path.read_text()).get("describe") == _plain(describe):
                same.append(path.parent)
        except (OSError, ValueError):
            continue
    same.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in same[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _plain(describe: Mapping) -> Any:
    return json.loads(json.dumps(describe, sort_keys=True, default=str))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _json_number(x):
    return x.tolist() if hasattr(x, "tolist") else float(x)

