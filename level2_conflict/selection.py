"""Reading frame posteriors into decisions, each reading's one hyperparameter chosen on val.

Readings (:data:`READINGS`): the duration prior (semi-Markov decoding,
:func:`level2_conflict.runtime.decode_hsmm`), a median filter and a threshold; the video
rule calls a video A/H when its longest decoded A/H segment lasts ``video_min_s`` seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ahjax.core.metrics import bah_metrics
from level1_affect.dataset import score_videos
from level2_conflict import hsmm
from level2_conflict.runtime import DecodeConfig, Durations, decode_hsmm

# Reading -> (its DecodeConfig field, the field holding its grid).
READING_FIELD = {"hsmm": ("evidence_rate", "evidence_rates"),
                 "median": ("median_s", "median_ss"), "threshold": ("threshold", "thresholds")}
READINGS = tuple(READING_FIELD)


def _median_frames(seconds: float, fps: float) -> int:
    k = max(int(round(seconds * fps)), 1)
    return k if k % 2 else k + 1


def read_posteriors(probs: dict, fps: dict, reading: str, durations: Durations,
                    cfg: DecodeConfig) -> dict:
    """0/1 decisions per video from frame posteriors, by ``reading`` with ``cfg``'s value."""
    if reading == "hsmm":
        return {v: decode_hsmm(p, fps[v], durations, cfg.evidence_rate) for v, p in probs.items()}
    if reading == "median":
        return {v: (hsmm.median_filter(np.asarray(p, np.float32),
                                       _median_frames(cfg.median_s, fps[v])) >= 0.5
                    ).astype(np.int64) for v, p in probs.items()}
    if reading == "threshold":
        return {v: (np.asarray(p) >= cfg.threshold).astype(np.int64) for v, p in probs.items()}
    raise ValueError(f"unknown reading {reading!r}; known: {READINGS}")


def select_decoding(probs: dict, labels: dict, fps: dict, reading: str, durations: Durations,
                    cfg: DecodeConfig) -> tuple[DecodeConfig, dict]:
    """``cfg`` with ``reading``'s hyperparameter set to its best val frame AVGF1 (first of
    ties), and ``{value: AVGF1}`` for the grid. ``cfg`` unchanged when selection is off."""
    field, grid = READING_FIELD[reading]
    if not cfg.select_on_val or not probs:
        return cfg, {}
    y = np.concatenate([labels[v] for v in probs])
    scores = {}
    for value in getattr(cfg, grid):
        hard = read_posteriors(probs, fps, reading, durations,
                               dataclasses.replace(cfg, **{field: value}))
        scores[value] = float(bah_metrics(y, np.concatenate([hard[v] for v in probs])
                                          .astype(np.float64))["AVGF1"])
    best = max(scores, key=lambda k: scores[k])
    return dataclasses.replace(cfg, **{field: best}), scores


def longest_segment_s(decoded: np.ndarray, fps: float) -> float:
    """Duration in seconds of the longest run of 1s in ``decoded``."""
    runs = hsmm.segment_lengths(np.asarray(decoded, np.int64))[1]
    return max(runs, default=0) / fps


def video_from_segments(decoded: dict, fps: dict, min_s: float) -> dict:
    """Video-level 0/1: A/H when the longest decoded A/H segment lasts ``min_s`` seconds."""
    return {v: int(longest_segment_s(d, fps[v]) >= min_s) for v, d in decoded.items()}


def select_video_rule(decoded: dict, fps: dict, vlabels: dict, cfg: DecodeConfig) -> float:
    """The ``video_min_s`` with the best val video AVGF1 (cfg's value without both classes)."""
    y = np.asarray([vlabels[v] for v in decoded])
    if not cfg.select_on_val or len(set(y.tolist())) < 2:
        return cfg.video_min_s
    longest = np.asarray([longest_segment_s(decoded[v], fps[v]) for v in decoded])
    scores = {m: bah_metrics(y, (longest >= m).astype(np.float64))["AVGF1"]
              for m in cfg.video_min_ss}
    return max(scores, key=lambda k: scores[k])


def score_row(labels: dict, probs: dict, vlabels: dict, decoded: dict | None = None,
              video_rule: dict | None = None) -> dict:
    """Frame and video metrics of ``probs`` (``decoded``: the frame decisions), with
    ``VIDEO_AVGF1_SEGMENTS`` from ``video_rule``'s 0/1 per video when both classes occur."""
    ids = list(probs)
    row = score_videos(labels, probs, np.asarray([vlabels[v] for v in ids]), decoded)
    if video_rule is not None and len({vlabels[v] for v in ids}) == 2:
        y = np.asarray([vlabels[v] for v in ids])
        row["VIDEO_AVGF1_SEGMENTS"] = bah_metrics(
            y, np.asarray([video_rule[v] for v in ids], np.float64))["AVGF1"]
    return row
