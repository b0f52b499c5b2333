"""Personalisation methods and protocol on a synthetic domain shift with a known answer.

Source: two balanced Gaussian classes at +-2 along the first axis (6-D, noise std 0.8).
Target: the same classes rotated by 60 degrees, shifted by 1.5 along the first axis, and
with 30% positives (A/H is the minority class in BAH too), so the source model is poor
(below 0.5 accuracy: the shift pushes the majority class over its boundary) while the
target stays separable (Bayes accuracy above 0.99). Each adaptation method must recover
a clear margin, and the Oracle, which sees the target's labels, must beat them all: the
label shift is what the unsupervised methods cannot see (SHOT's and NRC's diversity
terms even push towards balanced predictions).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from baselines import adapt as A
from baselines import personalise as P

ANGLE, SHIFT, PRIOR = np.deg2rad(60.0), 1.5, 0.3
CFG = A.AdaptConfig(source_epochs=6, epochs=8, mmd_weight=20.0, adapt_lr=1e-3, tta_lr=1e-2)
MARGIN = 0.1


def gaussians(n, rng, angle=0.0, shift=0.0, d=6, sep=2.0, prior=0.5):
    """Two classes (``prior`` positive) at +-sep on axis 0, the first two axes rotated by
    ``angle``, then shifted by ``shift`` along axis 0."""
    y = (rng.random(n) < prior).astype(np.int32)
    x = 0.8 * rng.standard_normal((n, d))
    x[:, 0] += np.where(y == 1, sep, -sep)
    c, s = np.cos(angle), np.sin(angle)
    x[:, :2] = x[:, :2] @ np.array([[c, s], [-s, c]])
    x[:, 0] += shift
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    source = A.Domain.from_arrays(*gaussians(2000, rng), name="source")
    target = A.Domain.from_arrays(*gaussians(1500, rng, ANGLE, SHIFT, prior=PRIOR), name="target")
    parts = {"adapt": target.part(np.arange(800)), "val": target.part(np.arange(800, 1000)),
             "test": target.part(np.arange(1000, 1500))}
    return source, parts


@pytest.fixture(scope="module")
def accuracies(problem):
    source, parts = problem
    model = A.train_source(source, CFG)
    out = {}
    for name in A.METHODS:
        method = A.build_method(name, CFG)
        adapt = parts["adapt"] if name == "oracle" else parts["adapt"].unlabelled()
        adapted = method.adapt(model, source, adapt, parts["val"], jax.random.key(0))
        logits = method.predict(adapted, parts["test"], jax.random.key(1))
        out[name] = float(np.mean(logits.argmax(1) == parts["test"].labels))
    print("target test accuracy:", {k: round(v, 3) for k, v in out.items()})
    return out


@pytest.mark.slow
def test_source_only_is_poor_on_the_shifted_target(accuracies):
    assert 0.3 <= accuracies["source_only"] <= 0.7


@pytest.mark.slow   # the shared fixture trains every method (about 20 s)
@pytest.mark.parametrize("name", ["mmd", "acpl", "shot", "nrc", "tent", "t3a"])
def test_method_beats_source_only(accuracies, name):
    assert accuracies[name] >= accuracies["source_only"] + MARGIN, accuracies


def test_oracle_beats_every_method(accuracies):
    others = {k: v for k, v in accuracies.items() if k != "oracle"}
    assert accuracies["oracle"] > max(others.values()), accuracies
    assert accuracies["oracle"] >= 0.95


def test_mmd_falls_as_the_shift_is_removed():
    rng = np.random.default_rng(1)
    x, _ = gaussians(300, rng)
    values = []
    for shift in (3.0, 2.0, 1.0, 0.5, 0.0):
        y, _ = gaussians(300, rng, shift=shift)
        values.append(float(A.mmd(jnp.asarray(x), jnp.asarray(y))))
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.05 * values[0]


def test_mmd_is_zero_on_identical_samples_and_symmetric():
    x = jax.random.normal(jax.random.key(0), (50, 4))
    y = x + 1.0
    assert abs(float(A.mmd(x, x))) < 1e-6
    np.testing.assert_allclose(float(A.mmd(x, y)), float(A.mmd(y, x)), rtol=1e-5)


def _grads(method, model, batch, mstate):
    def loss(m):
        return method.loss(m, mstate, batch, jax.random.key(0))[0]
    return nnx.grad(loss)(nnx.clone(model))


@pytest.mark.slow
def test_acpl_mmd_gradient_flows(problem):
    """grad(ACPL, lambda) - grad(ACPL, 0) must equal lambda * grad(MMD): the term trains."""
    source, parts = problem
    model = A.make_net(source.dims, CFG)
    pos = np.arange(32)
    batch = {"src": source.inputs(pos, 1), "src_y": source.labels[pos],
             "tgt": parts["adapt"].inputs(pos, 1), "tgt_idx": pos.astype(np.int32)}
    n = len(parts["adapt"])
    mstate = {"pl": jnp.ones(n, jnp.int32), "keep": jnp.ones(n, jnp.float32)}
    lam = 3.0
    g_on = _grads(A.ACPL(dataclasses.replace(CFG, mmd_weight=lam)), model, batch, mstate)
    g_off = _grads(A.ACPL(dataclasses.replace(CFG, mmd_weight=0.0)), model, batch, mstate)

    def mmd_loss(m):
        _, _, fs, ft = A.MMD(CFG)._joint(m, batch)
        return lam * A.mmd(fs, ft)
    g_mmd = nnx.grad(mmd_loss)(nnx.clone(model))
    diff = jax.tree.map(lambda a, b: a - b, g_on, g_off)
    w = g_mmd["backbone"]["fc1"]["kernel"][...]
    assert float(jnp.abs(w).max()) > 1e-6  # the MMD term does reach the backbone
    np.testing.assert_allclose(diff["backbone"]["fc1"]["kernel"][...], w, rtol=1e-3, atol=1e-6)


def test_acpl_threshold_schedule():
    m = A.ACPL(dataclasses.replace(CFG, acpl_min_threshold=0.5))
    assert [round(m.threshold(r), 4) for r in range(4)] == [0.9, 0.88, 0.86, 0.84]
    assert m.threshold(100) == 0.5


def test_centroid_labels_fix_wrong_soft_predictions():
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.normal([4, 0], 0.5, (100, 2)), rng.normal([0, 4], 0.5, (100, 2))])
    truth = np.repeat([0, 1], 100)
    probs = np.where(truth[:, None] == np.arange(2), 0.7, 0.3)
    probs[:30] = probs[:30, ::-1]  # 30 of class 0 predicted as class 1
    labels = A.centroid_labels(f.astype(np.float32), probs)
    assert np.mean(labels == truth) > 0.98


def test_shot_keeps_classifier_and_tent_moves_only_norms(problem):
    source, parts = problem
    model = A.make_net(source.dims, CFG)
    shot = A.SHOT(CFG)
    tgt = parts["adapt"].unlabelled()
    copy = nnx.clone(model)
    tx = A.make_tx(CFG.optimizer, CFG.adapt_lr, CFG.weight_decay)
    graphdef, state = nnx.split((copy, nnx.Optimizer(copy, tx, wrt=shot.wrt)))
    pos = np.arange(CFG.batch_size)
    batch = {"tgt": tgt.inputs(pos, 1), "tgt_y": tgt.labels[pos], "tgt_idx": pos.astype(np.int32)}
    mstate = shot.refresh(model, shot.init_state(model, None, tgt), None, tgt, 0)
    state, _, _ = A.methods._step(shot, graphdef, state, mstate, batch, jax.random.key(0))
    adapted = nnx.merge(graphdef, state)[0]
    np.testing.assert_array_equal(adapted.classifier.kernel[...], model.classifier.kernel[...])
    assert not np.allclose(adapted.backbone.fc1.kernel[...], model.backbone.fc1.kernel[...])
    tent = A.Tent(CFG)
    graphdef, state = tent.start(model)
    carry, _ = tent.batch((graphdef, state), parts["test"].inputs(np.arange(64), 1),
                          jax.random.key(0))
    after = nnx.merge(*carry)[0]
    np.testing.assert_array_equal(after.backbone.fc1.kernel[...], model.backbone.fc1.kernel[...])
    assert not np.allclose(after.backbone.norm1.scale[...], model.backbone.norm1.scale[...])


def test_clip_methods_need_weights():
    with pytest.raises(ValueError, match="CLIP"):
        A.VisionLanguageTTA(CFG).start(None)


# ------------------------------------------------------------------------------ protocol

def _videos(seed=0):
    """Three videos with alternating label runs of random lengths and some -1 frames."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(3):
        runs = [np.full(rng.integers(5, 40), c % 2) for c in range(rng.integers(3, 7))]
        lab = np.concatenate(runs).astype(np.int32)
        lab[rng.integers(0, len(lab), 3)] = -1
        out.append(lab)
    return out


def _runs(labels):
    return [(v, a, b) for v, lab in enumerate(labels) for a, b, _ in P.label_runs(lab)]


def test_split_keeps_whole_segments_and_both_classes():
    labels = _videos()
    split = P.split_target(labels, seed=3, name="p1")
    owner = {}
    for part, segs in split["parts"].items():
        classes = set()
        for v, a, b in segs:
            assert len(set(labels[v][a:b].tolist())) == 1
            classes.add(int(labels[v][a]))
            for t in range(a, b):
                assert (v, t) not in owner  # no frame on two sides
                owner[(v, t)] = part
        assert classes == {0, 1}, part
    for v, a, b in _runs(labels):  # every segment whole, on one side
        assert len({owner[(v, t)] for t in range(a, b)}) == 1
    labelled = sum(int((lab >= 0).sum()) for lab in labels)
    assert len(owner) == labelled
    # The adapt part, with the largest share, gets the most frames.
    sizes = {p: sum(split["frames"][p].values()) for p in P.PARTS}
    assert sizes["adapt"] == max(sizes.values())


def test_split_is_deterministic_by_seed_and_name():
    labels = _videos()
    a = P.split_target(labels, seed=3, name="p1")
    assert a == P.split_target(labels, seed=3, name="p1")
    assert a != P.split_target(labels, seed=4, name="p1")


def test_split_halves_when_a_class_has_too_few_segments():
    labels = [np.array([0] * 30 + [1] * 12 + [0] * 30, np.int32)]
    split = P.split_target(labels, seed=0)
    assert split["halved"] == {"0": 1, "1": 2}
    for part in P.PARTS:
        assert split["frames"][part]["0"] > 0 and split["frames"][part]["1"] > 0
    with pytest.raises(P.NotEligible):
        P.split_target([np.array([0] * 10 + [1] * 2, np.int32)])


def test_target_parts_rows_match_the_split():
    labels = _videos(1)
    x = np.arange(sum(map(len, labels)), dtype=np.float32)[:, None]
    first = np.concatenate([np.full(len(l), o) for l, o in
                            zip(labels, np.cumsum([0] + [len(l) for l in labels[:-1]]))])
    dom = A.Domain.from_arrays(x, np.concatenate(labels), first)
    split = P.split_target(labels, seed=0)
    parts = P.target_parts(dom, [len(l) for l in labels], split)
    for part, d in parts.items():
        want = [labels[v][a:b] for v, a, b in split["parts"][part]]
        np.testing.assert_array_equal(d.labels, np.concatenate(want))
    # A causal context stays inside its video: the first frame repeats before it.
    ctx = dom.inputs(np.array([len(labels[0])]), 3)["x"][0, :, 0]
    np.testing.assert_array_equal(ctx, [len(labels[0])] * 3)


@pytest.mark.slow
def test_tcn_backbone_sees_its_own_video_past_only():
    cfg = A.AdaptConfig(backbone="tcn", context=6, tcn_channels=(4, 4), feature_dim=4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    first = np.repeat([0, 20], 20)  # two videos of 20 frames
    model = A.make_net({"x": 3}, cfg)
    assert A.networks._under_norm(("backbone", "tcns", "x", "norm", "scale"), None)

    def logits(arr):
        dom = A.Domain.from_arrays(arr, np.zeros(40), first)
        return np.asarray(model(dom.inputs(np.array([10, 22]), cfg.context), train=False)[0])

    base = logits(x)
    past = x.copy()
    past[8] += 5.0    # in frame 10's context
    past[19] += 5.0   # the other video's last frame: outside frame 22's context
    out = logits(past)
    assert not np.allclose(out[0], base[0])
    np.testing.assert_allclose(out[1], base[1], atol=1e-6)


# --------------------------------------------------------------- the two-level model

def _tracks(n, rng, label):
    """Level-1 tracks (schema widths) whose face valence and text sentiment follow ``label``."""
    from level1_affect.schema import ARRAYS
    t = {k: rng.normal(0, 0.3, (n, ARRAYS[k][0])).astype(np.float32)
         for k in ("face_desc", "voice_prosody", "text_affect")}
    e = rng.random((n, 7))
    t["face_expr"] = (e / e.sum(1, keepdims=True)).astype(np.float32)
    t["face_present"] = (rng.random((n, 1)) < 0.9).astype(np.float32)
    t["face_desc"][:, 0] = np.tanh(1.5 * label - 0.7 + rng.normal(0, 0.2, n))  # valence
    t["voice_prosody"][:, 4] = rng.random(n) < 0.7                     # voice_active
    t["voice_prosody"][:, 5] = 1.0 - t["voice_prosody"][:, 4]          # pause
    t["text_affect"][:, 0] = np.tanh(-1.5 * label + rng.normal(0, 0.3, n))  # sentiment
    t["text_affect"][:, 17] = rng.random(n) < 0.6                      # word_present
    return t


VIDEO = 48  # frames per video (two videos per domain)


@pytest.fixture(scope="module")
def two_level():
    """(model config, (raw, network-ready) source, the same for a shifted target)."""
    from baselines.adapt import two_level as L
    from level2_conflict.model import TwoLevelConfig

    cfg = TwoLevelConfig(fps=10.0, hidden=4, n_blocks=2, scales=(0.5, 2.0), dropout=0.0)
    rng = np.random.default_rng(0)

    def domain(name, shift):
        videos = []
        for _ in range(2):
            y = (np.arange(VIDEO) // 8 % 2).astype(np.int32)
            t = _tracks(VIDEO, rng, y)
            t["voice_prosody"][:, 1] += shift                             # pitch_z
            videos.append((t, y))
        x = {k: np.concatenate([t[k] for t, _ in videos]) for k in videos[0][0]}
        first = np.repeat([0, VIDEO], VIDEO)
        raw = A.Domain.from_arrays(x, np.concatenate([y for _, y in videos]), first, name)
        return raw, L.conflict_domain(raw, cfg)

    return cfg, domain("source", 0.0), domain("target", 1.5)


@nnx.jit
def _model_call(model, inputs):
    return model(inputs)


def _whole_video(model, raw, video):
    """``model`` (a TwoLevelModel) on one whole video of ``raw``: (logits, aux)."""
    a = video * VIDEO
    return _model_call(model, {k: jnp.asarray(v[a:a + VIDEO])[None] for k, v in raw.x.items()})


def _decomposition_error(model, raw):
    """Max |score - (sum of named contributions + remainder + bias)| over a whole video."""
    _, aux = _whole_video(model, raw, 1)
    assert set(aux["contributions"]) == {"face_voice", "face_text", "voice_text",
                                         "within_face", "within_voice", "within_text"}
    total = sum(aux["contributions"].values(), aux["remainder"]) + aux["bias"]
    return float(jnp.abs(total - aux["score"]).max())


@pytest.mark.slow
def test_two_level_net_scores_frames_as_the_model_does_on_whole_videos(two_level):
    from baselines.adapt import two_level as L
    cfg, (raw, dom), _ = two_level
    net = L.TwoLevelAdaptNet.create(cfg, 0)
    inputs = dom.inputs(np.arange(len(dom)), L.context_frames(cfg))
    logits, aux = nnx.jit(lambda m, x: m(x))(net, inputs)
    # Features per whole video (padded) vs the model's own window differ only by float
    # rounding (amplified where a window's variance is near 0: keep the tracks noisy).
    for v in (0, 1):
        want, want_aux = _whole_video(net.model, raw, v)
        rows = slice(v * VIDEO, (v + 1) * VIDEO)
        np.testing.assert_allclose(aux["score"][rows], want_aux["score"][0], atol=1e-4)
        np.testing.assert_allclose(logits[rows], want[0], atol=1e-4)
        for g, c in want_aux["contributions"].items():
            np.testing.assert_allclose(aux["contributions"][g][rows], c[0], atol=1e-4)
    # The classifier view is the read-outs: features @ kernel + bias == logits.
    head = net.classifier
    np.testing.assert_allclose(aux["features"] @ head.kernel + head.bias, logits, atol=1e-5)
    assert aux["features"].shape == (2 * VIDEO, len(net.names) * cfg.hidden)


def test_two_level_parameter_groups():
    """SHOT trains all but the classifier (read-outs, bias); Tent the input projections."""
    from baselines.adapt import two_level as L
    from level2_conflict.model import TwoLevelConfig

    net = L.TwoLevelAdaptNet.create(TwoLevelConfig(hidden=4, n_blocks=1), 0)

    def paths(group):
        f = A.build_method(group, CFG).params(net)
        return {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(net, f))}

    every = paths("mmd")
    heads = {p for p in every if "/out/" in p} | {"model/bias"}
    assert len(heads) == 8  # six groups + remainder read-outs, and the bias
    assert paths("shot") == every - heads - {"model/cue_scale", "model/cue_offset"}
    # The six named branches are bias-free (a kernel each); the remainder has kernel and bias.
    assert paths("tent") == {p for p in every if "/inp/" in p} and len(paths("tent")) == 8


@pytest.mark.slow
def test_two_level_adaptation_moves_parameters_and_keeps_the_decomposition(two_level):
    from baselines.adapt import two_level as L
    cfg, (_, source), (raw_t, target) = two_level
    acfg = dataclasses.replace(CFG, context=L.context_frames(cfg), epochs=1, batch_size=32,
                               select="last", weight_decay=0.0)
    model = L.TwoLevelAdaptNet.create(cfg, 0)
    before = nnx.state(model, nnx.Param)
    adapted = A.build_method("mmd", acfg).adapt(model, source, target.unlabelled(), None,
                                                jax.random.key(0))
    after = nnx.state(adapted, nnx.Param)
    moved = [not np.allclose(x, y) for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after))]
    assert sum(moved) >= len(moved) // 2, moved
    # Still a TwoLevelModel whose score is exactly the sum of its named parts, and the
    # adapted network's frame scores are the adapted model's on the whole video.
    assert _decomposition_error(adapted.model, raw_t) < 1e-5
    logits, _ = A.networks._forward(*nnx.split(adapted), target.inputs(np.arange(VIDEO, 2 * VIDEO),
                                                              acfg.context))
    np.testing.assert_allclose(logits, _whole_video(adapted.model, raw_t, 1)[0][0], atol=1e-4)

    # Tent (one test batch) moves the input projections only, and keeps the decomposition.
    tent = A.build_method("tent", acfg)
    carry, _ = tent.batch(tent.start(model), target.inputs(np.arange(32), acfg.context),
                          jax.random.key(0))
    tented = nnx.merge(*carry)[0]
    old = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, x in nnx.to_flat_state(nnx.state(tented, nnx.Param)):
        assert np.allclose(x[...], old[path][...]) != ("inp" in path), path
    assert _decomposition_error(tented.model, raw_t) < 1e-5
