"""The BAH dataset index: split lists, annotations, transcriptions and metadata, no decoding.

Reads the real release layout (docs/bah_format.md, "Layout"); ids are matched tolerantly
(:func:`canonical_id`), and every malformed input raises :class:`BahFormatError` naming the
file, the line and the problem. The details: docs/bah_format.md, "Reading the index".
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from ahjax.core.data.errors import BahFormatError
from ahjax.core.data.transcript import Chunk, read_transcription
from ahjax.core.data.yamlio import load_yaml, load_yaml_with_lines

SPLITS = ("train", "val", "test")
ANNOTATION_FILES = ("video_annotation_transcript.yaml", "video_annotation_transcript.yml",
                    "annotation.yml", "annotation.yaml")
_DESKTOP = re.compile(r"-DESKTOP-[A-Za-z0-9]+(?=\.[A-Za-z0-9]+$)")
_QUESTION = re.compile(r"(?:^|/)([^/_]+)_Question_(\d+)(?:_|\b)", re.IGNORECASE)
_FRAME = re.compile(r"^(.*?)/?frame[-_](\d+)\.[A-Za-z]+$")
_VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


class SplitEntry(NamedTuple):
    """One line of a split file: ``(video_id, label, transcript)``."""

    video_id: str
    label: int
    transcript: str


def canonical_id(video_id: str) -> str:
    """The matching key of a video id: the tolerant form described in the module doc.

    ``'Videos/82725/Visite 1/82725_Question_1_2024-10-02 15-46-17_Video-DESKTOP-NQ55E0P.mp4'``
    -> ``'82725/visite_1/82725_question_1_2024-10-02_15-46-17_video.mp4'``.
    """
    s = video_id.strip().replace("\\", "/").rstrip("/")
    s = re.sub(r"^(?:\./)+", "", s)
    # Frame and crop paths carry a prefix (cropped-aligned-faces/Videos/...): cut to Videos/.
    m = re.search(r"(?:^|/)Videos/", s)
    if m:
        s = s[m.end():]
    s = re.sub(r"\s+", "_", s)
    s = _DESKTOP.sub("", s)
    return s.casefold()


def parse_video_name(video_id: str) -> tuple[str, int]:
    """``(participant, question)`` of a video id; question 0 when the name has none.

    The participant is the folder after ``Videos/`` when present, else the file-name prefix
    before ``_Question_``, else the first folder.
    """
    s = video_id.strip().replace("\\", "/")
    m = _QUESTION.search(s)
    question = int(m.group(2)) if m else 0
    parts = [p for p in s.split("/") if p and p != "."]
    if "Videos" in parts and parts.index("Videos") + 1 < len(parts) - 1:
        return parts[parts.index("Videos") + 1], question
    if m:
        return m.group(1), question
    return (parts[0] if len(parts) > 1 else Path(s).stem), question


def labels_from_segments(segments: Iterable[tuple[int, int]], n_frames: int) -> np.ndarray:
    """int8 (n_frames,) labels: 1 inside the inclusive ``(start, end)`` segments, else 0.

    Raises ValueError when a segment is reversed, negative or ends past the last frame.
    """
    labels = np.zeros(int(n_frames), dtype=np.int8)
    for start, end in segments:
        if start < 0 or end < start:
            raise ValueError(f"segment ({start}, {end}) is not 0 <= start <= end")
        if end >= n_frames:
            raise ValueError(f"segment ({start}, {end}) ends past the last frame ({n_frames} frames)")
        labels[start:end + 1] = 1
    return labels


def segments_from_labels(labels: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive ``(start, end)`` runs of label 1."""
    pos = np.concatenate([[0], (np.asarray(labels) == 1).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(pos))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


class VideoInfo(NamedTuple):
    """What a container header says: fps, frame count and duration (None when absent)."""

    fps: float | None
    n_frames: int | None
    duration: float | None


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read fps, frame count and duration from a video's container header with PyAV.

    Opens the file and reads stream metadata only; no frame is decoded. Raises
    :class:`BahFormatError` naming the file when it cannot be opened or has no video stream.
    """
    import av  # imported here: the index itself never needs it

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BahFormatError("no video stream in the file", path)
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(Fraction(rate)) if rate else None
            n = int(stream.frames) or None
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000  # av.time_base is microseconds
    except BahFormatError:
        raise
    except (av.error.FFmpegError, OSError) as err:
        raise BahFormatError(f"cannot read the video header: {err}", path) from None
    return VideoInfo(fps, n, duration)


@dataclass(frozen=True, eq=False)
class VideoRecord:
    """Everything the index knows about one video (arrays are never decoded media).

    ``video_id`` as in the split file; ``frame_labels`` int8 (n,), -1 unlabelled, or None;
    ``segments`` inclusive A/H frame ranges; ``fps`` from the annotation, else lazily from the
    video header. The other fields: docs/bah_format.md, "The index".
    """

    video_id: str
    participant: str
    question: int
    split: str
    video_path: Path | None
    frame_labels: np.ndarray | None
    video_label: int
    segments: list = field(default_factory=list)
    transcript: str = ""
    chunks: list = field(default_factory=list)
    cues: list = field(default_factory=list)
    certainty: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    annotated_fps: float | None = None
    label_source: str | None = None
    transcription_path: Path | None = None

    @functools.cached_property
    def fps(self) -> float | None:
        """Frames per second: from the annotation, else the video header, else None."""
        if self.annotated_fps:
            return float(self.annotated_fps)
        if self.video_path is not None and self.video_path.is_file():
            return probe_video(self.video_path).fps
        return None

    @property
    def n_labelled(self) -> int:
        """Frames with a label (not -1)."""
        return 0 if self.frame_labels is None else int(np.sum(self.frame_labels != -1))

    @property
    def n_ah(self) -> int:
        """Frames labelled A/H."""
        return 0 if self.frame_labels is None else int(np.sum(self.frame_labels == 1))

    def labels_for(self, n_frames: int) -> np.ndarray:
        """Frame labels fitted to a decoded video of ``n_frames`` frames, int8 (n_frames,).

        Frame labels shorter than the video are padded with -1 (trailing frames nobody
        labelled); longer is an error. Without frame labels they are built from the
        segments; a negative video without segments is all 0; a positive one without
        segments is all -1 (unknown). Raises :class:`BahFormatError` naming the label file.
        """
        if self.frame_labels is not None:
            n = len(self.frame_labels)
            if n > n_frames:
                raise BahFormatError(
                    f"video {self.video_id!r}: {n} frame labels but the video has "
                    f"{n_frames} frames", self.label_source)
            out = np.full(n_frames, -1, dtype=np.int8)
            out[:n] = self.frame_labels
            return out
        if self.segments or self.video_label == 0:
            try:
                return labels_from_segments(self.segments, n_frames)
            except ValueError as err:
                raise BahFormatError(f"video {self.video_id!r}: {err}", self.label_source) from None
        return np.full(n_frames, -1, dtype=np.int8)


class BahIndex:
    """The loaded index: ``videos`` (list of :class:`VideoRecord`) plus lookups."""

    def __init__(self, root: Path, videos: list[VideoRecord], splits: tuple[str, ...] | None = None):
        self.root = Path(root)
        self.videos = list(videos)
        self.splits = tuple(splits) if splits is not None else tuple(dict.fromkeys(v.split for v in videos))
        self._by_id = {v.video_id: v for v in self.videos}
        self._by_key = {canonical_id(v.video_id): v for v in self.videos}
        self.warnings: list[str] = []   # what was odd but not fatal (an empty split file)

    def __len__(self) -> int:
        return len(self.videos)

    def split(self, name: str) -> list[VideoRecord]:
        """The videos of split ``name`` in split-file order."""
        return [v for v in self.videos if v.split == name]

    def by_id(self, video_id: str) -> VideoRecord:
        """The video with this id, matched exactly or tolerantly; KeyError when unknown."""
        if video_id in self._by_id:
            return self._by_id[video_id]
        try:
            return self._by_key[canonical_id(video_id)]
        except KeyError:
            raise KeyError(f"no video {video_id!r} in the BAH index at {self.root}") from None

    def participants(self, split: str | None = None) -> list[str]:
        """Sorted participant ids of one split (all splits when None)."""
        return sorted({v.participant for v in self.videos if split is None or v.split == split})

    def summary(self) -> dict:
        """``{"splits": {name: {videos, participants, frames, ah_frames, missing_videos}}}``;
        frames count labelled frames (label != -1), ah_frames those labelled 1 and
        missing_videos the split entries with no video file under the root."""
        names = self.splits
        return {"splits": {s: {"videos": len(self.split(s)),
                               "participants": len(self.participants(s)),
                               "frames": sum(v.n_labelled for v in self.split(s)),
                               "ah_frames": sum(v.n_ah for v in self.split(s)),
                               "missing_videos": sum(v.video_path is None for v in self.split(s))}
                           for s in names}}


# --------------------------------------------------------------------------- split files

def _check_inside(video_id: str, path: Path, line: int) -> None:
    s = video_id.replace("\\", "/")
    if s.startswith("/") or re.match(r"^[A-Za-z]:", s) or ".." in s.split("/"):
        raise BahFormatError(f"video path {video_id!r} escapes the dataset root", path, line)


def _read_split(path: Path) -> list[tuple[SplitEntry, int]]:
    """Entries of a ``video_id,label,transcript`` file with their 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BahFormatError("split file not found", path) from None
    except UnicodeDecodeError as err:
        raise BahFormatError(f"not UTF-8 text ({err.reason} at byte {err.start})", path) from None
    out, seen = [], {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        parts = raw.split(",", 2)
        if len(parts) < 3:
            raise BahFormatError(
                f"expected 'video_id,label,transcript' (two commas at least), got {raw[:80]!r}",
                path, lineno)
        video_id, label, transcript = parts[0].strip(), parts[1].strip(), parts[2].strip()
        if lineno == 1 and label.lower() in ("label", "class", "global_ah"):
            continue  # a header line
        if label not in ("0", "1"):
            raise BahFormatError(f"label must be 0 or 1, got {label!r}", path, lineno)
        if not video_id:
            raise BahFormatError("empty video id", path, lineno)
        _check_inside(video_id, path, lineno)
        if video_id in seen:
            raise BahFormatError(f"video {video_id!r} listed twice (first on line {seen[video_id]})",
                                 path, lineno)
        seen[video_id] = lineno
        out.append((SplitEntry(video_id, int(label), transcript), lineno))
    return out


def read_split_file(path: str | os.PathLike) -> list[SplitEntry]:
    """Parse one split file (``video_id,label,transcript`` split on the first two commas).

    Blank lines and a ``video_id,label,...`` header are skipped. Raises
    :class:`BahFormatError` (file, line, problem) on a short line, a label other than 0/1,
    a duplicate id or a path escaping the dataset root.
    """
    return [e for e, _ in _read_split(Path(path))]


def load_video_splits(directory: str | os.PathLike) -> dict[str, list[SplitEntry]]:
    """The v1 video-level splits: ``{split: [SplitEntry, ...]}`` for each existing
    ``{train,val,test}.txt`` in ``directory``.

    When ``class_id.yaml`` is there (``With A-H: 1``, ``No A-H: 0``) every label must be one
    of its ids. Raises :class:`BahFormatError` when no split file exists or one is malformed.
    """
    directory = Path(directory)
    found = {s: directory / f"{s}.txt" for s in SPLITS if (directory / f"{s}.txt").is_file()}
    if not found:
        raise BahFormatError("no train.txt, val.txt or test.txt here", directory)
    allowed = {0, 1}
    class_file = directory / "class_id.yaml"
    if class_file.is_file():
        classes = load_yaml(class_file)
        if not isinstance(classes, dict) or not all(isinstance(v, int) for v in classes.values()):
            raise BahFormatError("expected a mapping of class name -> integer id", class_file)
        allowed = set(classes.values())
    out = {}
    for split, path in found.items():
        rows = _read_split(path)
        for entry, line in rows:
            if entry.label not in allowed:
                raise BahFormatError(f"label {entry.label} is not an id of {class_file.name}", path, line)
        out[split] = [e for e, _ in rows]
    return out


def _read_split_frames(path: Path) -> dict[str, tuple[str, int, dict[int, int]]]:
    """``{canonical video id: (video part, first line, {frame index: label})}``."""
    out: dict[str, tuple[str, int, dict[int, int]]] = {}
    with open(path, encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, 1):
            raw = raw.strip()
            if not raw:
                continue
            frame_id, sep, label = raw.rpartition(",")
            if not sep:
                raise BahFormatError(f"expected 'frame_id,label', got {raw[:80]!r}", path, lineno)
            label = label.strip()
            if lineno == 1 and label.lower() in ("label", "class"):
                continue
            m = _FRAME.match(frame_id.strip())
            if not m:
                raise BahFormatError(f"frame id {frame_id[:80]!r} does not end in frame-<i>.jpg",
                                     path, lineno)
            if label not in ("0", "1", "-1"):
                raise BahFormatError(f"frame label must be 0 or 1, got {label!r}", path, lineno)
            key = canonical_id(m.group(1))
            entry = out.setdefault(key, (m.group(1), lineno, {}))
            idx = int(m.group(2))
            if entry[2].get(idx, int(label)) != int(label):
                raise BahFormatError(f"frame {idx} of {m.group(1)!r} labelled twice, differently",
                                     path, lineno)
            entry[2][idx] = int(label)
    return out


def _dense(labels: dict[int, int]) -> np.ndarray:
    n = max(labels) + 1 if labels else 0
    out = np.full(n, -1, dtype=np.int8)
    if labels:
        out[np.fromiter(labels.keys(), np.int64)] = np.fromiter(labels.values(), np.int8)
    return out


# --------------------------------------------------------------------------- annotations

def _find_annotation(root: Path) -> Path | None:
    for name in ANNOTATION_FILES:
        if (root / name).is_file():
            return root / name
    return None


def _keyed(mapping: dict, path: Path, what: str, lines: dict | None = None) -> dict[str, tuple]:
    """``{canonical id: (original key, value, line)}``, refusing two keys that collide."""
    lines = lines or {}
    out: dict[str, tuple] = {}
    for key, value in mapping.items():
        key = str(key)
        ck = canonical_id(key)
        if ck in out:
            raise BahFormatError(
                f"{what} keys {out[ck][0]!r} (line {out[ck][2]}) and {key!r} name the same video",
                path, lines.get(key))
        out[ck] = (key, value, lines.get(key))
    return out


class _Ann:
    """One parsed annotation entry."""

    def __init__(self, key: str, entry: dict, path: Path, line: int | None):
        def fail(msg: str):
            raise BahFormatError(f"video {key!r}: {msg}", path, line)

        if not isinstance(entry, dict):
            fail(f"expected a mapping of annotation fields, got {type(entry).__name__}")
        g = entry.get("global_ah")
        if g is not None and (isinstance(g, bool) or g not in (0, 1)):
            fail(f"global_ah must be 0 or 1, got {g!r}")
        self.global_ah = None if g is None else int(g)
        self.labels = None
        frames = entry.get("frame_annotation")
        if frames is not None:
            if not isinstance(frames, (list, tuple)):
                fail("frame_annotation must be a list of [frame path, label] pairs")
            labels: dict[int, int] = {}
            for i, item in enumerate(frames):
                if not isinstance(item, (list, tuple)) or len(item) != 2:
                    fail(f"frame_annotation[{i}] is not a [frame path, label] pair: {item!r}")
                m = _FRAME.match(str(item[0]).strip())
                if not m:
                    fail(f"frame_annotation[{i}]: {str(item[0])[:80]!r} does not end in frame-<i>.jpg")
                lab = item[1]
                if isinstance(lab, bool) or lab not in (0, 1, -1):
                    fail(f"frame_annotation[{i}]: label must be 0 or 1, got {lab!r}")
                idx = int(m.group(2))
                if labels.get(idx, lab) != lab:
                    fail(f"frame {idx} labelled twice, differently")
                labels[idx] = int(lab)
            self.labels = _dense(labels)
        self.has_segments = entry.get("fr_detailed_ah") is not None
        self.segments = []
        for i, seg in enumerate(entry.get("fr_detailed_ah") or []):
            if (not isinstance(seg, (list, tuple)) or len(seg) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in seg)
                    or not 0 <= seg[0] <= seg[1]):
                fail(f"fr_detailed_ah[{i}] must be an inclusive [start, end] frame pair, got {seg!r}")
            self.segments.append((int(seg[0]), int(seg[1])))
        cert = entry.get("certainty_ah") or []
        if not isinstance(cert, (list, tuple)) or not all(isinstance(c, (int, float)) for c in cert):
            fail(f"certainty_ah must be a list of numbers, got {cert!r}")
        self.certainty = list(cert)
        cues = entry.get("all_cues") or []
        if isinstance(cues, dict):
            cues = [cues]
        if not isinstance(cues, (list, tuple)) or not all(isinstance(c, dict) for c in cues):
            fail("all_cues must be a list of mappings (audio, body, facial, inconsistencies, language)")
        self.cues = [dict(c) for c in cues]
        t = entry.get("transcript")
        self.transcript = t.strip() if isinstance(t, str) else ""
        fps = entry.get("fps")
        self.fps = float(fps) if isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0 else None


# --------------------------------------------------------------------------- file lookups

def _walk_files(base: Path, suffixes: set[str], by_folder: bool = False) -> dict[str, list[Path]]:
    """``{canonical relative path: [files]}`` under ``base``, keyed by each file's folder
    when ``by_folder`` (symlinked folders are not followed)."""
    out: dict[str, list[Path]] = {}
    if not base.is_dir():
        return out
    for dirpath, _, files in os.walk(base):
        for name in sorted(files):
            p = Path(dirpath) / name
            if p.suffix.lower() in suffixes:
                rel = (p.parent if by_folder else p).relative_to(base).as_posix()
                out.setdefault(canonical_id(rel), []).append(p)
    return out


def _inside(root_real: Path, p: Path) -> bool:
    return Path(os.path.realpath(p)).is_relative_to(root_real)


def _video_path(root: Path, root_real: Path, video_id: str, walked: dict, split_file: Path,
                line: int) -> Path | None:
    direct = root / video_id
    candidates = [direct] if (direct.exists() or direct.is_symlink()) else []
    if not candidates:
        candidates = walked.get(canonical_id(video_id), [])
    for p in candidates:
        if not _inside(root_real, p):
            raise BahFormatError(
                f"video path {video_id!r} escapes the dataset root (resolves to {os.path.realpath(p)})",
                split_file, line)
    if len(candidates) > 1:
        raise BahFormatError(f"video {video_id!r} matches several files: "
                             f"{[str(c) for c in candidates]}", split_file, line)
    return candidates[0] if candidates else None


def _transcription_file(transcripts: dict[str, list[Path]], video_id: str) -> Path | None:
    files = transcripts.get(canonical_id(video_id), [])
    if len(files) > 1:
        # Several YAML files in one folder: the one named like the video wins.
        stem = canonical_id(Path(video_id).stem)
        files = [f for f in files if canonical_id(f.stem) == stem] or sorted(files)[:1]
    return files[0] if files else None


def load_bah(root: str | os.PathLike, splits: Iterable[str] = SPLITS) -> BahIndex:
    """Index a BAH tree at ``root`` for the given splits; no video is decoded.

    Returns a :class:`BahIndex`. Raises :class:`BahFormatError` (file, line, problem) for a
    missing split file, a malformed line or YAML file, a video listed in two splits, frame
    labels whose length disagrees between ``frame_annotation`` and ``split-frames``, a
    segment past the last labelled frame, or a path that escapes ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise BahFormatError("dataset root is not a directory", root)
    root_real = Path(os.path.realpath(root))
    splits = tuple(splits)
    split_rows = {s: _read_split(root / "split" / f"{s}.txt") for s in splits}

    first_seen: dict[str, tuple[str, int]] = {}
    for s, rows in split_rows.items():
        for entry, line in rows:
            ck = canonical_id(entry.video_id)
            if ck in first_seen:
                other, other_line = first_seen[ck]
                raise BahFormatError(f"video {entry.video_id!r} is also in split/{other}.txt "
                                     f"line {other_line}", root / "split" / f"{s}.txt", line)
            first_seen[ck] = (s, line)

    ann_path = _find_annotation(root)
    annotations: dict[str, tuple] = {}
    if ann_path is not None:
        data, lines = load_yaml_with_lines(ann_path)
        if isinstance(data, list):  # a list of dicts carrying their own id
            data = {str(d.get("video_id") or d.get("video")): d for d in data if isinstance(d, dict)}
        if data is not None and not isinstance(data, dict):
            raise BahFormatError(f"expected a mapping video_id -> annotation, got {type(data).__name__}",
                                 ann_path)
        annotations = _keyed(data or {}, ann_path, "annotation", lines)

    split_frames: dict[str, tuple[Path, str, int, dict]] = {}
    for s in splits:
        p = root / "split-frames" / f"{s}.txt"
        if p.is_file():
            for key, (vid, line, labels) in _read_split_frames(p).items():
                split_frames[key] = (p, vid, line, labels)

    meta_path = root / "meta_data.yml"
    metadata: dict[str, dict] = {}
    if meta_path.is_file():
        meta = load_yaml(meta_path) or {}
        if not isinstance(meta, dict):
            raise BahFormatError("expected a mapping participant id -> fields", meta_path)
        metadata = {str(k): dict(v) if isinstance(v, dict) else {} for k, v in meta.items()}

    videos_walked = _walk_files(root / "Videos", _VIDEO_EXT)
    # Transcription folders are named after the video (..._Video.mp4/): key by folder.
    transcripts_by_video = _walk_files(root / "transcription", {".yml", ".yaml"}, by_folder=True)

    records = []
    for s, rows in split_rows.items():
        split_file = root / "split" / f"{s}.txt"
        for entry, line in rows:
            ck = canonical_id(entry.video_id)
            ann = None
            if ck in annotations:
                key, value, ann_line = annotations[ck]
                ann = _Ann(key, value, ann_path, ann_line)
            labels, source = None, None
            if ann is not None and ann.labels is not None:
                labels, source = ann.labels, str(ann_path)
            if ck in split_frames:
                sf_path, sf_vid, sf_line, sf_labels = split_frames[ck]
                sf = _dense(sf_labels)
                if labels is not None and len(sf) != len(labels):
                    raise BahFormatError(
                        f"video {sf_vid!r}: {len(sf)} frame labels here but {len(labels)} in "
                        f"{ann_path.name}", sf_path, sf_line)
                if labels is None:
                    labels, source = sf, str(sf_path)
            segments = ann.segments if ann is not None else []
            if labels is not None:
                for a, b in segments:
                    if b >= len(labels):
                        raise BahFormatError(
                            f"video {annotations[ck][0]!r}: segment ({a}, {b}) ends past the last "
                            f"labelled frame ({len(labels)} frame labels)", ann_path, annotations[ck][2])
                if not segments:
                    segments = segments_from_labels(labels)
            video_path = _video_path(root, root_real, entry.video_id, videos_walked, split_file, line)
            tpath = _transcription_file(transcripts_by_video, entry.video_id)
            chunks: list[Chunk] = []
            whisper_text = ""
            if tpath is not None:
                if not _inside(root_real, tpath):
                    raise BahFormatError("transcription file escapes the dataset root", tpath)
                duration = None
                if ann is not None and ann.fps and labels is not None:
                    duration = len(labels) / ann.fps
                whisper_text, chunks = read_transcription(tpath, duration)
            participant, question = parse_video_name(entry.video_id)
            transcript = entry.transcript or (ann.transcript if ann else "") or whisper_text
            records.append(VideoRecord(
                video_id=entry.video_id, participant=participant, question=question, split=s,
                video_path=video_path, frame_labels=labels, video_label=entry.label,
                segments=list(segments), transcript=transcript, chunks=chunks,
                cues=ann.cues if ann else [], certainty=ann.certainty if ann else [],
                metadata=metadata.get(participant, {}), annotated_fps=ann.fps if ann else None,
                label_source=source if source else (str(ann_path) if ann else None),
                transcription_path=tpath))
    index = BahIndex(root, records, splits)
    index.warnings += [f"{root / 'split' / f'{s}.txt'}: lists no video (an empty split)"
                       for s, rows in split_rows.items() if not rows]
    return index
