"""The paper's per-modality temporal convolutional network (TCN) and its concat-fusion head.

Each modality goes through its own TCN: blocks of two weight-normed *causal* 1-D
convolutions (kernel 5, dilation 2^i in block i), LeakyReLU and dropout, with a residual
connection (a 1x1 convolution when the width changes), then BatchNorm over the last
block's channels. :class:`ConcatTCN` concatenates the per-modality features of each frame
and maps them to two logits. Inputs are dicts ``{modality: (B, T, d)}``; outputs
``(logits (B, T, 2), aux)`` with the per-modality features in ``aux["features"]``.

Causal means the output at frame t depends on frames <= t only, so a window's zero
padding (always at the end) never changes the predictions of real frames.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from ahjax.core.dropout import Dropout
from ahjax.core.data.windows import Windows
from ahjax.core.train import trainer as trainer_lib

# The paper's widths per modality (docs/paper_setups.md).
CHANNELS = {
    "video": (256, 256, 128, 128, 128),
    "audio": (128, 128, 64, 64),
    "text": (256, 256, 128, 128),
}

# PyTorch's default Conv1d init (kaiming-uniform with a=sqrt(5) is variance 1/(3 fan_in)),
# which is what the reference ends up with: its normal(0, 0.01) re-init is applied to the
# derived `weight` of a weight-normed conv and is overwritten at the first forward pass.
_torch_default = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class TCNConfig:
    """Hyperparameters of the per-modality TCNs; widths default to the paper's."""
    kernel_size: int = 5
    dropout: float = 0.1
    negative_slope: float = 0.01
    video: tuple[int, ...] = CHANNELS["video"]
    audio: tuple[int, ...] = CHANNELS["audio"]
    text: tuple[int, ...] = CHANNELS["text"]

    def channels(self, modality: str) -> tuple[int, ...]:
        """Block widths of ``modality`` (the text widths for any other named modality)."""
        return tuple(getattr(self, modality, self.text))


class WeightNormConv1D(nnx.Module):
    """Causal dilated 1-D convolution with weight norm: ``w = g * v / ||v||`` per output channel."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, dilation: int,
                 *, rngs: nnx.Rngs):
        k_v, k_b = rngs.params(), rngs.params()
        v = _torch_default(k_v, (kernel_size, in_features, out_features), jnp.float32)
        self.v = nnx.Param(v)
        # g starts at ||v|| so the effective weight equals v at initialisation (as torch does).
        self.g = nnx.Param(jnp.sqrt(jnp.sum(v ** 2, axis=(0, 1))))
        bound = 1.0 / (kernel_size * in_features) ** 0.5
        self.bias = nnx.Param(jax.random.uniform(k_b, (out_features,), jnp.float32, -bound, bound))
        self.kernel_size, self.dilation = kernel_size, dilation

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, T, in) -> (B, T, out); frame t sees frames t - dilation*(kernel-1) .. t."""
        v = self.v[...]
        w = self.g[...] * v / jnp.sqrt(jnp.sum(v ** 2, axis=(0, 1)) + 1e-12)
        left = self.dilation * (self.kernel_size - 1)
        # Padding on the left only is what makes it causal (the reference pads both sides
        # and chops the right, which is the same thing done with more memory).
        y = jax.lax.conv_general_dilated(
            x, w.astype(x.dtype), window_strides=(1,), padding=[(left, 0)],
            rhs_dilation=(self.dilation,), dimension_numbers=("NWC", "WIO", "NWC"))
        return y + self.bias[...]


class TemporalBlock(nnx.Module):
    """Two weight-normed causal convs with LeakyReLU and dropout, plus a residual path."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, dilation: int,
                 dropout: float, negative_slope: float, *, rngs: nnx.Rngs):
        self.conv1 = WeightNormConv1D(in_features, out_features, kernel_size, dilation, rngs=rngs)
        self.conv2 = WeightNormConv1D(out_features, out_features, kernel_size, dilation, rngs=rngs)
        self.drop1 = Dropout(dropout, rngs=rngs)
        self.drop2 = Dropout(dropout, rngs=rngs)
        self.down = (nnx.Conv(in_features, out_features, kernel_size=(1,), rngs=rngs)
                     if in_features != out_features else None)
        self.negative_slope = negative_slope

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """(B, T, in) -> (B, T, out)."""
        act = lambda h: jax.nn.leaky_relu(h, self.negative_slope)
        h = self.drop1(act(self.conv1(x)), deterministic=not train)
        h = self.drop2(act(self.conv2(h)), deterministic=not train)
        res = x if self.down is None else self.down(x)
        return act(h + res)


class TCN(nnx.Module):
    """A stack of :class:`TemporalBlock` (dilation 2^i) followed by BatchNorm."""

    def __init__(self, in_features: int, channels: Sequence[int], *, kernel_size: int = 5,
                 dropout: float = 0.1, negative_slope: float = 0.01, rngs: nnx.Rngs):
        if not channels:
            raise ValueError("a TCN needs at least one block width")
        widths = [in_features, *channels]
        self.blocks = nnx.List([
            TemporalBlock(widths[i], widths[i + 1], kernel_size, 2 ** i, dropout,
                          negative_slope, rngs=rngs)
            for i in range(len(channels))])
        # momentum 0.9 in flax is torch's BatchNorm1d momentum 0.1.
        self.norm = nnx.BatchNorm(channels[-1], momentum=0.9, rngs=rngs)
        self.in_features, self.out_features = in_features, channels[-1]
        self.receptive_field = 1 + 2 * (kernel_size - 1) * (2 ** len(channels) - 1)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """(B, T, in_features) -> (B, T, channels[-1])."""
        if x.ndim != 3 or x.shape[-1] != self.in_features:
            raise ValueError(f"TCN expects (B, T, {self.in_features}), got {x.shape}")
        for block in self.blocks:
            x = block(x, train=train)
        return self.norm(x, use_running_average=not train)


class ConcatTCN(nnx.Module):
    """One TCN per modality, features concatenated per frame, a linear layer to 2 logits."""

    def __init__(self, in_dims: Mapping[str, int], cfg: TCNConfig = TCNConfig(), *,
                 rngs: nnx.Rngs):
        if not in_dims:
            raise ValueError("ConcatTCN needs at least one modality")
        self.modalities = tuple(sorted(in_dims))
        # A tuple, not a dict: static attributes must be hashable for jit caching.
        self.in_dims = tuple((m, int(in_dims[m])) for m in self.modalities)
        self.tcns = nnx.Dict({
            m: TCN(int(in_dims[m]), cfg.channels(m), kernel_size=cfg.kernel_size,
                   dropout=cfg.dropout, negative_slope=cfg.negative_slope, rngs=rngs)
            for m in self.modalities})
        width = sum(self.tcns[m].out_features for m in self.modalities)
        self.head = nnx.Linear(width, 2, rngs=rngs)

    def __call__(self, inputs: Mapping[str, jax.Array], *, train: bool = False
                 ) -> tuple[jax.Array, dict]:
        """``{modality: (B, T, d)}`` -> ``(logits (B, T, 2), {"features": {modality: (B, T, c)}})``.

        Every configured modality must be given, and nothing else: a silently ignored
        modality is the bug the reference MT/JMT have with text.
        """
        if set(inputs) != set(self.modalities):
            raise ValueError(f"ConcatTCN was built for modalities {list(self.modalities)}, "
                             f"got {sorted(inputs)}")
        feats = {m: self.tcns[m](inputs[m], train=train) for m in self.modalities}
        shapes = {m: f.shape[:2] for m, f in feats.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"modalities disagree on (batch, frames): {shapes}")
        logits = self.head(jnp.concatenate([feats[m] for m in self.modalities], axis=-1))
        chex.assert_shape(logits, (*next(iter(shapes.values())), 2))
        return logits, {"features": feats}


def concat_tcn(in_dims: Mapping[str, int], cfg: TCNConfig = TCNConfig(), seed: int = 0
               ) -> ConcatTCN:
    """A :class:`ConcatTCN` with parameters and dropout streams seeded from ``seed``."""
    return ConcatTCN(in_dims, cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


METHOD = "concat_tcn"


def _numbers(metrics: dict) -> dict:
    # Results tables hold numbers only; the confusion matrix is a nested list.
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def train_concat_tcn(store, spec: dict, model: TCNConfig, windows, train, workdir,
                     splits: Sequence[str] = ("train", "val", "test")) -> dict:
    """Train a :class:`ConcatTCN` on ``store`` (``spec``: modality -> arrays) with the
    trainer, keep the best epoch by val AP, score val and test with the paper's frame
    metrics; returns ``{"val": {METHOD: ...}, "test": {...}, "training": ..., "notes": ...}``."""
    train_split, val_split, test_split = splits

    def build(dims, rngs):
        return ConcatTCN(dims, model, rngs=rngs)

    res = trainer_lib.train(build, store, spec, windows, train, Path(workdir),
                            train_split=train_split, val_split=val_split)
    results = {"val": {METHOD: _numbers(res.best_val)}, "test": {}}
    if store.video_ids(test_split):
        test_windows = Windows(store, spec, test_split, window=windows.window,
                               hop=train.eval_hop or windows.window, stats=res.stats)
        test, _ = trainer_lib.evaluate(res.model, test_windows, batch_size=windows.batch_size,
                                       mesh=trainer_lib.make_mesh(train.num_devices))
        results["test"][METHOD] = _numbers(test)
    results["training"] = {"best_epoch": res.best_epoch, "epochs": len(res.history),
                           "modalities": "+".join(spec)}
    results["notes"] = [
        f"{METHOD}: modalities {'+'.join(spec)}; best epoch {res.best_epoch} by val AP.",
        "Padded frames of a video's last window are excluded from loss and metrics.",
    ]
    return results

