"""What the paper's frame-level tables share: rows of (model, modalities), trained and scored.

Tables 1 and 2 are lists of :class:`Row`; :func:`run_rows` trains each with the same recipe,
keeps the best epoch by validation AP and scores whole videos on val and test, returning
``test``/``val``, ``table``, ``training`` and ``setup``. On the demo data the window and
epoch count are the demo's (docs/paper_setups.md, "Frame-level tables").
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ahjax.core import results as results_lib
from ahjax.core.data import windows as win
from ahjax.core.data.store import FeatureStore
from ahjax.core.train import trainer as trainer_lib
from ahjax.core.train.trainer import TrainConfig
from level1_affect.dataset import (QUICK_DATA, QUICK_EXTRACT, DataConfig, frame_labels, prepare_store,
                            score_videos, video_labels)
from level1_affect.extract import ExtractConfig
from level1_affect.schema import MODALITIES

# The paper's modality letters and subsets, in its order.
CODES = {"video": "V", "audio": "A", "text": "T"}
SUBSETS = ("V", "A", "T", "V+A", "V+T", "A+T", "V+A+T")
TABLE_METRICS = ("AVGF1", "AP", "WAR")

# The only published numbers the project's spec carries (docs/paper_setups.md): the paper's best
# frame-level fusion result on BAH. No other cell of the paper's tables is reproduced here.
PAPER_LABEL = "paper (reference, BAH): best frame-level fusion"
PAPER_BEST_FRAME = {"AVGF1": 0.5586, "AP": 0.2631}


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: its label, a trainer ``model_fn(dims, rngs)`` and its modalities."""
    name: str
    build: Callable[[Mapping[str, int], nnx.Rngs], nnx.Module]
    modalities: tuple[str, ...]


def modalities_of(subset: str) -> tuple[str, ...]:
    """``"V+T"`` -> ``("video", "text")`` (canonical order); raises ValueError on a bad code."""
    by_code = {c: m for m, c in CODES.items()}
    codes = [c.strip().upper() for c in subset.split("+") if c.strip()]
    if not codes or any(c not in by_code for c in codes) or len(set(codes)) != len(codes):
        raise ValueError(f"bad modality subset {subset!r}; use letters V, A, T joined by '+'")
    return tuple(m for m in CODES if CODES[m] in codes)


def subset_code(modalities: Sequence[str]) -> str:
    """``("video", "text")`` -> ``"V+T"``."""
    return "+".join(CODES[m] for m in CODES if m in modalities)


def spec_for(store: FeatureStore, modalities: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Modality -> the store arrays of level 1's group that this store holds.

    Raises ValueError when a requested modality has none of its arrays (a store extracted
    without that encoder), since silently dropping it would mislabel the row.
    """
    shapes = store.meta(store.video_ids()[0])["shapes"]
    spec = {m: tuple(a for a in MODALITIES[m] if a in shapes) for m in modalities}
    missing = [m for m, names in spec.items() if not names]
    if missing:
        raise ValueError(f"{store.root}: no arrays for modality {missing} (have {sorted(shapes)})")
    return spec


def effective_setup(windows: win.WindowConfig, train: TrainConfig, data: DataConfig,
                    demo_window: int, demo_epochs: int) -> tuple[win.WindowConfig, TrainConfig]:
    """(windows, train) as used: the paper's on BAH, shorter windows and fewer epochs on the
    demo dataset (module docstring); ``demo_*`` of 0 keep the paper's value."""
    if data.root:
        return windows, train
    if demo_window:
        windows = dataclasses.replace(windows, window=demo_window)
    if demo_epochs:
        train = dataclasses.replace(train, epochs=demo_epochs)
    return windows, train


def quick_settings() -> dict:
    """The quick configs' shared fields: the quick demo and extraction of
    ``level1_affect.dataset`` (whose cache the tests share), windows of 96 frames, one epoch, no
    demo overrides."""
    return dict(quick=True, data=QUICK_DATA, extract=QUICK_EXTRACT,
                windows=win.WindowConfig(window=96, hop=48, batch_size=4),
                train=TrainConfig(epochs=1, progress=False), demo_window=0, demo_epochs=0)


def open_store(data: DataConfig, extract: ExtractConfig) -> tuple[FeatureStore, Path, dict]:
    """The extracted, cached feature store of ``data`` (see ``common.prepare_store``)."""
    return prepare_store(data, extract, progress=False)


def _numbers(metrics: Mapping) -> dict:
    # Tables hold numbers only (the confusion matrix is a nested list).
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def slug(name: str) -> str:
    """A folder name for a row label (``"CAN / V+A"`` -> ``"can_v_a"``)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def train_row(row: Row, store: FeatureStore, windows: win.WindowConfig, train: TrainConfig,
              workdir: Path, splits: Mapping[str, Sequence[str]]) -> dict:
    """Train one row, then score its best epoch on each of ``splits`` (name -> video ids).

    Returns ``{split: metrics, "training": {...}}``. Whole videos are predicted with
    non-overlapping windows, as the trainer's validation does, under the train split's
    standardisation statistics.
    """
    spec = spec_for(store, row.modalities)
    t0 = time.time()
    res = trainer_lib.train(row.build, store, spec, windows, train, workdir)
    seconds = time.time() - t0
    mesh = trainer_lib.make_mesh(train.num_devices)
    # One eval step for every split: predict_videos would compile a fresh one per call.
    keys = trainer_lib.input_keys(res.model, spec)
    graphdef, state = nnx.split(res.model)
    step = (trainer_lib.make_eval_step(graphdef, keys), state, keys)
    out: dict = {}
    for split, ids in splits.items():
        ws = win.Windows(store, spec, None, window=windows.window, hop=windows.window,
                         video_ids=ids, stats=res.stats)
        logits = trainer_lib.predict_windows(None, ws, batch_size=windows.batch_size,
                                             mesh=mesh, step=step)
        probs = {v: np.asarray(jax.nn.softmax(jnp.asarray(l), -1)[:, 1]) for v, l in logits.items()}
        labels = frame_labels(store, ids)
        out[split] = _numbers(score_videos(labels, probs, video_labels(store, ids)))
    params = int(sum(x.size for x in jax.tree.leaves(nnx.state(res.model, nnx.Param))))
    out["training"] = {"best_epoch": res.best_epoch, "epochs": len(res.history),
                       "train_seconds": seconds, "params": params}
    if res.diverged:
        out["training"]["diverged"] = res.diverged
    return out


def paper_table(split_results: Mapping[str, Mapping], rows: Sequence[Row],
                reference: Mapping[str, Mapping] | None = None) -> dict:
    """The paper's layout: one entry per row (its order) with AVGF1, AP and WAR, then the
    ``reference`` rows (label -> the metrics they have), kept apart by their labels."""
    table = {r.name: {m: split_results[r.name][m] for m in TABLE_METRICS
                      if m in split_results[r.name]} for r in rows}
    for label, values in (reference or {}).items():
        table[label] = dict(values)
    return table


def run_rows(rows: Sequence[Row], data: DataConfig, extract: ExtractConfig,
             windows: win.WindowConfig, train: TrainConfig, workdir: Path, *,
             table_name: str, reference: Mapping[str, Mapping] | None = None,
             demo_window: int = 0, demo_epochs: int = 0) -> dict:
    """Train and score every row; the results dict a table experiment returns.

    Keys: ``test`` and ``val`` (row -> every metric), ``table_name`` (the paper's layout,
    on test), ``training`` (row -> best epoch, epochs, seconds, parameters), ``setup``
    (the windows and epochs used) and ``dataset``.
    """
    if not rows:
        raise ValueError("no rows to run")
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate row labels: {names}")
    store, root, extraction = open_store(data, extract)
    windows, train = effective_setup(windows, train, data, demo_window, demo_epochs)
    splits = {"test": store.video_ids("test"), "val": store.video_ids("val")}
    for split, ids in splits.items():
        if not ids:
            raise RuntimeError(f"{store.root}: no {split} videos")
    results: dict = {"test": {}, "val": {}, "training": {}}
    notes: list[str] = []
    for done, row in enumerate(rows):
        print(f"{table_name}: training {row.name}", flush=True)
        out = train_row(row, store, windows, train, Path(workdir) / "models" / slug(row.name),
                        splits)
        for split in splits:
            results[split][row.name] = out[split]
        results["training"][row.name] = out["training"]
        if "diverged" in out["training"]:
            notes.append(f"{row.name}: training stopped early ({out['training']['diverged']}); "
                         f"scored at its best validated epoch {out['training']['best_epoch']}")
        results_lib.write_partial({**results, "notes": notes}, workdir, table_name,
                                  done + 1, len(rows))
    results[table_name] = paper_table(results["test"], rows, reference)
    if notes:
        results["notes"] = notes
    results["setup"] = {"window": windows.window, "hop": windows.hop,
                        "batch_size": windows.batch_size, "epochs": train.epochs,
                        "optimizer": f"{train.optimizer} lr {train.lr} momentum {train.momentum}"
                                     f" nesterov {train.nesterov} wd {train.weight_decay}",
                        "selection": "best epoch by validation AP"}
    results["dataset"] = {"root": str(root), "store": str(store.root),
                          "synthetic_demo": not bool(data.root),
                          "videos": {s: len(store.video_ids(s)) for s in ("train", "val", "test")},
                          "extraction_failed": len(extraction["failed"])}
    return results
