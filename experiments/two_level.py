"""The interpretable two-level conflict model against its ablations and fusion baselines.

``python -m experiments.run two_level`` prints its plan (:func:`make_plan`), makes the demo
dataset and extracts level 1 (both cached), then trains on the same features the rows of
:data:`level2_conflict.evaluation.VARIANTS` (the full model, its ablations and evidence rows;
``seeds`` runs on the default split, ``fold_seeds`` in each of ``folds`` participant folds),
each run's decoding chosen on its val videos, and the paper's baselines (concatenation TCN,
text-only TCN, the best fusion by val AP; one seed each, cached). docs/two_level.md
("The two_level experiment") says what each row is for.

Writes ``results.{json,md}`` (opening with its summary), one figure per test video and
``report.html``, the deployable model (the default split's seed with the best val AP) under
``deploy/`` (its causal twin under ``deploy_causal/``) and each configuration's training
curves under ``models/<row>/``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from ahjax.core import metrics as metrics_lib
from ahjax.core.assets import cache_dir
from ahjax.core.data.store import FeatureStore
from ahjax.core.data.windows import WindowConfig
from ahjax.core.lanes import Beside
from ahjax.core.progress import Plan, Stage
from ahjax.core.results import to_markdown
from ahjax.core.train import trainer as trainer_lib
from ahjax.core.train.trainer import TrainConfig
from baselines import fusion
from baselines.tcn import ConcatTCN, TCNConfig
from level1_affect.dataset import (QUICK_DATA, QUICK_EXTRACT, DataConfig, data_root, data_stages,
                                   demo_video_seconds, frame_labels, prepare_store,
                                   video_labels)
from level1_affect.extract import ExtractConfig, Extractor
from level1_affect.schema import MODALITIES
from level2_conflict import evaluation, multirun, plots, report
from level2_conflict.evaluation import VARIANTS
from level2_conflict.model import TwoLevelConfig
from level2_conflict.multirun import MultiConfig
from level2_conflict.report import plural
from level2_conflict.runtime import DecodeConfig
from level2_conflict.selection import score_row


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
    # Two-level rows trained at once (threads; each row's numbers are those it gives
    # alone). Two programs side by side kept the 2-core machine busier than one: 4.0
    # against 4.5 s per epoch of the 13-run program (docs/performance.md).
    lanes: int = 2
    # The paper's supervised recipe for the baselines (SGD, Nesterov) at the paper's widths,
    # with fewer epochs: on the demo their validation AP peaks within the first few epochs
    # and they dominate the run's time on a CPU; so training also stops after 2 epochs
    # without a higher val AP (the best epoch by val AP is kept either way; on a fresh
    # default run the four best epochs were 0, 1, 0 and 4, the same as with patience 3).
    baseline_windows: WindowConfig = WindowConfig(window=240, hop=48, batch_size=8)
    baseline_train: TrainConfig = TrainConfig(epochs=10, patience=2)
    fusions: tuple = ("can", "lfan")   # fusion baselines tried; the best by val AP is kept
    reuse_baselines: bool = True       # reuse identical earlier baseline trainings
    reuse_two_level: bool = True       # and identical earlier two-level trainings
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
        fusions=("can",), max_figures=2, reuse_baselines=False,
        reuse_two_level=False)


# Rough seconds on an idle 2-core CPU for the default config, from fresh-clone runs of
# 2026-12-07 (the four baselines 200 s alone in the afternoon; the two-level programs on two
# lanes with the baselines beside them 433 s together in the early evening, and 359 s in the
# late evening with the hashed dropout, 406 s for the code before it in that sitting: both
# taken as 359/433 of their earlier values). A config's estimate scales these by runs x
# epochs x video seconds, plus a compilation per program.
TWO_LEVEL_S, BASELINES_S, COMPILE_S = 250.0, 165.0, 8.0
# The share of the baselines' seconds that running them beside the two-level models adds
# to the run, the rest overlapping with the two-level programs (measured: 132 of 200 s).
BESIDE_SHARE = 0.65


def _variants(config: Config) -> list[tuple[str, dict, bool]]:
    """The rows of :data:`~level2_conflict.evaluation.VARIANTS` this config trains."""
    skip = {"two_level/with_remainder": not config.remainder_evidence,
            "two_level/semi_markov_crf": not config.crf_evidence,
            "two_level/causal": not config.causal_row}
    return [(row, {"crf_weight": config.crf_weight} if "crf_weight" in change else change,
             on_folds) for row, change, on_folds in VARIANTS if not skip.get(row)]


def _two_level_work(config: Config) -> tuple[int, float]:
    """(programs, runs x epochs x video seconds) of the two-level stage."""
    n_def = config.seeds
    n_all = n_def + (config.folds * config.fold_seeds if config.folds >= 2 else 0)
    rows = [on_folds for _, _, on_folds in _variants(config)]
    runs = sum(n_all if on_folds else n_def for on_folds in rows)
    return len(rows), runs * config.multi.train.epochs * demo_video_seconds(config.data)


def make_plan(config: Config) -> Plan:
    """The run's stages with rough estimates (what is cached said so): the data stages of
    :func:`level1_affect.dataset.data_stages`, the two-level models and the baselines."""
    ref = Config()
    programs, work = _two_level_work(config)
    ref_programs, ref_work = _two_level_work(ref)
    two_level_s = COMPILE_S * programs + (TWO_LEVEL_S - COMPILE_S * ref_programs) * (
        work / ref_work)
    n_base = 2 + len(config.fusions)
    base_work = n_base * config.baseline_train.epochs * demo_video_seconds(config.data)
    ref_base = (2 + len(ref.fusions)) * ref.baseline_train.epochs * demo_video_seconds(ref.data)
    base_s = COMPILE_S * n_base + (BASELINES_S - COMPILE_S * 4) * base_work / ref_base
    runs = config.seeds + (config.folds * config.fold_seeds if config.folds >= 2 else 0)
    # run() loads the level-1 models while the demo's videos are made.
    stages = data_stages(config.data, config.extract, load_beside_demo=True) + [
        Stage("two-level models", f"{programs} configurations, up to {runs} runs each, "
              f"{plural(config.multi.train.epochs, 'epoch')}", two_level_s,
              note="less when identical earlier trainings are cached"
              if config.reuse_two_level else ""),
        Stage("baselines", f"{n_base} trainings, up to "
              f"{plural(config.baseline_train.epochs, 'epoch')}",
              base_s, note="less when identical earlier trainings are cached"
              if config.reuse_baselines else "", beside="two-level models",
              adds=BESIDE_SHARE * base_s)]
    return Plan(stages, title="two_level plan")


def _has_cues(store: FeatureStore) -> bool:
    ids = store.video_ids("train")
    return bool(ids) and all("cues" in store.meta(v).get("shapes", {}) for v in ids) and any(
        float(np.asarray(store.read(v, "cues")).sum()) > 0 for v in ids)


def _baseline_spec(store: FeatureStore, modalities=("video", "audio", "text")) -> dict:
    shapes = store.meta(store.video_ids()[0])["shapes"]
    spec = {m: tuple(a for a in MODALITIES[m] if a in shapes) for m in modalities}
    return {m: names for m, names in spec.items() if names}


def _baselines(config: Config, store, test_ids, val_ids, labels, vlab, workdir, timings):
    """The paper's baselines, one seed each (cached), the best fusion by val AP kept."""
    baselines = {"concat_tcn": (_concat_builder, _baseline_spec(store), _concat_describe()),
                 "text_only": (_concat_builder, _baseline_spec(store, ("text",)),
                               _concat_describe())}
    for kind in config.fusions:
        baselines[f"fusion_{kind}"] = (_fusion_builder(kind, config.quick),
                                       _baseline_spec(store), _fusion_describe(kind, config.quick))
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
            rows[split][name] = dict(score_row(labels, probs, vlab), n_runs=1)
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
    return ConcatTCN(dims, rngs=rngs)


def _concat_describe() -> dict:
    return {"builder": "ConcatTCN", "model": dataclasses.asdict(TCNConfig())}


def _fusion_describe(name: str, quick: bool) -> dict:
    cfg = fusion.quick() if quick else fusion.FusionConfig()
    return {"builder": f"fusion.FUSION_MODELS[{name!r}]", "model": dataclasses.asdict(cfg)}


def _fusion_builder(name: str, quick: bool):
    def build(dims, rngs):
        cfg = fusion.quick() if quick else fusion.FusionConfig()
        return fusion.FUSION_MODELS[name](dict(dims), cfg, rngs)
    return build


def _two_level_stage(config: Config, store, all_ids, labels, vlab, fps, workdir: Path,
                     timings: dict):
    """Level-2 inputs, every two-level row trained and evaluated, the deployed models saved
    and the test videos' figures drawn; returns (results, per-run metrics, selections,
    runs, folds, deployed run, reused rows, figure paths)."""
    t0 = time.time()
    bank = multirun.build_bank(store, all_ids, min_block=config.multi.window,
                               use_cues=config.model.use_cues,
                               progress=config.multi.progress)
    causal_bank = multirun.build_bank(store, all_ids, min_block=config.multi.window,
                                      use_cues=config.model.use_cues, progress=False,
                                      causal=True) if config.causal_row else None
    timings["level2_features_seconds"] = time.time() - t0
    runs, folds = multirun.make_runs(store, config.seeds, config.folds, config.fold_seeds)
    test_ids = store.video_ids("test")[: config.max_figures]
    drawing: dict = {}

    def deploy_and_draw(record):
        # The deployed model: the default split's run with the best val AP; its figures.
        deploy = evaluation.deploy_best(record, workdir / "deploy")
        paths = plots.video_figures(store, test_ids, deploy["outputs"], deploy["test_decoded"],
                                    fps, labels, workdir / "plots")
        return deploy, paths

    def on_row(row, record):
        # The full model's figures are drawn while the other rows train.
        if row == "two_level":
            drawing["job"] = Beside(lambda: deploy_and_draw(record))
            drawing["job"].start()

    records = evaluation.train_variants(
        _variants(config), config.model, bank, runs, labels, vlab, fps, config.multi,
        config.decode, workdir / "models", timings, causal_bank,
        cache_dir=cache_dir() / "trained_two_level" if config.reuse_two_level else None,
        on_row=on_row, lanes=config.lanes)
    deploy, figures = drawing["job"].result()
    reused = {row: str(r["reused_from"]) for row, r in records.items() if r["reused_from"]}
    if reused:
        print(f"reused trained two-level rows from the cache: {', '.join(reused)} "
              "(--config.reuse_two_level=False retrains them)", flush=True)
    tables, per_run, selected = evaluation.tables(records)
    results: dict = {"test": tables["test"], "val": tables["val"]}
    for key in ("test_folds", "val_folds"):
        if tables[key]:
            results[key] = tables[key]
    # Its causal twin (when trained) is deployed for live use.
    if "two_level/causal" in records:
        evaluation.deploy_best(records["two_level/causal"], workdir / "deploy_causal")
    return results, per_run, selected, runs, folds, deploy, reused, figures


def run(config: Config, workdir: Path) -> dict:
    """Train and compare everything; returns ``{split: {method: metrics}}`` and extras."""
    t_start = time.time()
    plan = make_plan(config)
    plan.announce()
    n_data = len(plan.stages) - 2
    root = None
    # While the demo's videos are made (in child processes), this process loads the
    # level-1 models the extraction will use: the two overlap on the two cores. The
    # extraction waits for what is still loading (the loads are once, under a lock).
    extractor = Extractor(config.extract) if n_data == 2 and not plan.stages[0].cached \
        and not plan.stages[1].cached else None
    loading = Beside(lambda: extractor.load(asr=False)) if extractor else None
    if loading is not None:
        loading.start()
    if n_data == 2:
        with plan.stage(1):
            root = data_root(config.data, progress=True)
    with plan.stage(n_data):
        store, root, extraction = prepare_store(config.data, config.extract, root=root,
                                                extractor=extractor)
    if loading is not None:
        loading.result()   # a failed load raised in the extraction already, or here
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
    # The baselines train in a thread beside the two-level models: the two-level programs
    # leave part of a core idle (compilation, small vmapped steps) that the baselines'
    # wide convolutions fill. Each training is the same program either way, so the
    # numbers are those of one stage after the other.
    def baseline_stage():
        with plan.stage(n_data + 2):
            return _baselines(config, store, test_ids, val_ids, labels, vlab, workdir, timings)

    baselines = Beside(baseline_stage)
    with plan.stage(n_data + 1):
        baselines.start()
        (results, per_run, selected, runs, folds, deploy, reused_two_level,
         figures) = _two_level_stage(config, store, all_ids, labels, vlab, fps, workdir, timings)
    baseline_rows, reused = baselines.result()
    timings["baselines_seconds"] = plan.took["baselines"]
    for split in ("test", "val"):
        results[split].update(baseline_rows[split])

    for key in ("test", "test_folds"):   # each ablation minus the full model, paired by run
        if evaluation.paired(per_run.get(key, {})):
            results[f"paired_{key}"] = evaluation.paired(per_run[key])
    results["verdict"] = report.verdict(results)
    results["faithfulness"] = report.faithfulness(results["test"])
    results["deployed_run"] = {"run": deploy["run"].name, "best_epoch": deploy["best_epoch"],
                               "selected_on_val": deploy["selected"]}
    results["decoding_selected_on_val"] = selected
    results["folds"] = report.describe_folds(folds)
    results["duration_prior"] = deploy["duration_stats"]
    results["reused_trained"] = {**reused_two_level, **reused}
    results["cues_used"] = use_cues
    results["extraction"] = {k: v for k, v in extraction.items() if k != "failed"}
    results["extraction"]["failed"] = len(extraction["failed"])
    timings["total_seconds"] = time.time() - t_start
    results["timing"] = timings
    results["dataset"] = {"root": str(root), "store": str(store.root),
                          "synthetic_demo": not bool(config.data.root)}
    n_def = sum(r.name.startswith("default/") for r in runs)
    results["notes"] = report.notes(n_def, len(folds), config.fold_seeds, reused)
    if reused_two_level:
        results["notes"].append("Reused from identical earlier two-level trainings (same "
                                "features, configs, runs and level-2 code): "
                                + ", ".join(reused_two_level) + ".")
    results["summary"] = report.summary(results, len(folds), config.fold_seeds)
    plots.report_html(to_markdown(results, "two_level"), figures, workdir / "report.html",
                      title="ahjax two_level report")
    print(report.format_verdict(results["verdict"]), flush=True)
    return results
