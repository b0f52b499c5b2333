"""Table 3: visual backbones at frame level (ResNet18/34/50/101/152, APViT-style ViT).

``python -m experiments.run table3 [--data.root PATH] [--config.pretrain_folder DIR]``.

For each backbone, on BAH's aligned face crops (``FaceEncoder``, cached per video):
1. optional basic-emotion pretraining on ``pretrain_folder`` (``<emotion>/<image>``);
2. fine-tuning on A/H frames of the train split (every ``frame_stride``-th labelled frame,
   negatives undersampled), best epoch by validation frame AP;
3. two rows: ``<backbone> (fine-tuned, frame-wise)``, the fine-tuned network's own per-frame
   probabilities; and ``<backbone> features + TCN``, its pooled features written into a
   feature store as the V modality (array ``face_<backbone>``) and fed to the paper's
   video TCN (``experiments.concat_tcn`` with V only).

Columns are the paper's frame-level metrics (AVGF1, AP, ...) on test; ``results.json`` has
val too. The demo dataset is the default; the paper's own numbers are not reproduced here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from flax import nnx

from ahjax.core import results as results_lib
from ahjax.core.data.store import FeatureStore
from ahjax.core.data.windows import WindowConfig
from ahjax.core.metrics import frame_ap
from ahjax.core.train.trainer import TrainConfig
from baselines import face_pretrain as fp
from baselines.backbones import BACKBONES, TINY, build_backbone, replace_head
from baselines.tcn import METHOD as TCN_METHOD
from baselines.tcn import TCNConfig, train_concat_tcn
from level1_affect.dataset import QUICK_DATA, DataConfig, demo_root, score_videos

TABLE_METRICS = ("AVGF1", "AP", "WAR", "F1_POS", "F1_NEG", "W_F1", "VIDEO_AVGF1", "VIDEO_AP")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the run depends on; written beside its results."""
    quick: bool = False
    data: DataConfig = DataConfig()
    backbones: tuple = tuple(BACKBONES)
    tiny: bool = False                 # reduced variants (tests, smoke runs)
    modes: tuple = ("finetuned", "features_tcn")
    crop_size: int = 112               # face crops are cached at this side
    detect_every: int = 2              # face landmarker every k-th frame
    pretrain_folder: str = ""          # basic-emotion images; "" = train from scratch
    pretrain: fp.ImageTrainConfig = fp.ImageTrainConfig(epochs=20)
    finetune: fp.ImageTrainConfig = fp.ImageTrainConfig(epochs=10, batch_size=64)
    frame_stride: int = 4              # training/validation frames: every k-th
    neg_ratio: float = 1.0             # negatives per positive after undersampling; 0 = all
    tcn: TCNConfig = TCNConfig()
    windows: WindowConfig = WindowConfig()
    train: TrainConfig = TrainConfig()
    seed: int = 0


def get_config(quick: bool = False) -> Config:
    """The full run, or (``quick``) tiny backbones on the quick demo for tests."""
    if not quick:
        return Config()
    small = fp.ImageTrainConfig(image_size=32, batch_size=32, epochs=1)
    return Config(quick=True, data=QUICK_DATA,
                  backbones=("resnet18", "apvit"), tiny=True, crop_size=32, detect_every=4,
                  pretrain=small, finetune=small, frame_stride=8,
                  tcn=TCNConfig(video=(8, 8)),
                  windows=WindowConfig(window=64, hop=32, batch_size=4),
                  train=TrainConfig(epochs=1, progress=False))


def load_crops(config: Config) -> dict:
    """``{split: [(record, crops (n,S,S,3), labels (n,))]}`` for every video with a file."""
    root = Path(config.data.root).expanduser() if config.data.root else demo_root(config.data)
    return fp.bah_face_crops(root, config.crop_size, config.detect_every)


def build(config: Config, name: str, num_classes: int, seed: int) -> nnx.Module:
    """Backbone ``name`` at full size (APViT sized to the crops) or its tiny variant."""
    over = dict(TINY[name]) if config.tiny else {}
    if name == "apvit":
        over["image_size"] = config.crop_size
    return build_backbone(name, num_classes, rngs=nnx.Rngs(seed), **over)


def train_backbone(config: Config, name: str, data: dict, workdir: Path) -> tuple[nnx.Module, list]:
    """Pretrain (when a folder is given), then fine-tune on A/H frames; returns (model, history)."""
    if config.pretrain_folder:
        classes = fp.EmotionFolder(config.pretrain_folder, config.crop_size).classes
        model = build(config, name, len(classes), config.seed)
        fp.pretrain(model, config.pretrain_folder, config.pretrain, workdir / "pretrain")
        model = replace_head(model, 2, rngs=nnx.Rngs(config.seed + 1))
    else:
        model = build(config, name, 2, config.seed)
    crops = [c for _, c, _ in data["train"]]
    items = fp.frame_items([y for _, _, y in data["train"]], stride=config.frame_stride,
                           neg_ratio=config.neg_ratio, seed=config.seed)
    val = data.get("val") or []

    def validate(m) -> float:
        # Strided frames: an epoch's validation costs 1/stride of a full pass.
        ys, ps = [], []
        for _, c, y in val:
            idx = np.arange(0, len(c), config.frame_stride)
            ys.append(y[idx])
            ps.append(fp.predict_frames(m, c[idx], config.finetune.batch_size)[0][:, 1])
        y, p = np.concatenate(ys), np.concatenate(ps)
        return frame_ap(y, p) if (y == 1).any() else 0.0

    history = fp.fit(model, fp.CropFrames(crops, items), config.finetune, workdir / "finetune",
                     validate=validate if val else None)
    return model, history


def _row(metrics: dict) -> dict:
    return {k: float(metrics[k]) for k in TABLE_METRICS if k in metrics}


def run(config: Config, workdir) -> dict:
    """Train every backbone, score both rows on val and test; return the results tables."""
    workdir = Path(workdir)
    data = load_crops(config)
    results = {"val": {}, "test": {}, "training": {}}
    notes = []
    for done, name in enumerate(config.backbones):
        model, history = train_backbone(config, name, data, workdir / name)
        results["training"][name] = {"epochs": len(history),
                                     "final_loss": history[-1]["loss"] if history else float("nan")}
        feats_name = f"face_{name}"
        store = FeatureStore(workdir / name / "features")
        for split in ("train", "val", "test"):
            probs, labels = {}, {}
            for rec, crops, y in data[split]:
                p, f = fp.predict_frames(model, crops, config.finetune.batch_size)
                probs[rec.video_id], labels[rec.video_id] = p[:, 1], y
                fp.write_visual_features(store, rec.video_id, feats_name, f, {
                    "split": split, "video_label": int(rec.video_label), "fps": rec.fps,
                    "arrays": {"labels": y.astype(np.int8)}})
            if split != "train" and probs and "finetuned" in config.modes:
                vl = np.asarray([r.video_label for r, _, _ in data[split]])
                results[split][f"{name} (fine-tuned, frame-wise)"] = _row(
                    score_videos(labels, probs, vl))
        if "features_tcn" in config.modes:
            tcn = train_concat_tcn(store, {"video": (feats_name,)}, config.tcn, config.windows,
                                   config.train, workdir / name / "tcn")
            for split in ("val", "test"):
                if TCN_METHOD in tcn.get(split, {}):
                    results[split][f"{name} features + TCN"] = _row(tcn[split][TCN_METHOD])
        results_lib.write_partial(results, workdir, "table3", done + 1, len(config.backbones))
    results["notes"] = notes + [
        "Paper's own Table 3 numbers are NOT reproduced here (the project does not carry them); "
        "on the default demo dataset the numbers only show that every part runs.",
        f"pretraining: {config.pretrain_folder or 'none (no basic-emotion folder given; trained from scratch)'}",
        f"backbones {'tiny (reduced) variants' if config.tiny else 'at full size'}; crops "
        f"{config.crop_size}x{config.crop_size}; fine-tuning on every {config.frame_stride}-th "
        f"labelled train frame, negatives undersampled to {config.neg_ratio}x positives; "
        "best epoch by val frame AP.",
        "features + TCN: the backbone's pooled features as the only (V) modality of the "
        "paper's TCN (baselines.tcn.train_concat_tcn), best epoch by val AP.",
        "BAH scale: ResNet101/152 and APViT fine-tuning on ~900k frames need a GPU; face crops "
        f"are cached under $AHJAX_CACHE/face_crops (~{3 * config.crop_size ** 2 * 917_000 / 1e9:.0f} GB "
        "for all BAH frames at this crop size).",
    ]
    return results
