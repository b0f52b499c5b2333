"""Per-modality TCN with concatenation fusion (the paper's frame-level baseline).

``python -m experiments.run concat_tcn [--config.modalities=video,text] [--config.quick=True]``
trains :class:`baselines.tcn.ConcatTCN` with the paper's recipe (SGD 0.008, Nesterov,
weight decay 1e-4, windows of 696 frames, hop 48, batch 4, best epoch by validation AP)
on a feature store, then scores the best epoch on val and test with the paper's frame
metrics. ``--config.data.store PATH`` naming an extracted store is used as it is;
otherwise the store comes from ``experiments.common.prepare_store`` (the BAH tree at
``--data.root`` or the embedded demo dataset, extracted once and cached).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ahjax.data.store import FeatureStore
from ahjax.data.windows import WindowConfig, Windows
from ahjax.train import trainer as trainer_lib
from ahjax.train.trainer import TrainConfig
from baselines.tcn import ConcatTCN, TCNConfig
from experiments.common import DataConfig
from level1_affect.schema import MODALITIES

METHOD = "concat_tcn"


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the run depends on; written beside its results."""
    quick: bool = False
    data: DataConfig = DataConfig()
    modalities: tuple[str, ...] = ("video", "audio", "text")
    # Store arrays concatenated into each modality (level 1's groups by default).
    video_arrays: tuple[str, ...] = MODALITIES["video"]
    audio_arrays: tuple[str, ...] = MODALITIES["audio"]
    text_arrays: tuple[str, ...] = MODALITIES["text"]
    model: TCNConfig = TCNConfig()
    windows: WindowConfig = WindowConfig()
    train: TrainConfig = TrainConfig()
    splits: tuple[str, str, str] = ("train", "val", "test")


def get_config(quick: bool = False) -> Config:
    """The paper's setup, or with ``quick`` a tiny one that runs in seconds."""
    if not quick:
        return Config()
    return Config(
        quick=True,
        model=TCNConfig(video=(16, 16), audio=(8, 8), text=(16, 16)),
        windows=WindowConfig(window=64, hop=32, batch_size=4),
        train=TrainConfig(epochs=2, progress=False))


def spec_of(config: Config) -> dict[str, tuple[str, ...]]:
    """Modality -> store arrays for the configured modalities."""
    spec = {}
    for m in config.modalities:
        arrays = getattr(config, f"{m}_arrays", None)
        if arrays is None:
            raise ValueError(f"unknown modality {m!r}; use video, audio or text")
        spec[m] = tuple(arrays)
    if not spec:
        raise ValueError("no modality configured")
    return spec


def open_store(data: DataConfig) -> FeatureStore:
    """The feature store of ``data``: an existing store as is, else extracted and cached."""
    if data.store and not data.root:
        store = FeatureStore(Path(data.store).expanduser())
        if store.video_ids():
            return store
    from experiments.common import prepare_store  # level-1 extraction: heavy imports
    return prepare_store(data)[0]


def _table(metrics: dict) -> dict:
    # Results tables hold numbers only; the confusion matrix is a nested list.
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def run(config: Config, workdir: str | Path) -> dict:
    """Train, pick the best epoch by validation AP, score val and test; return the tables."""
    workdir = Path(workdir)
    store = open_store(config.data)
    spec = spec_of(config)
    train_split, val_split, test_split = config.splits

    def build(dims, rngs):
        return ConcatTCN(dims, config.model, rngs=rngs)

    res = trainer_lib.train(build, store, spec, config.windows, config.train, workdir,
                            train_split=train_split, val_split=val_split)
    results = {"val": {METHOD: _table(res.best_val)}, "test": {}}
    test_ids = store.video_ids(test_split)
    if test_ids:
        windows = Windows(
            store, spec, test_split, window=config.windows.window,
            hop=config.train.eval_hop or config.windows.window, stats=res.stats)
        test, _ = trainer_lib.evaluate(res.model, windows, batch_size=config.windows.batch_size,
                                       mesh=trainer_lib.make_mesh(config.train.num_devices))
        results["test"][METHOD] = _table(test)
    results["training"] = {"best_epoch": res.best_epoch, "epochs": len(res.history),
                           "modalities": "+".join(spec)}
    results["notes"] = [
        f"{METHOD}: modalities {'+'.join(spec)}; best epoch {res.best_epoch} by val AP.",
        "Padded frames of a video's last window are excluded from loss and metrics.",
    ]
    return results
