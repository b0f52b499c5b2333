"""The two-level A/H model: conflict features -> per-group temporal models -> additive score.

Each frame's A/H score is, exactly,

    score = sum over active groups g of contribution_g + remainder + bias

where each named contribution comes from a small dilated TCN that sees only its own
feature group, the remainder (off with ``use_remainder=False``) is a TCN over all active
features and the affect tracks, and the bias is one scalar. Logits are ``[-score/2,
score/2]`` so ``softmax(logits)[..., 1] == sigmoid(score)``. With ``inputs["cues"]``
(columns :data:`CUES`) the model adds a cue-supervision loss. docs/two_level.md ("The
additive model", "Cue supervision") explains both.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from ahjax.core.dropout import Dropout
from level1_affect.schema import ARRAYS
from level2_conflict import features as feats
from level2_conflict import hsmm

Array = jax.Array

CUES = ("audio", "body", "facial", "inconsistencies", "language")
# Batch keys under which ``TwoLevelModel`` accepts precomputed affect tracks (B, W, 3).
AFFECT_KEYS = {m: f"affect_{m}" for m in feats.MODALITIES}
# Name of the remainder branch in ``aux["hidden"]``.
REMAINDER = "remainder"
# Which named contributions each annotator cue should drive.
CUE_GROUPS = {
    "audio": ("within_voice", "face_voice", "voice_text"),
    "body": (),
    "facial": ("within_face", "face_voice", "face_text"),
    "inconsistencies": feats.CROSS_GROUPS,
    "language": ("within_text", "face_text", "voice_text"),
}


@dataclasses.dataclass(frozen=True)
class TwoLevelConfig:
    """Hyperparameters of :class:`TwoLevelModel` (all ablations are flags here)."""
    fps: float = 30.0                 # used when inputs carry no per-window "fps"
    scales: tuple = feats.SCALES_S    # conflict-feature time scales, seconds
    hidden: int = 16                  # TCN channels per branch
    n_blocks: int = 4                 # dilations 1, 2, 4, ... 2^(n_blocks-1)
    kernel: int = 3
    # False: centred convolutions and windows (offline analysis); True: the past only
    # (causal convolutions, conflict features and running statistics), for live use.
    causal: bool = False
    dropout: float = 0.1
    use_cross: bool = True            # face_voice, face_text, voice_text branches
    use_within: bool = True           # within_face, within_voice, within_text branches
    use_remainder: bool = True
    use_embeddings: bool = False      # feed projected embeddings to the remainder
    emb_keys: tuple = ("face_blend", "voice_emb", "text_emb")
    emb_dim: int = 8                  # projection width per embedding
    use_cues: bool = False            # ask the trainer for "cues"/"cue_mask" batch keys
    cue_weight: float = 0.1           # weight of the cue auxiliary loss
    remainder_l2: float = 0.0         # penalty on mean remainder^2 (added to aux_loss)
    # Bias-free branches: a group whose features are all zero (no evidence) contributes
    # exactly 0, so deleting a group's evidence removes exactly its contribution.
    zero_baseline: bool = True
    # Training only: each window drops each named group's contribution with this
    # probability (kept ones scaled by 1/(1-p)), so no group can lean on another's presence.
    group_dropout: float = 0.0
    # Keep the joint-coverage columns (conf@S: both modalities present) in the cross-modal
    # groups; without them a cross-modal term can only read disagreement, not presence.
    cross_coverage: bool = True
    # Weight of the semi-Markov CRF loss (hsmm.semi_markov_nll: the labelled frames'
    # likelihood under the duration prior), added to the frame loss when the batch
    # carries "labels", "log_dur" and "log_surv" (multirun.train_runs does, given
    # duration priors). 0: frame cross-entropy only, the prior used in decoding alone.
    crf_weight: float = 0.0

    def __post_init__(self):
        if not (self.use_cross or self.use_within):
            raise ValueError("TwoLevelConfig: use_cross and use_within are both False: the "
                             "model would have no named group; enable at least one")
        if self.hidden < 1 or self.n_blocks < 1 or self.kernel < 1:
            raise ValueError(f"TwoLevelConfig: hidden ({self.hidden}), n_blocks "
                             f"({self.n_blocks}) and kernel ({self.kernel}) must be >= 1")
        if not self.crf_weight >= 0.0:
            raise ValueError(f"TwoLevelConfig: crf_weight must be >= 0, got {self.crf_weight}")
        for name in ("dropout", "group_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TwoLevelConfig: {name} must be in [0, 1), got "
                                 f"{getattr(self, name)}")


class DilatedConv(nnx.Module):
    """1-D dilated convolution over axis -2 of ``(..., W, C)`` as one matmul over the
    ``kernel`` shifted views (zero-padded: centred, or causal). The same function as
    ``nnx.Conv`` with ``padding="SAME"``/``"CAUSAL"``, and the same kernel layout
    ``(kernel, in, out)``; written as a matmul because XLA's CPU backend runs batched
    matmuls far faster than small convolutions, above all under ``vmap`` over models."""

    def __init__(self, in_features: int, out_features: int, kernel: int, dilation: int, *,
                 causal: bool, use_bias: bool, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (kernel, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None
        self.dilation, self.causal = dilation, causal

    @property
    def span(self) -> int:
        """Frames of context the convolution reads beyond its output's frames."""
        return (self.kernel.shape[0] - 1) * self.dilation

    def __call__(self, x: Array) -> Array:
        span = self.span
        left = span if self.causal else span // 2
        pad = [(0, 0)] * (x.ndim - 2) + [(left, span - left), (0, 0)]
        return self.padded(jnp.pad(x, pad))

    def padded(self, xp: Array) -> Array:
        """The output for an input already carrying its ``span`` frames of context
        (``(..., w + span, C)`` -> ``(..., w, C_out)``): a stream passes the previous
        chunk's last frames instead of zeros."""
        k, c_in, c_out = self.kernel.shape
        w = xp.shape[-2] - self.span
        views = [xp[..., j * self.dilation: j * self.dilation + w, :] for j in range(k)]
        y = jnp.concatenate(views, -1) @ self.kernel[...].reshape(k * c_in, c_out)
        return y + self.bias[...] if self.bias is not None else y


class TCN(nnx.Module):
    """Per-frame scalar from a ``(B, W, k)`` sequence: input projection, residual dilated
    convolution blocks (conv -> GELU -> dropout -> 1x1), scalar read-out without bias (the
    model's single bias carries the offset). ``__call__(x) == readout(hidden(x))``."""

    def __init__(self, in_features: int, cfg: TwoLevelConfig, *, rngs: nnx.Rngs,
                 use_bias: bool = True):
        h = cfg.hidden
        self.inp = nnx.Linear(in_features, h, use_bias=use_bias, rngs=rngs)
        self.convs = nnx.List([
            DilatedConv(h, h, cfg.kernel, 2 ** i, causal=cfg.causal, use_bias=use_bias,
                        rngs=rngs)
            for i in range(cfg.n_blocks)])
        self.mixes = nnx.List([nnx.Linear(h, h, use_bias=use_bias, rngs=rngs)
                               for _ in range(cfg.n_blocks)])
        self.drop = Dropout(cfg.dropout, rngs=rngs)
        self.out = nnx.Linear(h, 1, use_bias=False, rngs=rngs)

    def hidden(self, x: Array, mask: Array, *, train: bool) -> Array:
        """The body's output before the read-out: ``x`` (B, W, k), ``mask`` (B, W) ->
        (B, W, hidden), zero on masked frames."""
        m = mask[..., None]
        # Re-mask after every block so padding never leaks into real frames through
        # the convolutions' receptive field.
        h = self.inp(x) * m
        for conv, mix in zip(self.convs, self.mixes):
            y = self.drop(nnx.gelu(conv(h)), deterministic=not train)
            h = (h + mix(y)) * m
        return h

    def readout(self, h: Array) -> Array:
        """The scalar read-out of a :meth:`hidden` state: (B, W, hidden) -> (B, W)."""
        return self.out(h)[..., 0]

    def __call__(self, x: Array, mask: Array, *, train: bool) -> Array:
        """``x`` (B, W, k), ``mask`` (B, W) -> (B, W)."""
        return self.readout(self.hidden(x, mask, train=train))


def _emb_width(key: str, emb_dims: dict) -> int:
    if key in emb_dims:
        return int(emb_dims[key])
    width = ARRAYS.get(key, (None,))[0]
    if width is None:
        raise ValueError(f"embedding {key!r}: width unknown; pass emb_dims={{{key!r}: d}}")
    return width


class TwoLevelModel(nnx.Module):
    """Conflict features + additive per-group TCNs: ``__call__(inputs, *, train) ->
    (logits (B, W, 2), aux)`` with ``aux`` holding ``contributions``, ``remainder``,
    ``bias``, ``score``, ``features``, ``affect``, ``hidden`` and any ``aux_loss``.
    ``inputs``: level-1 tracks (B, W, d) in level-1 units, or precomputed groups and affect
    tracks, and ``valid``/``mask``; docs/two_level.md ("Model inputs and outputs")."""

    def __init__(self, cfg: TwoLevelConfig = TwoLevelConfig(), *,
                 emb_dims: dict | None = None, rngs: nnx.Rngs):
        self.cfg = cfg
        self.extra_inputs = ("valid",) + (("cues", "cue_mask") if cfg.use_cues else ())
        columns = feats.feature_columns(cfg.scales)
        if not cfg.cross_coverage:
            columns = {g: tuple(c for c in cols if not (g in feats.CROSS_GROUPS
                                                        and c.startswith("conf@")))
                       for g, cols in columns.items()}
        full = feats.feature_columns(cfg.scales)
        # Which of each group's computed columns the model reads (all, by default), as
        # hashable (group, ...) pairs: module attributes are static in the graph definition.
        self.columns = tuple((g, columns[g]) for g in feats.GROUPS)
        self._keep = tuple((g, tuple(full[g].index(c) for c in columns[g])) for g in feats.GROUPS)
        self.groups = tuple(g for g in feats.GROUPS
                            if (g in feats.CROSS_GROUPS and cfg.use_cross)
                            or (g in feats.WITHIN_GROUPS and cfg.use_within))
        self.branches = nnx.Dict({g: TCN(len(columns[g]), cfg, rngs=rngs,
                                         use_bias=not cfg.zero_baseline)
                                  for g in self.groups})
        self.emb_keys = tuple(cfg.emb_keys) if cfg.use_embeddings else ()
        self.emb_proj = nnx.Dict({k: nnx.Linear(_emb_width(k, emb_dims or {}), cfg.emb_dim,
                                                rngs=rngs) for k in self.emb_keys})
        n_rem = (sum(len(columns[g]) for g in self.groups) + 3 * len(feats.MODALITIES)
                 + cfg.emb_dim * len(self.emb_keys))
        self.remainder = TCN(n_rem, cfg, rngs=rngs) if cfg.use_remainder else None
        self.bias = nnx.Param(jnp.zeros(()))
        # One keep/drop draw per (window, group), shared by the window's frames.
        self.group_drop = Dropout(cfg.group_dropout, broadcast_dims=(1,), rngs=rngs)
        self.cue_scale = nnx.Param(jnp.zeros((len(CUES),)))
        self.cue_offset = nnx.Param(jnp.zeros((len(CUES),)))

    def features(self, inputs: dict, mask: Array) -> tuple[dict, dict]:
        """(active feature groups, affect tracks) for ``inputs``, using precomputed
        groups (``inputs[group]``) and affect tracks (``inputs[AFFECT_KEYS[m]]``, all
        three modalities) where ``inputs`` has them; either is masked as computed ones
        are (features zeroed, affect confidence multiplied by ``mask``)."""
        fps = inputs.get("fps", self.cfg.fps)
        if all(k in inputs for k in AFFECT_KEYS.values()):
            affect = {m: jnp.asarray(inputs[k], jnp.float32).at[..., 2].multiply(mask)
                      for m, k in AFFECT_KEYS.items()}
        else:
            affect = feats.affect_tracks(inputs, mask, causal=self.cfg.causal)
        if all(g in inputs for g in self.groups):
            groups = {g: jnp.asarray(inputs[g], jnp.float32) * mask[..., None]
                      for g in self.groups}
        else:
            groups = feats.conflict_features(inputs, fps, mask, self.cfg.scales,
                                             causal=self.cfg.causal)
            groups = {g: groups[g] for g in self.groups}
        if not self.cfg.cross_coverage:
            keep = dict(self._keep)
            groups = {g: x[..., list(keep[g])] if x.shape[-1] != len(keep[g]) else x
                      for g, x in groups.items()}
        return groups, affect

    def __call__(self, inputs: dict, *, train: bool = False) -> tuple[Array, dict]:
        """Frame logits ``(B, W, 2)`` and the ``aux`` dict (class docstring)."""
        ref = self._reference(inputs)
        if ref.ndim != 3:
            raise ValueError(f"TwoLevelModel expects (B, W, d) tracks, got shape {ref.shape}")
        # "valid" (every real frame) beats "mask" (real and labelled): unlabelled frames
        # still carry real evidence for the windows around them.
        mask = inputs.get("valid", inputs.get("mask", jnp.ones(ref.shape[:2])))
        mask = jnp.asarray(mask, jnp.float32)
        groups, affect = self.features(inputs, mask)

        hidden = {g: self.branches[g].hidden(groups[g], mask, train=train) for g in self.groups}
        contributions = {g: self.branches[g].readout(hidden[g]) for g in self.groups}
        if train and self.cfg.group_dropout > 0:
            kept = self.group_drop(jnp.stack([contributions[g] for g in self.groups], -1),
                                   deterministic=False)
            contributions = {g: kept[..., i] for i, g in enumerate(self.groups)}
        if self.remainder is not None:
            parts = [groups[g] for g in self.groups] + [affect[m] for m in feats.MODALITIES]
            for k in self.emb_keys:
                if k not in inputs:
                    raise KeyError(f"use_embeddings is on but inputs have no {k!r}")
                parts.append(self.emb_proj[k](jnp.asarray(inputs[k], jnp.float32)))
            hidden[REMAINDER] = self.remainder.hidden(jnp.concatenate(parts, -1), mask,
                                                      train=train)
            remainder = self.remainder.readout(hidden[REMAINDER])
        else:
            remainder = jnp.zeros(mask.shape)
        bias = self.bias[...]
        score = sum(contributions.values(), remainder) + bias
        logits = jnp.stack([-score / 2, score / 2], -1)
        # The contract the explanation rests on: one (B, W) term per named group.
        chex.assert_shape([*contributions.values(), remainder, score], mask.shape)
        chex.assert_shape(logits, (*mask.shape, 2))

        aux = {"contributions": contributions, "remainder": remainder, "bias": bias,
               "score": score, "features": groups, "affect": affect, "hidden": hidden}
        losses = []
        if "cues" in inputs:
            losses.append(self.cfg.cue_weight * self.cue_loss(
                contributions, inputs["cues"], inputs.get("cue_mask", mask)))
        if self.cfg.crf_weight > 0 and all(k in inputs for k in ("labels", "log_dur")):
            losses.append(self.cfg.crf_weight * hsmm.semi_markov_nll(
                score, inputs["labels"], mask, inputs["log_dur"], inputs.get("log_surv")))
        if self.cfg.remainder_l2 > 0 and self.remainder is not None:
            losses.append(self.cfg.remainder_l2 * jnp.sum(remainder ** 2 * mask)
                          / jnp.maximum(jnp.sum(mask), 1.0))
        if losses:
            aux["aux_loss"] = sum(losses)
        return logits, aux

    def _reference(self, inputs: dict) -> Array:
        """An array of ``inputs`` with the (B, W) frame axes in front: a level-1 track,
        else a precomputed affect track or feature group."""
        try:
            return feats._reference(inputs)
        except ValueError:
            for k in (*AFFECT_KEYS.values(), *self.groups):
                if k in inputs:
                    return jnp.asarray(inputs[k])
            raise

    def cue_loss(self, contributions: dict, cues: Array, cue_mask: Array) -> Array:
        """Masked mean binary cross-entropy of the per-cue read-outs (module docstring).

        ``cues`` (B, W, 5) in :data:`CUES` order; ``cue_mask`` (B, W) or (B, W, 5).
        Cues whose groups are all ablated away are skipped.
        """
        cues = jnp.asarray(cues, jnp.float32)
        if cues.shape[-1] != len(CUES):
            raise ValueError(f"cues must have {len(CUES)} columns {CUES}, got {cues.shape}")
        cue_mask = jnp.asarray(cue_mask, jnp.float32)
        if cue_mask.ndim == cues.ndim - 1:
            cue_mask = cue_mask[..., None]
        cue_mask = jnp.broadcast_to(cue_mask, cues.shape)
        total, weight = jnp.zeros(()), jnp.zeros(())
        for k, cue in enumerate(CUES):
            matching = [contributions[g] for g in CUE_GROUPS[cue] if g in contributions]
            if not matching:
                continue
            # Positive scale: a cue can only push its own branches up, never flip them.
            logit = (jax.nn.softplus(self.cue_scale[k]) * sum(matching)
                     + self.cue_offset[k])
            target = cues[..., k]
            bce = jax.nn.softplus(logit) - target * logit
            total = total + jnp.sum(bce * cue_mask[..., k])
            weight = weight + jnp.sum(cue_mask[..., k])
        return total / jnp.maximum(weight, 1.0)


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    state = nnx.state(model, nnx.Param)
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(state))
