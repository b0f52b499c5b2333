"""Video-level A/H text baselines: question rate, TF-IDF, MiniLM and MPNet logistic regressions.

``candidates`` names each method's models (the two-level text model's level-1 views use
the same grids, ``level2_conflict.text_video.view_candidates``); ``select_and_fit`` picks
one by participant-grouped out-of-fold AP on train; ``resample_participants`` compares the
two-level text model with these baselines on val-sized draws of training participants.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from level2_conflict.text_video import (DATA_THRESHOLDS, ModelConfig, best_threshold,
                                        grouped_folds, score, select_oof, view_candidates)

BASELINES = ("question_only", "tfidf_logreg", "minilm_logreg", "mpnet_logreg")


def candidates(method: str, cfg: ModelConfig) -> dict[str, Callable]:
    """A method's candidate models by name: a baseline or a single-model ablation."""
    if method == "question_only":
        return view_candidates("question_prior", cfg)
    if method == "tfidf_logreg":
        return view_candidates("tfidf", cfg)
    cands = view_candidates("embedding", cfg)
    # Trees only on the 34 named descriptors: on 400+ embedding dimensions a boosted model
    # costs ~30 s a fit here and has no interpretable splits to offer.
    if method == "two_level_text_lexicon":
        cands.update({f"gbm_depth{d}": (lambda d=d: HistGradientBoostingClassifier(
            max_depth=d, learning_rate=cfg.gbm_lr, max_iter=cfg.gbm_iters, l2_regularization=1.0,
            random_state=cfg.seed)) for d in cfg.gbm_depth})
    return cands


def select_and_fit(candidates: dict[str, Callable], x_train, y, groups, evals: dict,
                   cfg: ModelConfig):
    """Choose a candidate by grouped out-of-fold AP on train, refit it, predict ``evals``.

    Returns ``(name, threshold, out-of-fold train probabilities, {split: probabilities})``.
    """
    folds = grouped_folds(y, groups, cfg.cv_folds, cfg.seed)
    name, oof = select_oof(candidates, x_train, y, folds)
    threshold = best_threshold(y, oof) if cfg.threshold in DATA_THRESHOLDS else float(cfg.threshold)
    model = candidates[name]().fit(x_train, y)
    probs = {s: model.predict_proba(x)[:, 1] for s, x in evals.items()}
    return name, threshold, oof, probs


def resample_participants(y: np.ndarray, oof: dict[str, np.ndarray], thresholds: dict, groups,
                          n_participants: int, draws: int, seed: int) -> dict:
    """The methods compared on ``draws`` sets of ``n_participants`` training participants.

    Out-of-fold probabilities at each method's train threshold (docs/two_level.md, "The
    two-level text model"). Returns ``{method: {"AVGF1", "AP", "AVGF1_p05", "AVGF1_p95"}}``;
    two_level_text also gets ``wins_vs_<baseline>``, ``wins_vs_all`` and ``AP_wins_vs_...``.
    """
    groups = np.asarray(groups)
    people = np.unique(groups)
    rng = np.random.default_rng(seed)
    runs: dict = {m: {"AVGF1": [], "AP": []} for m in oof}
    for _ in range(draws):
        pick = rng.choice(people, size=min(n_participants, len(people)), replace=False)
        rows = np.isin(groups, pick)
        if not 0 < y[rows].sum() < rows.sum():
            continue
        for m, p in oof.items():
            sc = score(y[rows], p[rows], thresholds[m])
            runs[m]["AVGF1"].append(sc["AVGF1"])
            runs[m]["AP"].append(sc["AP"])
    table = {}
    for m, r in runs.items():
        f1 = np.array(r["AVGF1"])
        table[m] = {"AVGF1": float(f1.mean()), "AP": float(np.mean(r["AP"])),
                    "AVGF1_p05": float(np.quantile(f1, 0.05)),
                    "AVGF1_p95": float(np.quantile(f1, 0.95))}
    base = [m for m in BASELINES if m in runs]
    if "two_level_text" in runs and base:
        for metric, tag in (("AVGF1", "wins"), ("AP", "AP_wins")):
            ours = np.array(runs["two_level_text"][metric])
            beats = {m: ours > np.array(runs[m][metric]) for m in base}
            for m in base:
                table["two_level_text"][f"{tag}_vs_{m}"] = float(beats[m].mean())
            table["two_level_text"][f"{tag}_vs_all"] = float(np.all(list(beats.values()), 0).mean())
    return table
