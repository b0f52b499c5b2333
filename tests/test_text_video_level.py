"""Video-level A/H from transcripts: selection helpers and a quick end-to-end run."""

import json

import numpy as np
import pytest

from ahjax.core.metrics import bah_metrics, frame_ap
from level1_affect.dataset import DataConfig, transcript_splits
from experiments import run as runner
from experiments import text_video_level as tvl
from baselines import text_video as tb
from level2_conflict import text_video as tv


def test_question_rate_and_onehot():
    q = np.array([1, 1, 2, 2, 2, 4])
    y = np.array([0, 1, 1, 1, 0, 1])
    p = tv.QuestionRate().fit(q[:, None], y).predict_proba(np.array([[1], [2], [7]]))[:, 1]
    np.testing.assert_allclose(p, [0.5, 2 / 3, 4 / 6])          # unseen question: overall rate
    oh = tv.question_onehot(np.array([1, 7, 0]))
    assert oh.tolist()[0][0] == 1 and oh[1, 6] == 1 and not oh[2].any()


def test_threshold_shift_keeps_ap_and_moves_decisions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    got = tv.score(y, p, 0.35)
    hard = bah_metrics(y, (p >= 0.35).astype(float))
    assert got["AVGF1"] == pytest.approx(hard["AVGF1"]) and got["WAR"] == pytest.approx(hard["WAR"])
    assert got["AP"] == pytest.approx(bah_metrics(y, p)["AP"])
    # The chosen threshold is the best AVGF1 on the given predictions.
    t = tv.best_threshold(y, p)
    assert tv.score(y, p, t)["AVGF1"] >= got["AVGF1"] - 1e-12


def test_grouped_cv_never_splits_a_participant():
    # Selection sees only train; the folds keep each participant on one side.
    y = np.array([0, 1] * 30)
    groups = [f"p{i // 4}" for i in range(60)]
    x = np.random.default_rng(1).normal(size=(60, 3)) + y[:, None]
    name, t, oof, probs = tb.select_and_fit(
        tb.candidates("minilm_logreg", tv.ModelConfig(cv_folds=3, logreg_c=(0.1, 1.0))),
        x, y, groups, {"val": x[:10]}, tv.ModelConfig(cv_folds=3, logreg_c=(0.1, 1.0)))
    assert name in ("lr_C0.1", "lr_C1.0") and 0.05 <= t <= 0.95
    assert probs["val"].shape == (10,) and oof.shape == y.shape and frame_ap(y, oof) > 0.7


def test_resample_participants_counts_paired_wins_on_val_sized_draws():
    rng = np.random.default_rng(3)
    groups = np.repeat([f"p{i}" for i in range(40)], 5)
    y = rng.integers(0, 2, len(groups))
    noisy = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.25, len(y)), 0, 1)
    oof = {"two_level_text": y * 0.8 + 0.1, "question_only": noisy, "tfidf_logreg": noisy}
    t = {m: 0.5 for m in oof}
    table = tb.resample_participants(y, oof, t, groups, 10, 30, 0)
    ours = table["two_level_text"]
    assert ours["AVGF1"] == 1.0 and ours["wins_vs_question_only"] == 1.0 and ours["wins_vs_all"] == 1.0
    assert table["question_only"]["AVGF1_p05"] <= table["question_only"]["AVGF1"] <= 1.0
    # A copy of a baseline never wins against it (ties are not wins).
    oof["two_level_text"] = noisy
    table = tb.resample_participants(y, oof, t, groups, 10, 30, 0)
    assert table["two_level_text"]["wins_vs_tfidf_logreg"] == 0.0
    assert table["two_level_text"]["wins_vs_all"] == 0.0


def test_crossfit_threshold_never_reads_a_decided_videos_label():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 80)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 80), 0, 1)
    groups = np.array([f"p{i % 16}" for i in range(80)])
    halves = tv.grouped_folds(y, groups, 2, 0)
    hard = tv.crossfit_decisions(y, p, halves)
    # Relabelling the videos of one half changes no decision inside that half.
    fit, apply = halves[0]
    y2 = y.copy()
    y2[apply] = 1 - y2[apply]
    np.testing.assert_array_equal(tv.crossfit_decisions(y2, p, halves)[apply], hard[apply])
    # Each half is cut at the other half's best threshold.
    t = tv.best_threshold(y[fit], p[fit])
    np.testing.assert_array_equal(hard[apply], (p[apply] >= t).astype(float))
    table = tv.crossfit_threshold(y, {"a": p, "flat": np.full(80, 0.5)}, groups, 4, 0)
    assert len(table["a"]["per_repeat"]) == 4 and table["a"]["AP"] == pytest.approx(
        bah_metrics(y, p)["AP"])
    assert table["a"]["AVGF1"] == pytest.approx(np.mean(table["a"]["per_repeat"]))
    assert table["a"]["AVGF1"] > table["flat"]["AVGF1"]


SPLITS = transcript_splits(DataConfig())


@pytest.mark.slow
@pytest.mark.skipif(not (SPLITS / "train.txt").exists(), reason=f"no shared splits at {SPLITS}")
def test_quick_run_end_to_end(tmp_path):
    config = runner.build_config("text_video_level", ["--quick=True"])
    assert config.quick and config.data.max_train > 0
    results, run_dir = runner.run("text_video_level", config, tmp_path)
    assert set(config.methods) == set(tvl.METHODS) - {"mpnet_logreg"}   # MPNet: slow here
    for method in config.methods:
        row = results["val"][method]
        assert set(tv.METRICS) <= set(row)
        assert all(0.0 <= row[m] <= 1.0 for m in tv.METRICS), (method, row)
    # Every method beats chance AP by a margin on the subsample (the question prior is strong).
    assert results["val"]["question_only"]["AP"] > 0.55
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["val"].keys() == results["val"].keys()
    assert "two_level_text" in (run_dir / "results.md").read_text()
    lines = (run_dir / "predictions_val.csv").read_text().splitlines()
    assert lines[0].startswith("video_id,label,question_only")
    assert len(lines) == 1 + config.data.max_eval
    # The stacked model's per-video named contributions add up to its logit and probability.
    import csv
    with open(run_dir / "contributions_val.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == config.data.max_eval
    named = [k for k in rows[0] if k.endswith("_logit") and k != "logit"]
    assert named[:2] == ["question_prior_logit", "tfidf_logit"]
    with open(run_dir / "predictions_val.csv") as f:
        preds = {r["video_id"]: float(r["two_level_text"]) for r in csv.DictReader(f)}
    for r in rows:
        total = float(r["intercept"]) + sum(float(r[k]) for k in rows[0]
                                            if k not in ("video_id", "label", "prob", "logit", "intercept"))
        assert total == pytest.approx(float(r["logit"]), abs=1e-4)
        assert float(r["prob"]) == pytest.approx(preds[r["video_id"]], abs=1e-5)
    assert set(named) <= set(results["two_level_text_level2_val"])
    plain = results["val_threshold_cv_train"]   # the plain train threshold, beside the rule
    assert plain.keys() == results["val"].keys() and all(0.05 <= r["threshold"] <= 0.95
                                                         for r in plain.values())
    crossfit = results["val_threshold_crossfit_on_val"]
    assert crossfit.keys() == results["val"].keys()
    assert all(len(r["per_repeat"]) == config.model.crossfit_repeats for r in crossfit.values())
    assert any("threshold cross-fitted on val" in n for n in results["notes"])
    # The threshold chosen on val is the best on val's grid: no worse than the train one.
    on_val = results["val_threshold_on_val"]
    assert on_val.keys() == results["val"].keys()
    for method, row in on_val.items():
        assert row["AVGF1"] >= results["val"][method]["AVGF1"] - 1e-12
        assert row["AP"] == results["val"][method]["AP"] and 0.05 <= row["threshold"] <= 0.95
    shift = results["level1_score_shift"]
    assert len(shift) == config.model.cv_folds + 1 and set(shift["val"]) == set(tv.LEVEL1_VIEWS)
    resampled = results["train_cv_resampled_like_val"]
    assert resampled.keys() == results["train_cv"].keys()
    ours = resampled["two_level_text"]
    assert 0 <= ours["wins_vs_all"] <= min(ours[f"wins_vs_{m}"] for m in tb.BASELINES
                                           if m in config.methods) <= 1
    assert ours["AVGF1_p05"] <= ours["AVGF1"] <= ours["AVGF1_p95"]
    assert sum("every baseline" in n for n in results["notes"]) == 4


def _toy_views(n=120, seed=0):
    """Synthetic videos: 30 participants, label-dependent words, descriptors and embedding."""
    from level1_affect.text import VIDEO_FEATURES
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    words = np.array(["maybe", "but", "want", "cannot", "should", "fine", "good", "sure", "will"])
    texts = [" ".join(rng.choice(words[:5] if lab else words[4:], 12)) for lab in y]
    desc = rng.normal(size=(n, len(VIDEO_FEATURES))).astype(np.float32) + 0.5 * y[:, None]
    emb = rng.normal(size=(n, 8)).astype(np.float32) + 0.3 * y[:, None]
    q = rng.integers(1, 8, n)
    groups = np.array([f"p{i % 30}" for i in range(n)])
    talk = rng.normal(size=(n, 8)).astype(np.float32) + 0.3 * y[:, None]
    return tv.TextViews(texts, emb, desc, q, groups, talk), y


def test_level1_oof_never_uses_the_rows_own_participant():
    v, y = _toy_views()
    cfg = tv.ModelConfig(cv_folds=3, logreg_c=(0.3,))      # one candidate: no selection effect
    folds = tv.grouped_folds(y, v.groups, 3, 0)
    for tr, te in folds:
        assert not set(v.groups[tr]) & set(v.groups[te])
    z, models, chosen = tv.fit_level1(v, y, folds, cfg)
    assert z.shape == (len(y), len(tv.LEVEL1_VIEWS)) and set(chosen) == set(tv.LEVEL1_VIEWS)
    # Flipping one participant's labels (same folds) leaves that participant's level-1
    # scores unchanged on every view: they come from models fitted without it.
    rows = np.flatnonzero(v.groups == "p7")
    y2 = y.copy()
    y2[rows] = 1 - y2[rows]
    z2, _, _ = tv.fit_level1(v, y2, folds, cfg)
    np.testing.assert_allclose(z2[rows], z[rows])
    others = np.setdiff1d(np.arange(len(y)), rows)
    assert not np.allclose(z2[others], z[others])           # the flip is seen elsewhere


@pytest.mark.parametrize("inputs", tv.LEVEL2_INPUTS)
def test_two_level_contributions_sum_to_the_logit(inputs):
    v, y = _toy_views(seed=1)
    cfg = tv.ModelConfig(cv_folds=3, logreg_c=(0.3,))
    model = tv.TwoLevelText(cfg, inputs=inputs, c=1.0).fit(v, y)
    sub = v[:45]            # rows 0-14, 30-44: p0..p14 twice (a person context); 15-29 once
    names, parts, b = model.contributions(sub)
    assert parts.shape == (45, len(names)) and len(set(names)) == len(names)
    assert names[:4] == ["question_prior_logit", "tfidf_logit", "embedding_logit", "affect_logit"]
    assert np.isfinite(parts).all()
    logit = model.decision_function(sub)
    np.testing.assert_allclose(b + parts.sum(1), logit, atol=1e-9)
    p = model.predict_proba(sub)[:, 1]
    np.testing.assert_allclose(np.log(p / (1 - p)), logit, atol=1e-6)
    # ... and agree with the underlying sklearn model on the standardised inputs, where an
    # unknown input (a person with no other video) is the training mean.
    x, _ = tv.level2_matrix(tv.predict_level1(model.models_, sub), sub, inputs)
    x = np.where(np.isnan(x), model.level2_.mean_, x)
    lr = model.level2_.lr_
    np.testing.assert_allclose(lr.decision_function((x - model.level2_.mean_) / model.level2_.scale_),
                               logit, atol=1e-9)
    person = [j for j, n in enumerate(names) if n.startswith("person_")]
    assert bool(person) == ("person" in inputs)
    if person:                       # singletons: no person context, zero contribution
        assert not parts[15:30, person].any() and parts[:15, person].all()


def test_person_context_is_the_mean_of_the_persons_other_videos():
    z = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 60.0], [7.0, 0.0]])
    out = tv.person_context(z, ["a", "a", "a", "b"])
    np.testing.assert_allclose(out[:3], [[4.0, 40.0], [3.0, 35.0], [2.0, 15.0]])
    assert np.isnan(out[3]).all()                       # b said nothing else
    # Labels play no part, and the order of the rows does not matter.
    perm = np.array([3, 1, 0, 2])
    np.testing.assert_allclose(tv.person_context(z[perm], np.array(["a", "a", "a", "b"])[perm]),
                               out[perm])


def test_level2_rejects_an_input_never_known():
    x = np.array([[0.0, np.nan], [1.0, np.nan], [2.0, np.nan]])
    with pytest.raises(ValueError, match="no known value"):
        tv.Level2(1.0).fit(x, np.array([0, 1, 1]))


def test_stack_cv_scores_every_design_out_of_fold():
    v, y = _toy_views(seed=2)
    cfg = tv.ModelConfig(cv_folds=3, logreg_c=(0.3,), level2_c=(0.1, 1.0))
    oof, outer, shifts = tv.stack_cv(v, y, cfg)
    assert len(shifts) == len(outer) and all(set(r) == set(tv.LEVEL1_VIEWS) for r in shifts)
    assert set(oof) == {(i, c) for i in tv.LEVEL2_INPUTS for c in (0.1, 1.0)}
    assert sorted(np.concatenate([te for _, te in outer]).tolist()) == list(range(len(y)))
    for tr, te in outer:
        assert not set(v.groups[tr]) & set(v.groups[te])
    model, key, t, oof_p, probs, table = tv.fit_two_level(
        v, y, {"val": v[:10]}, cfg, ("views",), (oof, outer, shifts))
    assert key[0] == "views" and set(table) == {"views C=0.1", "views C=1.0"}
    assert probs["val"].shape == (10,) and 0.05 <= t <= 0.95 and frame_ap(y, oof_p) > 0.7
    np.testing.assert_array_equal(oof_p, oof[key])


@pytest.mark.slow
def test_resampled_threshold_is_the_median_of_val_sized_draws():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(20)], 6)
    y = (rng.random(groups.size) < 0.5).astype(int)
    # Half the participants score A/H around 0.6, the other half around 0.8: a draw's best
    # threshold depends on whom it picks.
    shift = np.where(np.isin(groups, [f"p{i}" for i in range(10)]), 0.1, 0.3)
    p = np.clip(0.3 + shift * 0 + np.where(y == 1, shift + 0.3, 0.0) + rng.normal(0, 0.05, y.size),
                0, 1)
    t = tv.resampled_threshold(y, p, groups, 5, 100, seed=0)
    assert t == tv.resampled_threshold(y, p, groups, 5, 100, seed=0)     # deterministic
    people = np.unique(groups)
    draws = np.random.default_rng(0)
    found = []
    for _ in range(100):
        rows = np.isin(groups, draws.choice(people, size=5, replace=False))
        if 0 < y[rows].sum() < rows.sum():
            found.append(tv.best_threshold(y[rows], p[rows]))
    assert t == pytest.approx(float(np.median(found)))
    # With one participant per draw and single-class participants, it falls back to all of train.
    one = np.repeat(["a", "b"], 10)
    y1 = np.repeat([0, 1], 10)
    p1 = np.linspace(0, 1, 20)
    assert tv.resampled_threshold(y1, p1, one, 1, 10, 0) == tv.best_threshold(y1, p1)
    assert tvl.get_config().model.threshold == "resampled"
