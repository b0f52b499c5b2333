"""Reader for the reference pipeline's own feature folders (``features/compacted_48``).

Researchers who already ran the BAH reference extraction have, per video::

    features/compacted_48/<video_id>/video.npy                  (n, H, W, 3) uint8 face crops
                                     vggish.npy                 (n, 128) float
                                     bert.npy                   (n, 768) float
                                     EXPR_continuous_label.npy  (n,) or (n, 1) A/H labels

``<video_id>`` may be one folder name or a nested path (``Videos/<pid>/Visite_1/x.mp4``);
every folder holding at least one of these files is a video. Arrays are opened
memory-mapped so the face crops (about 200 KB a frame) are never read whole. Lengths are
checked against each other; a mismatch raises :class:`BahFormatError` naming the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ahjax.core.data.bah import canonical_id
from ahjax.core.data.errors import BahFormatError

LABEL_FILE = "EXPR_continuous_label.npy"
# name -> (file, expected trailing shape: None = any, -1 = any size on that axis)
ARRAYS = {
    "video": ("video.npy", (-1, -1, 3)),
    "vggish": ("vggish.npy", (128,)),
    "bert": ("bert.npy", (768,)),
}
_KNOWN = {f for f, _ in ARRAYS.values()} | {LABEL_FILE}


@dataclass(frozen=True, eq=False)
class CompactedVideo:
    """One video's arrays: memory-mapped features (absent ones None) and int8 labels."""

    video_id: str
    path: Path
    n_frames: int
    labels: np.ndarray | None
    video: np.ndarray | None = None
    vggish: np.ndarray | None = None
    bert: np.ndarray | None = None


class CompactedFeatures:
    """The ``compacted_48`` folder of one feature run.

    ``root`` is the ``compacted_48`` folder itself, or a folder holding
    ``features/compacted_48`` or ``compacted_48``.
    """

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        for cand in (root, root / "compacted_48", root / "features" / "compacted_48"):
            if cand.is_dir() and cand.name == "compacted_48":
                root = cand
                break
        if not root.is_dir():
            raise BahFormatError("feature folder not found", root)
        self.root = root
        self._dirs: dict[str, Path] = {}
        for dirpath, _, files in os.walk(root):
            if _KNOWN & set(files):
                vid = Path(dirpath).relative_to(root).as_posix()
                self._dirs[vid] = Path(dirpath)
        self._by_key = {canonical_id(v): v for v in self._dirs}

    def video_ids(self) -> list[str]:
        """Sorted ids (folder paths relative to ``compacted_48``) of every video found."""
        return sorted(self._dirs)

    def __len__(self) -> int:
        return len(self._dirs)

    def _folder(self, video_id: str) -> tuple[str, Path]:
        vid = video_id if video_id in self._dirs else self._by_key.get(canonical_id(video_id))
        if vid is None:
            raise KeyError(f"no compacted features for {video_id!r} under {self.root}")
        return vid, self._dirs[vid]

    def load(self, video_id: str, names: tuple[str, ...] = ("video", "vggish", "bert")) -> CompactedVideo:
        """The arrays ``names`` of one video (ids matched tolerantly, see ``canonical_id``).

        Returns a :class:`CompactedVideo` with memory-mapped features and int8 labels
        (-1 unlabelled, None when the label file is absent). Raises KeyError for an unknown
        video and :class:`BahFormatError` for a missing file, a wrong shape or dtype, labels
        other than -1/0/1, or arrays whose frame counts differ.
        """
        unknown = set(names) - set(ARRAYS)
        if unknown:
            raise ValueError(f"unknown arrays {sorted(unknown)}; known: {sorted(ARRAYS)}")
        vid, folder = self._folder(video_id)
        arrays: dict[str, np.ndarray] = {}
        for name in names:
            fname, tail = ARRAYS[name]
            path = folder / fname
            if not path.is_file():
                raise BahFormatError(f"no {fname} for video {vid!r}", folder)
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as err:
                raise BahFormatError(f"not a readable .npy array: {err}", path) from None
            if arr.ndim != 1 + len(tail) or any(t != -1 and s != t for s, t in zip(arr.shape[1:], tail)):
                want = "(n, " + ", ".join("*" if t == -1 else str(t) for t in tail) + ")"
                raise BahFormatError(f"shape {arr.shape}, expected {want}", path)
            if name == "video" and arr.dtype != np.uint8:
                raise BahFormatError(f"dtype {arr.dtype}, expected uint8 face crops", path)
            arrays[name] = arr
        labels = None
        label_path = folder / LABEL_FILE
        if label_path.is_file():
            raw = np.load(label_path, allow_pickle=False)
            if raw.ndim == 2 and raw.shape[1] == 1:
                raw = raw[:, 0]
            if raw.ndim != 1:
                raise BahFormatError(f"shape {raw.shape}, expected (n,) labels", label_path)
            # The reference stores labels as floats; anything but -1/0/1 is not a label.
            bad = ~np.isin(raw, (-1, 0, 1))
            if bad.any():
                raise BahFormatError(
                    f"labels must be -1, 0 or 1; frame {int(np.argmax(bad))} holds "
                    f"{raw[np.argmax(bad)]!r}", label_path)
            labels = raw.astype(np.int8)
        lengths = {name: a.shape[0] for name, a in arrays.items()}
        if labels is not None:
            lengths["labels"] = labels.shape[0]
        if len(set(lengths.values())) > 1:
            raise BahFormatError(f"arrays disagree on the number of frames: {lengths}", folder)
        n = next(iter(lengths.values())) if lengths else 0
        return CompactedVideo(video_id=vid, path=folder, n_frames=int(n), labels=labels, **arrays)
