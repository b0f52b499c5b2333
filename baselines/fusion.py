"""The paper's frame-level fusion baselines: CAN, LFAN, MT and JMT over per-modality TCNs.

Every model takes ``{modality: (B, W, d_m)}`` for exactly the modalities it was built for
(any non-empty subset of video/audio/text, or other named modalities) and returns
``(logits (B, W, 2), aux)``. ``aux["features"]`` holds each modality's TCN output and the
other entries hold the fusion's weights or attention maps, so what a model looked at is
part of what it returns.

- **CAN**: per-modality linear to ``d_model``; a softmax gate over the concatenation of all
  projections (one weight per feature, summing to 1 over the frame); fc-BN-LeakyReLU-fc.
- **LFAN**: leader-follower attentive fusion. Each modality gives one query/key/value per
  frame; ``lfan_heads`` heads attend across the k modality tokens of that frame; the
  attended tokens (plus a residual) are projected and layer-normed, then concatenated with
  the leader's TCN features (video when present, else the first modality) and mapped to 2.
- **MT**: a transformer encoder per modality over the frames of one clip, cross-attention
  for every ordered pair of modalities over the frames of one clip, then a per-frame
  encoder and self-attention over the stacked cross-attended tokens of that frame.
- **JMT**: MT plus a joint token (a linear map of the concatenated modalities) that every
  modality cross-attends to and that cross-attends to every modality.

Two defects of the reference MT/JMT are not reproduced (DESIGN.md): they silently drop
the text modality, and their final attention, given a ``(frames x batch, k, d)`` tensor as
if it were sequence-first, attends across all frames of all clips in the batch, so one
clip's outputs depend on the others. Here every given modality is used, and the final
attention runs over the tokens of one frame (``(B*W, n_tokens, d)``); the temporal
attention runs over the frames of one clip only. In eval mode (BatchNorm on running
statistics) a clip's outputs never depend on the rest of the batch.

With ``FusionConfig.context=False`` (the paper's "no context" rows) each TCN becomes a
kernel-1 TCN, i.e. the same blocks, widths and norms applied to each frame alone, and MT/JMT
attend within a frame only, so frame t's logits depend on frame t's inputs alone.

Other departures, all small: MT/JMT project every modality to ``d_model`` (the reference
projects only its 64-wide audio) and mean-pool the final tokens (the reference keeps the
last token of a fixed two-modality order).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from baselines.tcn import TCN, TCNConfig

# Canonical modality order: fixes parameter layout, token order and LFAN's leader.
ORDER = ("video", "audio", "text")

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Hyperparameters of the fusion baselines; defaults are the paper's (DESIGN.md).

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
        """Check ``inputs`` against the built modalities and run each modality's encoder."""
        if set(inputs) != set(self.modalities):
            raise ValueError(f"{type(self).__name__} was built for modalities "
                             f"{list(self.modalities)}, got {sorted(inputs)}")
        shapes = {m: tuple(inputs[m].shape) for m in self.modalities}
        bw = {s[:2] for s in shapes.values()}
        if any(len(s) != 3 for s in shapes.values()) or len(bw) != 1:
            raise ValueError(f"inputs must all be (B, W, d) with the same B and W: {shapes}")
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
        h = self.norm(self.fc1(x), use_running_average=not train)
        return self.fc2(jax.nn.leaky_relu(h, self.negative_slope))


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
        self.drop = nnx.Dropout(cfg.lfan_dropout, rngs=rngs)
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


class Attention(nnx.Module):
    """Multi-head attention ``(N, S, d), (N, T, d) -> (N, S, d)`` that returns its weights."""

    def __init__(self, d: int, heads: int, *, rngs: nnx.Rngs):
        if d % heads:
            raise ValueError(f"width {d} must divide into {heads} heads")
        self.q, self.k, self.v, self.o = (_linear(d, d, rngs) for _ in range(4))
        self.heads = heads

    def __call__(self, xq: Array, xkv: Array) -> tuple[Array, Array]:
        """Returns the attended values and the weights (N, heads, S, T)."""
        n, s, d = xq.shape
        hd = d // self.heads
        split = lambda x: x.reshape(x.shape[0], x.shape[1], self.heads, hd)
        q, k, v = split(self.q(xq)), split(self.k(xkv)), split(self.v(xkv))
        weights = jax.nn.softmax(jnp.einsum("nshd,nthd->nhst", q, k) / math.sqrt(hd), -1)
        out = jnp.einsum("nhst,nthd->nshd", weights, v).reshape(n, s, d)
        return self.o(out), weights


class EncoderLayer(nnx.Module):
    """Post-norm transformer layer (self-attention, ReLU MLP), no dropout, as the reference."""

    def __init__(self, d: int, heads: int, ff_dim: int, *, rngs: nnx.Rngs):
        self.attn = Attention(d, heads, rngs=rngs)
        self.norm1 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
        self.ff1 = nnx.Linear(d, ff_dim, rngs=rngs)
        self.ff2 = nnx.Linear(ff_dim, d, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        """(N, S, d) -> (N, S, d), attending over the S axis only."""
        x = self.norm1(x + self.attn(x, x)[0])
        return self.norm2(x + self.ff2(jax.nn.relu(self.ff1(x))))


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
        """Returns logits and aux with ``features``, ``token_attention`` (B, W, heads, n, n),
        the final per-frame self-attention over the n tokens named by ``self.token_names``,
        and ``token_weights`` (B, W, n): the attention each token receives, averaged."""
        feats = self.encode(inputs, train)
        b, w, _ = feats[self.modalities[0]].shape
        d = self.d_model
        seqs = {m: self.proj[m](feats[m]) for m in self.modalities}
        seqs.update(self.extra_streams(seqs))
        # With context, attention runs over the W frames of one clip, (B, W, d); without,
        # each frame is its own length-1 sequence, (B*W, 1, d). Never across clips.
        shape = (b, w, d) if self.context else (b * w, 1, d)
        enc = {s: self.stream_enc[s](seqs[s].reshape(shape)) for s in self.streams}
        if self.pairs:
            toks = [self.cross[f"{q}__{kv}"](enc[q], enc[kv])[0] for q, kv in self.pairs]
        else:
            toks = [enc[s] for s in self.streams]
        # The k tokens of each frame form one short sequence: (B*W, n, d).
        toks = self.final_enc(jnp.stack([t.reshape(b * w, d) for t in toks], axis=1))
        fused, attn = self.final_attn(toks, toks)
        logits = self.head(fused.mean(axis=1).reshape(b, w, d), train=train)
        attn = attn.reshape(b, w, *attn.shape[1:])
        return logits, {"features": feats, "token_attention": attn,
                        "token_weights": attn.mean(axis=(2, 3))}


class MT(_CrossTransformer):
    """Multimodal transformer: cross-attention between every ordered pair of modalities."""

    def __init__(self, modality_dims: Mapping[str, int], cfg: FusionConfig, *, rngs: nnx.Rngs):
        mods = _ordered(modality_dims)
        super().__init__(modality_dims, cfg, mods, tuple(itertools.permutations(mods, 2)),
                         rngs=rngs)


class JMT(_CrossTransformer):
    """Joint multimodal transformer: MT's pairs plus cross-attention to and from a joint
    stream, a linear map of the concatenated projected modalities."""

    def __init__(self, modality_dims: Mapping[str, int], cfg: FusionConfig, *, rngs: nnx.Rngs):
        mods = _ordered(modality_dims)
        # For two modalities this is the reference's six: va, av, then jv, vj, ja, aj.
        pairs = tuple(itertools.permutations(mods, 2)) + tuple(
            p for m in mods for p in (("joint", m), (m, "joint")))
        super().__init__(modality_dims, cfg, mods + ("joint",), pairs, rngs=rngs)
        self.joint = nnx.Linear(len(mods) * cfg.d_model, cfg.d_model, rngs=rngs)

    def extra_streams(self, tokens: dict[str, Array]) -> dict[str, Array]:
        """The joint stream from the concatenation of every modality's projection."""
        return {"joint": self.joint(jnp.concatenate([tokens[m] for m in self.modalities], -1))}


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
