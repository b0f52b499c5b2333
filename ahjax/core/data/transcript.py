"""BAH's Whisper transcriptions: chunks with timestamps, rebuilt onto one monotonic timeline.

A transcription file is YAML ``{text: str, chunks: [{language, text, timestamp: (start,
end)}]}`` (``timestamp`` tagged ``!!python/tuple``). Whisper decodes audio in 30 s windows
and the BAH files keep each window's timestamps relative to that window, so they fall back
to about 0 every 30 s, and the last chunk's end can be ``None``.

Timeline rule (:func:`monotonic_chunks`):

1. A chunk starts a new window when its raw start goes back: before the previous raw
   start, or more than ``tolerance`` (0.5 s) before the previous raw end. Within one window
   Whisper's timestamp tokens never go back, so a small overlap is jitter, not a reset.
2. On a reset the offset moves to the next window boundary: ``offset + window * k`` with
   ``k = max(1, ceil(prev_raw_end / window))``. This is how fixed 30 s windows behave (the
   HF pipeline): the previous window ended at ``offset + 30`` whatever its last word.
   It cannot see a whole window of silence (no chunk there); nothing can.
3. Some decoders instead start the next window where the last complete segment ended
   (OpenAI's seek). When ``duration`` is known and the fixed-window timeline runs past it
   (by more than ``tolerance``), the timeline is rebuilt with that rule: on a reset the
   offset becomes the previous chunk's absolute end, the smallest offset that keeps time
   monotonic.
4. A chunk whose raw end is below its raw start crossed a window boundary: its end is
   read in the next window and the offset moves there.
5. A missing end (``None``) in the middle is the next chunk's start. A missing last end is
   ``duration`` when given, else ``start + words / 2.5`` (2.5 words per second, about 150
   words per minute, a typical speaking rate), at least 0.5 s after the start.
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
