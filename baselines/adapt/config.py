"""Every hyperparameter of the adaptation network and methods."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Every hyperparameter of the network and of the adaptation methods."""
    backbone: str = "mlp"              # mlp (frame-wise) | tcn (baselines.tcn over context)
    context: int = 1                   # frames seen per prediction (causal); 1 for mlp
    hidden: int = 64
    feature_dim: int = 32
    dropout: float = 0.0
    tcn_channels: tuple[int, ...] = (64, 64, 32)   # every modality's TCN widths
    optimizer: str = "adam"            # adam | sgd (momentum 0.9, Nesterov)
    lr: float = 1e-3                   # source training and Oracle
    adapt_lr: float = 5e-4             # MMD, ACPL, SHOT, NRC
    weight_decay: float = 1e-4
    batch_size: int = 64
    eval_batch: int = 512
    source_epochs: int = 20
    source_steps: int = 0              # steps per source epoch; 0 = one pass over the source
    epochs: int = 10                   # adaptation epochs (one pass over the adapt part each)
    select: str = "val_ap"             # val_ap (paper) | last
    mmd_weight: float = 1.0
    mmd_kernels: int = 5
    mmd_mul: float = 2.0
    acpl_threshold: float = 0.90
    acpl_step: float = 0.02
    acpl_min_threshold: float = 0.5
    acpl_target_weight: float = 1.0
    acpl_noise: float = 0.2            # view augmentation: Gaussian noise (standardised units)
    acpl_drop: float = 0.1             # ... and feature dropout
    shot_ce_weight: float = 0.3
    shot_refresh: int = 1              # epochs between centroid pseudo-label refreshes
    nrc_k: int = 5
    nrc_kk: int = 5
    nrc_far_weight: float = 0.1        # non-reciprocal neighbours
    nrc_expanded_weight: float = 0.1
    nrc_diversity: float = 1.0
    tta_batch: int = 64
    tta_lr: float = 1e-3
    tta_order: str = "shuffle"         # shuffle (Tent's i.i.d. protocol) | temporal
    t3a_filter_k: int = 100            # supports kept per class
    seed: int = 0
    num_devices: int = 0               # data-parallel devices for training (0: all)
