"""Losses of the adaptation methods."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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
