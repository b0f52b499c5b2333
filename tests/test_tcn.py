"""The per-modality TCN and ConcatTCN: shapes, weight norm, causality, use of every modality."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from baselines import tcn

SMALL = tcn.TCNConfig(video=(8, 6, 6), audio=(4, 4), text=(6,), dropout=0.0)
DIMS = {"video": 5, "audio": 3, "text": 7}


def inputs(seed=0, b=2, t=40):
    keys = jax.random.split(jax.random.key(seed), len(DIMS))
    return {m: jax.random.normal(k, (b, t, d)) for k, (m, d) in zip(keys, sorted(DIMS.items()))}


def test_shapes_and_features():
    model = tcn.concat_tcn(DIMS, SMALL)
    logits, aux = model(inputs(), train=False)
    assert logits.shape == (2, 40, 2)
    assert {m: f.shape for m, f in aux["features"].items()} == {
        "video": (2, 40, 6), "audio": (2, 40, 4), "text": (2, 40, 6)}
    assert np.all(np.isfinite(np.asarray(logits)))
    # Paper widths are the defaults.
    assert tcn.TCNConfig().channels("video") == (256, 256, 128, 128, 128)
    assert tcn.TCNConfig().channels("audio") == (128, 128, 64, 64)


def test_weight_norm_uses_direction_and_gain():
    conv = tcn.WeightNormConv1D(3, 4, 5, 1, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (1, 12, 3))
    y = conv(x)
    conv.v[...] = conv.v[...] * 7.0  # scaling v alone must not change the output
    np.testing.assert_allclose(conv(x), y, rtol=1e-5, atol=1e-6)
    conv.g[...] = conv.g[...] * 2.0
    np.testing.assert_allclose(conv(x) - conv.bias[...], 2 * (y - conv.bias[...]),
                               rtol=1e-5, atol=1e-5)


def test_causal_output_ignores_future_frames():
    model = tcn.concat_tcn(DIMS, SMALL)
    x = inputs(t=50)
    base, _ = model(x, train=False)
    t = 23
    changed = {m: v.at[:, t + 1:].set(jax.random.normal(jax.random.key(9), v[:, t + 1:].shape))
               for m, v in x.items()}
    out, _ = model(changed, train=False)
    np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-6)
    assert not np.allclose(out[:, t + 1:], base[:, t + 1:])
    # ... but it does look into the past, within the receptive field.
    past = {m: v.at[:, t - 3].add(1.0) for m, v in x.items()}
    out, _ = model(past, train=False)
    assert not np.allclose(out[:, t], base[:, t])


def test_every_modality_changes_the_output():
    model = tcn.concat_tcn(DIMS, SMALL)
    x = inputs()
    base, _ = model(x, train=False)
    for m in DIMS:
        out, _ = model({**x, m: x[m] + 1.0}, train=False)
        assert float(jnp.abs(out - base).max()) > 1e-4, m
    with pytest.raises(ValueError, match="modalities"):
        model({k: v for k, v in x.items() if k != "text"}, train=False)


def test_train_mode_updates_batch_stats_and_uses_dropout():
    model = tcn.concat_tcn({"text": 4}, tcn.TCNConfig(text=(6, 6), dropout=0.5))
    x = {"text": jax.random.normal(jax.random.key(0), (2, 16, 4)) + 2.0}
    before = model.tcns["text"].norm.mean[...].copy()
    a, _ = model(x, train=True)
    b, _ = model(x, train=True)
    assert not np.allclose(a, b)  # fresh dropout masks
    assert not np.allclose(model.tcns["text"].norm.mean[...], before)
    c, _ = model(x, train=False)
    d, _ = model(x, train=False)
    np.testing.assert_array_equal(c, d)
