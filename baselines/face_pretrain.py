"""Train a frame-level visual backbone: basic-emotion pretraining, A/H fine-tuning, features.

Pretraining takes any folder of face images with one sub-folder per emotion (skipped when
none is given); :func:`fit` trains through the shared engine; :func:`video_face_crops`,
:func:`frame_items` and :class:`CropFrames` give A/H frames; :func:`extract_visual_features`
makes the backbone a video-modality feature extractor. More: docs/paper_setups.md,
"Visual backbones".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import cv2
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ahjax.core import assets
from ahjax.core.data.bah import load_bah
from ahjax.core.data.store import FeatureStore
from ahjax.core.train.checkpoint import Checkpointer
from ahjax.core.train import engine
from ahjax.core.train.engine import NonFiniteLossError
from ahjax.core.train.trainer import TrainConfig, make_optimizer
from baselines.backbones import COMPUTE_DTYPES, normalize_images, set_compute_dtype
from level1_affect.extract import fit_labels
from level1_affect.face import FaceEncoder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class ImageTrainConfig:
    """One image-classification run (pretraining or fine-tuning)."""
    image_size: int = 112
    batch_size: int = 64
    epochs: int = 20
    optim: TrainConfig = TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05,
                                     schedule="cosine", clip_norm=1.0)
    min_crop: float = 0.8        # scale-jittered crops cover 80-100% of the side
    flip: bool = True
    seed: int = 0
    # "bfloat16": layers compute in bfloat16 during training, weights stay float32 (for
    # GPUs; on a CPU it is slower). Prediction after fit computes in float32 again.
    compute_dtype: str = "float32"

    def __post_init__(self):
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype={self.compute_dtype!r}: one of "
                             f"{', '.join(COMPUTE_DTYPES)}")


# ---------------------------------------------------------------------------------------
# Images and augmentation


def load_image(path: Path, size: int) -> np.ndarray:
    """An RGB uint8 (size, size, 3) image; a file that cannot be decoded raises ValueError."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: not a readable image")
    return cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size, size),
                      interpolation=cv2.INTER_AREA)


class EmotionFolder:
    """Random-access source over ``root/<emotion>/<image>``; classes are the sorted sub-folders."""

    def __init__(self, root: str | os.PathLike, image_size: int):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such emotion-image folder")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.items = [(f, c) for c, name in enumerate(self.classes)
                      for f in sorted((self.root / name).iterdir())
                      if f.suffix.lower() in IMAGE_SUFFIXES]
        if len(self.classes) < 2 or not self.items:
            raise ValueError(f"{self.root}: need >= 2 class sub-folders with images "
                             f"({IMAGE_SUFFIXES}), found classes {self.classes}")
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        path, label = self.items[i]
        return {"image": load_image(path, self.image_size), "label": np.int32(label)}


def augment(item: dict, rng: np.random.Generator, *, min_crop: float, flip: bool) -> dict:
    """A random square crop of ``min_crop``..1 of the side, resized back, maybe mirrored.

    ``item["image"]`` is one image (S, S, 3) or a clip (T, S, S, 3); a clip gets the same
    crop and flip in every frame, so motion between frames is not invented.
    """
    img = item["image"]
    clip = img if img.ndim == 4 else img[None]
    s = clip.shape[1]
    side = int(round(s * rng.uniform(min_crop, 1.0)))
    y, x = rng.integers(0, s - side + 1, size=2)
    out = np.stack([cv2.resize(np.ascontiguousarray(f[y:y + side, x:x + side]), (s, s),
                               interpolation=cv2.INTER_LINEAR) for f in clip])
    if flip and rng.random() < 0.5:
        out = out[:, :, ::-1]   # faces are near-symmetric: a mirror is still the same expression
    out = np.ascontiguousarray(out)
    return {**item, "image": out if img.ndim == 4 else out[0]}


def image_dataset(source, cfg: ImageTrainConfig, epoch: int, *, train: bool) -> grain.MapDataset:
    """Batches of ``{"image": uint8 (B,S,S,3), "label": (B,)}``; shuffled and augmented in training.

    Shuffling and augmentation are seeded by ``(seed, epoch)``, so a resumed run sees the
    same data as an uninterrupted one.
    """
    ds = grain.MapDataset.source(source)
    if train:
        seed = cfg.seed * 1000 + epoch
        ds = ds.shuffle(seed=seed).random_map(
            lambda it, rng: augment(it, rng, min_crop=cfg.min_crop, flip=cfg.flip), seed=seed)
    return ds.batch(cfg.batch_size, drop_remainder=False)


# ---------------------------------------------------------------------------------------
# Training


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, images, labels, weights):
    """One optimiser step of weighted cross-entropy on a uint8 image batch; returns the loss."""
    def loss_fn(m):
        logits, _ = m(normalize_images(images), train=True)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return (ce * weights).sum() / jnp.maximum(weights.sum(), 1.0)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def _forward(model: nnx.Module, images):
    logits, aux = model(normalize_images(images), train=False)
    return jax.nn.softmax(logits, -1), aux["features"]


def _saved_state(model: nnx.Module, optimizer: nnx.Optimizer) -> dict:
    # RNG counters are not saved: they are re-created by the builder (as save_params does).
    return {"model": nnx.to_pure_dict(nnx.state(model).split(nnx.RngState, ...)[1]),
            "opt": nnx.to_pure_dict(nnx.state(optimizer, nnx.optimizer.OptState))}


def _restore_state(model, optimizer, state) -> None:
    rest = nnx.state(model).split(nnx.RngState, ...)[1]
    nnx.replace_by_pure_dict(rest, state["model"])
    nnx.update(model, rest)
    opt = nnx.state(optimizer, nnx.optimizer.OptState)
    nnx.replace_by_pure_dict(opt, state["opt"])
    nnx.update(optimizer, opt)


def fit(model: nnx.Module, source, cfg: ImageTrainConfig, workdir: str | os.PathLike | None,
        *, validate: Callable[[nnx.Module], float] | None = None,
        class_weights: Sequence[float] | None = None, log: Callable[[str], None] = print
        ) -> list[dict]:
    """Train ``model`` in place on ``source`` (items ``{"image", "label"}``); returns per-epoch records.

    Through the one engine (docs/training.md): ``workdir`` checkpoints each epoch and resumes;
    with ``validate`` (model -> score, higher is better) the model ends with the best epoch's
    weights. A last, smaller batch is padded with zero-weight rows to a multiple of the devices.
    """
    steps_per_epoch = math.ceil(len(source) / cfg.batch_size)
    optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, steps_per_epoch * cfg.epochs),
                              wrt=nnx.Param)
    mesh = engine.data_mesh(cfg.optim.num_devices)
    n_dev = mesh.devices.size
    nnx.update(model, engine.replicate(nnx.state(model), mesh))
    nnx.update(optimizer, engine.replicate(nnx.state(optimizer, nnx.optimizer.OptState), mesh))
    cw = None if class_weights is None else np.asarray(class_weights, np.float32)
    ckpt = Checkpointer(Path(workdir) / "checkpoints", best_metric="score") if workdir else None
    history, start = [], 0
    if ckpt is not None and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(None, _saved_state(model, optimizer))
        _restore_state(model, optimizer, state)
        history, start = list(meta["history"]), int(meta["epoch"]) + 1
        log(f"resumed after epoch {start - 1} from {ckpt.directory}")
    in_memory: dict[int, dict] = {}   # without a checkpointer: the best epoch's state

    def batches(epoch):
        if hasattr(source, "set_epoch"):   # sources that re-sample per epoch (video clips)
            source.set_epoch(epoch)
        for batch in image_dataset(source, cfg, epoch, train=True):
            labels = np.asarray(batch["label"], np.int32)
            weights = np.ones(labels.shape, np.float32) if cw is None else cw[labels]
            images = np.asarray(batch["image"])
            pad = -len(labels) % n_dev
            if pad:
                images = np.concatenate([images, np.zeros((pad,) + images.shape[1:],
                                                          images.dtype)])
                labels = np.concatenate([labels, np.zeros(pad, np.int32)])
                weights = np.concatenate([weights, np.zeros(pad, np.float32)])
            yield engine.put_batch({"image": images, "label": labels, "weight": weights},
                                     mesh)

    def step(batch, epoch):
        return {"loss": train_step(model, optimizer, batch["image"], batch["label"],
                                   batch["weight"])}

    def end_epoch(record):
        log(json.dumps(record))
        if ckpt is not None:
            ckpt.save(record["epoch"], _saved_state(model, optimizer),
                      {"epoch": record["epoch"], "history": history},
                      metrics={"score": record.get("score", -float(record["epoch"]))}
                      if validate else None)
        elif validate is not None and engine.best_epoch(history) == record["epoch"]:
            in_memory.clear()
            in_memory[record["epoch"]] = jax.device_get(_saved_state(model, optimizer))

    set_compute_dtype(model, cfg.compute_dtype)   # validation during fit computes so too
    try:
        result = engine.run_epochs(
            epochs=cfg.epochs, batches=batches, step=step, start_epoch=start, history=history,
            validate=(lambda epoch: validate(model)) if validate is not None else None,
            end_epoch=end_epoch, on_nonfinite=cfg.optim.on_nonfinite, desc="image training",
            flush_every=steps_per_epoch)
    finally:
        set_compute_dtype(model, "float32")
    history = result.history
    if result.diverged:
        if not history:
            raise NonFiniteLossError(result.diverged)
        log(f"training stopped: {result.diverged}; keeping the best epoch before it")
    if ckpt is not None and (validate is not None or result.diverged) and history:
        # The checkpointer's best among the epochs it kept (the later one on a tie).
        best = ckpt.best_step() if validate is not None else ckpt.latest_step()
        if best is None:   # restore(None) would quietly give the latest epoch instead
            raise RuntimeError(f"{ckpt.directory}: no scored checkpoint to restore")
        state, _ = ckpt.restore(best, _saved_state(model, optimizer))
        _restore_state(model, optimizer, state)
    elif in_memory:
        _restore_state(model, optimizer, next(iter(in_memory.values())))
    if ckpt is not None:
        ckpt.close()
    return history


def pretrain(model: nnx.Module, folder: str | os.PathLike, cfg: ImageTrainConfig,
             workdir: str | os.PathLike | None) -> list[dict]:
    """Basic-emotion pretraining: ``model``'s head must have one output per sub-folder."""
    source = EmotionFolder(folder, cfg.image_size)
    n_out = model.head.out_features
    if n_out != len(source.classes):
        raise ValueError(f"{folder}: {len(source.classes)} emotion classes {source.classes} "
                         f"but the model has {n_out} outputs")
    return fit(model, source, cfg, workdir)


# ---------------------------------------------------------------------------------------
# A/H face crops of BAH videos


def video_face_crops(video_path: str | os.PathLike, size: int, *, detect_every: int = 2,
                     cache: str | os.PathLike | None = None, encoder=None) -> np.ndarray:
    """Aligned face crops (n_frames, size, size, 3) uint8 of a video, cached on disk.

    ``FaceEncoder`` gives BAH's 256x256 aligned crops (frames without a face repeat the
    previous one); they are shrunk to ``size`` here and stored once per (file, mtime, size,
    detect_every), so every backbone and epoch reads the same crops memory-mapped.
    """
    path = Path(video_path).resolve()
    st = path.stat()
    key = hashlib.sha1(json.dumps([str(path), st.st_mtime_ns, st.st_size, size,
                                   detect_every]).encode()).hexdigest()[:16]
    folder = Path(cache) if cache else assets.cache_dir() / "face_crops"
    target = folder / f"{path.stem[-60:]}-{key}.npy"
    if not target.is_file():
        enc = encoder or FaceEncoder(detect_every=detect_every)
        crops = enc.encode_file(path, return_crops=True)["face_crops"]
        if len(crops) == 0:
            raise ValueError(f"{path}: no frame decoded")
        small = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA)
                          for c in crops])
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{target.stem}.{os.getpid()}.npy"
        np.save(tmp, small)
        os.replace(tmp, target)   # atomic: a killed run never leaves half a cache file
    return np.load(target, mmap_mode="r")


def frame_items(labels: Sequence[np.ndarray], *, stride: int = 1, neg_ratio: float = 0.0,
                seed: int = 0) -> np.ndarray:
    """(m, 3) rows ``(video index, frame index, label)`` of labelled frames for training.

    Every ``stride``-th frame with a label (not -1) is a candidate. With ``neg_ratio > 0``
    negatives are undersampled to at most ``neg_ratio`` times the positives (the paper's
    option against the majority of non-A/H frames); positives are all kept.
    """
    rows = [(v, i, int(y[i])) for v, y in enumerate(labels)
            for i in range(0, len(y), max(stride, 1)) if y[i] != -1]
    items = np.asarray(rows, np.int64).reshape(-1, 3)
    if neg_ratio > 0 and len(items):
        pos, neg = items[items[:, 2] == 1], items[items[:, 2] == 0]
        keep = min(len(neg), max(int(round(neg_ratio * len(pos))), 1))
        neg = neg[np.random.default_rng(seed).choice(len(neg), keep, replace=False)]
        items = np.concatenate([pos, neg])
        items = items[np.lexsort((items[:, 1], items[:, 0]))]
    return items


class CropFrames:
    """grain source over ``frame_items`` rows, reading each crop from its video's array."""

    def __init__(self, crops: Sequence[np.ndarray], items: np.ndarray):
        self.crops, self.items = list(crops), np.asarray(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        v, f, y = self.items[i]
        return {"image": np.asarray(self.crops[v][f]), "label": np.int32(y)}


# ---------------------------------------------------------------------------------------
# The backbone as the video-modality feature extractor


def predict_frames(model: nnx.Module, crops: np.ndarray, batch_size: int = 64
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities (n, C), features (n, D)) of every crop, in eval mode.

    The last batch is padded to ``batch_size`` so one compiled shape serves every video.
    """
    probs, feats = [], []
    for s in range(0, len(crops), batch_size):
        chunk = np.asarray(crops[s:s + batch_size])
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
        p, f = _forward(model, jnp.asarray(chunk))
        probs.append(np.asarray(p[:n]))
        feats.append(np.asarray(f[:n]))
    return np.concatenate(probs), np.concatenate(feats).astype(np.float32)


def extract_visual_features(model: nnx.Module, video: np.ndarray, batch_size: int = 64
                            ) -> np.ndarray:
    """(n_frames, D) float32 pooled backbone features of a video's face crops (n, S, S, 3)."""
    feats = predict_frames(model, video, batch_size)[1]
    if not np.all(np.isfinite(feats)):
        raise FloatingPointError("backbone features hold NaN or inf")
    return feats


def write_visual_features(store: FeatureStore, video_id: str, name: str, feats: np.ndarray,
                          meta: dict | None = None) -> None:
    """Put ``feats`` (n, D) into ``store`` as array ``name`` of ``video_id``.

    A video already in the store must have ``n`` frames; the array is added beside its
    others (atomically, meta updated). A new video is written whole with ``meta`` (e.g.
    ``split``, ``fps``, ``video_label``); ``meta["arrays"]``, when given, is written with it
    (e.g. ``{"labels": (n,) int8}``) and not kept in ``meta.json``.
    """
    feats = np.asarray(feats, np.float32)
    if not store.has(video_id):
        meta = dict(meta or {})
        extra = meta.pop("arrays", {})   # e.g. the video's frame labels
        store.write(video_id, {name: feats, **extra}, meta)
        return
    info = store.meta(video_id)
    if int(info["n_frames"]) != len(feats):
        raise ValueError(f"{video_id}: {len(feats)} feature rows for {info['n_frames']} frames")
    folder = store.path(video_id)
    tmp = folder / f".{name}.{os.getpid()}.npy"
    np.save(tmp, feats)
    os.replace(tmp, folder / f"{name}.npy")
    info.setdefault("shapes", {})[name] = list(feats.shape)
    tmp_meta = folder / f".meta.{os.getpid()}.json"
    tmp_meta.write_text(json.dumps(info, indent=1))
    os.replace(tmp_meta, folder / "meta.json")


def _video_labels_for(rec, n: int) -> np.ndarray:
    """Frame labels of ``rec`` fitted to ``n`` decoded frames (int8, -1 unlabelled)."""
    if rec.frame_labels is None:
        return rec.labels_for(n)
    return fit_labels(rec.frame_labels, n, 3, str(rec.video_path))


def bah_face_crops(root: str | os.PathLike, crop_size: int, detect_every: int = 1) -> dict:
    """``{split: [(record, crops (n,S,S,3), labels (n,))]}`` for every video of the BAH tree
    at ``root`` that has a video file (face crops cached, see ``video_face_crops``)."""
    index = load_bah(root)
    out = {}
    for split in ("train", "val", "test"):
        rows = []
        for rec in index.split(split):
            if rec.video_path is None:
                continue
            crops = video_face_crops(rec.video_path, crop_size, detect_every=detect_every)
            rows.append((rec, crops, _video_labels_for(rec, len(crops))))
        out[split] = rows
    if not out["train"]:
        raise RuntimeError(f"{root}: no training video with a video file")
    return out

