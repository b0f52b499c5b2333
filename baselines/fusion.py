"""The paper's frame-level fusion baselines: CAN, LFAN, MT and JMT over per-modality TCNs.

Every model takes ``{modality: (B, W, d_m)}`` for exactly the modalities it was built for
and returns ``(logits (B, W, 2), aux)``. ``aux["features"]`` holds each modality's TCN
output and the other entries the fusion's weights or attention maps, so what a model looked
at is part of what it returns.

- **CAN**: a softmax gate over the concatenated per-modality projections, then an MLP.
- **LFAN**: leader-follower attention across the modality tokens of each frame.
- **MT**: per-modality transformers and pairwise cross-attention over a clip's frames,
  then self-attention over each frame's tokens; **JMT** adds a joint token.

Each model in detail, the reference's defects not reproduced, padding, ``context=False``
and the CPU speed work: docs/paper_setups.md, "Frame level".
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from ahjax.core.dropout import Dropout
from baselines.tcn import TCN, TCNConfig

# Canonical modality order: fixes parameter layout, token order and LFAN's leader.
ORDER = ("video", "audio", "text")
# Batch keys every fusion model accepts besides its modalities: ``valid`` (B, W), 1 on the
# real frames of a window and 0 on its zero-padded tail (ahjax/core/data/windows.py).
OPTIONAL_INPUTS = ("valid",)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Hyperparameters of the fusion baselines; defaults are the paper's (docs/paper_setups.md).

    ``tcn`` is used by CAN, MT and JMT, ``lfan_tcn`` by LFAN (narrower, dropout 0.1).
    ``heads``/``ff_dim`` are those of MT/JMT's transformer layers (the reference: 1 head,
    feed-forward width 128); ``modal_dim``/``lfan_heads``/``lfan_dropout`` are LFAN's.
    ``context=False`` gives the frame-wise ("no context") variant of every model.
    """
    tcn: TCNConfig = TCNConfig()
    lfan_tcn: TCNConfig = TCNConfig(video=(256, 256, 128, 128), audio=(64, 64, 32, 32),
                                    text=(256, 256, 128, 128), dropout=0.1)
    context: bool = True
    d_model: int = 128
    heads: int = 1
    ff_dim: int = 128
    modal_dim: int = 32
    lfan_heads: int = 2
    lfan_dropout: float = 0.1
    negative_slope: float = 0.01


def quick() -> FusionConfig:
    """A tiny variant for tests: one narrow TCN block per modality, 16-wide fusion."""
    small = TCNConfig(video=(8,), audio=(4,), text=(8,))
    return FusionConfig(tcn=small, lfan_tcn=small, d_model=16, heads=2, ff_dim=16,
                        modal_dim=8, lfan_heads=2)


def frame_wise(cfg: FusionConfig) -> FusionConfig:
    """``cfg`` without temporal context: kernel-1 TCNs and per-frame attention only."""
    return dataclasses.replace(cfg, context=False)


def param_count(model: nnx.Module) -> int:
    """Number of trainable scalars (``nnx.Param``) in ``model``; works on ``nnx.eval_shape`` too."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _ordered(modality_dims: Mapping[str, int]) -> tuple[str, ...]:
    if not modality_dims:
        raise ValueError("a fusion model needs at least one modality")
    known = [m for m in ORDER if m in modality_dims]
    return tuple(known + sorted(m for m in modality_dims if m not in ORDER))


def _dense(layer: nnx.Module, x: Array) -> Array:
    """``layer(x)`` for a per-row ``layer`` (a Linear), computed on ``x`` flattened to 2-D.

    The same numbers; XLA on CPU runs a 2-D matmul, and above all its weight gradient,
    markedly faster than the same product written over a 3-D array.
    """
    if x.ndim == 2:
        return layer(x)
    return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


def _linear(i: int, o: int, rngs: nnx.Rngs) -> nnx.Linear:
    # Xavier-uniform with zero bias, as torch initialises attention projections.
    return nnx.Linear(i, o, kernel_init=nnx.initializers.xavier_uniform(),
                      bias_init=nnx.initializers.zeros, rngs=rngs)


class _Base(nnx.Module):
    """Per-modality encoders (TCN, or kernel-1 TCN without context) and input checks."""

    def __init__(self, modality_dims: Mapping[str, int], tcn_cfg: TCNConfig,
                 cfg: FusionConfig, *, rngs: nnx.Rngs):
        self.modalities = _ordered(modality_dims)
        self.in_dims = {m: int(modality_dims[m]) for m in self.modalities}
        self.context = cfg.context
        kernel = tcn_cfg.kernel_size if cfg.context else 1
        self.encoders = nnx.Dict({
            m: TCN(self.in_dims[m], tcn_cfg.channels(m), kernel_size=kernel,
                   dropout=tcn_cfg.dropout, negative_slope=tcn_cfg.negative_slope, rngs=rngs)
            for m in self.modalities})
        self.widths = {m: self.encoders[m].out_features for m in self.modalities}
        self.negative_slope = cfg.negative_slope

    def encode(self, inputs: Mapping[str, Array], train: bool) -> dict[str, Array]:
        """Check ``inputs`` against the built modalities and run each modality's encoder.

        ``inputs`` may also hold ``valid`` (B, W), the real-frame mask (:data:`OPTIONAL_INPUTS`;
        MT/JMT read it, the others need not: their outputs never look ahead in time).
        """
        given = set(inputs) - set(OPTIONAL_INPUTS)
        if given != set(self.modalities):
            raise ValueError(f"{type(self).__name__} was built for modalities "
                             f"{list(self.modalities)}, got {sorted(given)}")
        shapes = {m: tuple(inputs[m].shape) for m in self.modalities}
        bw = {s[:2] for s in shapes.values()}
        if any(len(s) != 3 for s in shapes.values()) or len(bw) != 1:
            raise ValueError(f"inputs must all be (B, W, d) with the same B and W: {shapes}")
        if "valid" in inputs and tuple(inputs["valid"].shape) != next(iter(bw)):
            raise ValueError(f"valid must be (B, W) like the inputs {shapes}, "
                             f"got {tuple(inputs['valid'].shape)}")
        return {m: self.encoders[m](inputs[m], train=train) for m in self.modalities}


class _Head(nnx.Module):
    """fc - BatchNorm - LeakyReLU - fc to 2 logits (CAN, MT and JMT's classifier)."""

    def __init__(self, width: int, negative_slope: float, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(width, width, rngs=rngs)
        self.norm = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
        self.fc2 = nnx.Linear(width, 2, rngs=rngs)
        self.negative_slope = negative_slope

    def __call__(self, x: Array, *, train: bool) -> Array:
        """(..., width) -> (..., 2)."""
        h = self.norm(_dense(self.fc1, x), use_running_average=not train)
        return _dense(self.fc2, jax.nn.leaky_relu(h, self.negative_slope))


class CAN(_Base):
    """Concatenated attention network: softmax feature gating over all modalities."""

    def __init__(self, modality_dims: Mapping[str, int], cfg: FusionConfig, *, rngs: nnx.Rngs):
        super().__init__(modality_dims, cfg.tcn, cfg, rngs=rngs)
        d, k = cfg.d_model, len(self.modalities)
        self.d_model = d
        self.proj = nnx.Dict({m: nnx.Linear(self.widths[m], d, rngs=rngs)
                              for m in self.modalities})
        self.gate = nnx.Linear(k * d, k * d, rngs=rngs)
        self.head = _Head(k * d, cfg.negative_slope, rngs=rngs)

    def __call__(self, inputs: Mapping[str, Array], *, train: bool = False
                 ) -> tuple[Array, dict]:
        """Returns logits and aux with ``features``, ``gate`` (B, W, k*d_model) and
        ``modality_weights`` (B, W, k): the gate's mass on each modality, summing to 1."""
        feats = self.encode(inputs, train)
        p = jnp.concatenate([self.proj[m](feats[m]) for m in self.modalities], axis=-1)
        # One softmax over all k*d features, as the reference: modalities compete for mass.
        gate = jax.nn.softmax(self.gate(p), axis=-1)
        logits = self.head(gate * p, train=train)
        b, w, _ = gate.shape
        weights = gate.reshape(b, w, len(self.modalities), self.d_model).sum(-1)
        return logits, {"features": feats, "gate": gate, "modality_weights": weights}


class LFAN(_Base):
    """Leader-follower attentive fusion: per-frame multi-head attention across modalities."""

    def __init__(self, modality_dims: Mapping[str, int], cfg: FusionConfig, *, rngs: nnx.Rngs):
        super().__init__(modality_dims, cfg.lfan_tcn, cfg, rngs=rngs)
        if cfg.modal_dim % cfg.lfan_heads:
            raise ValueError(f"modal_dim {cfg.modal_dim} must divide into {cfg.lfan_heads} heads")
        k, md = len(self.modalities), cfg.modal_dim
        self.leader = self.modalities[0]  # canonical order puts video first when given
        self.heads, self.modal_dim = cfg.lfan_heads, md
        self.qkv = nnx.Dict({m: _linear(self.widths[m], 3 * md, rngs)
                             for m in self.modalities})
        self.out = _linear(k * md, k * md, rngs)
        self.drop = Dropout(cfg.lfan_dropout, rngs=rngs)
        self.norm = nnx.LayerNorm(k * md, epsilon=1e-5, rngs=rngs)
        self.head = nnx.Linear(self.widths[self.leader] + k * md, 2, rngs=rngs)

    def __call__(self, inputs: Mapping[str, Array], *, train: bool = False
                 ) -> tuple[Array, dict]:
        """Returns logits and aux with ``features`` and ``attention`` (B, W, heads, k, k):
        for each frame and head, how much modality i (row) attends to modality j."""
        feats = self.encode(inputs, train)
        b, w, _ = feats[self.leader].shape
        h, hd = self.heads, self.modal_dim // self.heads
        # Each modality's qkv is split per head and then into q, k, v (the reference's layout).
        qkv = jnp.stack([self.qkv[m](feats[m]).reshape(b, w, h, 3 * hd)
                         for m in self.modalities], axis=3)          # (B, W, H, k, 3hd)
        q, key, v = jnp.split(qkv, 3, axis=-1)
        attn = jax.nn.softmax(jnp.einsum("bwhid,bwhjd->bwhij", q, key) / math.sqrt(hd), -1)
        follower = jnp.einsum("bwhij,bwhjd->bwhid", attn, v) + v   # residual on the values
        follower = self.out(follower.reshape(b, w, -1))
        follower = self.norm(self.drop(follower, deterministic=not train))
        logits = self.head(jnp.concatenate([feats[self.leader], follower], axis=-1))
        return logits, {"features": feats, "attention": attn}


@jax.custom_vjp
def _softmax_rows(x: Array) -> Array:
    return jax.nn.softmax(x, axis=-1)


def _softmax_rows_fwd(x: Array) -> tuple[Array, Array]:
    y = jax.nn.softmax(x, axis=-1)
    return y, y


def _softmax_rows_bwd(y: Array, g: Array) -> tuple[Array]:
    return (y * (g - jnp.sum(g * y, axis=-1, keepdims=True)),)


_softmax_rows.defvjp(_softmax_rows_fwd, _softmax_rows_bwd)


def _softmax(scores: Array, bias: Array | None = None) -> Array:
    """Softmax over the last axis, after adding ``bias`` (0 or :data:`_MASKED`) when given.

    ``jax.nn.softmax``'s numbers, with only its output kept for the backward pass (one
    (S, T) array per attention, not two). A row whose every entry is masked gets uniform
    weights, never NaN.
    """
    return _softmax_rows(scores if bias is None else scores + bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _ln(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    return _ln_fwd(x, scale, bias, eps)[0]


def _ln_fwd(x, scale, bias, eps):
    # nnx.LayerNorm's arithmetic exactly (fast variance, then (x - mean) * (rstd * scale)).
    mu = x.mean(-1, keepdims=True)
    var = jnp.maximum(0.0, (x * x).mean(-1, keepdims=True) - mu * mu)
    rstd = jax.lax.rsqrt(var + eps)
    return (x - mu) * (rstd * scale) + bias, (x, mu, rstd, scale)


def _ln_bwd(eps, res, g):
    x, mu, rstd, scale = res
    xhat = (x - mu) * rstd
    gx = g * scale
    dx = rstd * (gx - gx.mean(-1, keepdims=True)
                 - xhat * (gx * xhat).mean(-1, keepdims=True))
    rows = tuple(range(g.ndim - 1))
    return dx, (g * xhat).sum(rows), g.sum(rows)


_ln.defvjp(_ln_fwd, _ln_bwd)


def _layer_norm(norm: nnx.LayerNorm, x: Array) -> Array:
    """``norm(x)`` with a hand-written backward pass that keeps only ``x`` and two numbers
    per row: the same function and gradients (up to float rounding), with fewer arrays
    held between the forward and the backward pass (autodiff of ``nnx.LayerNorm`` keeps
    several (rows x d) intermediates)."""
    return _ln(x, norm.scale[...], norm.bias[...], norm.epsilon)


@jax.custom_vjp
def _relu(x: Array) -> Array:
    """``jax.nn.relu`` whose backward pass reads its output, so only that is kept."""
    return jnp.maximum(x, 0.0)


_relu.defvjp(lambda x: (y := jnp.maximum(x, 0.0), y),
             lambda y, g: (jnp.where(y > 0, g, 0.0),))


# Added to the scores of masked keys: exp() of it is 0 next to any real key.
_MASKED = -1e30


def key_bias(valid: Array | None) -> Array | None:
    """``valid`` (N, T) (1 on real frames) -> the additive score bias (N, 1, T) that keeps
    :class:`Attention` off the padded keys; ``None`` (every key real) stays ``None``."""
    if valid is None:
        return None
    return jnp.where(jnp.asarray(valid) > 0, 0.0, _MASKED).astype(jnp.float32)[:, None, :]


class Attention(nnx.Module):
    """Multi-head attention ``(N, S, d), (N, T, d) -> (N, S, d)`` that returns its weights.

    ``bias`` (from :func:`key_bias`) masks keys: a masked key gets no weight from any query.
    Heads are folded into the batch, ``(N * heads, S, hd)``, so that both products are
    plain 3-D batched matmuls, which XLA on CPU runs fastest (with one head, the paper's
    setting, there is nothing to move).
    """

    def __init__(self, d: int, heads: int, *, rngs: nnx.Rngs):
        if d % heads:
            raise ValueError(f"width {d} must divide into {heads} heads")
        self.q, self.k, self.v, self.o = (_linear(d, d, rngs) for _ in range(4))
        self.heads = heads

    def _split(self, x: Array) -> Array:
        """(N, S, d) -> (N * heads, S, hd)."""
        if self.heads == 1:
            return x
        n, s, d = x.shape
        h = self.heads
        return x.reshape(n, s, h, d // h).transpose(0, 2, 1, 3).reshape(n * h, s, d // h)

    def _merge(self, x: Array) -> Array:
        """(N * heads, S, hd) -> (N, S, d)."""
        if self.heads == 1:
            return x
        nh, s, hd = x.shape
        h = self.heads
        return x.reshape(nh // h, h, s, hd).transpose(0, 2, 1, 3).reshape(nh // h, s, h * hd)

    def _weights(self, xq: Array, xkv: Array, bias: Array | None) -> tuple[Array, Array]:
        """(weights (N * heads, S, T), values (N * heads, T, hd))."""
        hd = xq.shape[-1] // self.heads
        # 1/sqrt(hd) is folded into the query projection: the same scores, with no scaled
        # copy of the queries (S x d) or of the scores (S x T).
        c = 1.0 / math.sqrt(hd)
        q = xq.reshape(-1, xq.shape[-1]) @ (self.q.kernel[...] * c) + self.q.bias[...] * c
        q = self._split(q.reshape(xq.shape))
        k, v = self._split(_dense(self.k, xkv)), self._split(_dense(self.v, xkv))
        if bias is not None and self.heads > 1:
            bias = jnp.repeat(bias, self.heads, axis=0)
        return _softmax(jnp.einsum("nsd,ntd->nst", q, k), bias), v

    def _unfold(self, weights: Array) -> Array:
        """(N * heads, S, T) -> (N, heads, S, T)."""
        nh, s, t = weights.shape
        return weights.reshape(nh // self.heads, self.heads, s, t)

    def __call__(self, xq: Array, xkv: Array, bias: Array | None = None
                 ) -> tuple[Array, Array]:
        """Returns the attended values (N, S, d) and the weights (N, heads, S, T)."""
        weights, v = self._weights(xq, xkv, bias)
        out = self._merge(jnp.einsum("nst,ntd->nsd", weights, v))
        return _dense(self.o, out), self._unfold(weights)

    def pooled(self, xq: Array, xkv: Array, bias: Array | None = None
               ) -> tuple[Array, Array]:
        """``self(xq, xkv, bias)`` averaged over its S queries, (N, d), and the weights.

        The value product and the output projection are linear, so the mean over queries
        is taken first: the same numbers as averaging the (N, S, d) output, for 1/S of the
        output projection's cost.
        """
        weights, v = self._weights(xq, xkv, bias)
        mixed = jnp.einsum("nt,ntd->nd", weights.mean(axis=1), v)   # (N * heads, hd)
        n = xq.shape[0]
        return self.o(mixed.reshape(n, -1)), self._unfold(weights)


class EncoderLayer(nnx.Module):
    """Post-norm transformer layer (self-attention, ReLU MLP), no dropout, as the reference."""

    def __init__(self, d: int, heads: int, ff_dim: int, *, rngs: nnx.Rngs):
        self.attn = Attention(d, heads, rngs=rngs)
        self.norm1 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
        self.ff1 = nnx.Linear(d, ff_dim, rngs=rngs)
        self.ff2 = nnx.Linear(ff_dim, d, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)

    def __call__(self, x: Array, bias: Array | None = None) -> Array:
        """(N, S, d) -> (N, S, d), attending over the S axis only (``bias``: key mask)."""
        x = _layer_norm(self.norm1, x + self.attn(x, x, bias)[0])
        return _layer_norm(self.norm2, x + _dense(self.ff2, _relu(_dense(self.ff1, x))))


class _CrossTransformer(_Base):
    """Shared body of MT and JMT: encoders over time, cross-attentions, per-frame fusion.

    ``streams`` are the token sequences (each modality, plus JMT's joint one); ``pairs`` are
    the ordered (query, key/value) stream pairs whose cross-attention outputs become the
    per-frame tokens that the final encoder and self-attention mix.
    """

    def __init__(self, modality_dims: Mapping[str, int], cfg: FusionConfig,
                 streams: tuple[str, ...], pairs: tuple[tuple[str, str], ...],
                 *, rngs: nnx.Rngs):
        super().__init__(modality_dims, cfg.tcn, cfg, rngs=rngs)
        d = cfg.d_model
        self.d_model = d
        self.proj = nnx.Dict({m: nnx.Linear(self.widths[m], d, rngs=rngs)
                              for m in self.modalities})
        self.streams, self.pairs = streams, pairs
        # Names of the per-frame tokens, in the order of aux["token_attention"]'s axes.
        self.token_names = tuple(f"{q}->{kv}" for q, kv in pairs) or streams
        self.stream_enc = nnx.Dict({s: EncoderLayer(d, cfg.heads, cfg.ff_dim, rngs=rngs)
                                    for s in streams})
        self.cross = nnx.Dict({f"{q}__{kv}": Attention(d, cfg.heads, rngs=rngs)
                               for q, kv in pairs})
        self.final_enc = EncoderLayer(d, cfg.heads, cfg.ff_dim, rngs=rngs)
        self.final_attn = Attention(d, cfg.heads, rngs=rngs)
        self.head = _Head(d, cfg.negative_slope, rngs=rngs)

    def extra_streams(self, tokens: dict[str, Array]) -> dict[str, Array]:
        """Streams built from the projected modalities (JMT's joint one); none for MT."""
        return {}

    def __call__(self, inputs: Mapping[str, Array], *, train: bool = False
                 ) -> tuple[Array, dict]:
        """Returns logits and aux with ``features``, ``token_attention`` (B, W, heads, n, n) and
        ``token_weights`` (B, W, n): the attention each of ``self.token_names`` receives.

        ``inputs["valid"]`` (B, W), when given, masks padded frames out of the keys of the
        attention over time (docs/paper_setups.md, "Frame level").
        """
        feats = self.encode(inputs, train)
        b, w, _ = feats[self.modalities[0]].shape
        d = self.d_model
        seqs = {m: _dense(self.proj[m], feats[m]) for m in self.modalities}
        seqs.update(self.extra_streams(seqs))
        # With context, attention runs over the W frames of one clip, (B, W, d); without,
        # each frame is its own length-1 sequence, (B*W, 1, d). Never across clips.
        if self.context:
            bias = key_bias(inputs.get("valid"))
        else:  # a frame's only key is itself
            seqs = {s: x.reshape(b * w, 1, d) for s, x in seqs.items()}
            bias = None
        enc = {s: self.stream_enc[s](seqs[s], bias) for s in self.streams}
        if self.pairs:
            toks = [self.cross[f"{q}__{kv}"](enc[q], enc[kv], bias)[0] for q, kv in self.pairs]
        else:
            toks = [enc[s] for s in self.streams]
        # The n tokens of each frame form one short sequence: (B*W, n, d).
        toks = self.final_enc(jnp.stack([t.reshape(b * w, d) for t in toks], axis=1))
        # Mean over the n attended tokens (pooled before the output projection: same sum).
        fused, attn = self.final_attn.pooled(toks, toks)
        logits = self.head(fused.reshape(b, w, d), train=train)
        attn = attn.reshape(b, w, *attn.shape[1:])
        return logits, {"features": feats, "token_attention": attn,
                        "token_weights": attn.mean(axis=(2, 3))}


class MT(_CrossTransformer):
    """Multimodal transformer: cross-attention between every ordered pair of modalities."""

    # The trainer passes these batch keys too: padded frames are masked out of attention.
    extra_inputs = ("valid",)

    def __init__(self, modality_dims: Mapping[str, int], cfg: FusionConfig, *, rngs: nnx.Rngs):
        mods = _ordered(modality_dims)
        super().__init__(modality_dims, cfg, mods, tuple(itertools.permutations(mods, 2)),
                         rngs=rngs)


class JMT(_CrossTransformer):
    """Joint multimodal transformer: MT's pairs plus cross-attention to and from a joint
    stream, a linear map of the concatenated projected modalities."""

    extra_inputs = ("valid",)

    def __init__(self, modality_dims: Mapping[str, int], cfg: FusionConfig, *, rngs: nnx.Rngs):
        mods = _ordered(modality_dims)
        # For two modalities this is the reference's six: va, av, then jv, vj, ja, aj.
        pairs = tuple(itertools.permutations(mods, 2)) + tuple(
            p for m in mods for p in (("joint", m), (m, "joint")))
        super().__init__(modality_dims, cfg, mods + ("joint",), pairs, rngs=rngs)
        self.joint = nnx.Linear(len(mods) * cfg.d_model, cfg.d_model, rngs=rngs)

    def extra_streams(self, tokens: dict[str, Array]) -> dict[str, Array]:
        """The joint stream from the concatenation of every modality's projection."""
        joint = jnp.concatenate([tokens[m] for m in self.modalities], -1)
        return {"joint": _dense(self.joint, joint)}


Builder = Callable[[Mapping[str, int], FusionConfig, nnx.Rngs], nnx.Module]

FUSION_MODELS: dict[str, Builder] = {
    "can": lambda dims, cfg, rngs: CAN(dims, cfg, rngs=rngs),
    "lfan": lambda dims, cfg, rngs: LFAN(dims, cfg, rngs=rngs),
    "mt": lambda dims, cfg, rngs: MT(dims, cfg, rngs=rngs),
    "jmt": lambda dims, cfg, rngs: JMT(dims, cfg, rngs=rngs),
}


def build(name: str, modality_dims: Mapping[str, int], cfg: FusionConfig = FusionConfig(),
          seed: int = 0) -> nnx.Module:
    """The fusion model ``name`` (a key of :data:`FUSION_MODELS`) with seeded parameters and
    dropout streams; ``modality_dims`` maps each modality it will be given to its width."""
    if name not in FUSION_MODELS:
        raise KeyError(f"unknown fusion model {name!r}; known: {sorted(FUSION_MODELS)}")
    return FUSION_MODELS[name](dict(modality_dims), cfg,
                               nnx.Rngs(params=seed, dropout=seed + 1))
