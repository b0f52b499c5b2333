"""Level 2: conflict features, the additive two-level model, HSMM decoding, plots/report."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from level1_affect.schema import FACE_DESC, TEXT_AFFECT, VOICE_PROSODY
from level2_conflict import features as feats
from level2_conflict import hsmm
from level2_conflict import model as model_lib
from level2_conflict import plots, runtime, selection

TINY = dict(hidden=4, n_blocks=2, dropout=0.0)


def make_tracks(n, batch=(), seed=0, random=False):
    """Level-1 tracks with every modality confident and neutral (or random) values."""
    rng = np.random.default_rng(seed)
    shape = tuple(batch) + (n,)

    def block(cols):
        if random:
            return rng.uniform(-1, 1, shape + (len(cols),)).astype(np.float32)
        return np.zeros(shape + (len(cols),), np.float32)

    tracks = {"face_present": np.ones(shape + (1,), np.float32), "face_desc": block(FACE_DESC),
              "voice_prosody": block(VOICE_PROSODY), "text_affect": block(TEXT_AFFECT)}
    tracks["voice_prosody"][..., VOICE_PROSODY.index("voice_active")] = 1.0
    tracks["text_affect"][..., TEXT_AFFECT.index("word_present")] = 1.0
    if random:
        tracks["voice_prosody"][..., VOICE_PROSODY.index("energy")] = rng.uniform(0, 1, shape)
    return tracks


def setcol(tracks, name, columns, col, value):
    tracks[name][..., columns.index(col)] = value


def group_col(features, group, col):
    return np.asarray(features[group][..., feats.feature_columns()[group].index(col)])


# ----------------------------------------------------------------------------- features

def test_feature_shapes_finite_and_padding_zero():
    tracks = make_tracks(50, batch=(2,), random=True)
    mask = np.ones((2, 50), np.float32)
    mask[1, 35:] = 0
    fn = jax.jit(feats.conflict_features)
    out = fn(tracks, jnp.array([30.0, 25.0]), mask)
    columns = feats.feature_columns()
    assert set(out) == set(feats.GROUPS)
    for group, arr in out.items():
        assert arr.shape == (2, 50, len(columns[group])), group
        assert np.all(np.isfinite(arr)) and np.all(np.asarray(arr) >= 0), group
        assert np.all(np.asarray(arr)[1, 35:] == 0), group
    # Per-video input (n, d) gives the same as the first batch row.
    single = feats.conflict_features({k: v[0] for k, v in tracks.items()}, 30.0)
    np.testing.assert_allclose(single["face_text"], out["face_text"][0], atol=1e-5)


def test_padding_content_does_not_leak_into_real_frames():
    a = make_tracks(40, batch=(1,), random=True, seed=1)
    b = {k: v.copy() for k, v in a.items()}
    for v in b.values():
        v[:, 30:] = 5.0  # garbage in the padding
    mask = np.ones((1, 40), np.float32)
    mask[:, 30:] = 0
    fa = feats.conflict_features(a, 10.0, mask)
    fb = feats.conflict_features(b, 10.0, mask)
    for group in feats.GROUPS:
        np.testing.assert_allclose(fa[group][:, :30], fb[group][:, :30], atol=1e-5)


def test_positive_text_negative_face_raises_face_text_disagreement():
    def face_text(face_valence):
        tracks = make_tracks(60)
        setcol(tracks, "face_desc", FACE_DESC, "valence", face_valence)
        setcol(tracks, "text_affect", TEXT_AFFECT, "sentiment", 0.8)
        # Level 1's valence as it is (the person-baseline reading is tested below).
        return feats.conflict_features(tracks, 10.0, face_baseline="raw")

    conflict, consistent = face_text(-0.7), face_text(0.7)
    # |-0.7 - 0.8| vs |0.7 - 0.8|; opposite signs only in the conflict.
    np.testing.assert_allclose(group_col(conflict, "face_text", "dval@2s"), 1.5, atol=1e-3)
    np.testing.assert_allclose(group_col(consistent, "face_text", "dval@2s"), 0.1, atol=1e-3)
    np.testing.assert_allclose(group_col(conflict, "face_text", "opp@2s"), 0.56, atol=1e-3)
    assert group_col(consistent, "face_text", "opp@2s").max() < 1e-6
    # The voice is neutral (valence 0), so no face-voice valence-sign conflict either way.
    assert group_col(conflict, "face_voice", "opp@2s").max() < 1e-6


def test_face_valence_is_read_against_the_persons_own_baseline():
    # A face whose resting valence is high (0.7): a smile lifts it to 0.8 and a frown, in
    # the middle third, lowers it to 0.55; the words stay positive throughout.
    n, fps = 90, 10.0
    face = np.where((np.arange(n) >= 30) & (np.arange(n) < 60), 0.55, 0.8)

    def features(offset, baseline="person"):
        tracks = make_tracks(n)
        setcol(tracks, "face_desc", FACE_DESC, "valence", face + offset)
        setcol(tracks, "text_affect", TEXT_AFFECT, "sentiment", 0.8)
        return feats.conflict_features(tracks, fps, face_baseline=baseline), tracks

    person, tracks = features(0.0)
    valence = np.asarray(feats.affect_tracks(tracks)["face"])[:, 0]
    assert valence[45] < -0.3 and valence[10] > 0.2      # the frown reads negative
    # ... so the frown under positive words is an opposite-sign face-text conflict, only
    # there; on level 1's raw valence (positive everywhere) it never is.
    opp = group_col(person, "face_text", "opp@0.5s")
    assert opp[40:50].min() > 0.1 and opp[:25].max() < 1e-6 and opp[65:].max() < 1e-6
    raw, _ = features(0.0, "raw")
    assert group_col(raw, "face_text", "opp@0.5s").max() < 1e-6
    # A face whose resting look is 0.1 lower gives the same features: only the
    # person's own changes count.
    shifted, _ = features(-0.1)
    for group in feats.GROUPS:
        np.testing.assert_allclose(shifted[group], person[group], atol=2e-3)
    # A face that never moves stays at valence 0 instead of having its noise blown up.
    still = make_tracks(n)
    setcol(still, "face_desc", FACE_DESC, "valence", 0.7 + 0.001 * np.sin(np.arange(n)))
    assert np.abs(np.asarray(feats.affect_tracks(still)["face"])[:, 0]).max() < 0.02
    with pytest.raises(ValueError, match="face_baseline must be 'person' or 'raw'"):
        feats.affect_tracks(tracks, face_baseline="video")


def test_text_confidence_gates_face_text():
    tracks = make_tracks(60)
    setcol(tracks, "face_desc", FACE_DESC, "valence", -0.7)
    setcol(tracks, "text_affect", TEXT_AFFECT, "sentiment", 0.8)
    setcol(tracks, "text_affect", TEXT_AFFECT, "word_present", 0.0)
    out = feats.conflict_features(tracks, 10.0)
    assert np.abs(out["face_text"]).max() < 1e-6


def test_within_face_flip_depends_on_time_scale():
    fps, n = 10.0, 120
    step = make_tracks(n)
    setcol(step, "face_desc", FACE_DESC, "valence", np.where(np.arange(n) < 60, 0.8, -0.8))
    flicker = make_tracks(n)  # sign change every 2 frames (0.2 s)
    setcol(flicker, "face_desc", FACE_DESC, "valence", np.where(np.arange(n) // 2 % 2, 0.8, -0.8))
    steady = make_tracks(n)
    setcol(steady, "face_desc", FACE_DESC, "valence", 0.8)
    fs, ff, fc = (feats.conflict_features(t, fps, face_baseline="raw")
                  for t in (step, flicker, steady))

    for scale in ("0.5s", "2s", "4s"):  # a step is a flip at every scale, at the step only
        flip = group_col(fs, "within_face", f"vflip@{scale}")
        assert flip[60] > 1.5 and flip[10] < 1e-5 and flip[110] < 1e-5
        assert group_col(fs, "within_face", f"vsign@{scale}")[60] > 0.5
        assert group_col(fc, "within_face", f"vflip@{scale}").max() < 1e-5
    # Fast flicker: large variance at 0.5 s, while 4 s half-window means cancel out.
    core = slice(30, 90)
    assert group_col(ff, "within_face", "vstd@0.5s")[core].min() > 0.5
    assert group_col(ff, "within_face", "vflip@4s")[core].max() < 0.1
    assert group_col(ff, "within_face", "vflip@4s")[core].max() < \
        0.2 * group_col(ff, "within_face", "vflip@0.5s")[core].max()


def test_change_and_sustain_together_and_hesitation():
    n, fps = 80, 10.0
    tracks = make_tracks(n)
    setcol(tracks, "text_affect", TEXT_AFFECT, "change_talk", (np.arange(n) // 5 == 2) * 1.0)
    setcol(tracks, "text_affect", TEXT_AFFECT, "sustain_talk", (np.arange(n) // 5 == 4) * 1.0)
    setcol(tracks, "text_affect", TEXT_AFFECT, "hesitation", (np.arange(n) >= 60) * 1.0)
    out = feats.conflict_features(tracks, fps)
    co = group_col(out, "within_text", "cochange@4s")
    assert co[15] > 0.1 and co[70] < 1e-3   # both within 4 s near frame 15, none at 70
    assert group_col(out, "within_text", "cochange@0.5s")[12] < 1e-3  # only change talk
    hes = group_col(out, "within_text", "hes@2s")
    assert hes[75] > 0.9 and hes[20] < 1e-6


# ----------------------------------------------------------------------------- model

def model_inputs(batch=2, n=24, seed=0):
    inputs = make_tracks(n, batch=(batch,), random=True, seed=seed)
    inputs["mask"] = np.ones((batch, n), np.float32)
    return inputs


def test_score_decomposes_exactly_and_logits_match():
    cfg = model_lib.TwoLevelConfig(**TINY, use_embeddings=True)
    inputs = model_inputs()
    rng = np.random.default_rng(3)
    for key in cfg.emb_keys:
        inputs[key] = rng.normal(size=(2, 24, 6)).astype(np.float32)
    model = model_lib.TwoLevelModel(cfg, emb_dims={k: 6 for k in cfg.emb_keys},
                                    rngs=nnx.Rngs(0))
    model.bias[...] = jnp.asarray(0.3)
    logits, aux = nnx.jit(lambda m, x: m(x, train=False))(model, inputs)
    assert logits.shape == (2, 24, 2)
    assert set(aux["contributions"]) == set(feats.GROUPS)
    score = aux["score"]
    total = sum(aux["contributions"].values(), aux["remainder"]) + aux["bias"]
    np.testing.assert_allclose(total, score, atol=1e-6)
    assert float(jnp.std(aux["remainder"])) > 0 and float(aux["bias"]) == pytest.approx(0.3)
    np.testing.assert_allclose(logits[..., 1] - logits[..., 0], score, atol=1e-6)
    np.testing.assert_allclose(jax.nn.softmax(logits)[..., 1], jax.nn.sigmoid(score), atol=1e-6)
    assert set(aux["affect"]) == set(feats.MODALITIES)
    assert aux["affect"]["face"].shape == (2, 24, 3)
    assert 1_000 < model_lib.count_params(model) < 100_000


def test_precomputed_features_and_dropout():
    cfg = model_lib.TwoLevelConfig(**dict(TINY, dropout=0.5))
    model = model_lib.TwoLevelModel(cfg, rngs=nnx.Rngs(1))
    inputs = model_inputs()
    logits, aux = model(inputs, train=False)
    pre = dict(inputs, **{g: np.asarray(v) for g, v in aux["features"].items()})
    logits2, _ = model(pre, train=False)
    np.testing.assert_allclose(logits, logits2, atol=1e-5)
    # "valid" (real frames) takes precedence over "mask" (real and labelled frames).
    logits_v, _ = model(dict(inputs, valid=inputs["mask"], mask=np.zeros((2, 24))), train=False)
    np.testing.assert_allclose(logits_v, logits, atol=1e-5)
    assert model.extra_inputs == ("valid",)
    # Training mode draws dropout masks: finite, different from evaluation, still additive.
    logits3, aux3 = model(inputs, train=True)
    assert np.all(np.isfinite(logits3)) and not np.allclose(logits3, logits)
    np.testing.assert_allclose(
        sum(aux3["contributions"].values(), aux3["remainder"]) + aux3["bias"], aux3["score"],
        atol=1e-6)


def test_hidden_states_and_precomputed_affect():
    """``aux["hidden"]`` is each branch's state before its read-out, and with the feature
    groups and affect tracks precomputed the model needs no level-1 track."""
    cfg = model_lib.TwoLevelConfig(**TINY)
    model = model_lib.TwoLevelModel(cfg, rngs=nnx.Rngs(0))
    inputs = model_inputs()
    inputs["mask"][1, 20:] = 0.0
    logits, aux = model(inputs, train=False)
    assert tuple(aux["hidden"]) == (*model.groups, model_lib.REMAINDER)
    for g in model.groups:
        assert aux["hidden"][g].shape == (2, 24, cfg.hidden)
        np.testing.assert_array_equal(model.branches[g].readout(aux["hidden"][g]),
                                      aux["contributions"][g])
        np.testing.assert_array_equal(
            model.branches[g](aux["features"][g], inputs["mask"], train=False),
            aux["contributions"][g])
    np.testing.assert_array_equal(model.remainder.readout(aux["hidden"]["remainder"]),
                                  aux["remainder"])
    pre = {g: np.asarray(v) for g, v in aux["features"].items()}
    pre.update({model_lib.AFFECT_KEYS[m]: np.asarray(a) for m, a in aux["affect"].items()})
    logits2, aux2 = model(dict(pre, valid=inputs["mask"]), train=False)
    np.testing.assert_allclose(logits2, logits, atol=1e-6)
    for name, h in aux["hidden"].items():
        np.testing.assert_allclose(aux2["hidden"][name], h, atol=1e-6)


@pytest.mark.parametrize("flags,expected", [
    (dict(use_cross=False), feats.WITHIN_GROUPS),
    (dict(use_within=False), feats.CROSS_GROUPS),
])
def test_ablation_flags_remove_groups(flags, expected):
    cfg = model_lib.TwoLevelConfig(**TINY, **flags)
    model = model_lib.TwoLevelModel(cfg, rngs=nnx.Rngs(0))
    _, aux = model(model_inputs(), train=False)
    assert tuple(aux["contributions"]) == tuple(expected)
    assert tuple(aux["features"]) == tuple(expected)
    full = model_lib.count_params(model_lib.TwoLevelModel(model_lib.TwoLevelConfig(**TINY),
                                                          rngs=nnx.Rngs(0)))
    assert model_lib.count_params(model) < full
    with pytest.raises(ValueError, match="no named group"):   # nothing would be left
        model_lib.TwoLevelConfig(**TINY, use_cross=False, use_within=False)


def test_cue_loss_only_with_cues_and_reaches_matching_branches():
    cfg = model_lib.TwoLevelConfig(**TINY)
    model = model_lib.TwoLevelModel(cfg, rngs=nnx.Rngs(0))
    inputs = model_inputs()
    _, aux = model(inputs, train=False)
    assert "aux_loss" not in aux

    rng = np.random.default_rng(0)
    inputs["cues"] = (rng.random((2, 24, 5)) > 0.5).astype(np.float32)
    facial_only = np.zeros((2, 24, 5), np.float32)
    facial_only[..., model_lib.CUES.index("facial")] = 1.0
    inputs["cue_mask"] = facial_only

    def loss(m):
        return m(inputs, train=False)[1]["aux_loss"]

    value, grads = nnx.value_and_grad(loss)(model)
    assert np.isfinite(float(value)) and float(value) > 0

    def norm(branch):
        return sum(float(jnp.sum(jnp.abs(x))) for x in
                   jax.tree_util.tree_leaves(grads["branches"][branch]))

    for branch in model_lib.CUE_GROUPS["facial"]:
        assert norm(branch) > 0, branch
    for branch in ("within_voice", "within_text", "voice_text"):
        assert norm(branch) == 0, branch
    assert sum(float(jnp.sum(jnp.abs(x))) for x in
               jax.tree_util.tree_leaves(grads["remainder"])) == 0


# ----------------------------------------------------------------------------- hsmm

def brute_force_score(labels, log_post, log_dur, log_prior):
    """Score of one labelling under the hsmm module's model, by plain enumeration."""
    runs, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            runs.append((labels[start], start, i - start))
            start = i
    emis = log_post - log_prior
    total = log_prior[runs[0][0]]
    for j, (state, a, d) in enumerate(runs):
        if d > log_dur.shape[1]:
            return -np.inf
        last = j == len(runs) - 1
        total += np.logaddexp.reduce(log_dur[state, d - 1:]) if last else log_dur[state, d - 1]
        total += emis[a:a + d, state].sum()
    return total


def test_hsmm_matches_brute_force():
    rng = np.random.default_rng(0)
    decode = jax.jit(hsmm.hsmm_decode)
    # A few shapes (each compiles once), several random models per shape; max_d < n
    # exercises the duration cap, max_d == n the censored single segment.
    for n, max_d in ((1, 1), (6, 2), (9, 4), (9, 9)):
        for _ in range(5):
            log_post = np.asarray(jax.nn.log_softmax(2 * rng.normal(size=(n, 2))), np.float64)
            log_dur = np.asarray(jax.nn.log_softmax(rng.normal(size=(2, max_d))), np.float64)
            log_prior = np.log(np.array([0.7, 0.3]))
            scores = {lab: brute_force_score(lab, log_post, log_dur, log_prior)
                      for lab in itertools.product((0, 1), repeat=n)}
            best = max(scores, key=scores.get)
            got = tuple(int(x) for x in decode(log_post, log_dur, log_prior))
            assert scores[got] == pytest.approx(scores[best], abs=1e-4), (n, max_d)
            assert got == best


def test_hsmm_padded_to_a_shared_length_equals_the_unpadded_decode():
    """``length``: videos padded to one length share a compiled decoder and get the
    labels of their own unpadded decode (brute force above), the padding labelled 0."""
    rng = np.random.default_rng(1)
    decode = jax.jit(hsmm.hsmm_decode)
    for n, max_d in ((1, 1), (6, 2), (9, 4), (9, 9), (37, 12)):
        for _ in range(4):
            log_post = np.asarray(jax.nn.log_softmax(2 * rng.normal(size=(n, 2))), np.float32)
            log_dur = np.asarray(jax.nn.log_softmax(rng.normal(size=(2, max_d))), np.float32)
            log_prior = np.log(np.array([0.6, 0.4], np.float32))
            alone = np.asarray(decode(log_post, log_dur, log_prior))
            padded = np.concatenate([log_post, np.log(np.full((40 - n, 2), 0.5, np.float32))])
            got = np.asarray(decode(padded, log_dur, log_prior, length=np.int32(n)))
            np.testing.assert_array_equal(got[:n], alone)
            assert not got[n:].any()


def test_hsmm_removes_forbidden_flicker_and_jits():
    log_dur = hsmm.fit_durations([8, 10, 12, 9], [10, 14, 12], max_d=30)
    assert log_dur.shape == (2, 30)
    np.testing.assert_allclose(np.exp(log_dur).sum(1), 1.0, atol=1e-5)
    assert np.exp(log_dur[1, 0]) < 1e-3  # a 1-frame A/H segment is all but forbidden
    prob = np.full(40, 0.1, np.float32)
    prob[12:22] = 0.9  # a plausible 10-frame A/H segment ...
    prob[30] = 0.8     # ... and a one-frame flicker the prior forbids
    log_post = hsmm.log_post_from_prob(prob)
    log_prior = np.log(np.array([0.5, 0.5]))
    labels = np.asarray(jax.jit(hsmm.hsmm_decode)(log_post, log_dur, log_prior))
    expected = ((np.arange(40) >= 12) & (np.arange(40) < 22)).astype(int)
    np.testing.assert_array_equal(labels, expected)
    assert np.argmax(np.asarray(log_post), -1)[30] == 1  # frame-wise argmax keeps it
    np.testing.assert_array_equal(np.asarray(hsmm.hsmm_decode(log_post, log_dur, log_prior)),
                                  labels)


def test_fit_durations_and_segment_lengths():
    runs = hsmm.segment_lengths([0, 0, 1, 1, 1, -1, -1, 0, 1])
    assert runs == {0: [2, 1], 1: [3, 1]}
    log_dur = hsmm.fit_durations([100] * 5, [40, 60, 50], max_d=200)
    assert abs(int(np.argmax(log_dur[1])) + 1 - 100) < 15
    assert abs(int(np.argmax(log_dur[0])) + 1 - 50) < 15
    with pytest.raises(ValueError, match="positive"):
        hsmm.fit_durations([], [3], max_d=10)


def test_median_filter():
    labels = jnp.array([0, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1])
    out = hsmm.median_filter(labels, 3)
    np.testing.assert_array_equal(out, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    assert out.dtype == labels.dtype
    probs = jnp.array([[0.1, 0.9, 0.2, 0.3], [0.0, 1.0, 0.5, 0.5]]).T
    np.testing.assert_allclose(hsmm.median_filter(probs, 3)[:, 0], [0.1, 0.2, 0.3, 0.3])
    np.testing.assert_array_equal(hsmm.median_filter(labels, 1), labels)
    with pytest.raises(ValueError):
        hsmm.median_filter(labels, 4)


def test_decoding_hyperparameters_are_chosen_by_val_avgf1():
    rng = np.random.default_rng(0)
    labels, probs = {}, {}
    for v in range(3):   # A/H frames sit at 0.35-0.45, the rest at 0.05-0.25: 0.3 separates
        y = np.zeros(80, np.int64)
        y[20:45] = 1
        labels[f"v{v}"] = y
        probs[f"v{v}"] = np.where(y == 1, rng.uniform(0.35, 0.45, 80), rng.uniform(0.05, 0.25, 80))
    fps = {v: 10.0 for v in probs}
    cfg = runtime.DecodeConfig(max_duration_s=6.0, thresholds=(0.5, 0.3, 0.2))
    durations = runtime.Durations(hsmm.DurationPrior.fit([2.5] * 3, [2.0, 3.5] * 3, 6.0), [0.7, 0.3])
    chosen, grid = selection.select_decoding(probs, labels, fps, "threshold", durations, cfg)
    assert chosen.threshold == 0.3 and grid[0.3] == 1.0 and grid[0.5] < 1.0
    assert chosen.evidence_rate == cfg.evidence_rate               # only its own field moves
    chosen, grid = selection.select_decoding(probs, labels, fps, "hsmm", durations, cfg)
    assert set(grid) == set(cfg.evidence_rates) and grid[chosen.evidence_rate] == max(grid.values())
    hard = selection.read_posteriors(probs, fps, "hsmm", durations, chosen)
    assert all(h.shape == (80,) and set(np.unique(h)) <= {0, 1} for h in hard.values())
    off = dataclasses.replace(cfg, select_on_val=False)
    assert selection.select_decoding(probs, labels, fps, "median", durations, off) == (off, {})
    with pytest.raises(ValueError, match="unknown reading"):
        selection.read_posteriors(probs, fps, "viterbi", durations, cfg)


def test_dilated_conv_matches_nnx_conv():
    for causal in (False, True):
        for k, d in ((3, 1), (3, 4), (5, 2)):
            conv = model_lib.DilatedConv(4, 6, k, d, causal=causal, use_bias=True,
                                         rngs=nnx.Rngs(0))
            conv.bias[...] = jnp.full((6,), 0.3)
            ref = nnx.Conv(4, 6, k, kernel_dilation=d, padding="CAUSAL" if causal else "SAME",
                           rngs=nnx.Rngs(1))
            ref.kernel[...] = conv.kernel[...]
            ref.bias[...] = conv.bias[...]
            x = np.random.default_rng(0).normal(size=(2, 30, 4)).astype(np.float32)
            np.testing.assert_allclose(conv(x), ref(x), atol=1e-5)


# ----------------------------------------------------------------------------- plots

def test_plot_and_self_contained_html(tmp_path):
    n = 60
    tracks = make_tracks(n, random=True)
    tracks["face_present"][20:30] = 0
    contributions = {g: np.sin(np.arange(n) / (i + 2)) for i, g in enumerate(feats.GROUPS)}
    prob = np.linspace(0, 1, n)
    true = (np.arange(n) > 30).astype(int)
    decoded = (np.arange(n) > 25).astype(int)
    fig = plots.plot_video(tracks, contributions, prob, true, decoded, fps=10.0,
                           title="video 1", path=tmp_path / "plots" / "v1.png")
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 10_000

    md = "# two_level\n\n## test\n\n| method | AP |\n|---|---|\n| hsmm | 0.4000 |\n\n- a note"
    page = plots.report_html(md, [fig], tmp_path / "report.html")
    text = page.read_text()
    assert "http://" not in text and "https://" not in text
    assert text.count("data:image/png;base64,") == 1
    assert "<table>" in text and "<td>hsmm</td>" in text and "<th>AP</th>" in text
    assert "<li>a note</li>" in text and "<h1>two_level</h1>" in text
    assert "---" not in text
