"""Per-modality TCN with concatenation fusion (the paper's frame-level baseline).

``python -m experiments.run concat_tcn [--config.modalities=video,text] [--config.quick=True]``
trains :class:`baselines.tcn.ConcatTCN` with the paper's recipe (SGD 0.008, Nesterov,
weight decay 1e-4, windows of 696 frames, hop 48, batch 4, best epoch by validation AP)
on a feature store, then scores the best epoch on val and test with the paper's frame
metrics. ``--config.data.store PATH`` naming an extracted store is used as it is;
otherwise the store comes from ``level1_affect.dataset.prepare_store`` (the BAH tree at
``--data.root`` or the embedded demo dataset, extracted once and cached).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ahjax.core.data.windows import WindowConfig
from ahjax.core.train.trainer import TrainConfig
from baselines.tcn import TCNConfig, train_concat_tcn
from level1_affect.dataset import DataConfig, open_store
from level1_affect.schema import MODALITIES

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


def run(config: Config, workdir: str | Path) -> dict:
    """Train, pick the best epoch by validation AP, score val and test; return the tables."""
    store = open_store(config.data)   # a ready store as is, else extracted and cached
    return train_concat_tcn(store, spec_of(config), config.model, config.windows, config.train,
                            workdir, config.splits)
