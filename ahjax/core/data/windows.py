"""Fixed-length windows over the videos of a feature store, batched with grain.

A *spec* maps each modality to the store arrays concatenated into it, e.g.
``{"video": ("face_expr", "face_blend"), "text": ("text_emb",)}``. Each video is cut into
windows of ``W`` frames every ``H`` frames, the last one zero-padded (``labels`` -1,
``mask`` 0, ``valid`` 0 there). Arrays stay memory-mapped; order is a pure function of
``(seed, epoch)`` and :class:`BatchIterator` resumes from its state. More:
docs/training.md, "Windows".
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from typing import Iterator, Mapping, Sequence

import grain
import numpy as np

from ahjax.core.data.store import FeatureStore, StoreError

Spec = Mapping[str, Sequence[str]]
STATS_DIR = "_stats"


@dataclasses.dataclass(frozen=True)
class WindowConfig:
    """How windows are cut, ordered and batched.

    ``neg_window_keep`` undersamples *windows*: each epoch, a window with no positive frame
    is kept with this probability (positive windows always are); 1.0 keeps everything.
    Frames are never dropped inside a kept window, so temporal context stays intact.
    """
    window: int = 696
    hop: int = 48
    batch_size: int = 4
    shuffle: bool = True
    seed: int = 0
    neg_window_keep: float = 1.0
    standardize: bool = True
    stats_split: str = "train"
    num_threads: int = 2       # grain reader threads; rows come from memmaps (I/O bound)
    prefetch: int = 4          # batches read ahead


def window_starts(n_frames: int, window: int, hop: int) -> list[int]:
    """Start frames of the windows covering ``n_frames``: 0, hop, ... until one reaches the end."""
    if window < 1 or hop < 1:
        raise ValueError(f"window ({window}) and hop ({hop}) must be positive")
    starts = [0]
    while starts[-1] + window < n_frames:
        starts.append(starts[-1] + hop)
    return starts


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: ``seed`` with ``epoch`` folded in."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------
# Train-set standardisation statistics.

def compute_stats(store: FeatureStore, names: Sequence[str], video_ids: Sequence[str],
                  chunk: int = 8192) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-column mean and std of each array over ``video_ids``, streamed from the memmaps.

    Chunks of ``chunk`` rows are reduced in float64 and merged with Chan's parallel
    update, so memory stays at one chunk whatever the store size. Columns with (near) zero
    spread get std 1, so they are centred but not blown up. Returns name -> (mean, std),
    both float32 of shape (d,).
    """
    out = {}
    for name in names:
        count, mean, m2 = 0, None, None
        for vid in video_ids:
            arr = store.read(vid, name)
            arr = arr.reshape(arr.shape[0], -1)
            for lo in range(0, arr.shape[0], chunk):
                block = np.asarray(arr[lo:lo + chunk], dtype=np.float64)
                n_b = block.shape[0]
                mean_b = block.mean(axis=0)
                m2_b = ((block - mean_b) ** 2).sum(axis=0)
                if mean is None:
                    count, mean, m2 = n_b, mean_b, m2_b
                    continue
                delta = mean_b - mean
                total = count + n_b
                mean = mean + delta * (n_b / total)
                m2 = m2 + m2_b + delta ** 2 * (count * n_b / total)
                count = total
        if mean is None:
            raise StoreError(f"no frames to compute statistics of {name!r} from")
        std = np.sqrt(m2 / count)
        std = np.where(std < 1e-6, 1.0, std)
        out[name] = (mean.astype(np.float32), std.astype(np.float32))
    return out


def load_or_compute_stats(store: FeatureStore, names: Sequence[str], split: str = "train"
                          ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Statistics of ``names`` over ``split``, cached in ``<store>/_stats/`` (one file per array).

    The cache file name carries a hash of the split's video ids, so adding videos to the
    split recomputes rather than reusing stale numbers. A store folder without
    ``meta.json`` is not a video, so the cache never shows up as one.
    """
    ids = store.video_ids(split)
    if not ids:
        raise StoreError(f"{store.root}: no videos in split {split!r} to compute statistics on")
    digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:10]
    folder = store.root / STATS_DIR
    out, missing = {}, []
    for name in names:
        path = folder / f"{split}-{digest}-{name}.npz"
        if path.is_file():
            with np.load(path) as f:
                out[name] = (f["mean"], f["std"])
        else:
            missing.append(name)
    if missing:
        fresh = compute_stats(store, missing, ids)
        folder.mkdir(parents=True, exist_ok=True)
        for name, (mean, std) in fresh.items():
            # Write-then-rename: a killed run never leaves a truncated stats file behind.
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, mean=mean, std=std)
            os.replace(tmp, folder / f"{split}-{digest}-{name}.npz")
        out.update(fresh)
    return out


# ----------------------------------------------------------------------------------------
# Windows.

class Windows:
    """Random-access windows over the videos of one split; element ``i`` is a dict of numpy.

    ``index`` is an (n_windows, 2) int array of ``(video_index, start)``; ``has_positive``
    says which windows hold at least one frame labelled 1 (for undersampling).
    """

    def __init__(self, store: FeatureStore, spec: Spec, split: str | None, *, window: int,
                 hop: int, video_ids: Sequence[str] | None = None,
                 stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None):
        self.store = store
        self.spec = {m: tuple(names) for m, names in spec.items()}
        if not self.spec or any(not names for names in self.spec.values()):
            raise ValueError(f"every modality needs at least one array: {dict(spec)}")
        self.window, self.hop = int(window), int(hop)
        self.video_ids = list(store.video_ids(split) if video_ids is None else video_ids)
        if not self.video_ids:
            raise StoreError(f"{store.root}: no videos in split {split!r}")
        self.stats = dict(stats or {})
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._label_cache: dict[int, np.ndarray] = {}
        self.n_frames, self.dims = [], None
        rows, has_pos = [], []
        for vi, vid in enumerate(self.video_ids):
            meta = store.meta(vid)
            n = int(meta["n_frames"])
            # Before any training: a corrupt array is named now, not as a NaN loss later.
            store.verify(vid, [a for names in self.spec.values() for a in names]
                         + [k for k in ("labels",) if k in meta.get("shapes", {})])
            self.n_frames.append(n)
            dims = {m: sum(self._width(meta, vid, a) for a in names)
                    for m, names in self.spec.items()}
            if self.dims is None:
                self.dims = dims
            elif dims != self.dims:
                raise StoreError(f"{vid}: feature widths {dims} differ from the first video's "
                                 f"{self.dims}")
            labels = self.labels(vi)
            for s in window_starts(n, self.window, self.hop):
                rows.append((vi, s))
                has_pos.append(bool(np.any(labels[s:s + self.window] == 1)))
        self.index = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        self.has_positive = np.asarray(has_pos, dtype=bool)

    @staticmethod
    def _width(meta: dict, vid: str, name: str) -> int:
        shape = meta.get("shapes", {}).get(name)
        if shape is None:
            raise StoreError(f"{vid}: no array {name!r} in the store (have "
                             f"{sorted(meta.get('shapes', {}))})")
        return int(np.prod(shape[1:])) if len(shape) > 1 else 1

    def _arrays(self, vi: int) -> dict[str, np.ndarray]:
        # Memmaps are cheap handles (no data read); keep them to avoid reopening per window.
        if vi not in self._cache:
            vid = self.video_ids[vi]
            names = {a for names in self.spec.values() for a in names}
            self._cache[vi] = {a: self.store.read(vid, a) for a in names}
        return self._cache[vi]

    def labels(self, vi: int) -> np.ndarray:
        """All frame labels of video ``vi`` as int32 (n_frames,); -1 everywhere when it has none."""
        if vi not in self._label_cache:  # small (4 bytes a frame): worth keeping in memory
            vid = self.video_ids[vi]
            if (self.store.path(vid) / "labels.npy").is_file():
                labels = np.asarray(self.store.read(vid, "labels"), dtype=np.int32).reshape(-1)
            else:
                labels = np.full(self.n_frames[vi], -1, np.int32)  # e.g. an unlabelled video
            self._label_cache[vi] = labels
        return self._label_cache[vi]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        vi, start = (int(x) for x in self.index[i])
        return self.read(vi, start)

    def read(self, vi: int, start: int) -> dict[str, np.ndarray]:
        """The window of video ``vi`` starting at frame ``start``, zero-padded to ``window``."""
        n, w = self.n_frames[vi], self.window
        stop = min(start + w, n)
        real = stop - start
        arrays = self._arrays(vi)
        out = {}
        for m, names in self.spec.items():
            parts = []
            for a in names:
                x = np.asarray(arrays[a][start:stop], dtype=np.float32).reshape(real, -1)
                if a in self.stats:
                    mean, std = self.stats[a]
                    x = (x - mean) / std
                parts.append(x)
            x = np.zeros((w, self.dims[m]), np.float32)
            x[:real] = np.concatenate(parts, axis=1)
            out[m] = x
        labels = np.full(w, -1, np.int32)
        labels[:real] = self.labels(vi)[start:stop]
        out["labels"] = labels
        out["mask"] = (labels >= 0).astype(np.float32)
        out["valid"] = (np.arange(w) < real).astype(np.float32)
        out["video_index"] = np.int32(vi)
        out["start"] = np.int32(start)
        return out

    def empty(self) -> dict[str, np.ndarray]:
        """An all-padding element (mask 0, video_index -1) used to fill a short last batch."""
        w = self.window
        out = {m: np.zeros((w, d), np.float32) for m, d in self.dims.items()}
        out.update(labels=np.full(w, -1, np.int32), mask=np.zeros(w, np.float32),
                   valid=np.zeros(w, np.float32), video_index=np.int32(-1), start=np.int32(0))
        return out


def make_windows(store: FeatureStore, spec: Spec, split: str, cfg: WindowConfig, *,
                 window: int | None = None, hop: int | None = None,
                 video_ids: Sequence[str] | None = None) -> Windows:
    """:class:`Windows` of ``split`` with ``cfg``'s sizes and, when asked, train-set statistics."""
    stats = None
    if cfg.standardize:
        names = sorted({a for names in spec.values() for a in names})
        stats = load_or_compute_stats(store, names, cfg.stats_split)
    return Windows(store, spec, split, window=window or cfg.window, hop=hop or cfg.hop,
                   video_ids=video_ids, stats=stats)


# ----------------------------------------------------------------------------------------
# Batches, epochs and resumable iteration.

class WindowLoader:
    """Batches of :class:`Windows` per epoch, as a grain ``MapDataset``.

    The last batch of an epoch is filled with all-padding elements so every batch has
    ``batch_size`` windows: shapes stay static for ``jit`` and divisible over devices.
    """

    def __init__(self, windows: Windows, cfg: WindowConfig, shard: tuple[int, int] = (0, 1)):
        if not 0.0 < cfg.neg_window_keep <= 1.0:
            raise ValueError(f"neg_window_keep must be in (0, 1], got {cfg.neg_window_keep}")
        index, count = shard
        if count < 1 or not 0 <= index < count or cfg.batch_size % count:
            raise ValueError(f"shard {shard}: the batch size {cfg.batch_size} must split "
                             f"evenly over {count} processes, index in 0..{count - 1}")
        self.windows, self.cfg, self.shard = windows, cfg, (index, count)

    def selection(self, epoch: int) -> np.ndarray:
        """Indices of the windows used in ``epoch`` (all, or undersampled negatives)."""
        idx = np.arange(len(self.windows))
        if self.cfg.neg_window_keep < 1.0:
            rng = np.random.default_rng([self.cfg.seed, epoch, 1])
            keep = self.windows.has_positive | (rng.random(len(idx)) < self.cfg.neg_window_keep)
            idx = idx[keep]
        return idx

    def dataset(self, epoch: int) -> grain.MapDataset:
        """The epoch's batches; deterministic in ``(cfg.seed, epoch)``.

        With ``shard=(i, n)`` (one process of ``n``), each batch holds only rows
        ``i * b/n .. (i + 1) * b/n`` of the global batch and reads only those windows;
        the processes' batches, concatenated in order, are the one-process batch.
        """
        ds = grain.MapDataset.source(self.selection(epoch).tolist())
        if self.cfg.shuffle:
            ds = ds.shuffle(seed=epoch_seed(self.cfg.seed, epoch))
        index, count = self.shard
        if count == 1:
            ds = ds.map(self.windows.__getitem__)
            return ds.batch(self.cfg.batch_size, batch_fn=self._stack)
        local = self.cfg.batch_size // count
        ds = ds.batch(self.cfg.batch_size, batch_fn=list)       # window indices per batch
        return ds.map(lambda idx: self._stack(
            [self.windows[i] for i in idx[index * local:(index + 1) * local]], local))

    def _stack(self, items: Sequence[dict], size: int | None = None) -> dict[str, np.ndarray]:
        size = self.cfg.batch_size if size is None else size
        items = list(items) + [self.windows.empty()] * (size - len(items))
        return {k: np.stack([it[k] for it in items]) for k in items[0]}

    def num_batches(self, epoch: int) -> int:
        """Batches in ``epoch`` (it varies with undersampling)."""
        return -(-len(self.selection(epoch)) // self.cfg.batch_size)

    def iterator(self, state: Mapping[str, int] | None = None) -> "BatchIterator":
        """An iterator over the rest of one epoch, from a saved ``{"epoch", "position"}``."""
        state = dict(state or {"epoch": 0, "position": 0})
        return BatchIterator(self, int(state["epoch"]), int(state["position"]))


class BatchIterator:
    """The batches of one epoch from ``position`` on; :meth:`get_state` is JSON-ready.

    The state names the next batch to be yielded, so saving it after consuming ``k`` batches
    and rebuilding the iterator yields batches ``k, k+1, ...`` exactly.
    """

    def __init__(self, loader: WindowLoader, epoch: int, position: int = 0):
        self.epoch, self.position = epoch, position
        ds = loader.dataset(epoch)
        self.length = len(ds)
        if not 0 <= position <= self.length:
            raise ValueError(f"position {position} outside epoch {epoch} of {self.length} batches")
        rest = ds.slice(slice(position, None))
        options = grain.ReadOptions(num_threads=loader.cfg.num_threads,
                                    prefetch_buffer_size=loader.cfg.prefetch)
        self._it = iter(rest.to_iter_dataset(options))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        self.position += 1
        return batch

    def get_state(self) -> dict[str, int]:
        """``{"epoch", "position"}``: where a rebuilt iterator would continue."""
        return {"epoch": self.epoch, "position": self.position}

