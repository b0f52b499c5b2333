"""The methods (Table 5), their training through the shared engine, and test-time adaptation."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ahjax.core import metrics as metrics_lib
from ahjax.core.train import engine
from ahjax.core.train.trainer import TrainConfig, make_optimizer
from baselines.adapt.config import AdaptConfig
from baselines.adapt.domains import Domain
from baselines.adapt.losses import cross_entropy, entropy, mmd
from baselines.adapt.networks import (BACKBONE_PARAMS, NORM_PARAMS, AdaptNet, _forward, make_net,
                                      predict_all)


def make_tx(name: str, lr: float, weight_decay: float) -> optax.GradientTransformation:
    """The optimiser of a method: AdamW (``"adam"``) or SGD (momentum 0.9, Nesterov,
    weight decay added to the gradient), built by the trainer's
    :func:`~ahjax.core.train.trainer.make_optimizer` like every optimiser of the project.
    Equal arguments give the same (cached) object: the transformation is part of the
    optimizer's graphdef, a static argument of the jitted step, so every target reuses one
    compilation."""
    if name not in ("adam", "sgd"):
        raise ValueError(f"unknown optimizer {name!r}; choose adam or sgd")
    cfg = TrainConfig(optimizer="adamw" if name == "adam" else "sgd", lr=lr,
                      weight_decay=weight_decay, momentum=0.9, nesterov=True,
                      schedule="constant", epochs=1)
    return make_optimizer(cfg, 0)


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

    Subclasses define ``loss(model, mstate, batch, key) -> (loss, (metrics, mstate))`` and may
    define ``refresh(model, mstate, source, target, epoch)``, run on the host at each epoch's
    start (pseudo-labels, banks). Batch keys: docs/paper_setups.md, "Personalisation".
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

    One epoch is one shuffled pass over ``target`` (the last batch wrapped around), source
    batches drawn uniformly, through the one engine (``engine.run_epochs``; docs/training.md).
    """
    cfg = method.cfg
    if method.uses_source and (source is None or len(source) == 0):
        raise ValueError(f"{type(method).__name__} needs source frames")
    if len(target) == 0:
        raise ValueError("no target frames to adapt on")
    mesh = engine.data_mesh(cfg.num_devices)
    if cfg.batch_size % mesh.devices.size:
        raise ValueError(f"batch size {cfg.batch_size} is not divisible by the "
                         f"{mesh.devices.size} devices of the mesh")
    model = nnx.clone(model)
    tx = make_tx(cfg.optimizer, getattr(cfg, method.lr_field), cfg.weight_decay)
    opt = nnx.Optimizer(model, tx, wrt=method.params(model))
    graphdef, state = nnx.split((model, opt))
    state = engine.replicate(state, mesh)
    mstate = engine.replicate(method.init_state(model, source, target), mesh)
    rng = np.random.default_rng([cfg.seed, 7])
    b, n = cfg.batch_size, len(target)
    steps = max(1, -(-n // b))
    current = {"state": state, "mstate": mstate}
    kept: dict[int, object] = {}   # epoch -> state (immutable arrays: no copy)

    def batches(epoch):
        model_now = nnx.merge(graphdef, current["state"])[0]
        current["mstate"] = engine.replicate(
            method.refresh(model_now, current["mstate"], source, target, epoch), mesh)
        order = rng.permutation(n)
        order = np.concatenate([order, order[:steps * b - n]]) if steps * b > n else order
        for s in range(steps):
            pos = order[s * b:(s + 1) * b]
            batch = {"tgt": target.inputs(pos, cfg.context), "tgt_y": target.labels[pos],
                     "tgt_idx": pos.astype(np.int32)}
            if method.uses_source:
                spos = rng.integers(0, len(source), b)
                batch.update(src=source.inputs(spos, cfg.context), src_y=source.labels[spos])
            yield s, engine.put_batch(batch, mesh)

    def step(item, epoch):
        s, batch = item
        step_key = jax.random.fold_in(key, epoch * steps + s)
        current["state"], current["mstate"], m = _step(method, graphdef, current["state"],
                                                       current["mstate"], batch, step_key)
        return m

    def validate(epoch):
        if cfg.select != "val_ap":
            return float("nan")
        return _val_ap(nnx.merge(graphdef, current["state"])[0], val, cfg)

    def end_epoch(record):
        record["val_ap"] = record.pop("score", float("nan"))
        kept[record["epoch"]] = current["state"]

    result = engine.run_epochs(epochs=method.epochs(), batches=batches, step=step,
                               validate=validate, end_epoch=end_epoch,
                               desc=type(method).__name__, flush_every=steps)
    best = engine.best_epoch(result.history, "val_ap")
    return nnx.merge(graphdef, kept[best])[0], result.history


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
