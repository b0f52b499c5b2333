"""The two-level model's named contributions are faithful, its ablations remove information,
its runs over seeds are one vmapped program, and its duration prior lives in seconds."""

import dataclasses
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from ahjax.core import dropout
from ahjax.core.train import trainer as trainer_lib
from level1_affect.schema import FACE_DESC
from level2_conflict import features as feats
from level2_conflict import hsmm, multirun, runtime, selection
from level2_conflict.model import TwoLevelConfig, TwoLevelModel
from tests.test_level2 import make_tracks

FACE = ("face_present", "face_desc")
VOICE = ("voice_prosody",)
TEXT = ("text_affect",)
SMALL = TwoLevelConfig(fps=10.0, hidden=6, n_blocks=2, dropout=0.0, use_remainder=False)


def _score(model, tracks):
    _, aux = model({k: np.asarray(v)[None] for k, v in tracks.items()})
    return np.asarray(aux["score"][0], np.float64), aux


def _swap(tracks, other, keys):
    out = dict(tracks)
    out.update({k: other[k] for k in keys})
    return out


# ------------------------------------------------------------------------- faithfulness

def test_deleting_the_largest_group_moves_the_score_more_than_a_small_one():
    model = TwoLevelModel(SMALL, rngs=nnx.Rngs(3))
    tracks = make_tracks(80, random=True, seed=1)
    inputs = {k: np.asarray(v)[None] for k, v in tracks.items()}
    mask = np.ones((1, 80), np.float32)
    groups, affect = model.features(inputs, mask)
    pre = {g: np.asarray(groups[g]) for g in model.groups}
    pre.update({multirun.AFFECT_KEYS[m]: np.asarray(a) for m, a in affect.items()})
    pre["valid"] = mask
    _, aux = model(pre)
    size = {g: float(np.mean(np.abs(aux["contributions"][g]))) for g in model.groups}
    big, small = max(size, key=size.get), min(size, key=size.get)
    assert size[big] > 2 * size[small]
    drops = {}
    for g in (big, small):
        deleted = dict(pre, **{g: np.zeros_like(pre[g])})
        _, aux_d = model(deleted)
        delta = np.asarray(aux["score"] - aux_d["score"])
        # Bias-free branches: deleting a group's evidence removes exactly its contribution.
        np.testing.assert_allclose(delta, np.asarray(aux["contributions"][g]), atol=1e-5)
        drops[g] = float(np.mean(np.abs(delta)))
    assert drops[big] > drops[small]


def test_named_share_is_one_without_remainder_and_measured_with_it():
    tracks = make_tracks(60, random=True, seed=2)
    outs = {}
    for use in (False, True):
        model = TwoLevelModel(dataclasses.replace(SMALL, use_remainder=use), rngs=nnx.Rngs(0))
        _, aux = model({k: np.asarray(v)[None] for k, v in tracks.items()})
        o = {"score": np.asarray(aux["score"][0]), "bias": float(aux["bias"]),
             "remainder": np.asarray(aux["remainder"][0]),
             "contributions": {g: np.asarray(c[0]) for g, c in aux["contributions"].items()}}
        outs[use] = multirun.named_share({"v": o})
        dropped = multirun.without_remainder({"v": o})["v"]
        expected = 1 / (1 + np.exp(-(o["score"] - o["remainder"])))
        np.testing.assert_allclose(dropped, expected, rtol=1e-6)
    assert outs[False] == pytest.approx(1.0)
    # With a remainder the share is measured, not 1 (it exceeds 1 when the remainder cancels).
    assert outs[True] > 0.0 and outs[True] != pytest.approx(1.0, abs=1e-3)


def test_a_model_with_every_group_disabled_is_refused():
    with pytest.raises(ValueError, match="no named group"):
        TwoLevelConfig(use_cross=False, use_within=False)
    from experiments import run as runner
    with pytest.raises(ValueError, match="no named group"):
        runner.build_config("two_level", ["--config.model.use_cross=False",
                                          "--config.model.use_within=False"])


def test_the_runner_refuses_a_model_without_groups_in_one_line(capsys, tmp_path):
    from experiments import run as runner
    rc = runner.main(["two_level", "--config.model.use_cross=False",
                      "--config.model.use_within=False", "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "no named group" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_cross_groups_without_coverage_columns_read_only_disagreement():
    cfg = dataclasses.replace(SMALL, cross_coverage=False)
    model = TwoLevelModel(cfg, rngs=nnx.Rngs(0))
    cols = dict(model.columns)
    assert all(not c.startswith("conf@") for g in feats.CROSS_GROUPS for c in cols[g])
    assert cols["within_face"] == feats.feature_columns(cfg.scales)["within_face"]
    _, aux = _score(model, make_tracks(40, random=True))
    assert aux["features"]["face_voice"].shape[-1] == len(cols["face_voice"]) == 9


# ------------------------------------------------------------------------- clean ablations

def test_no_cross_modal_score_is_additively_separable_across_modalities():
    model = TwoLevelModel(dataclasses.replace(SMALL, use_cross=False), rngs=nnx.Rngs(1))
    a, b = make_tracks(70, random=True, seed=4), make_tracks(70, random=True, seed=5)
    base, _ = _score(model, a)
    d_face = _score(model, _swap(a, b, FACE))[0] - base
    d_voice = _score(model, _swap(a, b, VOICE))[0] - base
    d_both = _score(model, _swap(a, b, FACE + VOICE))[0] - base
    assert np.max(np.abs(d_face)) > 1e-3 and np.max(np.abs(d_voice)) > 1e-3
    np.testing.assert_allclose(d_both, d_face + d_voice, atol=1e-5)
    d_text = _score(model, _swap(a, b, TEXT))[0] - base
    d_all = _score(model, _swap(a, b, FACE + VOICE + TEXT))[0] - base
    np.testing.assert_allclose(d_all, d_face + d_voice + d_text, atol=1e-5)


def test_full_model_is_not_separable_so_the_test_above_can_fail():
    model = TwoLevelModel(SMALL, rngs=nnx.Rngs(1))
    a, b = make_tracks(70, random=True, seed=4), make_tracks(70, random=True, seed=5)
    base, _ = _score(model, a)
    d_face = _score(model, _swap(a, b, FACE))[0] - base
    d_voice = _score(model, _swap(a, b, VOICE))[0] - base
    d_both = _score(model, _swap(a, b, FACE + VOICE))[0] - base
    assert np.max(np.abs(d_both - d_face - d_voice)) > 1e-3


def test_no_within_modality_has_only_pairwise_terms():
    """Without within-modality groups the score is a sum of pair terms: no three-way
    interaction, and each pair's contribution ignores the third modality."""
    model = TwoLevelModel(dataclasses.replace(SMALL, use_within=False), rngs=nnx.Rngs(2))
    a, b = make_tracks(70, random=True, seed=6), make_tracks(70, random=True, seed=7)
    mods = {"f": FACE, "v": VOICE, "t": TEXT}

    def f(which):
        keys = tuple(k for m in which for k in mods[m])
        return _score(model, _swap(a, b, keys))

    s = {w: f(w)[0] for w in ("", "f", "v", "t", "fv", "ft", "vt", "fvt")}
    three_way = (s["fvt"] - s["fv"] - s["ft"] - s["vt"] + s["f"] + s["v"] + s["t"] - s[""])
    np.testing.assert_allclose(three_way, 0.0, atol=1e-5)
    _, aux0 = f("")
    _, aux_t = f("t")
    np.testing.assert_allclose(aux_t["contributions"]["face_voice"],
                               aux0["contributions"]["face_voice"], atol=1e-6)
    assert set(aux0["contributions"]) == set(feats.CROSS_GROUPS)


# ------------------------------------------------------------------------- vmapped runs

def _bank(n_videos=6, n=90, fps=10.0):
    rng = np.random.default_rng(0)
    parts, valid, labels, slots, off = {}, [], [], {}, 0
    for i in range(n_videos):
        tracks = make_tracks(n, random=True, seed=10 + i)
        y = np.zeros(n, np.int32)
        y[20 + 5 * i: 50 + 5 * i] = 1
        # Evidence that tracks the label: face valence flips inside the A/H segment.
        tracks["face_desc"][y == 1, FACE_DESC.index("valence")] *= -2
        arrays = runtime.video_inputs(tracks, fps)
        for k, v in arrays.items():
            parts.setdefault(k, []).append(v)
        valid.append(np.ones(n, np.float32))
        labels.append(y)
        slots[f"v{i}"] = multirun.Slot(off, n, fps, "train", f"p{i // 2}")
        off += n
    del rng
    return multirun.Bank({k: np.concatenate(v) for k, v in parts.items()},
                         np.concatenate(valid), np.concatenate(labels), slots)


MULTI = multirun.MultiConfig(window=40, hop=20, batch_size=4, progress=False,
                             train=multirun.MultiConfig().train.__class__(
                                 optimizer="adam", lr=3e-3, weight_decay=0.0, epochs=2,
                                 clip_norm=1.0))


@pytest.mark.slow
def test_runs_trained_together_equal_runs_trained_alone():
    bank = _bank()
    train, val, test = ("v0", "v1", "v2", "v3"), ("v4",), ("v5",)
    a = multirun.Run("a", 0, train, val, test)
    b = multirun.Run("b", 1, train, val, test)
    together = multirun.train_runs(SMALL, bank, [a, b], MULTI)
    alone = multirun.train_runs(SMALL, bank, [a], MULTI)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], together.params),
                                jax.tree.map(lambda x: x[0], alone.params), atol=1e-5)
    assert not np.allclose(np.asarray(jax.tree.leaves(together.params)[0][0]),
                           np.asarray(jax.tree.leaves(together.params)[0][1]))
    # Trained.outputs is the ordinary model's forward pass on the whole video.
    out = together.outputs(bank, [test, test])
    model = together.model(1)
    s = bank.slots["v5"]
    inputs = {k: v[s.offset:s.offset + s.n][None] for k, v in bank.arrays.items()}
    inputs["valid"] = np.ones((1, s.n), np.float32)
    _, aux = model(inputs)
    np.testing.assert_allclose(out[1]["v5"]["score"], np.asarray(aux["score"][0]), atol=1e-5)
    assert set(out[1]["v5"]["contributions"]) == set(feats.GROUPS)
    assert len(together.history) == 2 and len(together.history[0]["val_AP"]) == 2


def test_train_runs_refuses_unknown_videos_and_empty_training():
    bank = _bank(2)
    with pytest.raises(KeyError, match="not in the bank"):
        multirun.train_runs(SMALL, bank, [multirun.Run("a", 0, ("v0", "nope"), (), ())], MULTI)
    with pytest.raises(ValueError, match="no training videos"):
        multirun.train_runs(SMALL, bank, [multirun.Run("a", 0, (), ("v0",), ())], MULTI)


def test_video_inputs_name_non_finite_level1_tracks():
    tracks = make_tracks(30, random=True)
    tracks["voice_prosody"][5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        runtime.video_inputs(tracks, 10.0)


# ------------------------------------------------------------------------- durations in seconds

def test_duration_prior_in_seconds_decodes_the_same_segments_at_two_frame_rates():
    prior = hsmm.DurationPrior.fit([4.0, 5.0, 3.5, 4.5], [6.0, 8.0, 5.0, 7.0, 9.0], max_s=15.0)
    durations = runtime.Durations(prior, [0.8, 0.2])
    rng = np.random.default_rng(0)
    grid_t = np.linspace(0, 20, 2001)
    truth = ((grid_t >= 6.0) & (grid_t < 10.5)).astype(float)
    noise = rng.normal(0, 0.08, grid_t.size)
    segments = {}
    for fps in (24.0, 30.0):
        t = np.arange(int(20 * fps)) / fps
        prob = np.clip(np.interp(t, grid_t, 0.08 + 0.5 * truth + noise), 0.01, 0.99)
        decoded = runtime.decode_hsmm(prob, fps, durations, rate=4.8)
        runs = np.flatnonzero(np.diff(np.concatenate([[0], decoded, [0]])))
        segments[fps] = runs.reshape(-1, 2) / fps
    assert segments[24.0].shape == segments[30.0].shape == (1, 2)
    np.testing.assert_allclose(segments[24.0], segments[30.0], atol=1 / 24)
    np.testing.assert_allclose(segments[24.0][0], [6.0, 10.5], atol=0.25)
    # The same prior is the same distribution in seconds at each rate.
    for fps in (24.0, 30.0):
        pmf = np.exp(prior.log_pmf(fps)[1])
        mean_s = float(np.sum(pmf * np.arange(1, pmf.size + 1)) / fps)
        assert mean_s == pytest.approx(prior.mean_s()[1], rel=0.05)


def test_duration_prior_refuses_bad_input():
    with pytest.raises(ValueError, match="no positive segments"):
        hsmm.DurationPrior.fit([], [1.0], 10.0)
    with pytest.raises(ValueError, match="max_s"):
        hsmm.DurationPrior.fit([1.0], [1.0], 0.0)
    prior = hsmm.DurationPrior.fit([1.0], [2.0], 5.0)
    with pytest.raises(ValueError, match="fps"):
        prior.log_pmf(0.0)


def test_video_rule_from_decoded_segments():
    decoded = {"a": np.r_[np.zeros(10), np.ones(30), np.zeros(10)].astype(int),
               "b": np.r_[np.zeros(40), np.ones(5), np.zeros(5)].astype(int)}
    fps = {"a": 10.0, "b": 10.0}
    assert selection.longest_segment_s(decoded["a"], 10.0) == 3.0
    assert selection.video_from_segments(decoded, fps, 2.0) == {"a": 1, "b": 0}
    cfg = runtime.DecodeConfig(video_min_ss=(0.2, 1.0, 4.0))
    assert selection.select_video_rule(decoded, fps, {"a": 1, "b": 0}, cfg) == 1.0
    # The segment rule's video AVGF1 sits beside the paper's mean-probability rule.
    labels = {v: d.astype(np.int64) for v, d in decoded.items()}
    probs = {v: d * 0.8 + 0.1 for v, d in decoded.items()}
    rule = selection.video_from_segments(decoded, fps, 1.0)
    row = selection.score_row(labels, probs, {"a": 1, "b": 0}, decoded, rule)
    assert row["VIDEO_AVGF1_SEGMENTS"] == 1.0
    assert "VIDEO_AVGF1_SEGMENTS" not in selection.score_row(labels, probs, {"a": 1, "b": 0})


def test_store_verify_names_the_video_and_array_of_a_corrupt_feature(tmp_path):
    from ahjax.core.data.store import FeatureStore, StoreError
    store = FeatureStore(tmp_path / "store")
    tracks = make_tracks(30, random=True)
    tracks["labels"] = np.zeros(30, np.int8)
    store.write("p1/v1.mp4", tracks, {"fps": 10.0, "split": "train"})
    store.verify("p1/v1.mp4")                          # as written: passes without a read
    path = store.path("p1/v1.mp4") / "text_affect.npy"
    arr = np.load(path)
    arr[3, 0] = np.inf
    np.save(path, arr)
    with pytest.raises(StoreError, match=r"p1/v1.mp4: array 'text_affect' .* NaN or inf"):
        store.verify("p1/v1.mp4")
    # Level-2 features refuse it before any training starts, naming the video.
    with pytest.raises(StoreError, match="p1/v1.mp4"):
        multirun.build_bank(store, ["p1/v1.mp4"], min_block=40, progress=False)
    np.save(path, arr[:10])                            # truncated: wrong shape
    with pytest.raises(StoreError, match=r"shape \[10, .*meta says \[30"):
        store.verify("p1/v1.mp4")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_online_fixed_lag_decoding_equals_offline_with_a_full_lag(seed):
    """Streamed in chunks, the fixed-lag decoder with a lag as long as the stream gives the
    offline semi-Markov decoding frame for frame; with a short lag every frame is still
    decided exactly once and committed frames never change."""
    from level2_conflict import hsmm
    rng = np.random.default_rng(seed)
    prior = hsmm.DurationPrior.fit([2.0, 3.0, 2.5, 4.0], [3.0, 5.0, 4.0, 6.0], 8.0)
    fps, n = 10.0, 230
    # posteriors with A/H-like runs plus noise
    truth = (np.sin(np.arange(n) / 9.0 + seed) > 0.4).astype(float)
    prob = np.clip(0.25 + 0.5 * truth + rng.normal(0, 0.2, n), 0.01, 0.99)
    log_dur = np.asarray(prior.log_pmf(fps))
    log_prior = np.log(np.array([0.8, 0.2]))
    offline = np.asarray(hsmm.hsmm_decode(hsmm.log_post_from_prob(prob), log_dur, log_prior,
                                          emission_weight=0.5))
    full = hsmm.OnlineDecoder(log_dur, log_prior, lag=n, emission_weight=0.5)
    got = [full.push(prob[i:i + 17]) for i in range(0, n, 17)] + [full.finish()]
    assert sum(len(g) for g in got[:-1]) == 0              # nothing committed before the end
    np.testing.assert_array_equal(np.concatenate(got), offline)
    short = hsmm.OnlineDecoder(log_dur, log_prior, lag=20, emission_weight=0.5)
    parts = [short.push(prob[i:i + 17]) for i in range(0, n, 17)]
    assert sum(len(p) for p in parts) == n - 20             # all but the last lag frames
    stream = np.concatenate(parts + [short.finish()])
    assert len(stream) == n and set(np.unique(stream)) <= {0, 1}
    assert np.mean(stream == offline) > 0.75               # a 2 s lag mostly agrees
    with pytest.raises(ValueError, match="lag=-1"):
        hsmm.OnlineDecoder(log_dur, log_prior, lag=-1)


# ------------------------------------------------------------------ semi-Markov CRF loss

def _brute_log_partition(unary, log_dur, allowed):
    """log-sum over every labelling of the window, scored as segment_log_partition says:
    survival for the segments the window cuts (first and last), pmf for inner ones."""
    import itertools
    n, max_d = unary.shape[0], log_dur.shape[1]
    log_surv = np.log(np.cumsum(np.exp(log_dur)[:, ::-1], 1)[:, ::-1])
    scores = []
    for lab in itertools.product((0, 1), repeat=n):
        if not all(allowed[t, lab[t]] for t in range(n)):
            continue
        runs, a = [], 0
        for t in range(1, n + 1):
            if t == n or lab[t] != lab[a]:
                runs.append((lab[a], t - a))
                a = t
        if any(d > max_d for _, d in runs):
            continue
        score = sum(unary[t, lab[t]] for t in range(n))
        for j, (y, d) in enumerate(runs):
            cut = j == 0 or j == len(runs) - 1
            score += log_surv[y, d - 1] if cut else log_dur[y, d - 1]
        scores.append(score)
    return np.logaddexp.reduce(scores) if scores else -np.inf


def test_semi_markov_partition_matches_enumeration():
    rng = np.random.default_rng(0)
    for n, max_d in ((1, 1), (5, 2), (7, 4), (7, 7)):
        unary = rng.normal(size=(n, 2)).astype(np.float32)
        log_dur = np.log(rng.dirichlet(np.ones(max_d), size=2)).astype(np.float32)
        allowed = np.ones((n, 2), bool)
        free = float(hsmm.segment_log_partition(unary[None], log_dur)[0])
        np.testing.assert_allclose(free, _brute_log_partition(unary, log_dur, allowed), rtol=1e-5)
        allowed[rng.integers(n), 0] = False            # one frame must be A/H
        allowed[rng.integers(n), 1] = False            # one (maybe the same) must not
        got = float(hsmm.segment_log_partition(unary[None], log_dur, allowed[None])[0])
        want = _brute_log_partition(unary, log_dur, allowed)
        if np.isfinite(want):
            np.testing.assert_allclose(got, want, rtol=1e-5)
        else:
            assert got < -1e8


def test_duration_log_probs_equal_the_prior_at_each_frame_rate():
    prior = hsmm.DurationPrior((2.0, 4.0), (3.0, 1.0), max_s=6.0)
    fps = np.asarray([10.0, 24.0], np.float32)
    log_pmf, log_surv = hsmm.duration_log_probs(np.asarray(prior.shape),
                                                np.asarray(prior.scale_s), fps, 100,
                                                max_s=prior.max_s, floor=prior.floor)
    assert log_pmf.shape == (2, 2, 100)
    for i, f in enumerate(fps):
        ref = prior.log_pmf(float(f))                    # (2, ceil(6 fps))
        d = min(ref.shape[1], 100)
        np.testing.assert_allclose(np.asarray(log_pmf[i, :, :d]), ref[:, :d], atol=2e-3)
        surv = np.cumsum(np.exp(ref)[:, ::-1], 1)[:, ::-1]
        np.testing.assert_allclose(np.exp(np.asarray(log_surv[i, :, :d])), surv[:, :d],
                                   atol=1e-5)
        assert np.all(np.asarray(log_pmf[i, :, d:]) < -1e8)   # beyond max_s: impossible


def test_semi_markov_loss_pushes_scores_towards_the_labels_and_skips_unlabelled():
    log_dur = np.log(np.full((2, 8), 1 / 8, np.float32))
    labels = np.asarray([[0, 0, -1, 1, 1, 1, 0, 0]])
    valid = np.ones((1, 8), np.float32)
    grad = np.asarray(jax.grad(lambda s: hsmm.semi_markov_nll(s, labels, valid, log_dur))(
        np.zeros((1, 8), np.float32)))[0]
    assert np.all(grad[[3, 4, 5]] < 0) and np.all(grad[[0, 1, 6, 7]] > 0)
    # A window without any labelled frame adds nothing.
    none = hsmm.semi_markov_nll(np.ones((1, 8)), np.full((1, 8), -1), valid, log_dur)
    assert float(none) == 0.0
    # A perfect, confident score has (nearly) no loss left; the opposite one a large loss.
    good = hsmm.semi_markov_nll(np.where(labels == 1, 20.0, -20.0), labels, valid, log_dur)
    bad = hsmm.semi_markov_nll(np.where(labels == 1, -20.0, 20.0), labels, valid, log_dur)
    assert float(good) < 0.05 < 5.0 < float(bad)


@pytest.mark.slow
def test_runs_train_with_the_semi_markov_loss_given_duration_priors():
    bank = _bank(4)
    run = multirun.Run("a", 0, ("v0", "v1", "v2"), ("v3",), ("v3",))
    crf = dataclasses.replace(SMALL, crf_weight=1.0)
    with pytest.raises(ValueError, match="one duration prior per run"):
        multirun.train_runs(crf, bank, [run], MULTI)
    prior = hsmm.DurationPrior((1.5, 6.0), (3.0, 0.5), max_s=8.0)
    trained = multirun.train_runs(crf, bank, [run], MULTI, durations=[prior])
    plain = multirun.train_runs(SMALL, bank, [run], MULTI, durations=[prior])
    losses = [h["loss"][0] for h in trained.history]
    assert all(np.isfinite(losses))
    # The CRF term is added to the frame loss: same seed and data, a different loss.
    assert losses[0] != plain.history[0]["loss"][0]
    with pytest.raises(ValueError, match="crf_weight must be >= 0"):
        TwoLevelConfig(crf_weight=-1.0)


# ------------------------------------------------------------------------------ causal

def test_the_causal_model_never_reads_later_frames():
    # A causal model (the past-only conflict features, running statistics and causal
    # convolutions) scores frames 0..59 the same whatever comes after them; the offline
    # model does not (so the test can fail).
    a = make_tracks(90, random=True, seed=4)
    b = {k: v.copy() for k, v in a.items()}
    rng = np.random.default_rng(9)
    for k, v in b.items():
        if k != "face_present":
            v[60:] = rng.uniform(-1, 1, v[60:].shape)
    for causal in (True, False):
        model = TwoLevelModel(dataclasses.replace(SMALL, causal=causal), rngs=nnx.Rngs(0))
        early = np.abs(_score(model, a)[0][:60] - _score(model, b)[0][:60]).max()
        if causal:
            assert early < 1e-5
        else:
            assert early > 1e-3
    # The whole-video inputs of a causal model are past-only too.
    fa = runtime.video_inputs(a, 10.0, causal=True)
    fb = runtime.video_inputs(b, 10.0, causal=True)
    for name in fa:
        np.testing.assert_allclose(fa[name][:60], fb[name][:60], atol=1e-6, err_msg=name)


# ------------------------------------------------------------------------- folds and rows

def test_participant_folds_test_each_participant_once(tmp_path):
    from ahjax.core.data.store import FeatureStore
    store = FeatureStore(tmp_path / "store")
    for p in range(5):
        for q in range(2):
            store.write(f"p{p}/v{q}.mp4", {"labels": np.zeros(4, np.int8)},
                        {"split": ("train", "val", "test")[p % 3], "participant": f"p{p}"})
    folds = multirun.participant_folds(store, 2)
    assert [f["participants"] for f in folds] == [["p0", "p2", "p4"], ["p1", "p3"]]
    for f in folds:
        assert f["val_participant"] not in f["participants"]
        assert not set(f["train"]) & (set(f["test"]) | set(f["val"]))
        assert len(f["train"]) + len(f["val"]) + len(f["test"]) == 10
    assert multirun.participant_folds(store, 5) == []      # needs a participant beyond them
    runs, folds = multirun.make_runs(store, seeds=2, folds=2, fold_seeds=1)
    assert [r.name for r in runs] == ["default/seed0", "default/seed1", "fold0/seed0",
                                      "fold1/seed0"]
    assert runs[2].seed == 1000 and runs[2].test == folds[0]["test"]
    assert runs[0].test == tuple(store.video_ids("test"))


def test_rows_aggregate_over_runs_and_pair_by_run():
    from level2_conflict import evaluation
    full = [{"AP": 0.6, "AVGF1": 0.5, "N": 10}, {"AP": 0.8, "AVGF1": 0.7, "N": 10}]
    ablation = [{"AP": 0.5, "AVGF1": 0.6, "N": 10}, {"AP": 0.9, "AVGF1": 0.6, "N": 10}]
    row = evaluation.aggregate(full)
    assert row["AP"] == pytest.approx(0.7) and row["n_runs"] == 2 and row["N"] == 10
    assert row["AP_sd"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    d = evaluation.paired({"two_level": full, "no_cross_modal": ablation})
    d = d["no_cross_modal - two_level"]
    assert d["dAP_mean"] == pytest.approx(0.0) and d["runs_where_full_has_higher_AP"] == 1
    assert d["dAVGF1_mean"] == pytest.approx(0.0) and d["n_runs"] == 2


def test_an_identical_training_is_reused_and_a_changed_one_retrained(tmp_path, monkeypatch):
    bank = _bank(n_videos=4, n=60)
    run = multirun.Run("a", 0, ("v0", "v1"), ("v2",), ("v3",))
    first, reused = multirun.train_runs_or_reuse(SMALL, bank, [run], MULTI, cache_dir=tmp_path)
    assert reused is None
    again, reused = multirun.train_runs_or_reuse(SMALL, bank, [run], MULTI, cache_dir=tmp_path)
    assert reused is not None and reused.parent == tmp_path
    chex.assert_trees_all_equal(first.params, again.params)
    chex.assert_trees_all_equal(first.rest, again.rest)
    assert again.history == first.history and list(again.best_epochs) == list(first.best_epochs)
    out_a, out_b = first.outputs(bank, [("v3",)]), again.outputs(bank, [("v3",)])
    np.testing.assert_array_equal(out_a[0]["v3"]["prob"], out_b[0]["v3"]["prob"])
    # Another seed, other labels or another config is another training.
    other = dataclasses.replace(run, seed=1)
    assert multirun.train_runs_or_reuse(SMALL, bank, [other], MULTI, cache_dir=tmp_path)[1] is None
    relabelled = dataclasses.replace(bank, labels=1 - bank.labels)
    assert multirun.training_key(SMALL, relabelled, [run], MULTI) != multirun.training_key(
        SMALL, bank, [run], MULTI)
    assert multirun.training_key(dataclasses.replace(SMALL, hidden=8), bank, [run], MULTI) != \
        multirun.training_key(SMALL, bank, [run], MULTI)
    # So is one under other library versions, or with other core code it trains with.
    key = multirun.training_key(SMALL, bank, [run], MULTI)
    versions = trainer_lib.library_versions()
    with monkeypatch.context() as mp:
        mp.setattr(trainer_lib, "library_versions", lambda: versions[:-1] + [versions[-1] + 1])
        assert multirun.training_key(SMALL, bank, [run], MULTI) != key
    moved = tmp_path / "dropout.py"
    moved.write_text(Path(dropout.__file__).read_text() + "\n# changed\n")
    with monkeypatch.context() as mp:
        mp.setattr(dropout, "__file__", str(moved))
        assert multirun.training_key(SMALL, bank, [run], MULTI) != key
    assert multirun.training_key(SMALL, bank, [run], MULTI) == key
