"""The BAH paper's evaluation, computed exactly as its reference code does.

Class 1 = A/H present; frame-level metrics pool every labelled frame of a split (-1
dropped). ``AVGF1``, ``F1_NEG``/``F1_POS``, ``W_F1``, ``AP`` (the reference's own, not
sklearn's), ``WAR`` and ``CONF``: definitions in docs/bah_format.md, "Metric definitions".
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# The reference's thresholds, built the same way so every float matches bit for bit.
AP_THRESHOLDS = np.arange(0, 1, 0.001)
VIDEO_METHODS = ("vote", "mean_logits", "mean_probs")


def softmax_pos(logits: np.ndarray) -> np.ndarray:
    """Class-1 probability of 2-class logits (n, 2) -> (n,), computed stably in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    # softmax([a, b])[1] == sigmoid(b - a); the two branches avoid overflow in exp.
    d = logits[:, 1] - logits[:, 0]
    out = np.empty_like(d)
    pos = d >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-d[pos]))
    e = np.exp(d[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _probs_and_preds(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(class-1 probabilities, hard predictions) from probabilities (n,) or logits (n, 2)."""
    scores = np.asarray(scores)
    if scores.dtype.kind not in "fiu":
        raise ValueError(f"scores must be numeric, got dtype {scores.dtype}")
    if scores.shape == (n,):
        prob = scores.astype(np.float64)
        if not np.all(np.isfinite(prob)):
            raise ValueError("scores hold NaN or inf values")
        if prob.size and (prob.min() < 0.0 or prob.max() > 1.0):
            raise ValueError(
                f"1-D scores must be class-1 probabilities in [0, 1], got range "
                f"[{prob.min():.4g}, {prob.max():.4g}]; pass 2-class logits as shape (n, 2)")
        return prob, (prob >= 0.5).astype(np.int64)
    if scores.shape == (n, 2):
        if not np.all(np.isfinite(scores)):
            raise ValueError("scores hold NaN or inf values")
        return softmax_pos(scores), np.argmax(scores, axis=1).astype(np.int64)
    raise ValueError(
        f"scores must have shape ({n},) (probabilities) or ({n}, 2) (logits) to match "
        f"labels of shape ({n},); got {scores.shape}")


def _clean(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate, drop frames labelled -1; return (labels, probabilities, predictions)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (n,), got shape {labels.shape}")
    if labels.size and labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        raise ValueError("labels must be integers 0, 1 or -1 (unlabelled)")
    labels = labels.astype(np.int64)
    bad = ~np.isin(labels, (-1, 0, 1))
    if bad.any():
        raise ValueError(f"labels must be 0, 1 or -1 (unlabelled); found {np.unique(labels[bad])[:5].tolist()}")
    prob, pred = _probs_and_preds(scores, labels.shape[0])
    keep = labels != -1
    if not keep.any():
        raise ValueError("no labelled frames: every label is -1 (or the input is empty)")
    return labels[keep], prob[keep], pred[keep]


def frame_ap(labels, probs) -> float:
    """The paper's AP of class 1 from 0/1 ``labels`` (n,) and class-1 ``probs`` (n,).

    Vectorised over the 1000 thresholds: sorting the probabilities once, the count of
    frames with ``prob >= t`` is ``n - searchsorted(sorted, t, 'left')``. Raises ValueError
    when there is no positive label (recall is undefined).
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must both be (n,)")
    pos = np.sort(probs[labels == 1])
    neg = np.sort(probs[labels != 1])
    if pos.size == 0:
        raise ValueError("AP is undefined without a positive (A/H) label among the frames")
    tp = pos.size - np.searchsorted(pos, AP_THRESHOLDS, side="left")
    fp = neg.size - np.searchsorted(neg, AP_THRESHOLDS, side="left")
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.zeros(len(AP_THRESHOLDS)), where=predicted > 0)
    recall = tp / pos.size
    # sklearn.metrics.auc: x must be monotonic; for a decreasing x it returns -trapezoid.
    # recall is non-increasing in t; if it is constant auc's direction stays +1 and the
    # area is 0 either way.
    direction = -1.0 if np.any(np.diff(recall) < 0) else 1.0
    return float(direction * np.trapezoid(precision, recall))


def _f1_per_class(labels: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(F1 per class [0, 1], support per class, confusion counts [true, pred])."""
    conf = np.zeros((2, 2), dtype=np.int64)
    np.add.at(conf, (labels, pred), 1)
    tp = np.diag(conf).astype(np.float64)
    denom = 2 * tp + (conf.sum(0) - tp) + (conf.sum(1) - tp)  # 2tp + fp + fn
    # sklearn's zero_division: a class never true nor predicted scores 0.0.
    f1 = np.divide(2 * tp, denom, out=np.zeros(2), where=denom > 0)
    return f1, conf.sum(1), conf


def bah_metrics(labels, scores) -> dict:
    """Every frame-level metric of the paper for one pool of frames.

    ``labels`` int (n,) in {0, 1, -1} (-1 dropped), ``scores`` class-1 probabilities (n,) or
    logits (n, 2). Returns ``AVGF1, AP, WAR, F1_POS, F1_NEG, W_F1``, ``CONF`` (2x2, rows = true
    class, each row sums to 1) and ``N``; ValueError on bad input or no positive label.
    """
    labels, prob, pred = _clean(labels, scores)
    f1, support, conf = _f1_per_class(labels, pred)
    rows = conf.sum(1, keepdims=True)
    conf_norm = np.divide(conf, rows, out=np.zeros((2, 2)), where=rows > 0)
    return {
        "AVGF1": float(f1.mean()),
        "AP": frame_ap(labels, prob),
        "WAR": float(np.mean(labels == pred)),
        "F1_POS": float(f1[1]),
        "F1_NEG": float(f1[0]),
        "W_F1": float(np.dot(f1, support) / support.sum()),
        "CONF": conf_norm.tolist(),
        "N": int(labels.size),
    }


def video_level(frame_scores: Sequence[np.ndarray], method: str = "vote") -> np.ndarray:
    """Per-video class-1 probabilities (float64, (n_videos,)) from per-frame scores.

    ``frame_scores``: one array per video, probabilities (n_i,) or logits (n_i, 2). ``method``:
    ``"vote"`` (fraction of frames positive), ``"mean_logits"`` (softmax of the mean logits;
    probabilities enter as log-odds) or ``"mean_probs"``.
    """
    if method not in VIDEO_METHODS:
        raise ValueError(f"unknown video-level method {method!r}; choose from {VIDEO_METHODS}")
    out = np.empty(len(frame_scores), dtype=np.float64)
    for i, scores in enumerate(frame_scores):
        scores = np.asarray(scores)
        n = scores.shape[0] if scores.ndim else 0
        if n == 0:
            raise ValueError(f"video {i} has no frames")
        prob, pred = _probs_and_preds(scores, n)
        if method == "vote":
            out[i] = pred.mean()
        elif method == "mean_probs":
            out[i] = prob.mean()
        else:
            if scores.ndim == 2:
                d = scores[:, 1].astype(np.float64) - scores[:, 0]
            else:
                # Clip so a probability of exactly 0 or 1 gives a large finite log-odds.
                p = np.clip(prob, 1e-12, 1 - 1e-12)
                d = np.log(p) - np.log1p(-p)
            out[i] = softmax_pos(np.stack([np.zeros(1), [d.mean()]], axis=1))[0]
    return out


def mean_std(per_subject: Mapping[str, Mapping[str, float]], ddof: int = 0) -> dict[str, dict]:
    """Mean and standard deviation of each metric over subjects (personalisation results).

    Takes ``{subject: {metric: value}}``; non-scalar entries (``CONF``) are skipped.
    Returns ``{metric: {"mean": float, "std": float, "n": int}}`` where ``n`` counts the
    subjects that report the metric. ``ddof=0`` (numpy's default, population std) unless
    asked otherwise.
    """
    values: dict[str, list[float]] = {}
    for subject, row in per_subject.items():
        for metric, value in row.items():
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
                continue
            values.setdefault(metric, []).append(float(value))
    out = {}
    for metric, xs in values.items():
        arr = np.asarray(xs)
        std = float(arr.std(ddof=ddof)) if arr.size > ddof else float("nan")
        out[metric] = {"mean": float(arr.mean()), "std": std, "n": int(arr.size)}
    return out
