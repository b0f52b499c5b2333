"""Video-level A/H from the transcript alone: question prior, TF-IDF, MiniLM, two-level text.

``python -m experiments.run text_video_level [--data.splits=DIR] [--quick=True]`` on the
v1 video-level splits (``video_id,label,transcript`` lines; default
``../shared/data/bah-video-splits`` beside the repository, or ``$AHJAX_SPLITS``).

Methods (class-1 probability per video):
- ``question_only``: the train-set A/H rate of the video's question (number in its id).
- ``tfidf_logreg``: word 1-2 gram TF-IDF + logistic regression.
- ``minilm_logreg``: the MiniLM sentence embedding of the transcript + logistic regression.
- ``two_level_text``: level-1 text descriptors and the level-2 conflict summary of
  ``level1_affect.text.video_text_features`` plus the MiniLM embedding, in a logistic
  regression; ``+q`` adds the question one-hot; ``_lexicon`` keeps only the 34 named
  descriptors (the interpretable ablation), in a logistic regression or a small
  gradient-boosted model, whichever wins the training CV.

Model selection uses the training split only: stratified K-fold grouped by participant
picks each method's hyperparameters (C; for the lexicon variant also the model family) by
the paper's AP on out-of-fold predictions; the decision
threshold is 0.5 or (``model.threshold="cv"``) the one maximising out-of-fold AVGF1. Val and
test are only scored. AP always uses the untouched probabilities.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ahjax import assets
from ahjax.data.bah import load_video_splits, parse_video_name
from ahjax.metrics import bah_metrics, frame_ap

METRICS = ("AVGF1", "AP", "WAR", "F1_POS", "F1_NEG", "W_F1")
METHODS = ("question_only", "tfidf_logreg", "minilm_logreg", "two_level_text",
           "two_level_text+q", "two_level_text_lexicon")
N_QUESTIONS = 7


def default_splits() -> str:
    """``$AHJAX_SPLITS``, else ``../shared/data/bah-video-splits`` next to the repository."""
    env = os.environ.get("AHJAX_SPLITS")
    if env:
        return str(Path(env).expanduser().resolve())
    return str((Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
                / "bah-video-splits").resolve())


@dataclasses.dataclass(frozen=True)
class DataConfig:
    splits: str = ""
    max_train: int = 0      # 0 = every training video; >0 = a stratified subsample (quick)
    max_eval: int = 0       # same for val and test
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    cv_folds: int = 5
    logreg_c: tuple = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    gbm_depth: tuple = (2, 3)          # two_level_text_lexicon candidates beside logreg
    gbm_iters: int = 150
    gbm_lr: float = 0.05
    tfidf_min_df: int = 2
    threshold: str = "cv"              # "cv" (best out-of-fold AVGF1 on train) or a number
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    methods: tuple = METHODS
    cache: str = ""                    # MiniLM embedding cache; "" = $AHJAX_CACHE/text_video
    quick: bool = False


def get_config(quick: bool = False) -> Config:
    """The full run, or (``quick``) a subsample with 3 folds and a short grid for tests."""
    data = DataConfig(splits=default_splits())
    if not quick:
        return Config(data=data)
    return Config(data=dataclasses.replace(data, max_train=160, max_eval=60),
                  model=ModelConfig(cv_folds=3, logreg_c=(0.03, 0.3, 3.0), gbm_depth=(2,),
                                    gbm_iters=60),
                  quick=True)


# ---- features ------------------------------------------------------------------------
def minilm_embeddings(texts: Sequence[str], cache: Path) -> np.ndarray:
    """(n, 384) MiniLM embeddings of whole transcripts, cached on disk by text hash.

    Texts beyond 256 tokens are truncated, as sentence-transformers does (4 of the 726 v1
    transcripts). The model is only loaded when something is missing from the cache.
    """
    cache.mkdir(parents=True, exist_ok=True)
    keys = [hashlib.sha256(("all-MiniLM-L6-v2\0" + t).encode()).hexdigest()[:32] for t in texts]
    out = np.zeros((len(texts), 384), np.float32)
    missing = []
    for i, k in enumerate(keys):
        f = cache / f"{k}.npy"
        if f.exists():
            out[i] = np.load(f)
        else:
            missing.append(i)
    if missing:
        from level1_affect import minilm
        todo = sorted(set(texts[i] for i in missing))
        vecs = dict(zip(todo, minilm.encode_sentences(todo)))
        for i in missing:
            out[i] = vecs[texts[i]]
            tmp = cache / f".{keys[i]}.{os.getpid()}.npy"
            np.save(tmp, out[i])
            os.replace(tmp, cache / f"{keys[i]}.npy")  # atomic: readers never see half a file
    return out


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


def _best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold in 0.05..0.95 with the best AVGF1 on (out-of-fold) predictions."""
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    scores = [bah_metrics(y, (p >= t).astype(np.float64))["AVGF1"] for t in grid]
    return float(grid[int(np.argmax(scores))])


def _shift(p: np.ndarray, t: float) -> np.ndarray:
    """A monotone map of probabilities sending ``t`` to 0.5, so ``>= 0.5`` means ``>= t``."""
    return np.where(p >= t, 0.5 + 0.5 * (p - t) / max(1 - t, 1e-9), 0.5 * p / max(t, 1e-9))


def score(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """The paper's metrics: AP from ``p`` itself, the hard-decision ones at ``threshold``."""
    hard = bah_metrics(y, _shift(p, threshold))
    out = {k: hard[k] for k in METRICS}
    out["AP"] = bah_metrics(y, p)["AP"]
    return out


def select_and_fit(candidates: dict[str, Callable], x_train, y, groups, evals: dict, cfg: ModelConfig):
    """Choose a candidate by grouped out-of-fold AP on train, refit it, predict ``evals``.

    Returns ``(name, threshold, oof_metrics, {split: probabilities})``.
    """
    cv = StratifiedGroupKFold(n_splits=cfg.cv_folds, shuffle=True, random_state=cfg.seed)
    folds = list(cv.split(np.zeros(len(y)), y, groups))
    best = None
    for name, make in candidates.items():
        oof = np.zeros(len(y))
        for tr, te in folds:
            oof[te] = make().fit(_take(x_train, tr), y[tr]).predict_proba(_take(x_train, te))[:, 1]
        ap = frame_ap(y, oof)
        if best is None or ap > best[1] + 1e-9:
            best = (name, ap, oof)
    name, _, oof = best
    threshold = _best_threshold(y, oof) if cfg.threshold == "cv" else float(cfg.threshold)
    model = candidates[name]().fit(x_train, y)
    probs = {s: model.predict_proba(x)[:, 1] for s, x in evals.items()}
    return name, threshold, score(y, oof, threshold), probs


def _logreg(c: float, scale: bool = True):
    lr = LogisticRegression(C=c, max_iter=5000)
    return make_pipeline(StandardScaler(), lr) if scale else lr


def _candidates(method: str, cfg: ModelConfig) -> dict[str, Callable]:
    if method == "question_only":
        return {"question_rate": QuestionRate}
    if method == "tfidf_logreg":
        return {f"tfidf_lr_C{c}": (lambda c=c: make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=cfg.tfidf_min_df, sublinear_tf=True),
            LogisticRegression(C=c, max_iter=5000))) for c in cfg.logreg_c}
    cands = {f"lr_C{c}": (lambda c=c: _logreg(c)) for c in cfg.logreg_c}
    # Trees only on the 34 named descriptors: on 400+ embedding dimensions a boosted model
    # costs ~30 s a fit here and has no interpretable splits to offer.
    if method == "two_level_text_lexicon":
        cands.update({f"gbm_depth{d}": (lambda d=d: HistGradientBoostingClassifier(
            max_depth=d, learning_rate=cfg.gbm_lr, max_iter=cfg.gbm_iters, l2_regularization=1.0,
            random_state=cfg.seed)) for d in cfg.gbm_depth})
    return cands


def _subsample(rows: list, n: int, seed: int) -> list:
    """``n`` rows stratified by label (all rows when ``n`` is 0 or larger than the split)."""
    if not n or n >= len(rows):
        return rows
    keep, _ = train_test_split(np.arange(len(rows)), train_size=n, random_state=seed,
                               stratify=[r.label for r in rows])
    return [rows[i] for i in sorted(keep)]


def _write_predictions(path: Path, rows: list, probs: dict[str, np.ndarray]) -> None:
    """``video_id,label,<method>...`` with each method's class-1 probability."""
    import csv
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["video_id", "label", *probs])
        for i, r in enumerate(rows):
            out.writerow([r.video_id, r.label, *(f"{p[i]:.6f}" for p in probs.values())])


def run(config: Config, workdir) -> dict:
    """Fit on train, score on val (and test when present); return the results tables.

    Also writes ``predictions_<split>.csv`` (per-video probabilities) into ``workdir``.
    """
    from level1_affect.text import VIDEO_FEATURES, Lexicons, video_text_features

    splits = load_video_splits(config.data.splits or default_splits())
    if "train" not in splits:
        raise FileNotFoundError(f"{config.data.splits}: no train.txt")
    data = {s: _subsample(rows, config.data.max_train if s == "train" else config.data.max_eval,
                          config.data.seed) for s, rows in splits.items()}
    cache = Path(config.cache) if config.cache else assets.cache_dir() / "text_video" / "minilm"
    lex = Lexicons()
    feats = {}
    for s, rows in data.items():
        texts = [r.transcript for r in rows]
        q = np.array([parse_video_name(r.video_id)[1] for r in rows])
        desc = np.array([[d[k] for k in VIDEO_FEATURES]
                         for d in (video_text_features(t, lex) for t in texts)], np.float32)
        emb = minilm_embeddings(texts, cache) if any(
            m in config.methods for m in METHODS[2:5]) else np.zeros((len(rows), 384), np.float32)
        feats[s] = {
            "question_only": q[:, None], "tfidf_logreg": texts, "minilm_logreg": emb,
            "two_level_text": np.hstack([desc, emb]),
            "two_level_text+q": np.hstack([desc, emb, question_onehot(q)]),
            "two_level_text_lexicon": desc,
        }
    y = np.array([r.label for r in data["train"]])
    groups = [parse_video_name(r.video_id)[0] for r in data["train"]]
    evals = [s for s in ("val", "test") if s in data]
    results: dict = {s: {} for s in evals}
    predictions: dict = {s: {} for s in evals}
    results["train_cv"], notes = {}, []
    for method in config.methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {METHODS}")
        name, t, oof, probs = select_and_fit(
            _candidates(method, config.model), feats["train"][method], y, groups,
            {s: feats[s][method] for s in evals}, config.model)
        results["train_cv"][method] = {**oof, "threshold": t}
        notes.append(f"{method}: chose {name} by grouped {config.model.cv_folds}-fold CV AP on "
                     f"train; threshold {t:.2f}")
        for s in evals:
            labels = np.array([r.label for r in data[s]])
            results[s][method] = score(labels, probs[s], t)
            predictions[s][method] = probs[s]
    for s in evals:  # per-video probabilities, for late fusion and significance tests
        _write_predictions(Path(workdir) / f"predictions_{s}.csv", data[s], predictions[s])
    if "val" in results and "two_level_text" in results["val"]:
        base = {m: results["val"][m]["AP"] for m in METHODS[:3] if m in results["val"]}
        if base:
            best = max(base, key=base.get)
            notes.append(f"val AP: two_level_text {results['val']['two_level_text']['AP']:.4f} vs "
                         f"best baseline {best} {base[best]:.4f} (not tuned on val)")
    notes.append("videos: " + ", ".join(f"{s} {len(r)}" for s, r in data.items()))
    results["notes"] = notes
    return results
