"""Video-level A/H from a transcript: the two-level text model and what the baselines share.

- features: sentence embeddings of whole transcripts (MiniLM or MPNet) and the learned
  talk-type summary, both cached on disk by text (``sentence_embeddings``,
  ``talk_features``), the question one-hot;
- scoring with the paper's metrics (``score``) at a threshold set on train
  (``resampled_threshold``), participant-grouped folds, out-of-fold selection;
- the two-level text model (``TwoLevelText``): level 1 scores each view of the transcript
  out of fold by participant; level 2 is a logistic regression over those scores whose
  logit is an intercept plus one named contribution per view, its design chosen by nested
  grouped CV (``stack_cv``, ``fit_two_level``). docs/two_level.md says more.

The text baselines (question rate, TF-IDF, MiniLM, MPNet) are in ``baselines.text_video``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ahjax.core.metrics import bah_metrics, frame_ap
from level1_affect import encoders
from level1_affect import talk_type as tt
from level1_affect.text import VIDEO_FEATURES

METRICS = ("AVGF1", "AP", "WAR", "F1_POS", "F1_NEG", "W_F1")
N_QUESTIONS = 7
LEVEL2_INPUTS = ("views", "views+conflict", "views+conflict_score", "views+conflict_score+person",
                 "views+talk_score", "views+talk_score+person")
PERSON_VIEWS = ("tfidf", "embedding", "affect", "conflict")   # views averaged over a person's other videos


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    cv_folds: int = 5
    logreg_c: tuple = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    gbm_depth: tuple = (2, 3)          # two_level_text_lexicon candidates beside logreg
    gbm_iters: int = 150
    gbm_lr: float = 0.05
    tfidf_min_df: int = 2
    # "resampled" (median best out-of-fold AVGF1 threshold over val-sized draws of training
    # participants: robust to the sampling of a small split), "cv" (best out-of-fold AVGF1
    # on all of train) or a number.
    threshold: str = "resampled"
    level2_c: tuple = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)   # two_level_text's level-2 C grid
    level2_inputs: tuple = LEVEL2_INPUTS                 # its candidate level-2 input sets
    crossfit_repeats: int = 50         # halvings for the threshold calibrated on val (0 = off)
    resample_draws: int = 1000         # val-sized participant draws from train OOF (0 = off)
    seed: int = 0


# ---- features ------------------------------------------------------------------------
def sentence_embeddings(texts: Sequence[str], cache: Path, encoder: str = "minilm") -> np.ndarray:
    """(n, dim) sentence embeddings of whole transcripts by ``encoder`` (``minilm``,
    ``mpnet`` or a folder), cached on disk by encoder and text; texts beyond the encoder's
    limit (MiniLM 256, MPNet 384 tokens) are truncated, as sentence-transformers does."""
    return encoders.load(encoder).cached_sentences(texts, cache)


def talk_features(texts: Sequence[str], cache: Path, model_dir: str = "") -> np.ndarray:
    """(n, 8) ``VIDEO_TALK_FEATURES`` of whole transcripts from a talk-type model (default:
    the packaged one), cached by model and text."""
    path = Path(model_dir) if model_dir else tt.ensure_default()

    def compute(todo):
        model = tt.load(path)
        return [[tt.video_talk_features(p)[k] for k in tt.VIDEO_TALK_FEATURES]
                for p in tt.transcript_talk(todo, model)]

    return encoders.cached_rows(texts, cache, "talk_type " + tt.model_id(path),
                              len(tt.VIDEO_TALK_FEATURES), compute)


def question_onehot(questions: np.ndarray) -> np.ndarray:
    """(n, 7) one-hot of questions 1..7 (question 0 = unknown gives a zero row)."""
    out = np.zeros((len(questions), N_QUESTIONS), np.float32)
    ok = (questions >= 1) & (questions <= N_QUESTIONS)
    out[np.flatnonzero(ok), questions[ok] - 1] = 1.0
    return out


class QuestionRate:
    """The train-set A/H rate per question; an unseen question gets the overall rate."""

    def fit(self, q, y):
        q, y = np.asarray(q).ravel(), np.asarray(y)
        self.overall_ = float(y.mean())
        self.rate_ = {int(k): float(y[q == k].mean()) for k in np.unique(q)}
        return self

    def predict_proba(self, q):
        p = np.array([self.rate_.get(int(k), self.overall_) for k in np.asarray(q).ravel()])
        return np.stack([1 - p, p], axis=1)


# ---- selection on train, scoring on val/test ----------------------------------------
def _take(x, idx):
    return [x[i] for i in idx] if isinstance(x, list) else x[idx]


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold in 0.05..0.95 with the best AVGF1 on (out-of-fold) predictions."""
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    scores = [bah_metrics(y, (p >= t).astype(np.float64))["AVGF1"] for t in grid]
    return float(grid[int(np.argmax(scores))])


# Threshold rules read from the training data (the "resampled" one is applied in run()).
DATA_THRESHOLDS = ("cv", "resampled")


def _shift(p: np.ndarray, t: float) -> np.ndarray:
    """A monotone map of probabilities sending ``t`` to 0.5, so ``>= 0.5`` means ``>= t``."""
    return np.where(p >= t, 0.5 + 0.5 * (p - t) / max(1 - t, 1e-9), 0.5 * p / max(t, 1e-9))


def score(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """The paper's metrics: AP from ``p`` itself, the hard-decision ones at ``threshold``."""
    hard = bah_metrics(y, _shift(p, threshold))
    out = {k: hard[k] for k in METRICS}
    out["AP"] = bah_metrics(y, p)["AP"]
    return out


def crossfit_decisions(y: np.ndarray, p: np.ndarray, parts: list) -> np.ndarray:
    """0/1 decisions: each ``(fit, apply)`` part decided at the best-AVGF1 threshold of ``fit``."""
    hard = np.zeros(len(y))
    for fit, apply in parts:
        hard[apply] = (p[apply] >= best_threshold(y[fit], p[fit])).astype(np.float64)
    return hard


def crossfit_threshold(y: np.ndarray, probs: dict[str, np.ndarray], groups, repeats: int,
                       seed: int) -> dict:
    """Hard-decision metrics at thresholds cross-fitted on halves of the labelled split.

    Averaged over ``repeats`` participant halvings shared by every method (docs/two_level.md).
    Returns ``{method: {metric: mean, "AVGF1_sd": ..., "per_repeat": [...]}}``.
    """
    out: dict = {m: [] for m in probs}
    for r in range(repeats):
        halves = grouped_folds(y, groups, 2, seed + r)
        for m, p in probs.items():
            out[m].append(bah_metrics(y, crossfit_decisions(y, p, halves)))
    table = {}
    for m, runs in out.items():
        row = {k: float(np.mean([x[k] for x in runs])) for k in METRICS if k != "AP"}
        row["AP"] = bah_metrics(y, probs[m])["AP"]
        row["AVGF1_sd"] = float(np.std([x["AVGF1"] for x in runs]))
        row["per_repeat"] = [float(x["AVGF1"]) for x in runs]
        table[m] = row
    return table


def resampled_threshold(y: np.ndarray, p: np.ndarray, groups, n_participants: int,
                        draws: int, seed: int) -> float:
    """A decision threshold robust to the sampling of a small evaluation split: the median,
    over ``draws`` sets of ``n_participants`` training participants (val's size), of the
    best-AVGF1 threshold of the out-of-fold probabilities ``p`` on that set's videos.
    Reads train only; falls back to the best threshold on all of train."""
    groups = np.asarray(groups)
    people = np.unique(groups)
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(draws):
        rows = np.isin(groups, rng.choice(people, size=min(n_participants, len(people)),
                                          replace=False))
        if 0 < y[rows].sum() < rows.sum():
            found.append(best_threshold(y[rows], p[rows]))
    return float(np.median(found)) if found else best_threshold(y, p)


def grouped_folds(y: np.ndarray, groups, n_splits: int, seed: int) -> list:
    """Stratified K-fold splits that keep every participant on one side."""
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y, np.asarray(groups)))


def select_oof(candidates: dict[str, Callable], x, y, folds) -> tuple[str, np.ndarray]:
    """The candidate with the best out-of-fold AP over ``folds``, and its OOF probabilities."""
    best = None
    for name, make in candidates.items():
        oof = np.zeros(len(y))
        for tr, te in folds:
            oof[te] = make().fit(_take(x, tr), y[tr]).predict_proba(_take(x, te))[:, 1]
        ap = frame_ap(y, oof)
        if best is None or ap > best[1] + 1e-9:
            best = (name, ap, oof)
    return best[0], best[2]


def _logreg(c: float, scale: bool = True):
    lr = LogisticRegression(C=c, max_iter=5000)
    return make_pipeline(StandardScaler(), lr) if scale else lr


def view_candidates(view: str, cfg: ModelConfig) -> dict[str, Callable]:
    """A level-1 view's candidate models by name; the text baselines use the same grids."""
    if view == "question_prior":
        return {"question_rate": QuestionRate}
    if view == "tfidf":
        return {f"tfidf_lr_C{c}": (lambda c=c: make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=cfg.tfidf_min_df, sublinear_tf=True),
            LogisticRegression(C=c, max_iter=5000))) for c in cfg.logreg_c}
    return {f"lr_C{c}": (lambda c=c: _logreg(c)) for c in cfg.logreg_c}   # scaled, over C


# ---- the two-level stacked text model ------------------------------------------------
LEVEL1_VIEWS = ("question_prior", "tfidf", "embedding", "affect", "conflict", "talk")


def descriptor_split() -> tuple[tuple, tuple]:
    """``VIDEO_FEATURES`` cut into level-1 affect descriptors and the level-2 conflict summary."""
    i = VIDEO_FEATURES.index("change_and_sustain")
    return tuple(VIDEO_FEATURES[:i]), tuple(VIDEO_FEATURES[i:])


@dataclasses.dataclass
class TextViews:
    """What the two-level text model reads about a set of videos, one row per video."""
    texts: list               # transcripts
    emb: np.ndarray           # (n, dim) sentence embeddings (MiniLM or MPNet)
    desc: np.ndarray          # (n, 34) ``VIDEO_FEATURES``
    q: np.ndarray             # (n,) question number (0 = unknown)
    groups: np.ndarray        # (n,) participant
    talk: np.ndarray | None = None   # (n, 8) ``VIDEO_TALK_FEATURES`` (the learned talk types)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, idx) -> "TextViews":
        idx = np.arange(len(self))[idx]          # integer indices, a slice or a mask
        return TextViews([self.texts[i] for i in idx], self.emb[idx], self.desc[idx],
                         self.q[idx], np.asarray(self.groups)[idx],
                         None if self.talk is None else self.talk[idx])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _view_input(view: str, v: TextViews):
    if view == "question_prior":
        return v.q[:, None]
    if view == "tfidf":
        return v.texts
    if view == "embedding":
        return v.emb
    if view == "affect":
        return v.desc[:, :len(descriptor_split()[0])]
    if view == "conflict":
        return v.desc[:, len(descriptor_split()[0]):]
    if view == "talk":
        if v.talk is None:
            raise ValueError("the talk view needs TextViews.talk (talk_features)")
        return v.talk
    raise ValueError(f"unknown level-1 view {view!r}; known: {LEVEL1_VIEWS}")


def fit_level1(v: TextViews, y: np.ndarray, folds: list, cfg: ModelConfig,
               views: Sequence[str] = LEVEL1_VIEWS):
    """Level 1 on ``v``: per view, the candidate with the best OOF AP over ``folds``.

    Returns ``(z, models, chosen)``: ``z`` (n, n_views) the out-of-fold logits of the chosen
    candidates, ``models`` each view refitted on all of ``v``, ``chosen`` the candidate names.
    """
    if v.talk is None:            # no talk-type summary computed: the talk view is left out
        views = tuple(view for view in views if view != "talk")
    z = np.zeros((len(y), len(views)))
    models, chosen = {}, {}
    for j, view in enumerate(views):
        x, cands = _view_input(view, v), view_candidates(view, cfg)
        chosen[view], oof = select_oof(cands, x, y, folds)
        z[:, j] = _logit(oof)
        models[view] = cands[chosen[view]]().fit(x, y)
    return z, models, chosen


def predict_level1(models: dict, v: TextViews) -> np.ndarray:
    """(n, n_views) level-1 logits of fitted view models."""
    return np.stack([_logit(m.predict_proba(_view_input(view, v))[:, 1])
                     for view, m in models.items()], axis=1)


def person_context(z: np.ndarray, groups) -> np.ndarray:
    """Per row, the mean of ``z`` over the *other* rows of the same participant.

    Rows whose participant has no other video in the set get NaN (``Level2`` turns that
    into a zero contribution: nothing is known about the person). Labels are never read:
    at inference this is what the person said in their other answers, as an intervention
    sees every answer of a session.
    """
    groups = np.asarray(groups)
    out = np.full(z.shape, np.nan)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        if len(rows) > 1:
            total = z[rows].sum(0)
            out[rows] = (total[None] - z[rows]) / (len(rows) - 1)
    return out


def level2_matrix(z: np.ndarray, v: TextViews, inputs: str, views=LEVEL1_VIEWS):
    """Level-2 inputs and their names for the design ``inputs`` (one of ``LEVEL2_INPUTS``).

    The designs are listed in docs/two_level.md, "The two-level text model".
    """
    col = {view: j for j, view in enumerate(views)}
    base = ["question_prior", "tfidf", "embedding", "affect"]
    if inputs.startswith("views+conflict_score"):
        base.append("conflict")
    if inputs.startswith("views+talk_score"):
        base.append("talk")
    x, names = z[:, [col[b] for b in base]], [f"{b}_logit" for b in base]
    if inputs in ("views", "views+conflict_score", "views+talk_score"):
        return x, names
    if inputs in ("views+conflict_score+person", "views+talk_score+person"):
        pv = [("talk" if b == "conflict" and "talk" in inputs else b) for b in PERSON_VIEWS]
        person = person_context(z[:, [col[b] for b in pv]], v.groups)
        return np.hstack([x, person]), names + [f"person_{b}_logit" for b in pv]
    if inputs == "views+conflict":
        affect, conflict = descriptor_split()
        return np.hstack([x, v.desc[:, len(affect):]]), names + list(conflict)
    raise ValueError(f"unknown level-2 inputs {inputs!r}; known: {LEVEL2_INPUTS}")


class Level2:
    """Standardised inputs -> L2 logistic regression; the logit splits into named parts."""

    def __init__(self, c: float):
        self.c = c

    def fit(self, x, y):
        x = np.asarray(x, np.float64)
        known = ~np.isnan(x)
        if not known.any(0).all():
            raise ValueError("level 2: an input column has no known value")
        self.mean_ = np.nanmean(x, 0)
        sd = np.nanstd(x, 0)
        self.scale_ = np.where(sd > 1e-12, sd, 1.0)
        self.lr_ = LogisticRegression(C=self.c, max_iter=5000).fit(self._standardise(x), y)
        return self

    def _standardise(self, x) -> np.ndarray:
        """``(x - mean) / sd``; an unknown (NaN) input is 0: it contributes nothing."""
        return np.nan_to_num((np.asarray(x, np.float64) - self.mean_) / self.scale_, nan=0.0)

    def contributions(self, x) -> tuple[np.ndarray, float]:
        """(n, k) per-input contributions ``w_i (x_i - mean_i) / sd_i`` and the intercept."""
        return self.lr_.coef_[0] * self._standardise(x), float(self.lr_.intercept_[0])

    def decision_function(self, x) -> np.ndarray:
        parts, b = self.contributions(x)
        return b + parts.sum(1)

    def predict_proba(self, x) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(x)))
        return np.stack([1 - p, p], axis=1)


class TwoLevelText:
    """The stacked two-level text model.

    Level 1: per-view scores (``LEVEL1_VIEWS``), each fitted with its own grouped-CV choice
    of C; their out-of-fold logits on train feed level 2, a logistic regression over the
    inputs ``level2_matrix(..., inputs)`` names, whose per-video logit is the intercept plus
    one named contribution per input (``contributions``).
    """

    def __init__(self, cfg: ModelConfig, inputs: str = "views+conflict_score", c: float = 1.0):
        self.cfg, self.inputs, self.c = cfg, inputs, c

    def fit(self, v: TextViews, y: np.ndarray, folds: list | None = None):
        if folds is None:
            folds = grouped_folds(y, v.groups, self.cfg.cv_folds, self.cfg.seed)
        z, self.models_, self.chosen_ = fit_level1(v, y, folds, self.cfg)
        self.oof_logits_ = z
        x, self.names_ = level2_matrix(z, v, self.inputs)
        self.level2_ = Level2(self.c).fit(x, y)
        return self

    def contributions(self, v: TextViews) -> tuple[list, np.ndarray, float]:
        """(names, (n, k) named contributions, intercept); they sum to the level-2 logit."""
        x, names = level2_matrix(predict_level1(self.models_, v), v, self.inputs)
        parts, b = self.level2_.contributions(x)
        return names, parts, b

    def decision_function(self, v: TextViews) -> np.ndarray:
        _, parts, b = self.contributions(v)
        return b + parts.sum(1)

    def predict_proba(self, v: TextViews) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(v)))
        return np.stack([1 - p, p], axis=1)


def stack_cv(v: TextViews, y: np.ndarray, cfg: ModelConfig) -> tuple[dict, list]:
    """Nested, participant-grouped CV of every level-2 design on train (docs/two_level.md).

    Returns ``({(inputs, c): outer OOF probabilities}, outer folds, shifts)``; ``shifts[k]``
    is, per level-1 view, how far outer fold k's held-out participants move the mean logit.
    """
    outer = grouped_folds(y, v.groups, cfg.cv_folds, cfg.seed)
    parts = []
    for tr, te in outer:
        inner = grouped_folds(y[tr], v.groups[tr], cfg.cv_folds, cfg.seed)
        z_in, models, _ = fit_level1(v[tr], y[tr], inner, cfg)
        parts.append((tr, te, z_in, predict_level1(models, v[te])))
    shifts = [dict(zip(LEVEL1_VIEWS, (z_out.mean(0) - z_in.mean(0)).tolist()))
              for _, _, z_in, z_out in parts]
    oof = {}
    for inputs in cfg.level2_inputs:
        for c in cfg.level2_c:
            p = np.zeros(len(y))
            for tr, te, z_in, z_out in parts:
                m = Level2(c).fit(level2_matrix(z_in, v[tr], inputs)[0], y[tr])
                p[te] = m.predict_proba(level2_matrix(z_out, v[te], inputs)[0])[:, 1]
            oof[(inputs, c)] = p
    return oof, outer, shifts


# The stacked model chooses among the level-2 designs without a conflict input: with one
# (``two_level_text_conflict``: every design of ``ModelConfig.level2_inputs``, the earlier
# default; ``..._no_person``: those without the person context) val AP was the same (0.827
# against 0.825) and val AVGF1 lower under every threshold protocol (0.626 against 0.660 at
# the train-CV threshold, 0.685 against 0.701 cross-fitted on val), so it is an ablation.
STACKED = {"two_level_text": tuple(i for i in LEVEL2_INPUTS
                                   if "conflict" not in i and "talk" not in i),
           "two_level_text_talk": tuple(i for i in LEVEL2_INPUTS if "talk" in i),
           "two_level_text_conflict": tuple(i for i in LEVEL2_INPUTS if "talk" not in i),
           "two_level_text_conflict_no_person": tuple(i for i in LEVEL2_INPUTS
                                                      if "person" not in i and "talk" not in i)}


def fit_two_level(v: TextViews, y: np.ndarray, evals: dict, cfg: ModelConfig,
                  inputs_allowed: Sequence[str] | None = None, stack_oof: tuple | None = None):
    """Choose a level-2 design by nested grouped CV AP on train, refit it, predict ``evals``.

    ``stack_oof`` reuses a ``stack_cv`` result. Returns ``(model, (inputs, c), threshold,
    out-of-fold train probabilities, {split: probabilities}, {design: oof metrics})``.
    """
    oof, outer, _ = stack_oof if stack_oof is not None else stack_cv(v, y, cfg)
    designs = {k: p for k, p in oof.items() if inputs_allowed is None or k[0] in inputs_allowed}
    if not designs:
        raise ValueError(f"no level-2 design among {inputs_allowed} in {cfg.level2_inputs}")
    best = None
    for key, p in designs.items():
        ap = frame_ap(y, p)
        if best is None or ap > best[1] + 1e-9:
            best = (key, ap)
    key = best[0]
    threshold = (best_threshold(y, designs[key]) if cfg.threshold in DATA_THRESHOLDS
                 else float(cfg.threshold))
    model = TwoLevelText(cfg, inputs=key[0], c=key[1]).fit(v, y, folds=outer)
    probs = {s: model.predict_proba(x)[:, 1] for s, x in evals.items()}
    table = {f"{i} C={c}": {"AP": frame_ap(y, p), "AVGF1": score(y, p, best_threshold(y, p))["AVGF1"]}
             for (i, c), p in designs.items()}
    return model, key, threshold, designs[key], probs, table


def level1_shift_table(model: TwoLevelText, fold_shifts: list, evals: dict) -> dict:
    """Mean level-1 logit of new people minus that of the training out-of-fold scores.

    Rows: each outer fold of the nested train CV (held-out training participants against
    the rest) and each evaluation split (scored by the final level-1 models, against their
    out-of-fold scores on all of train). If an evaluation split moves no further than the
    folds do, its shift is participant sampling, not a pipeline artefact.
    """
    table = {f"train outer fold {k}": row for k, row in enumerate(fold_shifts)}
    base = model.oof_logits_.mean(0)
    for s, v in evals.items():
        table[s] = dict(zip(LEVEL1_VIEWS, (predict_level1(model.models_, v).mean(0) - base).tolist()))
    return table
