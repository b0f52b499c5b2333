"""Media input of level 1: a video file read once, and the sources a live stream reads.

``Video(path)`` opens a file with one ``av.open``: the probe (``fps``, ``n_frames``), the
frames' presentation times (``times``) and the audio track (``audio``, 16 kHz mono
float32) come from one demuxing pass; the frames are then decoded from the same container,
lazily (``frames()``). ``load_audio`` reads the audio of any media file. A live stream
reads a :class:`Source`: :func:`file_source` (a :class:`Video`), :class:`MediaSource`
(frames in memory) or :class:`DeviceSource` (a capture device, ``cam:N``).
"""

from __future__ import annotations

import os
import time
import typing
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

from level1_affect.errors import MediaError

SAMPLE_RATE = 16000
TAIL = object()   # in place of a frame: audio after the last frame


class NoAudioError(MediaError):
    """The media file has no audio track (the message starts with its path)."""


class _AudioTrack:
    """One audio stream decoded to mono float32 at ``sr`` Hz, packet by packet."""

    def __init__(self, stream, sr: int, path: Path):
        self.stream, self.path, self.chunks = stream, path, []
        # Resampled with its channels kept, then averaged: FFmpeg's own downmix adds
        # surround channels (5.1 speech read ~7 dB louder than the same speech in mono).
        # The low-frequency effects channel carries no speech: left out when others exist.
        channels = list(stream.layout.channels) if stream.layout else []
        layout = stream.layout.name if channels else "mono"
        self.keep = [i for i, c in enumerate(channels) if c.name != "LFE"] or [0]
        try:
            self.resampler = av.AudioResampler(format="fltp", layout=layout, rate=sr)
        except (ValueError, av.error.FFmpegError):   # a layout without a name: FFmpeg mixes
            self.resampler = av.AudioResampler(format="fltp", layout="mono", rate=sr)
            self.keep = [0]

    def add(self, packet) -> None:
        try:
            for frame in packet.decode():
                self._take(frame)
        except av.error.FFmpegError as exc:
            raise MediaError(f"{self.path}: corrupt audio track ({exc})") from exc

    def _take(self, frame) -> None:
        for f in self.resampler.resample(frame):
            self.chunks.append(f.to_ndarray()[self.keep].mean(0))

    def samples(self) -> np.ndarray:
        try:
            self._take(None)
        except av.error.FFmpegError as exc:
            raise MediaError(f"{self.path}: corrupt audio track ({exc})") from exc
        audio = (np.concatenate(self.chunks).astype(np.float32) if self.chunks
                 else np.zeros(0, np.float32))
        if not np.all(np.isfinite(audio)):
            raise MediaError(f"{self.path}: audio decodes to non-finite samples")
        return audio


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the (first) audio track of a video or audio file to mono float32 at ``sr`` Hz.

    Raises :class:`NoAudioError` when the file has no audio track and
    :class:`MediaError` when it is missing, unreadable or corrupt; both name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MediaError(f"{path}: cannot open as media ({exc})") from exc
    with container:
        if not container.streams.audio:
            raise NoAudioError(f"{path}: no audio track")
        track = _AudioTrack(container.streams.audio[0], sr, path)
        try:
            for packet in container.demux(track.stream):
                track.add(packet)
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path}: corrupt audio track ({exc})") from exc
        return track.samples()


class Video:
    """A video file opened once: ``fps``, ``n_frames`` (the container's count, or estimated
    from the duration), ``pts`` (the frames' presentation times in seconds from the first,
    sorted), ``audio`` (None without a track, or when not asked) and ``frames()``. Errors
    are :class:`MediaError` naming the file."""

    def __init__(self, path: str | os.PathLike, audio: bool = True, sr: int = SAMPLE_RATE):
        self.path = path = Path(path)
        if not path.is_file():
            raise MediaError(f"{path}: no such video file")
        try:
            self._container = av.open(str(path))
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise MediaError(f"{path}: unreadable video ({e})") from e
        try:
            self._read(audio, sr)
        except BaseException:
            self.close()
            raise

    def _read(self, audio: bool, sr: int) -> None:
        """Probe, one demuxing pass (packet times, audio), back to the first frame."""
        path, container = self.path, self._container
        try:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = self._stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.fps = float(rate) if rate else 0.0
            self.n_frames = int(stream.frames or 0)
            if not self.n_frames and self.fps > 0:
                seconds = (float(stream.duration * stream.time_base) if stream.duration
                           else (container.duration or 0) / av.time_base)
                self.n_frames = int(round(seconds * self.fps))
            self.has_audio = bool(container.streams.audio)
            track = (_AudioTrack(container.streams.audio[0], sr, path)
                     if audio and self.has_audio else None)
            base, pts = float(stream.time_base), []
            for packet in container.demux(stream, *([track.stream] if track else [])):
                if packet.stream.index != stream.index:
                    track.add(packet)
                elif packet.pts is not None and packet.size:
                    pts.append(packet.pts * base)
            pts = np.sort(np.asarray(pts, np.float64))
            self.pts = pts - pts[0] if len(pts) else pts
            self.audio = track.samples() if track else None
            container.seek(0)
            stream.thread_type = "AUTO"  # frame-threaded decoding
            self._decoded = container.decode(stream)
            self._first = next(self._decoded, None)
            if self._first is None:
                raise MediaError(f"{path}: no decodable video frame")
        except MediaError:
            raise
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise MediaError(f"{path}: unreadable video ({e})") from e
        if not self.fps > 0:
            raise MediaError(f"{path}: video stream has no frame rate")

    def frames(self) -> Iterator[np.ndarray]:
        """RGB uint8 (H, W, 3) frames, decoded as they are taken; the file closes after."""
        count = 0
        try:
            with self:
                if self._first is not None:
                    first, self._first = self._first, None
                    count += 1
                    yield first.to_ndarray(format="rgb24")
                for frame in self._decoded:
                    count += 1
                    yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise MediaError(f"{self.path}: decoding failed after {count} frames ({e})") from e

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "Video":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read(path: str | os.PathLike, audio: bool = True, sr: int = SAMPLE_RATE
         ) -> tuple[Iterator[np.ndarray], np.ndarray, np.ndarray | None, float, int]:
    """A video file read once (:class:`Video`): ``(frames, pts, audio, fps, n_frames)``.
    The file closes after the last frame, or when ``frames`` is closed or dropped."""
    video = Video(path, audio, sr)
    return video.frames(), video.pts, video.audio, video.fps, video.n_frames


def frame_times(pts: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """(n_frames,) presentation time of each of the first ``n_frames`` frames, from the
    sorted ``pts``; frames beyond them continue at ``1 / fps`` after the last known one."""
    times = np.asarray(pts, np.float64)[:n_frames]
    if len(times) < n_frames:
        last = times[-1] if len(times) else -1.0 / fps
        times = np.concatenate([times, last + np.arange(1, n_frames - len(times) + 1) / fps])
    return times


def read_video_frames(path: str | os.PathLike) -> tuple[Iterator[np.ndarray], float, int]:
    """A video's frames (lazy, as :meth:`Video.frames`), fps and container frame count."""
    video = Video(path, audio=False)
    return video.frames(), video.fps, video.n_frames


def is_variable_rate(times: np.ndarray, fps: float) -> bool:
    """Whether the intervals between frames differ from their median by more than half a
    frame somewhere. Equal intervals are a constant rate even when the container's mean
    rate (``fps``) is slightly off them, as an AVI's header rate can be."""
    gaps = np.diff(np.asarray(times, np.float64))
    if len(gaps) < 2:
        return False
    step = float(np.median(gaps))
    return float(np.max(np.abs(gaps - step))) > 0.5 * max(step, 1.0 / fps)


# ------------------------------- live sources -----------------------------------------
@typing.runtime_checkable
class Source(typing.Protocol):
    """What a stream reads: ``name``, ``fps``, ``has_audio``, ``clocked`` (frames come at
    a clock's pace) and ``frames()`` yielding ``(frame, audio, capture)``: an RGB frame
    (None: dropped), that frame's 16 kHz audio (or None) and its ``time.monotonic``
    capture time (NaN when played as fast as possible). See docs/live.md."""
    name: str
    fps: float
    has_audio: bool
    clocked: bool

    def frames(self) -> Iterator[tuple[np.ndarray | None, np.ndarray | None, float]]: ...


class MediaSource:
    """Frames (any iterable) and optional audio, paced by the clock when ``realtime``."""

    def __init__(self, frames, fps: float, audio: np.ndarray | None = None, *,
                 realtime: bool = False, name: str = "frames"):
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self._frames, self.fps, self.name = frames, float(fps), name
        self.clocked = bool(realtime)
        self.audio = None if audio is None else np.asarray(audio, np.float32).reshape(-1)
        self.has_audio = self.audio is not None and len(self.audio) > 0

    def frames(self):
        start, n = time.monotonic(), 0
        for i, frame in enumerate(self._frames):
            n = i + 1
            capture = np.nan
            if self.clocked:   # frame i exists once its slot has passed
                capture = start + i / self.fps
                wait = start + (i + 1) / self.fps - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            audio = None
            if self.has_audio:
                a, b = (int(round(k / self.fps * SAMPLE_RATE)) for k in (i, i + 1))
                audio = self.audio[a:b]
            yield frame, audio, capture
        if self.has_audio:   # audio longer than the frames: its tail, with the last frame
            b = int(round(n / self.fps * SAMPLE_RATE))
            if b < len(self.audio):
                yield TAIL, self.audio[b:], np.nan


def file_source(path: str | os.PathLike, realtime: bool = False) -> MediaSource:
    """A video file (frames decoded as they are needed; the audio track, if any)."""
    video = Video(path)
    return MediaSource(video.frames(), video.fps, video.audio, realtime=realtime,
                       name=str(path))


class DeviceSource:
    """A capture device through OpenCV (video only: voice and text stay empty)."""
    clocked, has_audio = True, False

    def __init__(self, device: int | str):
        self.name = f"device {device}"
        self.cap = cv2.VideoCapture(device)
        if not self.cap.isOpened():
            raise OSError(f"{self.name}: cannot be opened as a capture device")
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 1.0 <= fps <= 120.0 else 30.0

    def frames(self):
        start, slot = time.monotonic(), 0
        try:
            while True:
                ok, frame = self.cap.read()
                now = time.monotonic()
                if not ok:
                    return
                # Slots the device skipped (its clock ran past them) become dropped frames.
                while slot < int((now - start) * self.fps):
                    yield None, None, start + slot / self.fps
                    slot += 1
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), None, now
                slot += 1
        finally:
            self.cap.release()


def is_device(source) -> bool:
    """Whether ``source`` names a capture device (an int, ``cam:N``, ``/dev/video*``)."""
    return isinstance(source, int) or str(source).startswith(("cam:", "/dev/video"))


def check_source(source) -> None:
    """The errors :func:`open_source` would raise for a bad name, without opening it."""
    text = str(source)
    if isinstance(source, (Source, int)) or text.startswith("/dev/video"):
        return
    if text.startswith("cam:"):
        if not text[4:].isdigit():
            raise ValueError(f"{text}: a capture device is cam:N with N an integer")
    elif not Path(text).is_file():
        raise FileNotFoundError(f"{text}: no such video file (or cam:N for a capture device)")


def open_source(source, realtime: bool = False) -> Source:
    """A :class:`Source` for a file path, ``cam:N``/``/dev/video*``, an int or a Source."""
    if isinstance(source, Source):
        return source
    if isinstance(source, int):
        return DeviceSource(source)
    text = str(source)
    if text.startswith("cam:"):
        try:
            return DeviceSource(int(text[4:]))
        except ValueError:
            raise ValueError(f"{text}: a capture device is cam:N with N an integer") from None
    if text.startswith("/dev/video"):
        return DeviceSource(text)
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file (or cam:N for a capture device)")
    return file_source(path, realtime)
