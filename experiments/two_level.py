"""The interpretable two-level conflict model against its ablations and fusion baselines.

``python -m experiments.run two_level`` with no arguments prints its plan (:func:`make_plan`:
the stages, a rough time for each, what is cached), makes the embedded demo dataset
(cached), extracts level 1 (cached), then trains, on the same features:

- the two-level model and its ablations (no cross-modal groups, no within-modality groups),
  each ``seeds`` times on the default split and ``fold_seeds`` times in each of ``folds``
  participant folds (every participant tested once), all runs of one configuration as one
  vmapped program (:mod:`level2_conflict.multirun`); rows are means and standard deviations
  over runs, with paired differences against the full model;
- ``two_level/with_remainder``: the full model plus an unnamed remainder branch that sees
  every feature and affect track (default split seeds), the evidence for leaving it out;
- ``two_level/semi_markov_crf`` (with ``--config.crf_evidence=True``): the full model
  trained with the semi-Markov CRF loss beside the frame loss (the duration prior inside
  training, :func:`level2_conflict.hsmm.semi_markov_nll`), default split and folds;
- ``two_level/causal``: the same model on the past only (causal convolutions and conflict
  features, running statistics; ``TwoLevelConfig.causal``), default split, deployed under
  ``deploy_causal/`` for live use beside the offline model in ``deploy/``;
- the concatenation TCN, a text-only TCN and the best fusion baseline (by val AP) at the
  paper's widths, one seed each on the default split (cached between runs, labelled so).

Each two-level run's frame posteriors are read with the duration prior (semi-Markov
decoding, durations fitted in seconds on that run's training videos and converted per
video with its own frame rate), with no decoding, with a threshold and with a median
filter; each reading's one hyperparameter is chosen on that run's val videos. A video-level
decision from the decoded segments (A/H when its longest A/H segment lasts at least a
duration chosen on val) is reported beside the paper's mean-probability rule.

Writes ``results.{json,md}`` (opening with :func:`summary`), one figure per test video and
``report.html`` into the run
folder, the deployable model (the default split's seed with the best val AP) under
``deploy/``, and each configuration's training curves under ``models/<row>/``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from ahjax.core.assets import cache_dir
from ahjax.core.data.store import FeatureStore
from ahjax.core.data.windows import WindowConfig
from ahjax.core import metrics as metrics_lib
from ahjax.core.metrics import bah_metrics
from ahjax.core.train import trainer as trainer_lib
from ahjax.core.train.trainer import TrainConfig
from level1_affect.dataset import (QUICK_DATA, QUICK_EXTRACT, DataConfig, data_root, data_stages,
                            frame_labels, prepare_store, score_videos, video_labels)
from ahjax.core.progress import Plan, Stage
from level1_affect.extract import ExtractConfig
from level1_affect.schema import MODALITIES
from level2_conflict import hsmm, multirun, plots
from level2_conflict.model import TwoLevelConfig
from level2_conflict.multirun import TRACKS, MultiConfig, Run
from level2_conflict.runtime import (DecodeConfig, Durations, decode_hsmm, fit_durations,
                                     save_trained)

@dataclasses.dataclass(frozen=True)
class Config:
    quick: bool = False
    data: DataConfig = DataConfig()
    extract: ExtractConfig = ExtractConfig()
    model: TwoLevelConfig = TwoLevelConfig(fps=24.0, use_remainder=False)
    multi: MultiConfig = MultiConfig()
    seeds: int = 5                 # two-level runs per configuration on the default split
    folds: int = 4                 # participant folds (0: none); each tests 1/folds of them
    fold_seeds: int = 2            # runs per configuration within each fold
    remainder_evidence: bool = True   # train the two_level/with_remainder row
    # Train the two_level/semi_markov_crf row (the duration prior inside training, default
    # split and folds). Off by default: it did not win on val (docs/two_level.md) and adds
    # about 3.5 minutes on this 2-core machine.
    crf_evidence: bool = False
    crf_weight: float = 1.0           # that row's TwoLevelConfig.crf_weight
    # Train the two_level/causal row (the past only: causal convolutions and conflict
    # features, for live use; default split), deployed beside the offline model.
    causal_row: bool = True
    # The paper's supervised recipe for the baselines (SGD, Nesterov) at the paper's widths,
    # with fewer epochs: on the demo their validation AP peaks within the first few epochs
    # and they dominate the run's time on a CPU; so training also stops after 3 epochs
    # without a higher val AP (the best epoch by val AP is kept either way).
    baseline_windows: WindowConfig = WindowConfig(window=240, hop=48, batch_size=8)
    baseline_train: TrainConfig = TrainConfig(epochs=10, patience=3)
    fusions: tuple = ("can", "lfan")   # fusion baselines tried; the best by val AP is kept
    reuse_baselines: bool = True       # reuse identical earlier baseline trainings
    decode: DecodeConfig = DecodeConfig()
    max_figures: int = 12


def get_config(quick: bool = False) -> Config:
    """Default config; ``quick`` is a smoke-sized run for tests (tiny demo, few epochs)."""
    cfg = Config()
    if not quick:
        return cfg
    return dataclasses.replace(
        cfg, quick=True,
        data=QUICK_DATA, extract=QUICK_EXTRACT,
        multi=dataclasses.replace(cfg.multi, window=96, hop=48, batch_size=4, progress=False,
                                  train=dataclasses.replace(cfg.multi.train, epochs=2)),
        model=dataclasses.replace(cfg.model, hidden=8, n_blocks=2),
        seeds=2, folds=2, fold_seeds=1,
        baseline_windows=dataclasses.replace(cfg.baseline_windows, window=96, hop=48,
                                             batch_size=4),
        baseline_train=dataclasses.replace(cfg.baseline_train, epochs=1, progress=False),
        fusions=("can",), max_figures=2, reuse_baselines=False)


# ----------------------------------------------------------------------------------------
# Reading posteriors: duration prior (seconds, level2_conflict.runtime), median filter,
# threshold, video rule.

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


_READING_FIELD = {"hsmm": ("evidence_rate", "evidence_rates"),
                  "median": ("median_s", "median_ss"), "threshold": ("threshold", "thresholds")}
READINGS = tuple(_READING_FIELD)


def select_decoding(probs: dict, labels: dict, fps: dict, reading: str, durations: Durations,
                    cfg: DecodeConfig) -> tuple[DecodeConfig, dict]:
    """``cfg`` with ``reading``'s hyperparameter set to its best val frame AVGF1 (first of
    ties), and ``{value: AVGF1}`` for the grid. ``cfg`` unchanged when selection is off."""
    field, grid = _READING_FIELD[reading]
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


def _score(labels, probs, vlabels_by_vid, decoded=None, video_rule=None) -> dict:
    ids = list(probs)
    row = score_videos(labels, probs, np.asarray([vlabels_by_vid[v] for v in ids]), decoded)
    if video_rule is not None and len({vlabels_by_vid[v] for v in ids}) == 2:
        y = np.asarray([vlabels_by_vid[v] for v in ids])
        row["VIDEO_AVGF1_SEGMENTS"] = bah_metrics(
            y, np.asarray([video_rule[v] for v in ids], np.float64))["AVGF1"]
    return row


# ----------------------------------------------------------------------------------------
# Runs: seeds on the default split, seeds within participant folds.

def participant_folds(store: FeatureStore, n_folds: int) -> list[dict]:
    """``n_folds`` folds over the store's participants (sorted, dealt round-robin): fold k
    tests its participants, validates on the first participant of fold k+1 and trains on
    the rest. Returns ``[{"test": ids, "val": ids, "train": ids, "participants": [...]}]``."""
    by_participant: dict = {}
    for vid in store.video_ids():
        by_participant.setdefault(str(store.meta(vid).get("participant", "")), []).append(vid)
    people = sorted(by_participant)
    if n_folds < 2 or len(people) < n_folds + 1:
        return []
    groups = [people[k::n_folds] for k in range(n_folds)]
    folds = []
    for k, test_people in enumerate(groups):
        val_person = groups[(k + 1) % n_folds][0]
        train_people = [p for p in people if p not in test_people and p != val_person]
        folds.append({"participants": test_people, "val_participant": val_person,
                      "test": tuple(v for p in test_people for v in by_participant[p]),
                      "val": tuple(by_participant[val_person]),
                      "train": tuple(v for p in train_people for v in by_participant[p])})
    return folds


def make_runs(store: FeatureStore, config: Config) -> tuple[list[Run], list[dict]]:
    """The default split's seeds (group ``default``) and each fold's seeds (``fold<k>``)."""
    split = {s: tuple(store.video_ids(s)) for s in ("train", "val", "test")}
    runs = [Run(f"default/seed{s}", s, split["train"], split["val"], split["test"])
            for s in range(config.seeds)]
    folds = participant_folds(store, config.folds) if config.folds else []
    for k, fold in enumerate(folds):
        runs += [Run(f"fold{k}/seed{s}", 1000 * (k + 1) + s, fold["train"], fold["val"],
                     fold["test"]) for s in range(config.fold_seeds)]
    return runs, folds


# Rows of each two-level configuration: (row name, model change, trained on folds too).
VARIANTS = (("two_level", {}, True),
            ("no_cross_modal", {"use_cross": False}, True),
            ("no_within_modality", {"use_within": False}, True),
            ("two_level/with_remainder", {"use_remainder": True}, False),
            ("two_level/semi_markov_crf", {"crf_weight": None}, True),
            ("two_level/causal", {"causal": True}, False))
METRICS = ("AVGF1", "AP", "WAR", "F1_POS", "F1_NEG", "W_F1", "VIDEO_AVGF1", "VIDEO_AP",
           "VIDEO_AVGF1_SEGMENTS", "named_share", "AP_without_remainder",
           "AVGF1_without_remainder")


def _evaluate_run(run: Run, out: dict, labels: dict, vlab: dict, fps: dict,
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
        rows[("", split)] = _score(labels, probs, vlab, decoded, rule)
        if all_readings:
            rows[("/no_duration_prior", split)] = _score(labels, probs, vlab)
            for reading, suffix in (("threshold", "/threshold_on_val"),
                                    ("median", "/median_filter")):
                rows[(suffix, split)] = _score(labels, probs, vlab, read_posteriors(
                    probs, fps, reading, durations, chosen[reading]))
    # Faithfulness on test frames: the named share and the remainder-dropped scores.
    base = rows[("", "test")]
    base["named_share"] = multirun.named_share(test_out)
    if any(np.any(o["remainder"] != 0) for o in test_out.values()):
        dropped = multirun.without_remainder(test_out)
        row = _score(labels, dropped, vlab, read_posteriors(dropped, fps, "hsmm", durations, hs))
        base["AP_without_remainder"], base["AVGF1_without_remainder"] = row["AP"], row["AVGF1"]
    else:
        base["AP_without_remainder"], base["AVGF1_without_remainder"] = base["AP"], base["AVGF1"]
    selected = {r: getattr(chosen[r], _READING_FIELD[r][0]) for r in readings}
    selected["video_min_s"] = hs.video_min_s
    return {"rows": rows, "selected": selected, "decode": hs, "test_decoded": test_decoded}


def _sd(xs) -> float:
    """Sample standard deviation (0.0 for fewer than two values)."""
    xs = np.asarray(xs, np.float64)
    return float(xs.std(ddof=1)) if xs.size > 1 else 0.0


def _aggregate(per_run: list[dict]) -> dict:
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


def _paired(per_row: dict, reference: str = "two_level") -> dict:
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


def _train_two_level(config: Config, store: FeatureStore, bank, runs: list[Run], labels: dict,
                     vlab: dict, fps: dict, workdir: Path, timings: dict,
                     causal_bank=None) -> dict:
    """Train and evaluate every two-level configuration; returns the per-run records."""
    durations_by_train: dict = {}
    for run in runs:   # each run's duration prior, fitted on its own training videos
        if run.train not in durations_by_train:
            durations_by_train[run.train] = fit_durations(
                {v: labels[v] for v in run.train}, fps, config.decode.max_duration_s)
    records: dict = {}
    for row, change, on_folds in VARIANTS:
        if (row == "two_level/with_remainder" and not config.remainder_evidence) or (
                row == "two_level/semi_markov_crf" and not config.crf_evidence) or (
                row == "two_level/causal" and causal_bank is None):
            continue
        row_bank = causal_bank if change.get("causal") else bank
        mine = [r for r in runs if on_folds or r.name.startswith("default/")]
        if "crf_weight" in change:
            change = {"crf_weight": config.crf_weight}
        mcfg = dataclasses.replace(config.model, **change)
        t0 = time.time()
        trained = multirun.train_runs(
            mcfg, row_bank, mine, config.multi, desc=row,
            durations=[durations_by_train[r.train][0].prior for r in mine])
        trained.save_history(workdir / "models" / row.replace("/", "__") / "metrics.jsonl")
        outs = trained.outputs(row_bank, [r.val + r.test for r in mine])
        timings[f"{row}_train_seconds"] = time.time() - t0
        evals = []
        for r, run in enumerate(mine):
            durations, duration_stats = durations_by_train[run.train]
            ev = _evaluate_run(run, outs[r], labels, vlab, fps, durations, config.decode,
                               all_readings=(row == "two_level"))
            ev.update(run=run, outputs=outs[r], durations=durations,
                      duration_stats=duration_stats, best_epoch=int(trained.best_epochs[r]))
            evals.append(ev)
        records[row] = {"trained": trained, "evals": evals, "config": mcfg}
        timings[f"{row}_seconds"] = time.time() - t0
    return records


def _tables(records: dict) -> tuple[dict, dict, dict]:
    """(``{split: {row: aggregated}}``, per-row per-run test metrics by group, selections)."""
    tables: dict = {"test": {}, "val": {}, "test_folds": {}, "val_folds": {}}
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
            tables[key][row] = _aggregate(runs)
    return tables, per_run, selected


def _deploy(record: dict, folder: Path) -> dict:
    """Save ``record``'s default-split run with the best val AP into ``folder``; returns
    that run's evaluation."""
    evals = record["evals"]
    default = [i for i, ev in enumerate(evals) if ev["run"].name.startswith("default/")]
    val_aps = [evals[i]["rows"][("", "val")]["AP"] if ("", "val") in evals[i]["rows"]
               else 0.0 for i in default]
    best = default[int(np.argmax(val_aps))]
    save_trained(record["trained"].model(best), record["config"], evals[best]["durations"],
                 evals[best]["decode"], folder)
    return evals[best]


def _two_level_stage(config: Config, store, all_ids, labels, vlab, fps, workdir: Path,
                     timings: dict):
    """Level-2 inputs, every two-level configuration trained and evaluated, the deployed
    models saved; returns (results, per-run metrics, selections, runs, folds, deployed)."""
    t0 = time.time()
    bank = multirun.build_bank(store, all_ids, min_block=config.multi.window,
                               use_cues=config.model.use_cues,
                               progress=config.multi.progress)
    causal_bank = multirun.build_bank(store, all_ids, min_block=config.multi.window,
                                      use_cues=config.model.use_cues, progress=False,
                                      causal=True) if config.causal_row else None
    timings["level2_features_seconds"] = time.time() - t0
    runs, folds = make_runs(store, config)
    records = _train_two_level(config, store, bank, runs, labels, vlab, fps, workdir, timings,
                               causal_bank)
    tables, per_run, selected = _tables(records)
    results: dict = {"test": tables["test"], "val": tables["val"]}
    for key in ("test_folds", "val_folds"):
        if tables[key]:
            results[key] = tables[key]

    # The deployed models: the default split's run with the best val AP, of the full
    # model and (when trained) of its causal twin for live use.
    deploy = _deploy(records["two_level"], workdir / "deploy")
    if "two_level/causal" in records:
        _deploy(records["two_level/causal"], workdir / "deploy_causal")
    return results, per_run, selected, runs, folds, deploy


def run(config: Config, workdir: Path) -> dict:
    """Train and compare everything; returns ``{split: {method: metrics}}`` and extras."""
    t_start = time.time()
    plan = make_plan(config)
    plan.announce()
    n_data = len(plan.stages) - 2
    if n_data == 2:
        with plan.stage(1):
            root = data_root(config.data, progress=True)
    else:
        root = None
    with plan.stage(n_data):
        store, root, extraction = prepare_store(config.data, config.extract, root=root)
    timings: dict = {"data_seconds": time.time() - t_start}
    test_ids, val_ids = store.video_ids("test"), store.video_ids("val")
    if not test_ids:
        raise RuntimeError(f"{store.root}: no test videos")
    all_ids = store.video_ids()
    labels = frame_labels(store, all_ids)
    vlab = dict(zip(all_ids, video_labels(store, all_ids).tolist()))
    fps = {v: float(store.meta(v)["fps"]) for v in all_ids}

    use_cues = _has_cues(store)
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, fps=fps[test_ids[0]], use_cues=use_cues or config.model.use_cues))
    with plan.stage(n_data + 1):
        results, per_run, selected, runs, folds, deploy = _two_level_stage(
            config, store, all_ids, labels, vlab, fps, workdir, timings)
    t0 = time.time()
    with plan.stage(n_data + 2):
        baseline_rows, reused = _baselines(config, store, test_ids, val_ids, labels, vlab,
                                           workdir, timings)
    for split in ("test", "val"):
        results[split].update(baseline_rows[split])
    timings["baselines_seconds"] = time.time() - t0

    for key in ("test", "test_folds"):   # each ablation minus the full model, paired by run
        if _paired(per_run.get(key, {})):
            results[f"paired_{key}"] = _paired(per_run[key])
    results["verdict"] = verdict(results)
    results["faithfulness"] = {row: {k: results["test"][row][k] for k in
                                     ("named_share", "AP", "AP_without_remainder",
                                      "AVGF1", "AVGF1_without_remainder")}
                               for row in results["test"] if "named_share" in results["test"][row]}
    figures = _figures(store, test_ids, deploy, config, workdir / "plots", fps, labels)
    results["deployed_run"] = {"run": deploy["run"].name, "best_epoch": deploy["best_epoch"],
                               "selected_on_val": deploy["selected"]}
    results["decoding_selected_on_val"] = selected
    results["folds"] = [{"test_participants": f["participants"],
                         "val_participant": f["val_participant"], "n_test": len(f["test"]),
                         "n_val": len(f["val"]), "n_train": len(f["train"])} for f in folds]
    results["duration_prior"] = deploy["duration_stats"]
    results["reused_trained"] = reused
    results["cues_used"] = use_cues
    results["extraction"] = {k: v for k, v in extraction.items() if k != "failed"}
    results["extraction"]["failed"] = len(extraction["failed"])
    timings["total_seconds"] = time.time() - t_start
    results["timing"] = timings
    results["dataset"] = {"root": str(root), "store": str(store.root),
                          "synthetic_demo": not bool(config.data.root)}
    n_def = sum(r.name.startswith("default/") for r in runs)
    results["notes"] = [
        f"Two-level rows: mean over {n_def} seeds on the default split (test, val) and over "
        f"{len(folds)} participant folds x {config.fold_seeds} seeds (test_folds); AP_sd and "
        "AVGF1_sd are standard deviations over runs. Baselines: one seed on the default split"
        + (f" (reused from an identical earlier training: {', '.join(reused)})" if reused
           else "") + ".",
        "two_level = duration-prior (semi-Markov) decoding (durations fitted in seconds on "
        "each run's training videos); no_duration_prior = argmax (0.5); threshold_on_val "
        "and median_filter = a threshold and a median width chosen on val. Each run chooses "
        "every reading's one hyperparameter by its val frame AVGF1; AP is always from the "
        "undecoded probabilities.",
        "named_share = mean |sum of named contributions| / mean |score - bias| on test "
        "frames; AP/AVGF1_without_remainder = the same run with the remainder dropped at "
        "inference.",
        "VIDEO_AVGF1: the paper's rule (mean frame decision >= 0.5); VIDEO_AVGF1_SEGMENTS: "
        "A/H when the longest decoded A/H segment lasts at least video_min_s, chosen on val.",
    ]
    results["summary"] = summary(results, len(folds), config.fold_seeds)
    from ahjax.core.results import to_markdown
    plots.report_html(to_markdown(results, "two_level"), figures, workdir / "report.html",
                      title="ahjax two_level report")
    print(format_verdict(results["verdict"]), flush=True)
    return results


# Rough seconds on an idle 2-core CPU for the default config (issue 29's first-run log):
# the 13-run two-level programs about 5 min, the four baselines about 5 min; scaled by
# runs x epochs x video seconds, plus a compilation per program.
TWO_LEVEL_S, BASELINES_S, COMPILE_S = 300.0, 300.0, 8.0


def _video_seconds(data: DataConfig) -> float:
    qs = data.demo_questions
    n = data.demo_participants * (qs if isinstance(qs, int) else len(qs))
    return n * (data.demo_min_duration + data.demo_max_duration) / 2


def _two_level_work(config: Config) -> tuple[int, float]:
    """(programs, runs x epochs x video seconds) of the two-level stage."""
    n_def = config.seeds
    n_all = n_def + (config.folds * config.fold_seeds if config.folds >= 2 else 0)
    rows = [on_folds for row, _, on_folds in VARIANTS
            if not ((row == "two_level/with_remainder" and not config.remainder_evidence)
                    or (row == "two_level/semi_markov_crf" and not config.crf_evidence)
                    or (row == "two_level/causal" and not config.causal_row))]
    runs = sum(n_all if on_folds else n_def for on_folds in rows)
    return len(rows), runs * config.multi.train.epochs * _video_seconds(config.data)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def make_plan(config: Config) -> Plan:
    """The run's stages with rough estimates (what is cached said so): the data stages of
    :func:`level1_affect.dataset.data_stages`, the two-level models and the baselines."""
    ref = Config()
    programs, work = _two_level_work(config)
    ref_programs, ref_work = _two_level_work(ref)
    two_level_s = COMPILE_S * programs + (TWO_LEVEL_S - COMPILE_S * ref_programs) * (
        work / ref_work)
    n_base = 2 + len(config.fusions)
    base_work = n_base * config.baseline_train.epochs * _video_seconds(config.data)
    ref_base = (2 + len(ref.fusions)) * ref.baseline_train.epochs * _video_seconds(ref.data)
    base_s = COMPILE_S * n_base + (BASELINES_S - COMPILE_S * 4) * base_work / ref_base
    runs = config.seeds + (config.folds * config.fold_seeds if config.folds >= 2 else 0)
    stages = data_stages(config.data, config.extract) + [
        Stage("two-level models", f"{programs} configurations, up to {runs} runs each, "
              f"{_count(config.multi.train.epochs, 'epoch')}", two_level_s),
        Stage("baselines", f"{n_base} trainings, up to "
              f"{_count(config.baseline_train.epochs, 'epoch')}",
              base_s, note="less when identical earlier trainings are cached"
              if config.reuse_baselines else "")]
    return Plan(stages, title="two_level plan")


def verdict(results: dict) -> dict:
    """Does the default model beat its ablations (mean test AP, default split and folds)
    and the baselines (test AP and AVGF1)?"""
    out = {}
    for key in ("test", "test_folds"):
        table = results.get(key, {})
        if "two_level" not in table:
            continue
        full = table["two_level"]
        for row in ("no_cross_modal", "no_within_modality"):
            if row in table:
                out[f"{key}: AP above {row}"] = bool(full["AP"] > table[row]["AP"])
        # Rows that add to the model rather than ablate it: reported, not required (each
        # was left out of the default on val evidence, docs/two_level.md).
        for row in ("two_level/with_remainder", "two_level/semi_markov_crf"):
            if row in table:
                out[f"{key}: AP above {row} (evidence row, not required)"] = bool(
                    full["AP"] > table[row]["AP"])
    table = results.get("test", {})
    full = table.get("two_level")
    for row in table:
        if full and (row in ("concat_tcn", "text_only") or row.startswith("best_fusion")):
            for m in ("AP", "AVGF1"):
                out[f"test: {m} above {row}"] = bool(full[m] > table[row][m])
    return out


#: Readings of the full model's runs: the same probabilities, so the same AP as ``two_level``.
READING_ROWS = ("two_level/no_duration_prior", "two_level/threshold_on_val",
                "two_level/median_filter")
BASELINE_ROWS = ("concat_tcn", "text_only")


def _is_baseline(row: str) -> bool:
    return row in BASELINE_ROWS or row.startswith("best_fusion")


def _runs(m: dict) -> str:
    n = int(m.get("n_runs", 1))
    return f"{m['AP']:.3f} ± {m['AP_sd']:.3f} over {n} runs" if n > 1 and "AP_sd" in m \
        else f"{m['AP']:.3f} (one run)"


def summary(results: dict, folds: int = 0, fold_seeds: int = 0) -> str:
    """Two or three sentences on what the run found, from ``results``' tables: which model
    leads on test frame AP and by how much, where the full model stands against the best
    baseline, and what the rows are."""
    table = {r: m for r, m in results.get("test", {}).items()
             if r not in READING_ROWS and "AP" in m}
    if not table:
        return ""
    ranked = sorted(table, key=lambda r: -table[r]["AP"])
    lead = ranked[0]
    out = [f"On the default split's test videos, {lead} leads on frame AP with "
           f"{_runs(table[lead])}"]
    if len(ranked) > 1:
        second = ranked[1]
        out[0] += (f", {table[lead]['AP'] - table[second]['AP']:.3f} above the next, "
                   f"{second} ({table[second]['AP']:.3f})")
    out[0] += "."
    full = table.get("two_level")
    bases = [r for r in ranked if _is_baseline(r)]
    if full is not None:
        text = "The full two-level model" + (
            "" if lead == "two_level" else f" (AP {_runs(full)})")
        if bases:
            gap = full["AP"] - table[bases[0]]["AP"]
            text += (f" is {abs(gap):.3f} AP {'above' if gap >= 0 else 'below'} the best "
                     f"baseline, {bases[0]} ({table[bases[0]]['AP']:.3f})")
        else:
            text += f" has AP {full['AP']:.3f}"
        folded = {r: m for r, m in results.get("test_folds", {}).items()
                  if r not in READING_ROWS and "AP" in m}
        if "two_level" in folded:
            lead_f = max(folded, key=lambda r: folded[r]["AP"])
            n_f = int(folded["two_level"].get("n_runs", 0))
            how = f"{folds} participant folds x {_count(fold_seeds, 'seed')}" if folds else "the folds"
            text += (f"; over {how} ({n_f} runs) {lead_f} leads with AP "
                     f"{folded[lead_f]['AP']:.3f}" + (
                         "" if lead_f == "two_level" else
                         f", the full model {folded['two_level']['AP']:.3f}"))
        out.append(text + ".")
    out.append("Rows: two_level is the full model read with its duration prior, no_* drop "
               "one group of conflict features, two_level/* are its variants, and "
               "concat_tcn, text_only and best_fusion are the paper's baselines (one seed); "
               "AP is frame-level average precision of A/H (higher is better), AVGF1 the "
               "mean F1 of the two classes.")
    return " ".join(out)


def format_verdict(v: dict) -> str:
    """The verdict as lines for the console."""
    return "\n".join(["two_level verdict:"]
                     + [f"  {'yes' if ok else 'NO '}  {k}" for k, ok in v.items()])


# ----------------------------------------------------------------------------------------
# Baselines (one seed each, cached).

def _has_cues(store: FeatureStore) -> bool:
    ids = store.video_ids("train")
    return bool(ids) and all("cues" in store.meta(v).get("shapes", {}) for v in ids) and any(
        float(np.asarray(store.read(v, "cues")).sum()) > 0 for v in ids)


def _baseline_spec(store: FeatureStore, modalities=("video", "audio", "text")) -> dict:
    shapes = store.meta(store.video_ids()[0])["shapes"]
    spec = {m: tuple(a for a in MODALITIES[m] if a in shapes) for m in modalities}
    return {m: names for m, names in spec.items() if names}


def _baselines(config: Config, store, test_ids, val_ids, labels, vlab, workdir, timings):
    baselines = {"concat_tcn": (_concat_builder, _baseline_spec(store), _concat_describe()),
                 "text_only": (_concat_builder, _baseline_spec(store, ("text",)),
                               _concat_describe())}
    for fusion in config.fusions:
        baselines[f"fusion_{fusion}"] = (_fusion_builder(fusion, config.quick),
                                         _baseline_spec(store),
                                         _fusion_describe(fusion, config.quick))
    rows: dict = {"test": {}, "val": {}}
    fusion_val_ap, reused = {}, {}
    cache = cache_dir() / "trained" if config.reuse_baselines else None
    mesh = trainer_lib.make_mesh(config.baseline_train.num_devices)
    for name, (builder, bspec, describe) in baselines.items():
        t0 = time.time()
        res = trainer_lib.train_or_reuse(builder, store, bspec, config.baseline_windows,
                                         config.baseline_train, workdir / "models" / name,
                                         describe=dict(describe, method=name), cache_dir=cache)
        timings[f"{name}_train_seconds"] = time.time() - t0
        if res.reused_from is not None:
            reused[name] = str(res.reused_from)
            print(f"reused trained {name} from cache {res.reused_from} (best epoch "
                  f"{res.best_epoch}); --config.reuse_baselines=False retrains it", flush=True)
        for split, ids in (("test", test_ids), ("val", val_ids)):
            if not ids:
                continue
            # The batch size of training's validation, so its compiled eval step is reused.
            logits = trainer_lib.predict_videos(
                res.model, store, ids, bspec, config.baseline_windows.window, stats=res.stats,
                batch_size=config.baseline_windows.batch_size, mesh=mesh)
            probs = {v: metrics_lib.softmax_pos(l).astype(np.float32) for v, l in logits.items()}
            rows[split][name] = dict(_score(labels, probs, vlab), n_runs=1)
        if name.startswith("fusion_") and name in rows["val"]:
            fusion_val_ap[name] = rows["val"][name]["AP"]
    if fusion_val_ap:  # keep only the best fusion by validation AP, as the paper selects
        best = max(fusion_val_ap, key=fusion_val_ap.get)
        for split in ("test", "val"):
            for name in fusion_val_ap:
                row = rows[split].pop(name)
                if name == best:
                    rows[split][f"best_fusion ({name[7:]})"] = row
    return rows, reused


def _concat_builder(dims, rngs):
    from baselines.tcn import ConcatTCN
    return ConcatTCN(dims, rngs=rngs)


def _concat_describe() -> dict:
    from baselines.tcn import TCNConfig
    return {"builder": "ConcatTCN", "model": dataclasses.asdict(TCNConfig())}


def _fusion_describe(name: str, quick: bool) -> dict:
    from baselines import fusion
    cfg = fusion.quick() if quick else fusion.FusionConfig()
    return {"builder": f"fusion.FUSION_MODELS[{name!r}]", "model": dataclasses.asdict(cfg)}


def _fusion_builder(name: str, quick: bool):
    from baselines import fusion

    def build(dims, rngs):
        cfg = fusion.quick() if quick else fusion.FusionConfig()
        return fusion.FUSION_MODELS[name](dict(dims), cfg, rngs)
    return build


def _figures(store, test_ids, deploy: dict, config, folder: Path, fps, labels) -> list[Path]:
    """One figure per test video of the deployed run, the remainder as its own row."""
    folder.mkdir(parents=True, exist_ok=True)
    out = deploy["outputs"]
    paths = []
    for vid in test_ids[: config.max_figures]:
        o = out[vid]
        tracks = {k: np.asarray(store.read(vid, k)) for k in TRACKS}
        contributions = dict(o["contributions"], remainder=o["remainder"])
        share = multirun.named_share({vid: o})
        decoded = deploy["test_decoded"][vid]
        path = folder / f"{Path(vid).stem[:80].replace(' ', '_')}.png"
        plots.plot_video(tracks, contributions, o["prob"], labels[vid], decoded, fps[vid],
                         f"{Path(vid).name}  (named share of the score {share:.2f})", path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------
# The deployable model.

