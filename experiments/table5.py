"""Table 5 of the BAH paper: personalisation by domain adaptation, one target per test subject.

``python -m experiments.run table5 [--config.data.store=PATH] [--config.quick=True]``

Rows as in the paper: Source-only and Oracle as references; UDA (MMD, ACPL) and SFDA
(SHOT, NRC) with AVGF1 and AP; TTA (Tent, T3A) with AVGF1 and WAR; every cell is the mean
over target subjects with its standard deviation beside it. The paper's CLIP-based TTA
rows (TPT, TDA, DPE, PromptAlign, ReTA, T3AL, TTA-CaP, CLIP-AUTT) are absent: they need
CLIP weights (see ``baselines.adapt.VisionLanguageTTA``). Features are frame-level arrays
of a feature store, grouped into modalities by ``config.data`` (an empty tuple drops a
modality). Results: ``test`` (every metric of every method), ``table5`` (the paper's
layout), ``per_target`` (one row per subject and method) and ``notes``; the targets'
adapt/val/test splits are saved as ``personalisation_splits.json`` in the run folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ahjax.data.store import FeatureStore
from baselines import adapt as adapt_lib
from baselines import personalise

# Paper order and family of each row; the label is the row name in the table.
ROWS = (("source_only", "Source-only"), ("mmd", "UDA: MMD"), ("acpl", "UDA: ACPL"),
        ("shot", "SFDA: SHOT"), ("nrc", "SFDA: NRC"), ("tent", "TTA: Tent"),
        ("t3a", "TTA: T3A"), ("oracle", "Oracle"))
METRICS = ("AVGF1", "AP", "WAR", "F1_POS", "F1_NEG", "W_F1")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The feature store and which of its arrays make up each modality."""
    store: str = ""            # "" = extract ``root`` (or the embedded demo dataset)
    root: str = ""             # a BAH tree; "" = the embedded demo dataset (synthetic)
    video: tuple[str, ...] = ("face_expr", "face_blend", "face_desc")
    audio: tuple[str, ...] = ("voice_prosody",)
    text: tuple[str, ...] = ("text_affect",)

    def spec(self) -> dict[str, tuple[str, ...]]:
        """``{modality: arrays}`` of the modalities that select at least one array."""
        return {m: tuple(getattr(self, m)) for m in ("video", "audio", "text") if getattr(self, m)}


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    protocol: personalise.ProtocolConfig = personalise.ProtocolConfig()
    adapt: adapt_lib.AdaptConfig = adapt_lib.AdaptConfig()
    methods: tuple[str, ...] = tuple(name for name, _ in ROWS)
    quick: bool = False


def get_config(quick: bool = False) -> Config:
    """The paper's setup; ``quick`` shrinks training to seconds for tests."""
    if not quick:
        return Config(adapt=adapt_lib.AdaptConfig(hidden=128, feature_dim=64, source_epochs=30,
                                                  epochs=15, mmd_weight=10.0, adapt_lr=1e-3,
                                                  tta_lr=1e-2))
    return Config(
        protocol=personalise.ProtocolConfig(max_source_frames=4000, max_targets=2),
        adapt=adapt_lib.AdaptConfig(hidden=16, feature_dim=8, source_epochs=2, epochs=2,
                                    batch_size=32, eval_batch=256, tta_batch=32,
                                    mmd_weight=10.0, adapt_lr=1e-3, tta_lr=1e-2,
                                    t3a_filter_k=20),
        quick=True)


def resolve_store(data: DataConfig, quick: bool = False) -> FeatureStore:
    """The feature store named by ``data.store``, else ``data.root`` (or the demo dataset)
    extracted through the shared, cached level-1 pipeline."""
    if not data.store:
        from experiments import common, two_level
        source = two_level.get_config(quick=quick)
        store, _, _ = common.prepare_store(
            dataclasses.replace(source.data, root=data.root), source.extract)
        return store
    path = Path(data.store).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"feature store {path} does not exist")
    return FeatureStore(path)


def build_table(summary: dict, methods) -> tuple[dict, dict]:
    """(``test``: every metric with ``_std``, ``table5``: the paper's columns per family)."""
    labels = dict(ROWS)
    test, table = {}, {}
    for name in methods:
        stats = summary[name]
        row = {}
        for metric in METRICS:
            if metric in stats:
                row[metric] = stats[metric]["mean"]
                row[f"{metric}_std"] = stats[metric]["std"]
        row["targets"] = stats["AVGF1"]["n"]
        test[name] = row
        family = adapt_lib.METHODS[name].family
        cols = {"uda": ("AVGF1", "AP"), "sfda": ("AVGF1", "AP"), "tta": ("AVGF1", "WAR")}.get(
            family, ("AVGF1", "AP", "WAR"))
        table[labels.get(name, name)] = {k: row[k] for c in cols for k in (c, f"{c}_std")}
    return test, table


def run(config: Config, workdir) -> dict:
    """Run the protocol on ``config.data.store``; returns the results described above."""
    store = resolve_store(config.data, config.quick)
    out = personalise.run_personalisation(store, config.data.spec(), config.methods,
                                          config.adapt, config.protocol, workdir)
    test, table = build_table(out["summary"], config.methods)
    labels = dict(ROWS)
    per_target = {f"{pid} / {labels.get(m, m)}": {k: v for k, v in row.items() if k != "CONF"}
                  for pid, rows in out["per_target"].items() for m, row in rows.items()}
    notes = [f"{len(out['per_target'])} target subject(s); mean and population std over them",
             "not included (need CLIP weights): TPT, TDA, DPE, PromptAlign, ReTA, T3AL, "
             "TTA-CaP, CLIP-AUTT",
             f"splits: {personalise.SPLITS_FILE}"]
    notes += [f"skipped {pid}: {why}" for pid, why in out["skipped"].items()]
    results = {"test": test, "table5": table, "per_target": per_target, "notes": notes}
    if workdir is not None:
        (Path(workdir) / "per_target.json").write_text(json.dumps(out["per_target"], indent=1))
    return results
