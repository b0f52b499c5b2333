"""Frame-level fusion baselines (CAN, LFAN, MT, JMT): shapes, use of every modality, batch
independence, temporal context, one real optimisation, and parameter counts at paper size."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ahjax.core import config as config_lib
from baselines import fusion as F

DIMS = {"video": 12, "audio": 6, "text": 10}
PAPER_DIMS = {"video": 512, "audio": 128, "text": 768}
SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(DIMS, r)]  # V A T VA VT AT VAT
NAMES = sorted(F.FUSION_MODELS)
B, W = 3, 12


def batch(modalities, seed=0, b=B, w=W):
    keys = jax.random.split(jax.random.key(seed), len(modalities))
    return {m: jax.random.normal(k, (b, w, DIMS[m])) for m, k in zip(modalities, keys)}


# On these tiny models XLA's compile time dwarfs the run time; skipping its optimisation
# passes halves the compile and keeps this file fast on two shared cores.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_CACHE = {}


def model(name, modalities=tuple(DIMS), context=True):
    """A quick-config model and its jitted eval-mode forward, built once per key."""
    key = (name, tuple(modalities), context)
    if key not in _CACHE:
        cfg = F.quick() if context else F.frame_wise(F.quick())
        m = F.build(name, {mod: DIMS[mod] for mod in modalities}, cfg)
        graphdef, state = nnx.split(m)  # the functional form: split once, jit a pure apply
        apply = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x, train=False),
                        compiler_options=FAST_COMPILE)
        _CACHE[key] = m, functools.partial(apply, state)
    return _CACHE[key]


def forward(name, x, context=True):
    """Eval-mode ``(logits, aux)`` of the cached model for ``x``'s modalities."""
    return model(name, tuple(m for m in DIMS if m in x), context)[1](x)


def n_tokens(name, k):
    if name == "mt":
        return k * (k - 1) or 1
    return k * (k - 1) + 2 * k  # jmt: pairs, plus to and from the joint stream


@pytest.mark.parametrize("name", NAMES)
def test_shapes_for_every_modality_subset(name):
    """V, A, T, V+A, V+T, A+T, V+A+T: traced abstractly (shapes only), so all 7 stay cheap."""
    cfg = F.quick()
    for subset in SUBSETS:
        k = len(subset)
        dims = {m: DIMS[m] for m in subset}
        m = nnx.eval_shape(lambda: F.build(name, dims, cfg))
        x = {mod: jax.ShapeDtypeStruct((B, W, d), jnp.float32) for mod, d in dims.items()}
        logits, aux = nnx.eval_shape(lambda m, x: m(x, train=False), m, x)
        assert logits.shape == (B, W, 2), subset
        assert {mod: f.shape for mod, f in aux["features"].items()} == {
            mod: (B, W, m.widths[mod]) for mod in subset}
        if name == "can":
            assert aux["gate"].shape == (B, W, k * cfg.d_model)
            assert aux["modality_weights"].shape == (B, W, k)
        elif name == "lfan":
            assert aux["attention"].shape == (B, W, cfg.lfan_heads, k, k)
        else:
            n = n_tokens(name, k)
            assert len(m.token_names) == n
            assert aux["token_attention"].shape == (B, W, cfg.heads, n, n)
            assert aux["token_weights"].shape == (B, W, n)


@pytest.mark.parametrize("name", NAMES)
def test_fusion_weights_are_distributions(name):
    logits, aux = forward(name, batch(tuple(DIMS)))
    assert bool(jnp.isfinite(logits).all())
    key = {"can": "modality_weights", "lfan": "attention"}.get(name, "token_attention")
    assert bool((aux[key] >= 0).all())
    np.testing.assert_allclose(aux[key].sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_every_given_modality_changes_the_output(name):
    """Text included: the reference MT/JMT silently ignore it."""
    x = batch(tuple(DIMS))
    base, _ = forward(name, x)
    for mod in DIMS:
        changed = dict(x, **{mod: x[mod] + jax.random.normal(jax.random.key(7), x[mod].shape)})
        out, _ = forward(name, changed)
        assert float(jnp.abs(out - base).max()) > 1e-4, f"{name} ignores {mod}"


@pytest.mark.parametrize("context", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_a_clip_does_not_depend_on_the_rest_of_the_batch(name, context):
    """The reference MT/JMT attend across all clips of a batch; ours must not."""
    x = batch(tuple(DIMS))
    out, aux = forward(name, x, context)
    other = batch(tuple(DIMS), seed=3)
    mixed = {mod: x[mod].at[1:].set(other[mod][1:] * 5.0) for mod in DIMS}
    out2, aux2 = forward(name, mixed, context)
    np.testing.assert_allclose(out2[0], out[0], atol=1e-5)
    assert float(jnp.abs(out2[1:] - out[1:]).max()) > 1e-4
    for key in ("gate", "attention", "token_attention"):
        if key in aux:
            np.testing.assert_allclose(aux2[key][0], aux[key][0], atol=1e-5)
    if context:  # a clip alone gives what it gives inside a batch (one compile is enough)
        alone, _ = forward(name, {mod: x[mod][:1] for mod in DIMS}, context)
        np.testing.assert_allclose(alone[0], out[0], atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_frame_wise_variant_has_no_temporal_context(name):
    t = 5
    x = batch(tuple(DIMS))
    bumped = {mod: x[mod].at[:, t].add(3.0) for mod in DIMS}
    diff = jnp.abs(forward(name, bumped, False)[0] - forward(name, x, False)[0]).max(axis=(0, 2))
    assert float(diff[t]) > 1e-4
    np.testing.assert_allclose(np.delete(np.asarray(diff), t), 0.0, atol=1e-5)
    # With context, a change at frame t reaches later frames.
    diff = jnp.abs(forward(name, bumped)[0] - forward(name, x)[0]).max(axis=(0, 2))
    assert float(diff[t + 1:].max()) > 1e-4
    if name in ("can", "lfan"):  # causal TCN and per-frame fusion: nothing flows backwards
        np.testing.assert_allclose(np.asarray(diff[:t]), 0.0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_sgd_steps_lower_the_loss_on_a_fixed_batch(name):
    """SGD with the paper's optimiser settings; video+text keeps the jit compile short."""
    vt = ("video", "text")
    m = F.build(name, {mod: DIMS[mod] for mod in vt}, F.quick(), seed=1)
    x = batch(vt, seed=2, b=4, w=16)
    # Labels that depend on the inputs, so there is something to fit.
    labels = (x["video"][..., 0] + x["text"][..., 1] > 0).astype(jnp.int32)
    tx = optax.chain(optax.add_decayed_weights(1e-4),
                     optax.sgd(0.02, momentum=0.9, nesterov=True))
    opt = nnx.Optimizer(m, tx, wrt=nnx.Param)
    stats_before = jax.tree.map(np.array, nnx.state(m, nnx.BatchStat))  # copies

    def loss_fn(model):
        logits, _ = model(x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    graphdef, state = nnx.split((m, opt))

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def step(state):
        model, opt = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss, nnx.state((model, opt))

    losses = []
    for _ in range(8):
        loss, state = step(state)
        losses.append(float(loss))
    nnx.update((m, opt), state)
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.05, losses
    # Training moved the BatchNorm running statistics too, and eval mode still works.
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), stats_before,
                         nnx.state(m, nnx.BatchStat))
    assert max(jax.tree.leaves(moved)) > 1e-3
    logits, _ = m(x, train=False)
    assert bool(jnp.isfinite(logits).all())


def padded(x, n_real, fill):
    """``x`` with frames ``n_real:`` replaced by ``fill`` (a window's padded tail)."""
    return {m: v.at[:, n_real:].set(fill(v[:, n_real:])) for m, v in x.items()}


@pytest.mark.parametrize("name", NAMES)
def test_padded_frames_never_change_the_real_frames(name):
    """A window's zero-padded tail, marked by ``valid``, must not reach its real frames:
    whatever the padding holds, the real frames' logits and attention stay the same."""
    n_real = 7
    x = batch(tuple(DIMS))
    valid = jnp.broadcast_to((jnp.arange(W) < n_real).astype(jnp.float32), (B, W))
    zeros, _ = forward(name, dict(padded(x, n_real, jnp.zeros_like), valid=valid))
    noise = padded(x, n_real, lambda v: 10.0 * jax.random.normal(jax.random.key(5), v.shape))
    out, aux = forward(name, dict(noise, valid=valid))
    np.testing.assert_allclose(out[:, :n_real], zeros[:, :n_real], atol=1e-5)
    assert bool(jnp.isfinite(out).all())
    if name in ("mt", "jmt"):
        # Attention over time is what the mask is for: without it the padding leaks in.
        assert model(name)[0].extra_inputs == ("valid",)
        leaky, _ = forward(name, noise)
        assert float(jnp.abs(leaky[:, :n_real] - zeros[:, :n_real]).max()) > 1e-4


@pytest.mark.parametrize("context", [True, False])
@pytest.mark.parametrize("name", ["mt", "jmt"])
def test_all_valid_is_the_same_as_no_mask(name, context):
    x = batch(tuple(DIMS))
    out, aux = forward(name, x, context)
    out1, aux1 = forward(name, dict(x, valid=jnp.ones((B, W))), context)
    np.testing.assert_allclose(out1, out, atol=1e-6)
    np.testing.assert_allclose(aux1["token_attention"], aux["token_attention"], atol=1e-6)


def test_a_window_of_padding_alone_stays_finite():
    """The trainer's filler windows have no real frame at all: no NaN may come out."""
    x = {m: jnp.zeros_like(v) for m, v in batch(tuple(DIMS)).items()}
    for name in ("mt", "jmt"):
        out, aux = forward(name, dict(x, valid=jnp.zeros((B, W))))
        assert bool(jnp.isfinite(out).all()) and bool(jnp.isfinite(aux["token_attention"]).all())


def test_key_mask_in_attention():
    """Masked keys get exactly zero weight; every query still sums to one."""
    att = F.Attention(8, 2, rngs=nnx.Rngs(0))
    xq, xkv = (jax.random.normal(jax.random.key(i), (3, 5, 8)) for i in (1, 2))
    valid = jnp.array([[1, 1, 1, 0, 0], [1, 0, 1, 0, 1], [1, 1, 1, 1, 1]], jnp.float32)
    out, w = att(xq, xkv, F.key_bias(valid))
    assert w.shape == (3, 2, 5, 5) and out.shape == (3, 5, 8)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    assert float(jnp.abs(w * (1 - valid)[:, None, None, :]).max()) == 0.0
    # The keys that are masked out do not matter; the unmasked ones do.
    out2, _ = att(xq, xkv.at[0, 3:].set(100.0), F.key_bias(valid))
    np.testing.assert_allclose(out2[0], out[0], atol=1e-6)
    # pooled() is the mean of the full output over its queries.
    pooled, w2 = att.pooled(xq, xkv, F.key_bias(valid))
    np.testing.assert_allclose(pooled, out.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(w2, w, atol=1e-7)


def test_trainer_passes_valid_to_the_attention_models():
    from ahjax.core.train import trainer
    for name in NAMES:
        m = model(name)[0]
        keys = trainer.input_keys(m, tuple(DIMS))
        assert keys == tuple(DIMS) + (("valid",) if name in ("mt", "jmt") else ()), name
    with pytest.raises(ValueError, match="valid must be"):
        model("mt")[0](dict(batch(tuple(DIMS)), valid=jnp.ones((B, W + 1))), train=False)


def _linear(i, o):
    return i * o + o


@pytest.mark.slow
def test_parameter_counts_at_paper_settings():
    """Counts at the paper's input widths (video 512, audio 128, text 768), all three given."""
    cfg = F.FusionConfig()
    models = {name: nnx.eval_shape(lambda: F.build(name, PAPER_DIMS, cfg)) for name in NAMES}
    counts = {name: F.param_count(m) for name, m in models.items()}
    for name, n in counts.items():
        print(f"{name}: {n:,} parameters at V+A+T, paper settings")

    def encoders(name):
        m = models[name]
        return sum(F.param_count(m.encoders[mod]) for mod in PAPER_DIMS), m.widths

    # CAN: encoders + per-modality projection + gate + fc-BN-fc head (BN has scale and bias).
    enc, widths = encoders("can")
    kd = 3 * cfg.d_model
    assert widths == {"video": 128, "audio": 64, "text": 128}
    can_fusion = sum(_linear(c, cfg.d_model) for c in widths.values()) + _linear(kd, kd)
    assert counts["can"] == enc + can_fusion + _linear(kd, kd) + 2 * kd + _linear(kd, 2)
    # LFAN: narrower TCNs, per-modality qkv, output projection, LayerNorm, leader head.
    enc, widths = encoders("lfan")
    assert widths == {"video": 128, "audio": 32, "text": 128}
    km = 3 * cfg.modal_dim
    lfan_fusion = (sum(_linear(c, 3 * cfg.modal_dim) for c in widths.values())
                   + _linear(km, km) + 2 * km + _linear(widths["video"] + km, 2))
    assert counts["lfan"] == enc + lfan_fusion
    # MT/JMT: the same encoders as CAN; JMT adds a joint stream, its encoder and 6 more
    # cross-attentions (4 d x d projections each) on top of MT's.
    d = cfg.d_model
    encoder_layer = 4 * _linear(d, d) + 4 * d + _linear(d, cfg.ff_dim) + _linear(cfg.ff_dim, d)
    assert counts["jmt"] - counts["mt"] == (_linear(3 * d, d) + encoder_layer
                                           + 6 * 4 * _linear(d, d))
    assert counts["can"] < counts["mt"] < counts["jmt"]


def test_lfan_leader_is_video_when_given_else_the_first_modality():
    cfg = F.quick()
    assert F.build("lfan", DIMS, cfg).leader == "video"
    assert F.build("lfan", {"text": 10, "audio": 6}, cfg).leader == "audio"


def test_wrong_modalities_are_refused():
    m = model("can", ("video", "audio"))[0]
    with pytest.raises(ValueError, match="built for modalities"):
        m(batch(tuple(DIMS)), train=False)
    with pytest.raises(ValueError, match="built for modalities"):
        m(batch(("video",)), train=False)
    x = batch(("video", "audio"))
    x["audio"] = x["audio"][:, :-1]
    with pytest.raises(ValueError, match="same B and W"):
        m(x, train=False)
    with pytest.raises(KeyError, match="unknown fusion model"):
        F.build("tfn", DIMS)
    with pytest.raises(ValueError, match="at least one modality"):
        F.build("mt", {})


def test_config_is_overridable_from_the_command_line():
    cfg = config_lib.apply_overrides(
        F.FusionConfig(), ["--config.tcn.video=64,32", "--config.context=False",
                           "--config.lfan_tcn.dropout=0.2"])
    assert cfg.tcn.video == (64, 32) and cfg.context is False and cfg.lfan_tcn.dropout == 0.2
    assert nnx.eval_shape(lambda: F.build("can", {"video": 12}, cfg)).widths == {"video": 32}


def test_hand_written_backward_passes_match_autodiff():
    """fusion's softmax, LayerNorm and ReLU keep fewer arrays for their backward pass; their
    values and gradients must be those of the library functions they replace."""
    from baselines import fusion as F
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (3, 5, 16)) * 3.0
    g = jax.random.normal(k2, (3, 5, 16))
    bias = jnp.where(jax.random.uniform(k3, (3, 1, 16)) > 0.3, 0.0, F._MASKED)
    pairs = [(lambda x: F._softmax(x, bias), lambda x: jax.nn.softmax(x + bias, -1)),
             (F._relu, jax.nn.relu)]
    norm = nnx.LayerNorm(16, rngs=nnx.Rngs(0))
    norm.scale[...] = jax.random.normal(k3, (16,)) + 1.0
    norm.bias[...] = jax.random.normal(k2, (16,))
    pairs.append((lambda x: F._layer_norm(norm, x), norm))
    for ours, ref in pairs:
        np.testing.assert_allclose(ours(x), ref(x), atol=1e-5)
        gx_ours = jax.vjp(ours, x)[1](g)[0]
        gx_ref = jax.vjp(ref, x)[1](g)[0]
        np.testing.assert_allclose(gx_ours, gx_ref, atol=1e-4)
    # LayerNorm's parameter gradients too
    def loss(scale, b, fn):
        return jnp.sum(g * fn(x, scale, b))
    ours = jax.grad(loss, argnums=(0, 1))(norm.scale[...], norm.bias[...],
                                          lambda x, s, b: F._ln(x, s, b, norm.epsilon))
    def ref_ln(x, s, b):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(x.var(-1, keepdims=True) + norm.epsilon) * s + b
    ref = jax.grad(loss, argnums=(0, 1))(norm.scale[...], norm.bias[...], ref_ln)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
