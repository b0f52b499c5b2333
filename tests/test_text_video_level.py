"""Video-level A/H from transcripts: selection helpers and a quick end-to-end run."""

import json
from pathlib import Path

import numpy as np
import pytest

from ahjax.metrics import bah_metrics
from experiments import run as runner
from experiments import text_video_level as tvl


def test_question_rate_and_onehot():
    q = np.array([1, 1, 2, 2, 2, 4])
    y = np.array([0, 1, 1, 1, 0, 1])
    p = tvl.QuestionRate().fit(q[:, None], y).predict_proba(np.array([[1], [2], [7]]))[:, 1]
    np.testing.assert_allclose(p, [0.5, 2 / 3, 4 / 6])          # unseen question: overall rate
    oh = tvl.question_onehot(np.array([1, 7, 0]))
    assert oh.tolist()[0][0] == 1 and oh[1, 6] == 1 and not oh[2].any()


def test_threshold_shift_keeps_ap_and_moves_decisions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    got = tvl.score(y, p, 0.35)
    hard = bah_metrics(y, (p >= 0.35).astype(float))
    assert got["AVGF1"] == pytest.approx(hard["AVGF1"]) and got["WAR"] == pytest.approx(hard["WAR"])
    assert got["AP"] == pytest.approx(bah_metrics(y, p)["AP"])
    # The chosen threshold is the best AVGF1 on the given predictions.
    t = tvl._best_threshold(y, p)
    assert tvl.score(y, p, t)["AVGF1"] >= got["AVGF1"] - 1e-12


def test_grouped_cv_never_splits_a_participant():
    # Selection sees only train; the folds keep each participant on one side.
    y = np.array([0, 1] * 30)
    groups = [f"p{i // 4}" for i in range(60)]
    x = np.random.default_rng(1).normal(size=(60, 3)) + y[:, None]
    name, t, oof, probs = tvl.select_and_fit(
        tvl._candidates("minilm_logreg", tvl.ModelConfig(cv_folds=3, logreg_c=(0.1, 1.0))),
        x, y, groups, {"val": x[:10]}, tvl.ModelConfig(cv_folds=3, logreg_c=(0.1, 1.0)))
    assert name in ("lr_C0.1", "lr_C1.0") and 0.05 <= t <= 0.95
    assert probs["val"].shape == (10,) and oof["AP"] > 0.7


SPLITS = Path(tvl.default_splits())


@pytest.mark.skipif(not (SPLITS / "train.txt").exists(), reason=f"no shared splits at {SPLITS}")
def test_quick_run_end_to_end(tmp_path):
    config = runner.build_config("text_video_level", ["--quick=True"])
    assert config.quick and config.data.max_train > 0
    results, run_dir = runner.run("text_video_level", config, tmp_path)
    for method in ("question_only", "tfidf_logreg", "minilm_logreg", "two_level_text"):
        row = results["val"][method]
        assert set(tvl.METRICS) <= set(row)
        assert all(0.0 <= row[m] <= 1.0 for m in tvl.METRICS), (method, row)
    # Every method beats chance AP by a margin on the subsample (the question prior is strong).
    assert results["val"]["question_only"]["AP"] > 0.55
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["val"].keys() == results["val"].keys()
    assert "two_level_text" in (run_dir / "results.md").read_text()
    lines = (run_dir / "predictions_val.csv").read_text().splitlines()
    assert lines[0].startswith("video_id,label,question_only")
    assert len(lines) == 1 + config.data.max_eval
