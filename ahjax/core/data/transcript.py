"""BAH's Whisper transcriptions: chunks with timestamps, rebuilt onto one monotonic timeline.

Whisper's timestamps restart in each 30 s window; :func:`monotonic_chunks` puts them back
on one timeline (the rules: docs/bah_format.md, "Transcript timeline").
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ahjax.core.data.errors import BahFormatError
from ahjax.core.data.yamlio import load_yaml

WINDOW_S = 30.0
WORDS_PER_SECOND = 2.5
MIN_LAST_CHUNK_S = 0.5


@dataclass(frozen=True)
class Chunk:
    """One Whisper chunk: ``start``/``end`` in seconds (``end`` None only when raw), text."""

    start: float
    end: float | None
    text: str
    language: str | None = None


def _estimate_end(start: float, text: str) -> float:
    words = len(text.split())
    return start + max(MIN_LAST_CHUNK_S, words / WORDS_PER_SECOND)


def _rebuild(chunks: Sequence[Chunk], window: float, tolerance: float, seek: bool) -> list[list]:
    """Absolute [start, end|None, chunk] triples under the fixed-window or seek rule."""
    out: list[list] = []
    offset = 0.0
    prev: Chunk | None = None
    prev_abs_end: float | None = None
    for c in chunks:
        if prev is not None:
            prev_end_raw = prev.end if prev.end is not None else prev.start
            if c.start < prev.start or c.start < prev_end_raw - tolerance:
                if seek:
                    offset = prev_abs_end if prev_abs_end is not None else offset + prev_end_raw
                else:
                    k = max(1, math.ceil(prev_end_raw / window - 1e-9))
                    offset += window * k
        start = offset + c.start
        end = None
        if c.end is not None:
            if c.end < c.start:
                # The chunk straddles a window boundary: its end is in the next window.
                offset += window
            end = offset + c.end
        out.append([start, end, c])
        prev = Chunk(c.start if c.end is None or c.end >= c.start else c.start - window,
                     c.end, c.text, c.language)
        prev_abs_end = end if end is not None else start
    return out


def monotonic_chunks(chunks: Iterable[Chunk], duration: float | None = None,
                     window: float = WINDOW_S, tolerance: float = 0.5) -> list[Chunk]:
    """Rebuild raw Whisper chunks onto one monotonic timeline (rules in the module doc).

    Takes chunks with raw per-window timestamps and, optionally, the media ``duration`` in
    seconds. Returns new chunks with absolute, non-decreasing starts and every ``end`` set
    (``end >= start``). Raises ValueError on a negative or non-finite timestamp.
    """
    chunks = list(chunks)
    for i, c in enumerate(chunks):
        for name, v in (("start", c.start), ("end", c.end)):
            if v is not None and (not math.isfinite(v) or v < 0):
                raise ValueError(f"chunk {i}: {name} timestamp {v!r} is not a time >= 0")
    if not chunks:
        return []
    rows = _rebuild(chunks, window, tolerance, seek=False)
    if duration is not None:
        last = rows[-1][1] if rows[-1][1] is not None else rows[-1][0]
        if last > duration + tolerance:
            rows = _rebuild(chunks, window, tolerance, seek=True)
    out = []
    for i, (start, end, c) in enumerate(rows):
        if end is None:
            if i + 1 < len(rows):
                end = rows[i + 1][0]
            elif duration is not None:
                end = duration
            else:
                end = _estimate_end(start, c.text)
        out.append(Chunk(float(start), float(max(end, start)), c.text, c.language))
    return out


def _as_time(value, path: Path, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BahFormatError(f"{where}: timestamp {value!r} is not a number", path)
    return float(value)


def read_transcription(path: str | os.PathLike, duration: float | None = None) -> tuple[str, list[Chunk]]:
    """Read one Whisper YAML file; returns ``(full text, monotonic chunks)``.

    ``duration`` (seconds), when known, fixes the last chunk's missing end and lets the
    timeline rule be checked (see the module doc). Raises :class:`BahFormatError` naming
    the file and the chunk when the structure or a timestamp is wrong.
    """
    path = Path(path)
    data = load_yaml(path)
    if data is None:
        return "", []
    if not isinstance(data, dict):
        raise BahFormatError(
            f"expected a mapping with 'text' and 'chunks', got a {type(data).__name__}", path)
    text = data.get("text") or ""
    if not isinstance(text, str):
        raise BahFormatError(f"'text' must be a string, got {type(text).__name__}", path)
    raw = data.get("chunks") or []
    if not isinstance(raw, list):
        raise BahFormatError(f"'chunks' must be a list, got {type(raw).__name__}", path)
    chunks = []
    for i, item in enumerate(raw):
        where = f"chunks[{i}]"
        if not isinstance(item, dict):
            raise BahFormatError(f"{where} must be a mapping, got {type(item).__name__}", path)
        ts = item.get("timestamp")
        if not isinstance(ts, (list, tuple)) or len(ts) != 2:
            raise BahFormatError(f"{where}: 'timestamp' must be a (start, end) pair, got {ts!r}", path)
        start = _as_time(ts[0], path, where)
        end = _as_time(ts[1], path, where)
        if start is None:
            raise BahFormatError(f"{where}: the start timestamp is missing (None)", path)
        if start < 0 or (end is not None and end < 0):
            raise BahFormatError(f"{where}: negative timestamp {ts!r}", path)
        lang = item.get("language")
        chunks.append(Chunk(start, end, str(item.get("text") or "").strip(),
                            None if lang is None else str(lang)))
    return text.strip(), monotonic_chunks(chunks, duration)
