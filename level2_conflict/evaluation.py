"""The two-level model against its variants: every variant trained over many runs, each run
read with decoding chosen on its own val videos, rows aggregated over runs, the best run
deployed (docs/two_level.md, "Evidence over seeds and participants")."""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ahjax.core.lanes import in_lanes
from level2_conflict import multirun
from level2_conflict.model import TwoLevelConfig
from level2_conflict.multirun import Bank, MultiConfig, Run
from level2_conflict.runtime import DecodeConfig, Durations, fit_durations, save_trained
from level2_conflict.selection import (READING_FIELD, READINGS, read_posteriors, score_row,
                                       select_decoding, select_video_rule, video_from_segments)

# Rows of each two-level configuration: (row name, model change, trained on folds too).
# ``crf_weight: None`` stands for the run's own CRF weight.
VARIANTS = (("two_level", {}, True),
            ("no_cross_modal", {"use_cross": False}, True),
            ("no_within_modality", {"use_within": False}, True),
            ("two_level/with_remainder", {"use_remainder": True}, False),
            ("two_level/semi_markov_crf", {"crf_weight": None}, True),
            ("two_level/causal", {"causal": True}, False))
METRICS = ("AVGF1", "AP", "WAR", "F1_POS", "F1_NEG", "W_F1", "VIDEO_AVGF1", "VIDEO_AP",
           "VIDEO_AVGF1_SEGMENTS", "named_share", "AP_without_remainder",
           "AVGF1_without_remainder")


def evaluate_run(run: Run, out: dict, labels: dict, vlab: dict, fps: dict,
                 durations: Durations, decode: DecodeConfig, all_readings: bool) -> dict:
    """Per-row test/val metrics of one run (decoding chosen on its val), plus extras."""
    val_probs = {v: out[v]["prob"] for v in run.val}
    test_out = {v: out[v] for v in run.test}
    test_probs = {v: o["prob"] for v, o in test_out.items()}
    readings = READINGS if all_readings else ("hsmm",)
    chosen = {}
    for reading in readings:
        chosen[reading], _ = select_decoding(val_probs, labels, fps, reading, durations, decode)
    hs = chosen["hsmm"]
    val_decoded = read_posteriors(val_probs, fps, "hsmm", durations, hs)
    hs = dataclasses.replace(hs, video_min_s=select_video_rule(val_decoded, fps, vlab, hs))
    rows: dict = {}
    test_decoded = read_posteriors(test_probs, fps, "hsmm", durations, hs)
    for split, probs, decoded in (("test", test_probs, test_decoded),
                                  ("val", val_probs, val_decoded)):
        if not probs:
            continue
        rule = video_from_segments(decoded, fps, hs.video_min_s)
        rows[("", split)] = score_row(labels, probs, vlab, decoded, rule)
        if all_readings:
            rows[("/no_duration_prior", split)] = score_row(labels, probs, vlab)
            for reading, suffix in (("threshold", "/threshold_on_val"),
                                    ("median", "/median_filter")):
                rows[(suffix, split)] = score_row(labels, probs, vlab, read_posteriors(
                    probs, fps, reading, durations, chosen[reading]))
    # Faithfulness on test frames: the named share and the remainder-dropped scores.
    base = rows[("", "test")]
    base["named_share"] = multirun.named_share(test_out)
    if any(np.any(o["remainder"] != 0) for o in test_out.values()):
        dropped = multirun.without_remainder(test_out)
        row = score_row(labels, dropped, vlab,
                        read_posteriors(dropped, fps, "hsmm", durations, hs))
        base["AP_without_remainder"], base["AVGF1_without_remainder"] = row["AP"], row["AVGF1"]
    else:
        base["AP_without_remainder"], base["AVGF1_without_remainder"] = base["AP"], base["AVGF1"]
    selected = {r: getattr(chosen[r], READING_FIELD[r][0]) for r in readings}
    selected["video_min_s"] = hs.video_min_s
    return {"rows": rows, "selected": selected, "decode": hs, "test_decoded": test_decoded}


def train_variants(variants, model_cfg: TwoLevelConfig, bank: Bank, runs: list[Run],
                   labels: dict, vlab: dict, fps: dict, multi: MultiConfig,
                   decode: DecodeConfig, folder: Path, timings: dict,
                   causal_bank: Bank | None = None, cache_dir: Path | None = None,
                   on_row: Callable[[str, dict], None] | None = None,
                   lanes: int = 1) -> dict:
    """Train (or, with ``cache_dir``, reuse identical earlier trainings of) and evaluate
    each ``(row, model change, on folds)`` of ``variants`` (training curves under
    ``folder/<row>``); returns ``{row: {"trained", "evals", "config", "reused_from"}}`` in
    the order of ``variants``. ``on_row(row, record)`` is called as each row's record is
    complete. ``lanes`` rows train at once, in threads, started in the order of
    ``variants`` (1: one after the other): each row is its own program with its own seeds,
    so its record is the one it has alone; a lone program leaves part of the cores idle
    that another one fills."""
    durations_by_train: dict = {}
    for run in runs:   # each run's duration prior, fitted on its own training videos
        if run.train not in durations_by_train:
            durations_by_train[run.train] = fit_durations(
                {v: labels[v] for v in run.train}, fps, decode.max_duration_s)

    def one_row(row, change, on_folds) -> dict:
        row_bank = causal_bank if change.get("causal") else bank
        mine = [r for r in runs if on_folds or r.name.startswith("default/")]
        mcfg = dataclasses.replace(model_cfg, **change)
        t0 = time.time()
        trained, reused = multirun.train_runs_or_reuse(
            mcfg, row_bank, mine, multi, cache_dir=cache_dir, desc=row,
            durations=[durations_by_train[r.train][0].prior for r in mine])
        trained.save_history(folder / row.replace("/", "__") / "metrics.jsonl")
        outs = trained.outputs(row_bank, [r.val + r.test for r in mine])
        timings[f"{row}_train_seconds"] = time.time() - t0
        evals = []
        for r, run in enumerate(mine):
            durations, duration_stats = durations_by_train[run.train]
            ev = evaluate_run(run, outs[r], labels, vlab, fps, durations, decode,
                              all_readings=(row == "two_level"))
            ev.update(run=run, outputs=outs[r], durations=durations,
                      duration_stats=duration_stats, best_epoch=int(trained.best_epochs[r]))
            evals.append(ev)
        record = {"trained": trained, "evals": evals, "config": mcfg, "reused_from": reused}
        timings[f"{row}_seconds"] = time.time() - t0
        if on_row is not None:
            on_row(row, record)
        return record

    return in_lanes([(row, functools.partial(one_row, row, change, on_folds))
                     for row, change, on_folds in variants], lanes)


def _sd(xs) -> float:
    """Sample standard deviation (0.0 for fewer than two values)."""
    xs = np.asarray(xs, np.float64)
    return float(xs.std(ddof=1)) if xs.size > 1 else 0.0


def aggregate(per_run: list[dict]) -> dict:
    """Mean of each metric over runs, with ``AP_sd``, ``AVGF1_sd`` and ``n_runs``."""
    out = {}
    for m in METRICS:
        xs = [r[m] for r in per_run if m in r]
        if xs:
            out[m] = float(np.mean(xs))
    for m in ("AP", "AVGF1"):
        out[f"{m}_sd"] = _sd([r[m] for r in per_run])
    out["N"] = int(np.mean([r["N"] for r in per_run]))
    out["n_runs"] = len(per_run)
    return out


def paired(per_row: dict, reference: str = "two_level") -> dict:
    """Row minus the full model, paired by run (same seed and fold)."""
    ref = per_row.get(reference)
    out = {}
    for row, runs in per_row.items():
        if row == reference or ref is None or len(runs) != len(ref):
            continue
        d_ap = np.asarray([a["AP"] - b["AP"] for a, b in zip(runs, ref)])
        d_f1 = np.asarray([a["AVGF1"] - b["AVGF1"] for a, b in zip(runs, ref)])
        out[f"{row} - {reference}"] = {
            "dAP_mean": float(d_ap.mean()), "dAP_sd": _sd(d_ap),
            "dAVGF1_mean": float(d_f1.mean()), "dAVGF1_sd": _sd(d_f1),
            "runs_where_full_has_higher_AP": int(np.sum(d_ap < 0)), "n_runs": int(d_ap.size)}
    return out


def tables(records: dict) -> tuple[dict, dict, dict]:
    """(``{split: {row: aggregated}}``, per-row per-run test metrics by group, selections)."""
    out: dict = {"test": {}, "val": {}, "test_folds": {}, "val_folds": {}}
    per_run: dict = {"test": {}, "test_folds": {}}
    selected: dict = {}
    for row, rec in records.items():
        for ev in rec["evals"]:
            group = "test" if ev["run"].name.startswith("default/") else "test_folds"
            for (suffix, split), metrics in ev["rows"].items():
                key = group if split == "test" else ("val" if group == "test" else "val_folds")
                per_run.setdefault(key, {}).setdefault(row + suffix, []).append(metrics)
            selected.setdefault(row, {})[ev["run"].name] = ev["selected"]
    for key, rows in per_run.items():
        for row, runs in rows.items():
            out[key][row] = aggregate(runs)
    return out, per_run, selected


def deploy_best(record: dict, folder: Path) -> dict:
    """Save ``record``'s default-split run with the best val AP into ``folder``
    (:func:`~level2_conflict.runtime.save_trained`); returns that run's evaluation."""
    evals = record["evals"]
    default = [i for i, ev in enumerate(evals) if ev["run"].name.startswith("default/")]
    val_aps = [evals[i]["rows"][("", "val")]["AP"] if ("", "val") in evals[i]["rows"]
               else 0.0 for i in default]
    best = default[int(np.argmax(val_aps))]
    save_trained(record["trained"].model(best), record["config"], evals[best]["durations"],
                 evals[best]["decode"], folder)
    return evals[best]
