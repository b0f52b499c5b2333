"""Dropout for the models above the core.

:class:`Dropout` is flax's ``nnx.Dropout`` (same arguments, ``rngs`` streams, ``train()`` /
``eval()`` and ``deterministic`` handling) with a cheaper mask. flax draws one 32-bit
uniform float per element from the key's threefry stream; on a CPU those draws are a large
share of a small model's training step (about a fifth of CAN's, ``docs/performance.md``).
Here each call takes two 32-bit words from the layer's threefry stream as a key and hashes
the element index with them (:func:`keep_mask`): murmur3's 32-bit finaliser, a bijection
whose every output bit depends on every input bit, over the index permuted by the key. Each
hashed word gives two elements a 16-bit draw, compared with an integer threshold: XLA fuses
the whole mask into the select, with no random array in memory. The rate is applied in
steps of 1/65536 (0.1 drops with probability 6554/65536 = 0.100006) and the kept values are
scaled by the inverse of that exact keep probability, so the expected output equals the
input. The masks are for regularisation, not for statistics or cryptography.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

LEVELS = 1 << 16   # one mask draw: 16 bits


def drop_threshold(rate: float) -> int:
    """The 16-bit draws below this are dropped: ``rate`` rounded to a step of 1/65536."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"dropout rate {rate}: must be in [0, 1]")
    return min(LEVELS, round(rate * LEVELS))


def _fmix32(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser (uint32 -> uint32, a bijection with full avalanche)."""
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def keep_mask(key: jax.Array, rate: float, shape: Sequence[int]) -> jax.Array:
    """A boolean mask of ``shape``, each element kept with probability
    ``1 - drop_threshold(rate) / 65536``: 16-bit halves of ``fmix32((i ^ k1) * phi + k0)``
    over the word index ``i < ceil(n / 2)``, with ``(k0, k1)`` two words of ``key``."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    k = jax.random.bits(key, (2,), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, (n + 1) // 2)
    words = _fmix32((index ^ k[1]) * jnp.uint32(0x9E3779B9) + k[0])
    draws = jnp.concatenate([words & 0xFFFF, words >> 16])[:n]
    return (draws >= drop_threshold(rate)).reshape(shape)


class Dropout(nnx.Dropout):
    """``nnx.Dropout`` with hashed 16-bit mask draws (see the module docstring)."""

    def __init__(self, rate: float, **kwargs):
        drop_threshold(rate)   # a rate outside [0, 1] fails here, not at the first step
        super().__init__(rate, **kwargs)

    def __call__(self, inputs, *, deterministic: bool | None = None,
                 rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None) -> jax.Array:
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic is None:
            raise ValueError("Dropout: no `deterministic` given, at construction, at call or "
                             "through model.train() / model.eval()")
        threshold = drop_threshold(self.rate)
        if threshold == 0 or deterministic:
            return inputs
        if threshold == LEVELS:
            return jnp.zeros_like(inputs)
        rngs = self.rngs if rngs is None else rngs
        if isinstance(rngs, nnx.Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, nnx.RngStream):
            key = rngs()
        elif isinstance(rngs, jax.Array):
            key = rngs
        else:
            raise TypeError("Dropout: training (deterministic=False) needs rngs: a Rngs, "
                            f"RngStream or key, at construction or at call; got {type(rngs)}")
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        mask = jnp.broadcast_to(keep_mask(key, self.rate, shape), inputs.shape)
        scale = jnp.asarray(LEVELS / (LEVELS - threshold), inputs.dtype)
        return jax.lax.select(mask, inputs * scale, jnp.zeros_like(inputs))
