"""Domain adaptation for personalisation: the methods of the BAH paper's Table 5.

Every method works on the same network, :class:`AdaptNet` (a backbone that maps one frame,
optionally with its causal context, to a feature vector ending in BatchNorm, then a linear
classifier to 2 logits), and starts from the same source-trained weights. Any other network
with the same interface works too (``level2_conflict.adapt.TwoLevelAdaptNet``, the two-level
model, does): ``model(inputs, train=...) -> (logits (B, 2), {"features": (B, f)})``, a
``classifier`` with ``kernel`` (f, 2) and ``bias`` (2,) such that ``logits = features @ kernel
+ bias`` (T3A reads it), and optionally ``param_groups``, a dict naming which parameters a
method trains where the defaults do not fit the network: ``"backbone"`` (SHOT: everything
but the classifier; default :data:`BACKBONE_PARAMS`) and ``"norm"`` (Tent; default
:data:`NORM_PARAMS`, the BatchNorm scales and biases). A method is a small frozen dataclass
with two entry points:

- ``adapt(model, source, target, val, key) -> model`` before testing (UDA, SFDA, Oracle);
  ``target`` is the target's adapt part, *unlabelled* except for the Oracle.
- ``predict(model, test, key) -> logits (n, 2)``; test-time methods adapt here, online,
  batch by batch over the test stream, and score each batch as they see it.

Methods (``METHODS``, name -> class; ``build_method(name, cfg)``):

- ``source_only``: the source model as it is.
- ``mmd`` (UDA): source CE + lambda * multi-kernel Gaussian MMD between source and target
  features (5 kernels, multiplier 2, bandwidth from the mean pairwise squared distance).
- ``acpl`` (UDA): progressive pseudo-labels from two augmented views of each target frame,
  kept when their averaged confidence passes a threshold (0.90, minus 0.02 each round),
  source CE + target CE on kept pseudo-labels + lambda * MMD. The public implementation
  detaches the MMD term, which silently turns it off; here its gradient flows.
- ``shot`` (SFDA): classifier frozen; information maximisation (mean entropy minus the
  entropy of the mean prediction) + 0.3 x CE on centroid pseudo-labels (cosine distance,
  two rounds of reassignment), refreshed every ``shot_refresh`` epochs.
- ``nrc`` (SFDA): feature and score memory banks over the target; K=5 nearest neighbours
  weighted 1 when reciprocal and 0.1 otherwise, KK=5 expanded neighbours at 0.1, plus
  a diversity term.
- ``oracle``: fine-tuned on the target's labelled adapt part (upper bound).
- ``tent`` (TTA): entropy minimisation on the BatchNorm scale/bias with batch statistics
  (on a network without BatchNorm, on its ``"norm"`` parameter group).
- ``t3a`` (TTA): classifier replaced by prototypes from the lowest-entropy test features
  seen so far (Iwasawa & Matsuo 2021); no text encoder needed.

Not included: the CLIP-based test-time methods of the paper (TPT, TDA, DPE, PromptAlign,
ReTA, T3AL, TTA-CaP, CLIP-AUTT). They need CLIP image and text weights, which are not
available offline here. :class:`VisionLanguageEncoder` is the protocol such weights must
satisfy and :class:`VisionLanguageTTA` the base class one of them would subclass.

Model selection for training-based methods follows the paper's rule (docs/bah_format.md): the
epoch with the best AP on the target's validation part (``select="last"`` turns it off).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ahjax import metrics as metrics_lib

Inputs = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Every hyperparameter of the network and of the adaptation methods."""
    backbone: str = "mlp"              # mlp (frame-wise) | tcn (baselines.tcn over context)
    context: int = 1                   # frames seen per prediction (causal); 1 for mlp
    hidden: int = 64
    feature_dim: int = 32
    dropout: float = 0.0
    tcn_channels: tuple[int, ...] = (64, 64, 32)   # every modality's TCN widths
    optimizer: str = "adam"            # adam | sgd (momentum 0.9, Nesterov)
    lr: float = 1e-3                   # source training and Oracle
    adapt_lr: float = 5e-4             # MMD, ACPL, SHOT, NRC
    weight_decay: float = 1e-4
    batch_size: int = 64
    eval_batch: int = 512
    source_epochs: int = 20
    source_steps: int = 0              # steps per source epoch; 0 = one pass over the source
    epochs: int = 10                   # adaptation epochs (one pass over the adapt part each)
    select: str = "val_ap"             # val_ap (paper) | last
    mmd_weight: float = 1.0
    mmd_kernels: int = 5
    mmd_mul: float = 2.0
    acpl_threshold: float = 0.90
    acpl_step: float = 0.02
    acpl_min_threshold: float = 0.5
    acpl_target_weight: float = 1.0
    acpl_noise: float = 0.2            # view augmentation: Gaussian noise (standardised units)
    acpl_drop: float = 0.1             # ... and feature dropout
    shot_ce_weight: float = 0.3
    shot_refresh: int = 1              # epochs between centroid pseudo-label refreshes
    nrc_k: int = 5
    nrc_kk: int = 5
    nrc_far_weight: float = 0.1        # non-reciprocal neighbours
    nrc_expanded_weight: float = 0.1
    nrc_diversity: float = 1.0
    tta_batch: int = 64
    tta_lr: float = 1e-3
    tta_order: str = "shuffle"         # shuffle (Tent's i.i.d. protocol) | temporal
    t3a_filter_k: int = 100            # supports kept per class
    seed: int = 0


# ----------------------------------------------------------------------------------------
# Data: frames of one domain.

@dataclasses.dataclass(frozen=True)
class Domain:
    """The frames of one domain (or one part of it).

    ``x`` maps modality -> (N, d) float32 rows and ``y`` holds (N,) labels (-1 = unknown);
    ``first[i]`` is the row of the first frame of row i's video, so a causal context never
    reaches into another video; ``rows`` are this domain's members. Parts of a target share
    the arrays: a test frame's context may include (unlabelled) adapt frames before it.
    """
    x: Mapping[str, np.ndarray]
    y: np.ndarray
    first: np.ndarray
    rows: np.ndarray
    name: str = ""

    @classmethod
    def from_arrays(cls, x: Mapping[str, np.ndarray] | np.ndarray, y: np.ndarray,
                    first: np.ndarray | None = None, name: str = "") -> "Domain":
        """A domain of every row; a bare array becomes modality ``"x"``; one video by default."""
        if not isinstance(x, Mapping):
            x = {"x": x}
        x = {m: np.asarray(v, np.float32) for m, v in x.items()}
        n = len(np.asarray(y))
        if any(v.ndim != 2 or v.shape[0] != n for v in x.values()):
            raise ValueError(f"every modality must be (N={n}, d): {[v.shape for v in x.values()]}")
        first = np.zeros(n, np.int64) if first is None else np.asarray(first, np.int64)
        return cls(x, np.asarray(y, np.int32), first, np.arange(n), name)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(v.shape[1]) for m, v in self.x.items()}

    @property
    def labels(self) -> np.ndarray:
        """(n,) labels of the members."""
        return self.y[self.rows]

    def part(self, positions: np.ndarray) -> "Domain":
        """The members at ``positions`` (indices into this domain's rows)."""
        return dataclasses.replace(self, rows=self.rows[np.asarray(positions, np.int64)])

    def unlabelled(self) -> "Domain":
        """The same frames with every label hidden (-1): what UDA/SFDA/TTA methods get."""
        return dataclasses.replace(self, y=np.full_like(self.y, -1))

    def inputs(self, positions: np.ndarray, context: int) -> dict[str, np.ndarray]:
        """``{modality: (B, context, d)}`` of the members at ``positions``, context causal.

        Before a video's first frame the first frame is repeated (the TCN is causal, so
        this only affects the first ``context - 1`` frames of each video).
        """
        rows = self.rows[np.asarray(positions, np.int64)]
        idx = rows[:, None] + np.arange(1 - context, 1)[None, :]
        idx = np.maximum(idx, self.first[rows][:, None])
        return {m: v[idx] for m, v in self.x.items()}


# ----------------------------------------------------------------------------------------
# The network every method shares.

def _under_norm(path: tuple, value: Any) -> bool:
    """True inside a BatchNorm: every norm attribute here (and in the TCN) is ``norm*``."""
    return any(str(p).startswith("norm") for p in path)


NORM_PARAMS = nnx.All(nnx.Param, _under_norm)
BACKBONE_PARAMS = nnx.All(nnx.Param, nnx.PathContains("backbone"))


class MLPBackbone(nnx.Module):
    """Frame-wise: concat modalities -> Linear-BN-ReLU -> Linear-BN (SHOT's bottleneck)."""

    def __init__(self, dims: Mapping[str, int], cfg: AdaptConfig, *, rngs: nnx.Rngs):
        self.modalities = tuple(sorted(dims))
        width = sum(int(dims[m]) for m in self.modalities)
        self.fc1 = nnx.Linear(width, cfg.hidden, rngs=rngs)
        self.norm1 = nnx.BatchNorm(cfg.hidden, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.hidden, cfg.feature_dim, rngs=rngs)
        self.norm2 = nnx.BatchNorm(cfg.feature_dim, momentum=0.9, rngs=rngs)

    def __call__(self, inputs: Inputs, *, train: bool) -> jax.Array:
        """``{m: (B, C, d)}`` -> (B, feature_dim), from the last (current) frame only."""
        x = jnp.concatenate([inputs[m][:, -1] for m in self.modalities], axis=-1)
        h = jax.nn.relu(self.norm1(self.fc1(x), use_running_average=not train))
        h = self.drop(h, deterministic=not train)
        return self.norm2(self.fc2(h), use_running_average=not train)


class TCNBackbone(nnx.Module):
    """The paper's per-modality causal TCN over each frame's context, then Linear-BN."""

    def __init__(self, dims: Mapping[str, int], cfg: AdaptConfig, *, rngs: nnx.Rngs):
        from baselines.tcn import TCN  # the frame-level baseline's TCN, shared, not copied

        self.modalities = tuple(sorted(dims))
        self.tcns = nnx.Dict({m: TCN(int(dims[m]), cfg.tcn_channels, dropout=cfg.dropout,
                                     rngs=rngs) for m in self.modalities})
        width = sum(self.tcns[m].out_features for m in self.modalities)
        self.fc = nnx.Linear(width, cfg.feature_dim, rngs=rngs)
        self.norm_out = nnx.BatchNorm(cfg.feature_dim, momentum=0.9, rngs=rngs)

    def __call__(self, inputs: Inputs, *, train: bool) -> jax.Array:
        """``{m: (B, C, d)}`` -> (B, feature_dim): each TCN's output at the last frame."""
        h = jnp.concatenate([self.tcns[m](inputs[m], train=train)[:, -1]
                             for m in self.modalities], axis=-1)
        return self.norm_out(self.fc(jax.nn.leaky_relu(h)), use_running_average=not train)


class AdaptNet(nnx.Module):
    """Backbone -> features -> linear classifier; returns ``(logits (B, 2), {"features"})``."""

    def __init__(self, dims: Mapping[str, int], cfg: AdaptConfig, *, rngs: nnx.Rngs):
        backbones = {"mlp": MLPBackbone, "tcn": TCNBackbone}
        if cfg.backbone not in backbones:
            raise ValueError(f"unknown backbone {cfg.backbone!r}; choose from {sorted(backbones)}")
        self.backbone = backbones[cfg.backbone](dims, cfg, rngs=rngs)
        self.classifier = nnx.Linear(cfg.feature_dim, 2, rngs=rngs)

    def __call__(self, inputs: Inputs, *, train: bool = False) -> tuple[jax.Array, dict]:
        f = self.backbone(inputs, train=train)
        return self.classifier(f), {"features": f}


def make_net(dims: Mapping[str, int], cfg: AdaptConfig, seed: int = 0) -> AdaptNet:
    """A freshly initialised :class:`AdaptNet` for modality widths ``dims``."""
    return AdaptNet(dims, cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


# ----------------------------------------------------------------------------------------
# Losses.

def mmd(x: jax.Array, y: jax.Array, kernels: int = 5, mul: float = 2.0) -> jax.Array:
    """Biased multi-kernel Gaussian MMD^2 between samples ``x`` (n, d) and ``y`` (m, d).

    Bandwidths ``b * mul**(i - kernels // 2)``, i < kernels, around ``b`` = mean squared
    distance over all distinct pairs of the pooled samples (DAN's rule). ``b`` is held
    constant under differentiation, as DAN's reference does: letting the loss move its own
    bandwidth would let it shrink MMD by inflating distances instead of aligning domains.
    """
    z = jnp.concatenate([x, y], axis=0)
    sq = jnp.sum(z * z, axis=1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    n_all = z.shape[0]
    b = jax.lax.stop_gradient(jnp.sum(d2) / (n_all * n_all - n_all))
    b = b / mul ** (kernels // 2)
    k = sum(jnp.exp(-d2 / (b * mul ** i + 1e-12)) for i in range(kernels))
    n = x.shape[0]
    return jnp.mean(k[:n, :n]) + jnp.mean(k[n:, n:]) - 2.0 * jnp.mean(k[:n, n:])


def cross_entropy(logits: jax.Array, labels: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Mean CE over the frames with ``weight`` > 0 (labels < 0 count as weight 0)."""
    w = (labels >= 0).astype(logits.dtype) if weight is None else weight * (labels >= 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)


def entropy(p: jax.Array, axis: int = -1) -> jax.Array:
    return -jnp.sum(p * jnp.log(p + 1e-6), axis=axis)


# ----------------------------------------------------------------------------------------
# Shared machinery: full passes, optimisers, the jitted step, the training loop.

@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, inputs):
    model = nnx.merge(graphdef, state)
    logits, aux = model(inputs, train=False)
    return logits, aux["features"]


def predict_all(model: AdaptNet, domain: Domain, cfg: AdaptConfig,
                transform: Callable[[dict, np.ndarray], dict] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(logits (n, 2), features (n, f)) of every member, eval mode, in padded chunks.

    ``transform(inputs, positions)`` may alter each chunk's inputs first (ACPL's views).
    """
    graphdef, state = nnx.split(model)
    n, b = len(domain), cfg.eval_batch
    logits, feats = [], []
    for lo in range(0, n, b):
        pos = np.arange(lo, lo + b) % max(n, 1)  # wrap-pad so every chunk has one shape
        inputs = domain.inputs(pos, cfg.context)
        if transform is not None:
            inputs = transform(inputs, pos)
        lg, ft = _forward(graphdef, state, inputs)
        real = min(b, n - lo)
        logits.append(np.asarray(lg[:real]))
        feats.append(np.asarray(ft[:real]))
    return np.concatenate(logits), np.concatenate(feats)


@functools.lru_cache(maxsize=None)
def make_tx(name: str, lr: float, weight_decay: float) -> optax.GradientTransformation:
    """Adam(W) or SGD (momentum 0.9, Nesterov) with decoupled / coupled weight decay.

    Cached: the transformation is part of the optimizer's graphdef, a static argument of
    the jitted step, so an equal object is what lets every target reuse one compilation.
    """
    if name == "adam":
        return optax.adamw(lr, weight_decay=weight_decay)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay),
                           optax.sgd(lr, momentum=0.9, nesterov=True))
    raise ValueError(f"unknown optimizer {name!r}; choose adam or sgd")


@functools.partial(jax.jit, static_argnums=(0, 1))
def _step(method, graphdef, state, mstate, batch, key):
    """One update: ``(state, mstate, batch, key) -> (state, mstate, metrics)``.

    ``method`` (a frozen dataclass, hashable) supplies the loss and which parameters move
    (``method.params(model)``); its per-method state ``mstate`` (pseudo-labels, memory
    banks) goes in and out as arrays, so one compiled step serves every epoch and target.
    """
    model, opt = nnx.merge(graphdef, state)

    def loss_fn(model):
        return method.loss(model, mstate, batch, key)

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, method.params(model)),
                                 has_aux=True)
    (loss, (metrics, mstate)), grads = grad_fn(model)
    opt.update(model, grads)
    metrics = dict(metrics, loss=loss)
    return nnx.state((model, opt)), mstate, metrics


def state_rows(n: int) -> int:
    """Rows of a method's per-target state (pseudo-labels, memory banks) for a target of
    ``n`` frames: the next power of two, at least 256. The state's shape is part of the
    compiled step's signature, so targets of similar sizes then share one compilation
    instead of compiling per target; padded rows are never indexed or are masked out."""
    return max(256, 1 << max(int(n) - 1, 0).bit_length())


def _pad_rows(x, rows: int) -> jax.Array:
    """``x`` (n, ...) zero-padded to ``rows`` rows."""
    x = jnp.asarray(x)
    return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def _val_ap(model: AdaptNet, val: Domain | None, cfg: AdaptConfig) -> float:
    """AP on the validation part (nan without one, or without both classes)."""
    if val is None or len(val) == 0 or not (val.labels == 1).any():
        return float("nan")
    logits, _ = predict_all(model, val, cfg)
    return metrics_lib.frame_ap(val.labels, metrics_lib.softmax_pos(logits))


# ----------------------------------------------------------------------------------------
# Methods.

@dataclasses.dataclass(frozen=True)
class Method:
    """Base: the source model unchanged, predicted in eval mode (this *is* Source-only)."""
    cfg: AdaptConfig = AdaptConfig()
    family: ClassVar[str] = "reference"      # reference | uda | sfda | tta
    label: ClassVar[str] = "Source-only"
    param_group: ClassVar[str] = "all"       # the parameters it trains, by group name ...
    wrt: ClassVar[Any] = nnx.Param           # ... and their filter when the model names none

    def params(self, model: nnx.Module) -> Any:
        """The filter of the parameters this method trains in ``model``: the model's own
        ``param_groups[self.param_group]`` when it defines one, else ``self.wrt``."""
        return getattr(model, "param_groups", {}).get(self.param_group, self.wrt)

    def adapt(self, model: AdaptNet, source: Domain | None, target: Domain,
              val: Domain | None, key: jax.Array) -> AdaptNet:
        """The model to test; ``target`` is the adapt part (unlabelled but for the Oracle)."""
        return model

    def predict(self, model: AdaptNet, test: Domain, key: jax.Array) -> np.ndarray:
        """Logits (n, 2) of the test part."""
        return predict_all(model, test, self.cfg)[0]


@dataclasses.dataclass(frozen=True)
class TrainedMethod(Method):
    """A method trained by gradient steps over the target's adapt part (and the source).

    Subclasses define ``loss(model, mstate, batch, key) -> (loss, (metrics, mstate))`` and,
    when they need it, ``refresh(model, mstate, source, target, epoch)`` run on the host at
    the start of each epoch (pseudo-labels, banks). A batch holds ``tgt`` inputs, ``tgt_y``
    (-1 unless labelled), ``tgt_idx`` (positions in the target) and, when
    ``uses_source``, ``src`` inputs and ``src_y``.
    """
    uses_source: ClassVar[bool] = False
    lr_field: ClassVar[str] = "adapt_lr"

    def init_state(self, model: AdaptNet, source: Domain | None, target: Domain) -> dict:
        return {}

    def refresh(self, model, mstate, source, target, epoch):
        return mstate

    def epochs(self) -> int:
        return self.cfg.epochs

    def adapt(self, model, source, target, val, key):
        model, _ = fit(self, model, source, target, val, key)
        return model


def fit(method: TrainedMethod, model: AdaptNet, source: Domain | None, target: Domain,
        val: Domain | None, key: jax.Array) -> tuple[AdaptNet, list[dict]]:
    """Train ``model`` (a copy) with ``method``; returns (model of the selected epoch, history).

    One epoch is one shuffled pass over ``target`` in batches of ``cfg.batch_size`` (the last
    one wrapped around so shapes stay fixed); source batches are drawn uniformly. The kept
    epoch is the best by validation AP when ``cfg.select == "val_ap"`` and a validation part
    with both classes is given, else the last.
    """
    cfg = method.cfg
    if method.uses_source and (source is None or len(source) == 0):
        raise ValueError(f"{type(method).__name__} needs source frames")
    if len(target) == 0:
        raise ValueError("no target frames to adapt on")
    model = nnx.clone(model)
    tx = make_tx(cfg.optimizer, getattr(cfg, method.lr_field), cfg.weight_decay)
    opt = nnx.Optimizer(model, tx, wrt=method.params(model))
    graphdef, state = nnx.split((model, opt))
    mstate = method.init_state(model, source, target)
    rng = np.random.default_rng([cfg.seed, 7])
    b, n = cfg.batch_size, len(target)
    steps = max(1, -(-n // b))
    best, best_state, history = -np.inf, state, []  # state arrays are immutable: no copy
    for epoch in range(method.epochs()):
        current = nnx.merge(graphdef, state)[0]
        mstate = method.refresh(current, mstate, source, target, epoch)
        order = rng.permutation(n)
        order = np.concatenate([order, order[:steps * b - n]]) if steps * b > n else order
        sums: dict[str, float] = {}
        for s in range(steps):
            pos = order[s * b:(s + 1) * b]
            batch = {"tgt": target.inputs(pos, cfg.context), "tgt_y": target.labels[pos],
                     "tgt_idx": pos.astype(np.int32)}
            if method.uses_source:
                spos = rng.integers(0, len(source), b)
                batch.update(src=source.inputs(spos, cfg.context), src_y=source.labels[spos])
            step_key = jax.random.fold_in(key, epoch * steps + s)
            state, mstate, m = _step(method, graphdef, state, mstate, batch, step_key)
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v) / steps
        loss = sums.get("loss", float("nan"))
        if not np.isfinite(loss):
            raise FloatingPointError(f"{type(method).__name__}: non-finite loss at epoch {epoch}")
        ap = _val_ap(nnx.merge(graphdef, state)[0], val, cfg) if cfg.select == "val_ap" else np.nan
        history.append(dict(sums, epoch=epoch, val_ap=ap))
        if np.isfinite(ap) and ap > best:
            best, best_state = ap, state
    keep = best_state if cfg.select == "val_ap" and np.isfinite(best) else state
    return nnx.merge(graphdef, keep)[0], history


@dataclasses.dataclass(frozen=True)
class SourceTraining(TrainedMethod):
    """Supervised CE on labelled frames: trains the source model (the ``target`` passed is
    the source itself), and is the Oracle's loss on the target's labelled adapt part."""
    lr_field: ClassVar[str] = "lr"

    def epochs(self) -> int:
        return self.cfg.source_epochs

    def loss(self, model, mstate, batch, key):
        logits, _ = model(batch["tgt"], train=True)
        ce = cross_entropy(logits, batch["tgt_y"])
        return ce, ({"ce": ce}, mstate)


def train_source(source: Domain, cfg: AdaptConfig, val: Domain | None = None,
                 seed: int | None = None, net: nnx.Module | None = None) -> AdaptNet:
    """The source model: ``net`` (default: a fresh :class:`AdaptNet`) trained with CE on
    ``source`` (last epoch unless ``val`` is given and ``cfg.select == "val_ap"``)."""
    seed = cfg.seed if seed is None else seed
    if net is None:
        net = make_net(source.dims, cfg, seed)
    model, _ = fit(SourceTraining(cfg), net, None, source, val, jax.random.key(seed))
    return model


@dataclasses.dataclass(frozen=True)
class Oracle(SourceTraining):
    """Fine-tunes the source model on the target's *labelled* adapt part (upper bound)."""
    label: ClassVar[str] = "Oracle"

    def epochs(self) -> int:
        return self.cfg.epochs

    def adapt(self, model, source, target, val, key):
        if not (target.labels >= 0).any():
            raise ValueError("the Oracle needs the target's adapt labels")
        return super().adapt(model, source, target, val, key)


@dataclasses.dataclass(frozen=True)
class MMD(TrainedMethod):
    """Source CE + ``mmd_weight`` x MMD(source features, target features)."""
    family: ClassVar[str] = "uda"
    label: ClassVar[str] = "MMD"
    uses_source: ClassVar[bool] = True

    def _joint(self, model, batch):
        # One forward over source and target together: BatchNorm sees both domains, so
        # its running statistics at test time describe the mixture, as in DAN.
        b = batch["src_y"].shape[0]
        joint = {m: jnp.concatenate([batch["src"][m], batch["tgt"][m]]) for m in batch["src"]}
        logits, aux = model(joint, train=True)
        f = aux["features"]
        return logits[:b], logits[b:], f[:b], f[b:]

    def loss(self, model, mstate, batch, key):
        src_logits, _, fs, ft = self._joint(model, batch)
        ce = cross_entropy(src_logits, batch["src_y"])
        d = mmd(fs, ft, self.cfg.mmd_kernels, self.cfg.mmd_mul)
        return ce + self.cfg.mmd_weight * d, ({"ce": ce, "mmd": d}, mstate)


# Input keys that are masks, not features: never augmented.
MASK_KEYS = frozenset({"valid", "mask"})


def augment(inputs: dict[str, np.ndarray], rng: np.random.Generator, noise: float,
            drop: float) -> dict[str, np.ndarray]:
    """A random view of standardised features: Gaussian noise plus feature dropout
    (masks, :data:`MASK_KEYS`, pass through unchanged)."""
    out = {}
    for m, x in inputs.items():
        if m in MASK_KEYS:
            out[m] = x
            continue
        x = x + noise * rng.standard_normal(x.shape).astype(np.float32)
        out[m] = x * (rng.random(x.shape) >= drop) if drop > 0 else x
    return out


@dataclasses.dataclass(frozen=True)
class ACPL(MMD):
    """Progressive pseudo-labels from two views + MMD (gradient flowing) + source CE."""
    label: ClassVar[str] = "ACPL"

    def threshold(self, epoch: int) -> float:
        """0.90 at round 0, minus 0.02 per round, never below ``acpl_min_threshold``."""
        c = self.cfg
        return max(c.acpl_threshold - c.acpl_step * epoch, c.acpl_min_threshold)

    def init_state(self, model, source, target):
        n = state_rows(len(target))
        return {"pl": jnp.zeros(n, jnp.int32), "keep": jnp.zeros(n, jnp.float32),
                "n": jnp.float32(len(target))}

    def refresh(self, model, mstate, source, target, epoch):
        c = self.cfg
        rng = np.random.default_rng([c.seed, 11, epoch])
        views = [predict_all(model, target, c, lambda x, p: augment(x, rng, c.acpl_noise,
                                                                    c.acpl_drop))[0]
                 for _ in range(2)]
        prob = np.mean([jax.nn.softmax(v, axis=-1) for v in views], axis=0)
        keep = prob.max(axis=1) >= self.threshold(epoch)
        rows = mstate["pl"].shape[0]
        return dict(mstate, pl=_pad_rows(prob.argmax(1).astype(np.int32), rows),
                    keep=_pad_rows(keep.astype(np.float32), rows))

    def loss(self, model, mstate, batch, key):
        src_logits, tgt_logits, fs, ft = self._joint(model, batch)
        ce = cross_entropy(src_logits, batch["src_y"])
        idx = batch["tgt_idx"]
        pl_ce = cross_entropy(tgt_logits, mstate["pl"][idx], mstate["keep"][idx])
        # No stop_gradient here: the public ACPL code detaches this term, so it adds a
        # constant and trains nothing.
        d = mmd(fs, ft, self.cfg.mmd_kernels, self.cfg.mmd_mul)
        total = ce + self.cfg.acpl_target_weight * pl_ce + self.cfg.mmd_weight * d
        kept = jnp.sum(mstate["keep"]) / mstate.get("n", mstate["keep"].shape[0])
        return total, ({"ce": ce, "pl_ce": pl_ce, "mmd": d, "kept": kept}, mstate)


def centroid_labels(features: np.ndarray, probs: np.ndarray, rounds: int = 2) -> np.ndarray:
    """SHOT's pseudo-labels: nearest class centroid by cosine distance.

    Features get a constant 1 appended and are L2-normalised (as SHOT does). Round 1 uses
    centroids weighted by the soft predictions; each further round recomputes centroids
    from the previous hard labels and reassigns. An empty class keeps its old centroid.
    """
    f = np.concatenate([features, np.ones((len(features), 1), features.dtype)], axis=1)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    weights = probs
    labels = probs.argmax(1)
    centroids = None
    for _ in range(rounds):
        new = weights.T @ f / (weights.sum(0)[:, None] + 1e-8)
        if centroids is not None:
            empty = weights.sum(0) == 0
            new[empty] = centroids[empty]
        centroids = new
        cn = centroids / (np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-8)
        labels = (f @ cn.T).argmax(1)  # max cosine similarity = min cosine distance
        weights = np.eye(probs.shape[1])[labels]
    return labels


@dataclasses.dataclass(frozen=True)
class SHOT(TrainedMethod):
    """Source hypothesis transfer: classifier frozen, backbone trained on the target only."""
    family: ClassVar[str] = "sfda"
    label: ClassVar[str] = "SHOT"
    param_group: ClassVar[str] = "backbone"
    wrt: ClassVar[Any] = BACKBONE_PARAMS

    def init_state(self, model, source, target):
        return {"pl": jnp.zeros(state_rows(len(target)), jnp.int32)}

    def refresh(self, model, mstate, source, target, epoch):
        if epoch % max(self.cfg.shot_refresh, 1):
            return mstate
        logits, feats = predict_all(model, target, self.cfg)
        probs = np.asarray(jax.nn.softmax(logits, axis=-1))
        labels = centroid_labels(feats, probs).astype(np.int32)
        return {"pl": _pad_rows(labels, mstate["pl"].shape[0])}

    def loss(self, model, mstate, batch, key):
        logits, _ = model(batch["tgt"], train=True)
        p = jax.nn.softmax(logits, axis=-1)
        ent = jnp.mean(entropy(p))
        div = entropy(jnp.mean(p, axis=0))
        ce = cross_entropy(logits, mstate["pl"][batch["tgt_idx"]])
        total = ent - div + self.cfg.shot_ce_weight * ce
        return total, ({"ent": ent, "div": div, "pl_ce": ce}, mstate)


def _normalise(x: jax.Array) -> jax.Array:
    return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-8)


@dataclasses.dataclass(frozen=True)
class NRC(TrainedMethod):
    """Neighbourhood reciprocity clustering over feature/score memory banks of the target."""
    family: ClassVar[str] = "sfda"
    label: ClassVar[str] = "NRC"

    def init_state(self, model, source, target):
        logits, feats = predict_all(model, target, self.cfg)
        rows = state_rows(len(target))
        return {"feat": _pad_rows(_normalise(jnp.asarray(feats)), rows),
                "score": _pad_rows(jax.nn.softmax(jnp.asarray(logits), axis=-1), rows),
                "real": jnp.arange(rows) < len(target)}   # padded rows are nobody's neighbour

    def loss(self, model, mstate, batch, key):
        c = self.cfg
        idx = batch["tgt_idx"]
        logits, aux = model(batch["tgt"], train=True)
        p = jax.nn.softmax(logits, axis=-1)
        # The banks take this batch's (detached) outputs first, as NRC's reference does.
        f = jax.lax.stop_gradient(_normalise(aux["features"]))
        bank_f = mstate["feat"].at[idx].set(f)
        bank_s = mstate["score"].at[idx].set(jax.lax.stop_gradient(p))
        n = bank_f.shape[0]
        k, kk = min(c.nrc_k, n - 1), min(c.nrc_kk, n - 1)
        real = mstate["real"]
        sim = jnp.where(real, f @ bank_f.T, -jnp.inf)
        sim = sim.at[jnp.arange(idx.shape[0]), idx].set(-jnp.inf)   # not its own neighbour
        _, near = jax.lax.top_k(sim, k)                                   # (B, K)
        sim_nn = jnp.where(real, bank_f[near] @ bank_f.T, -jnp.inf)      # (B, K, N)
        # Row j's own top-(KK+1) includes j itself; drop it to get its neighbours.
        _, near_near = jax.lax.top_k(sim_nn, max(k, kk) + 1)
        near_near = near_near[..., 1:]
        reciprocal = jnp.any(near_near[..., :k] == idx[:, None, None], axis=-1)
        w = jnp.where(reciprocal, 1.0, c.nrc_far_weight)                  # (B, K)
        expanded = near_near[..., :kk]                                    # (B, K, KK)
        # The sample itself among the expanded neighbours would only reward confidence.
        w_exp = jnp.where(expanded == idx[:, None, None], 0.0, c.nrc_expanded_weight)
        # NRC's kl_div(p, s) term is, up to a constant, -sum w * <s_neighbour, p>.
        near_term = jnp.sum(w * jnp.einsum("bkc,bc->bk", bank_s[near], p), axis=1)
        exp_term = jnp.sum(w_exp * jnp.einsum("bkjc,bc->bkj", bank_s[expanded], p), axis=(1, 2))
        mean_p = jnp.mean(p, axis=0)
        diversity = jnp.sum(mean_p * jnp.log(mean_p + 1e-5))              # -H(mean p)
        total = -jnp.mean(near_term) - jnp.mean(exp_term) + c.nrc_diversity * diversity
        metrics = {"reciprocal": jnp.mean(reciprocal.astype(jnp.float32)),
                   "diversity": diversity}
        return total, (metrics, dict(mstate, feat=bank_f, score=bank_s))


# ----------------------------------------------------------------------------------------
# Test-time adaptation: online over the test stream.

@dataclasses.dataclass(frozen=True)
class TestTimeMethod(Method):
    """Base of test-time methods: no adapt phase; ``predict`` walks the test stream in
    batches of ``tta_batch`` (shuffled by seed, or in temporal order) and each batch is
    scored when it arrives, with whatever the method has learned from the batches before
    it and from itself. Subclasses define ``start(model)`` and ``batch(carry, inputs)``.
    """
    family: ClassVar[str] = "tta"

    def stream(self, n: int) -> np.ndarray:
        """The order test frames arrive in."""
        if self.cfg.tta_order == "temporal":
            return np.arange(n)
        if self.cfg.tta_order == "shuffle":
            return np.random.default_rng([self.cfg.seed, 13]).permutation(n)
        raise ValueError(f"unknown tta_order {self.cfg.tta_order!r}; choose shuffle or temporal")

    def adapt(self, model, source, target, val, key):
        return model

    def predict(self, model, test, key):
        order = self.stream(len(test))
        out = np.zeros((len(test), 2), np.float32)
        carry = self.start(model)
        for lo in range(0, len(order), self.cfg.tta_batch):
            pos = order[lo:lo + self.cfg.tta_batch]
            carry, logits = self.batch(carry, test.inputs(pos, self.cfg.context),
                                       jax.random.fold_in(key, lo))
            out[pos] = np.asarray(logits)
        return out


@dataclasses.dataclass(frozen=True)
class Tent(TestTimeMethod):
    """Tent: per batch, normalise with the batch's statistics, predict, and take one
    gradient step of the mean prediction entropy on the BatchNorm scale and bias only."""
    label: ClassVar[str] = "Tent"
    param_group: ClassVar[str] = "norm"
    wrt: ClassVar[Any] = NORM_PARAMS

    def start(self, model):
        model = nnx.clone(model)
        opt = nnx.Optimizer(model, make_tx("adam", self.cfg.tta_lr, 0.0), wrt=self.params(model))
        return nnx.split((model, opt))

    def loss(self, model, mstate, batch, key):
        logits, _ = model(batch["tgt"], train=True)
        ent = jnp.mean(entropy(jax.nn.softmax(logits, axis=-1)))
        return ent, ({"logits": logits}, mstate)

    def batch(self, carry, inputs, key):
        graphdef, state = carry
        # The last batch may be short; it is run at its true size (one more compile)
        # because padding would change the batch statistics the prediction depends on.
        state, _, m = _step(self, graphdef, state, {}, {"tgt": inputs}, key)
        return (graphdef, state), m["logits"]


@dataclasses.dataclass(frozen=True)
class T3A(TestTimeMethod):
    """T3A: the classifier becomes class prototypes, each the sum of L2-normalised
    supports: the classifier's weight vectors to start with, then every test feature
    labelled by its current prediction, keeping the ``t3a_filter_k`` lowest-entropy
    supports per class. Backbone untouched (eval mode)."""
    label: ClassVar[str] = "T3A"

    def start(self, model):
        w = np.asarray(model.classifier.kernel[...]).T                  # (2, f) = one per class
        b = np.asarray(model.classifier.bias[...])
        logits = w @ w.T + b
        p = np.asarray(jax.nn.softmax(logits, axis=-1))
        return {"graph": nnx.split(model), "supports": w, "labels": p.argmax(1),
                "ent": -(p * np.log(p + 1e-6)).sum(1), "w": w, "b": b}

    def batch(self, carry, inputs, key):
        graphdef, state = carry["graph"]
        # Eval mode, so rows are independent: a short last batch is wrap-padded to the
        # usual size (one compilation for every batch) and the padding dropped again.
        n = len(next(iter(inputs.values())))
        rows = np.arange(max(n, self.cfg.tta_batch)) % n
        logits, feats = _forward(graphdef, state, {k: v[rows] for k, v in inputs.items()})
        logits, feats = np.asarray(logits)[:n], np.asarray(feats)[:n]
        p = np.asarray(jax.nn.softmax(logits, axis=-1))
        supports = np.concatenate([carry["supports"], feats])
        labels = np.concatenate([carry["labels"], p.argmax(1)])
        ent = np.concatenate([carry["ent"], -(p * np.log(p + 1e-6)).sum(1)])
        keep = np.zeros(len(labels), bool)
        for c in range(2):
            members = np.flatnonzero(labels == c)
            keep[members[np.argsort(ent[members], kind="stable")[:self.cfg.t3a_filter_k]]] = True
        supports, labels, ent = supports[keep], labels[keep], ent[keep]
        unit = supports / (np.linalg.norm(supports, axis=1, keepdims=True) + 1e-8)
        protos = np.eye(2)[labels].T @ unit                              # (2, f)
        protos = protos / (np.linalg.norm(protos, axis=1, keepdims=True) + 1e-8)
        carry = dict(carry, supports=supports, labels=labels, ent=ent)
        return carry, feats @ protos.T


class VisionLanguageEncoder(Protocol):
    """What a CLIP-style test-time method needs, and this project cannot ship offline.

    ``encode_frames(inputs) -> (B, e)`` embeds the frames (from the raw face crops, not
    from this module's tabular features); ``encode_text(prompts) -> (P, e)`` embeds class
    prompts such as "a person showing ambivalence"; ``logit_scale`` is CLIP's temperature.
    """
    logit_scale: float

    def encode_frames(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray: ...

    def encode_text(self, prompts: Sequence[str]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class VisionLanguageTTA(TestTimeMethod):
    """Base for CLIP-based test-time methods (TPT, TDA, DPE, PromptAlign, ReTA, T3AL,
    TTA-CaP, CLIP-AUTT: none included). A subclass is built with an ``encoder``
    satisfying :class:`VisionLanguageEncoder` and ``prompts`` (one list per class, class 0
    first) and implements ``batch(carry, inputs, key) -> (carry, logits)``; the default
    ``start`` embeds the prompts once, and the default ``batch`` is zero-shot CLIP."""
    encoder: Any = None
    prompts: tuple[tuple[str, ...], ...] = (("a person without ambivalence",),
                                            ("a person showing ambivalence or hesitancy",))

    def start(self, model):
        if self.encoder is None:
            raise ValueError(f"{type(self).__name__} needs CLIP-style weights: pass an encoder "
                             "satisfying baselines.adapt.VisionLanguageEncoder")
        text = np.stack([np.asarray(self.encoder.encode_text(list(p))).mean(0)
                         for p in self.prompts])
        return {"text": text / np.linalg.norm(text, axis=1, keepdims=True)}

    def batch(self, carry, inputs, key):
        img = np.asarray(self.encoder.encode_frames(inputs))
        img = img / np.linalg.norm(img, axis=1, keepdims=True)
        return carry, self.encoder.logit_scale * img @ carry["text"].T


METHODS: dict[str, type[Method]] = {
    "source_only": Method,
    "mmd": MMD,
    "acpl": ACPL,
    "shot": SHOT,
    "nrc": NRC,
    "tent": Tent,
    "t3a": T3A,
    "oracle": Oracle,
}


def build_method(name: str, cfg: AdaptConfig) -> Method:
    """The method registered as ``name``, configured by ``cfg``."""
    if name not in METHODS:
        raise ValueError(f"unknown adaptation method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name](cfg)
