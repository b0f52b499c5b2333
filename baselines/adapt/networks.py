"""The network every method shares, and full passes over a domain."""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ahjax.core.dropout import Dropout
from baselines.adapt.config import AdaptConfig
from baselines.adapt.domains import Domain, Inputs
from baselines.tcn import TCN  # the frame-level baseline's TCN, shared, not copied


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
        self.drop = Dropout(cfg.dropout, rngs=rngs)
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
