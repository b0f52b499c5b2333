"""Per-video feature store: one folder per video, one ``.npy`` per array, read memory-mapped.

Layout under the store root::

    <root>/<key>/meta.json      # video id, split, fps, n_frames, labels info, columns
    <root>/<key>/<name>.npy     # (n_frames, d) float32 arrays, (n_frames,) int8 labels

``key`` is the video id made filesystem-safe (see :func:`video_key`). Arrays are opened
with ``mmap_mode="r"`` so a BAH-sized set (about 917k frames x 1.4k dims, ~5 GB in
float32) streams from disk; nothing is loaded until a window slices it. Each video is
written into a temporary folder and renamed into place, so a killed extraction never
leaves a half-written video that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

META = "meta.json"
# np.load parses each .npy header with ast.literal_eval, and CPython 3.11 before 3.11.8 can
# fail with "AST constructor recursion depth mismatch" when several threads parse at once
# (grain reads windows from a thread pool). Opening a memmap is cheap; serialise it.
_OPEN_LOCK = threading.Lock()


class StoreError(ValueError):
    """A feature-store folder is missing, inconsistent or holds non-finite features."""


def video_key(video_id: str) -> str:
    """A filesystem-safe, collision-free folder name for a video id."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", video_id.replace("/", "__"))[-120:]
    digest = hashlib.sha1(video_id.encode("utf-8")).hexdigest()[:8]
    return f"{stem}-{digest}"


class FeatureStore:
    """Read and write per-video arrays keyed by name (``face_expr``, ``labels``, ...)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, video_id: str) -> Path:
        return self.root / video_key(video_id)

    def has(self, video_id: str) -> bool:
        """True when the video was written completely."""
        return (self.path(video_id) / META).is_file()

    def write(self, video_id: str, arrays: Mapping[str, np.ndarray], meta: Mapping) -> Path:
        """Atomically write ``arrays`` and ``meta`` for one video; returns its folder.

        Every array must have the same first dimension (frames) and finite values.
        ``meta`` must be JSON-serialisable; ``video_id``, ``n_frames`` and the array
        shapes are added to it.
        """
        if not arrays:
            raise StoreError(f"{video_id}: nothing to write")
        lengths = {k: int(np.shape(v)[0]) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise StoreError(f"{video_id}: arrays disagree on the number of frames: {lengths}")
        for name, arr in arrays.items():
            arr = np.asarray(arr)
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise StoreError(f"{video_id}: array {name!r} holds NaN or inf values")
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(video_id)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            shapes = {}
            for name, arr in arrays.items():
                arr = np.asarray(arr)
                if arr.dtype == np.float64:
                    arr = arr.astype(np.float32)
                np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
                shapes[name] = list(arr.shape)
            full = dict(meta)
            full.update(video_id=video_id, n_frames=next(iter(lengths.values())), shapes=shapes)
            # What was checked at write (shape, finiteness), stamped by size and mtime: a file
            # that still matches its stamp need not be re-read to be trusted.
            full["checked"] = {name: _stamp(tmp / f"{name}.npy") for name in arrays}
            (tmp / META).write_text(json.dumps(full, indent=1, default=_json_default))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def meta(self, video_id: str) -> dict:
        """The video's ``meta.json`` as a dict."""
        path = self.path(video_id) / META
        if not path.is_file():
            raise StoreError(f"{video_id}: no features at {path.parent} (not extracted?)")
        return json.loads(path.read_text())

    def read(self, video_id: str, name: str, mmap: bool = True) -> np.ndarray:
        """One array of one video, memory-mapped unless ``mmap`` is False."""
        path = self.path(video_id) / f"{name}.npy"
        if not path.is_file():
            have = sorted(p.stem for p in self.path(video_id).glob("*.npy"))
            raise StoreError(f"{video_id}: no array {name!r} in {path.parent}; have {have}")
        with _OPEN_LOCK:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)

    def verify(self, video_id: str, names: Iterable[str] | None = None) -> None:
        """Raise :class:`StoreError` naming the video and array when an array (``names``,
        default all) is missing, has another shape than its meta says, or holds NaN or
        inf. Cheap for arrays untouched since they were written and checked (their size
        and mtime still match the stamp in the meta); others are read in full."""
        meta = self.meta(video_id)
        checked = meta.get("checked", {})
        for name in (meta.get("shapes", {}) if names is None else names):
            path = self.path(video_id) / f"{name}.npy"
            if not path.is_file():
                raise StoreError(f"{video_id}: array {name!r} is missing from {path.parent}")
            if name in checked and checked[name] == _stamp(path):
                continue
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as err:
                raise StoreError(f"{video_id}: array {name!r} ({path}) is unreadable: "
                                 f"{err}") from None
            want = meta.get("shapes", {}).get(name)
            if want is not None and list(arr.shape) != list(want):
                raise StoreError(f"{video_id}: array {name!r} has shape {list(arr.shape)}, "
                                 f"its meta says {want}")
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise StoreError(f"{video_id}: array {name!r} ({path}) holds NaN or inf values")

    def read_many(self, video_id: str, names: Iterable[str]) -> dict[str, np.ndarray]:
        return {n: self.read(video_id, n) for n in names}

    def video_ids(self, split: str | None = None) -> list[str]:
        """Ids of the completely written videos, sorted, optionally of one split."""
        out = []
        if not self.root.is_dir():
            return out
        for meta_path in sorted(self.root.glob(f"*/{META}")):
            meta = json.loads(meta_path.read_text())
            if split is None or meta.get("split") == split:
                out.append(meta["video_id"])
        return sorted(out)


def _stamp(path: Path) -> list:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
