"""``python -m ahjax.stream SOURCE --checkpoint RUN``: A/H while the person is still talking.

SOURCE is a video file (played as fast as possible, or at its real pace with
``--realtime``) or a capture device (``cam:0``, or a ``/dev/video*`` path; video only). One
JSON line per chunk goes to stdout, for an app to read; logs go to stderr; at the end the
same files as ``python -m ahjax.predict`` are written (``--out``).

Each line holds ``t_start``/``t_end`` (seconds into the source), ``frames`` ([first, end)),
``tracks`` (the chunk's per-frame level-1 columns, as in ``tracks.csv``), with a checkpoint
``ah_prob`` and ``contributions`` (group -> per-frame values) of the causal two-level model,
``segments`` (A/H segments decided so far, seconds; the last one may still grow while
``open``), ``decided_until_s`` (labels before it are final), ``words`` (the words confirmed
in this chunk), ``latency_s`` (median and max delay from a frame's capture to its line),
``behind_s`` (how far the stream runs behind the source's clock) and ``level`` (0 normal;
higher: the stream degraded on purpose to keep up, see :data:`DEGRADE`). The last line has
``"final": true`` and the run's summary.

Python: ``for chunk in ahjax.stream("answer.mp4", "runs/two_level-..."): ...`` yields the
same content as dicts with NumPy arrays. The pieces: ``level1_affect.live`` (incremental
level 1), :meth:`TrainedTwoLevel.scores` (a causal model's prefix is final) and
``level2_conflict.hsmm.OnlineDecoder`` (fixed-lag semi-Markov decoding).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Iterator

import numpy as np

from ahjax.config import debug_requested

SAMPLE_RATE = 16000
# (landmarker every k-th frame x, Whisper pass interval x) per degradation level.
DEGRADE = ((1, 1.0), (2, 2.0), (4, 3.0), (8, 5.0))


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """How the stream runs (seconds unless named otherwise)."""
    chunk_s: float = 1.0         # media per chunk (and per JSON line when keeping up)
    lag_s: float = 2.0           # decoding lag: a frame's A/H label is final this long after it
    realtime: bool = False       # play a file at its real pace (a device always is)
    stall_s: float = 5.0         # no media for this long: the source stalled, the stream ends
    asr: bool = True             # Whisper on the audio (words, text features)
    asr_every_s: float = 2.0     # new audio between Whisper passes (level 0)
    detect_every: int = 1        # face landmarker every k-th frame (level 0)
    degrade: bool = True         # run lighter when behind the source's clock
    behind_s: float = 1.0        # behind by more than this: one level lighter
    language: str | None = None  # Whisper language code (None: detected once)

    def __post_init__(self):
        for name in ("chunk_s", "stall_s", "asr_every_s", "behind_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be positive")
        if not self.lag_s >= 0:
            raise ValueError(f"lag_s={self.lag_s}: must be >= 0 (inf: offline decoding)")
        if self.detect_every < 1:
            raise ValueError(f"detect_every={self.detect_every}: must be at least 1")


# ------------------------------- sources ----------------------------------------------
@typing.runtime_checkable
class Source(typing.Protocol):
    """What the stream reads: ``fps``, ``has_audio``, ``name``, ``clocked`` (frames come
    at the pace of a clock that does not wait for us) and ``frames()`` yielding
    ``(frame, audio, capture)``: an RGB uint8 frame (``None`` for a frame the source
    dropped), the 16 kHz audio samples of that frame's time slot (or None) and its
    wall-clock capture time (``time.monotonic`` seconds; NaN when played as fast as
    possible: no clock, no latency). :class:`MediaSource` and :class:`DeviceSource` are
    the two kinds ahjax has."""
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
                yield _TAIL, self.audio[b:], np.nan


def file_source(path: str | os.PathLike, realtime: bool = False) -> MediaSource:
    """A video file (frames decoded as they are needed; the audio track, if any)."""
    from level1_affect import audio as audio_lib
    from level1_affect.face import read_video_frames
    frames, fps, _ = read_video_frames(path)
    try:
        audio = audio_lib.load_audio(path, sr=SAMPLE_RATE)
    except audio_lib.NoAudioError:
        audio = None
    return MediaSource(frames, fps, audio, realtime=realtime, name=str(path))


class DeviceSource:
    """A capture device through OpenCV (video only: voice and text stay empty)."""
    clocked, has_audio = True, False

    def __init__(self, device: int | str):
        import cv2
        self.name = f"device {device}"
        self.cap = cv2.VideoCapture(device)
        if not self.cap.isOpened():
            raise OSError(f"{self.name}: cannot be opened as a capture device")
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 1.0 <= fps <= 120.0 else 30.0

    def frames(self):
        import cv2
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


def _reader(source: Source, out: queue.Queue, stop: threading.Event) -> None:
    """Puts the source's frames into ``out`` (decoding overlaps the compute), then END or
    the exception that ended it. A bounded ``out`` holds the reader back (a file played
    as fast as possible is not decoded ahead into memory)."""
    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False
    try:
        for item in source.frames():
            if not put(item):
                return
        put(_END)
    except Exception as err:   # noqa: BLE001 - handed to the consumer, which reports it
        put(err)


_END = object()
_TAIL = object()   # in place of a frame: audio after the last frame


# ------------------------------- the stream -------------------------------------------
def load_live_model(checkpoint: str | os.PathLike):
    """The causal model of a two_level run (``deploy_causal/``), else its ``deploy/`` one
    (an offline model reads centred windows: its newest frames lack their future; a
    warning says so), or a model folder given directly."""
    from level2_conflict.runtime import load_trained
    path = Path(checkpoint)
    if (path / "deploy_causal" / "level2.json").is_file():
        path = path / "deploy_causal"
    return load_trained(path)


class _Run:
    """The state of one stream: level 1, level 2, the decoder and what was emitted."""

    def __init__(self, src: Source, model, config: StreamConfig, face_encoder=None,
                 whisper=None):
        from level1_affect.face import FaceEncoder
        from level1_affect.live import LiveLevel1
        self.src, self.model, self.config = src, model, config
        self.fps = src.fps
        if face_encoder is None:
            face_encoder = FaceEncoder(detect_every=config.detect_every)
        if whisper is None and config.asr and src.has_audio:
            from level1_affect.whisper.transcribe import WhisperJax
            whisper = WhisperJax.load()
        self.live = LiveLevel1(self.fps, face_encoder, whisper=whisper if config.asr else None,
                               audio=src.has_audio, asr_every_s=config.asr_every_s,
                               language=config.language)
        self.decoder = model.online_decoder(self.fps, config.lag_s) if model is not None else None
        self.emitted = 0
        self.prob: list[np.ndarray] = []
        self.contrib: dict[str, list[np.ndarray]] = {}
        self.decided = np.zeros(0, np.int64)    # final A/H labels so far
        self.capture = np.zeros(0)              # capture time of every frame pushed
        self.latency: list[np.ndarray] = []
        self.level, self.calm = 0, 0
        self.levels: list[int] = []   # the level of each chunk
        self.warm_s = 0.0
        self.dropped = 0
        self.warnings: list[str] = []
        self.last_frame = None

    def push(self, frames: list, audio, capture) -> list[dict]:
        filled = []
        for f in frames:
            if f is None:   # a dropped frame: the previous one again (counted)
                self.dropped += 1
                f = self.last_frame if self.last_frame is not None else np.zeros((64, 64, 3), np.uint8)
            self.last_frame = f
            filled.append(f)
        self.capture = np.concatenate([self.capture, np.asarray(capture, np.float64)])
        return self.live.push(filled, audio)

    def emit(self, words: list[dict], final: bool = False) -> dict:
        from ahjax.api import segments_from_decoded, track_columns
        n = self.live.ready()
        first, self.emitted = self.emitted, n
        arrays = self.live.arrays(n)
        chunk_arrays = {k: v[first:n] for k, v in arrays.items()}
        tracks = track_columns(chunk_arrays, self.fps)
        tracks["frame"] = tracks["frame"] + first
        tracks["time_s"] = tracks["time_s"] + first / self.fps
        out = {"t_start": first / self.fps, "t_end": n / self.fps, "frames": [first, n],
               "tracks": tracks, "words": words, "level": self.level, "final": final}
        self.levels.append(self.level)
        if self.model is not None and n > 0:
            scores = self.model.scores(arrays, self.fps, bucket="pow2")
            prob = scores["prob"][first:n]
            self.prob.append(prob)
            contrib = {g: c[first:n] for g, c in scores["contributions"].items()}
            for g, c in contrib.items():
                self.contrib.setdefault(g, []).append(c)
            new = [self.decoder.push(prob)] + ([self.decoder.finish()] if final else [])
            self.decided = np.concatenate([self.decided, *new])
            segments = segments_from_decoded(self.decided, self.fps)
            if not final and segments and segments[-1]["end_frame"] >= len(self.decided) - 1:
                segments[-1]["open"] = True
            out.update(ah_prob=prob, contributions=contrib, segments=segments,
                       decided_until_s=len(self.decided) / self.fps)
        now = time.monotonic()
        capture = self.capture
        lat = now - capture[first:n]
        lat = lat[np.isfinite(lat)]
        self.latency.append(lat)
        out["latency_s"] = ({"median": float(np.median(lat)), "max": float(lat.max())}
                            if len(lat) else None)
        out["behind_s"] = (float(now - capture[-1]) if len(capture) and np.isfinite(capture[-1])
                           else None)
        out["dropped"] = self.dropped
        return out

    def warm_up(self) -> None:
        """Run each encoder and the model once on dummy input (loading and compiling them),
        so the first chunk does not pay for it."""
        t0 = time.monotonic()
        self.live.text_encoder.encode([{"word": "well", "start": 0.0, "end": 0.4}], self.fps,
                                      max(1, int(self.fps)))
        if self.live.asr is not None:
            rng = np.random.default_rng(0)
            self.live.asr.whisper.transcribe(0.01 * rng.standard_normal(SAMPLE_RATE).astype(np.float32),
                                             language=self.config.language or "en")
        if self.model is not None:
            blank = {k: np.zeros((1,) + v.shape[1:], np.float32)
                     for k, v in self.live.arrays(0).items()}
            self.model.scores(blank, self.fps, bucket="pow2")
        self.warm_s = time.monotonic() - t0

    def adapt(self, behind_s: float) -> None:
        """One level lighter when behind the clock; one back after 3 calm chunks."""
        cfg = self.config
        if behind_s > cfg.behind_s and self.level < len(DEGRADE) - 1:
            self.level, self.calm = self.level + 1, 0
        elif behind_s < 0.5 * cfg.behind_s and self.level > 0:
            self.calm += 1
            if self.calm >= 3:
                self.level, self.calm = self.level - 1, 0
        else:
            self.calm = 0
        k, a = DEGRADE[self.level]
        self.live.face.detect_every = cfg.detect_every * k
        self.live.asr_every_s = cfg.asr_every_s * a

    def result(self):
        """The whole stream as an ``ahjax.api.Result`` (for the files ``predict`` writes)."""
        from ahjax.api import Result, segments_from_decoded, track_columns
        n = self.emitted
        arrays = self.live.arrays(n)
        words = self.live.words
        transcript = {"language": self.live.asr.language if self.live.asr else None,
                      "text": " ".join(w["word"].strip() for w in words),
                      "words": words, "warnings": list(self.warnings)}
        res = Result(self.src.name, self.fps, n, arrays, track_columns(arrays, self.fps),
                     transcript, list(self.warnings), dict(self.live.seconds))
        if self.model is not None and n > 0:
            res.prob = np.concatenate(self.prob)
            res.decoded = self.decided
            res.contributions = {g: np.concatenate(c) for g, c in self.contrib.items()}
            res.segments = segments_from_decoded(res.decoded, self.fps)
        return res


def stream(source, checkpoint=None, config: StreamConfig = StreamConfig(), *,
           out: str | os.PathLike | None = None, face_encoder=None, whisper=None
           ) -> Iterator[dict]:
    """Chunks of A/H while ``source`` plays (see the module docstring for their keys).

    ``source``: a video path, ``cam:N``, an int device or a :class:`Source`;
    ``checkpoint``: a two_level run folder (its causal model) or a model folder (None:
    level 1 only); ``out``: a folder for ``predict``'s files at the end. A source that
    ends early, fails or stalls (no media for ``config.stall_s``) ends the stream cleanly:
    the last chunk says why in ``ended``, and what was decided is written out.
    ``face_encoder``/``whisper``: loaded encoders to reuse across streams.
    """
    from ahjax.assets import enable_compilation_cache
    enable_compilation_cache()
    model = load_live_model(checkpoint) if checkpoint is not None else None
    src = open_source(source, config.realtime)
    run = _Run(src, model, config, face_encoder, whisper)
    run.warm_up()   # load and compile everything before the source's clock starts
    if not src.has_audio:
        run.warnings.append(f"{src.name}: no audio: voice features are zero and there are "
                            "no words")
    if model is not None and not model.causal:
        causal = Path(checkpoint) / "deploy_causal"
        why = ("its deploy_causal/ holds an offline model" if (causal / "level2.json").is_file()
               else "its deploy_causal/ has no level2.json" if causal.is_dir()
               else "a model folder given directly" if Path(checkpoint, "level2.json").is_file()
               else "no deploy_causal/")
        run.warnings.append(f"the checkpoint's model is not causal ({why}): its newest "
                            "frames are read without the future it was trained with")
    # On a clock (realtime file, device) the source cannot wait: whatever queued up while
    # a chunk was processed is taken at once. Played as fast as possible, chunk by chunk.
    clocked = src.clocked
    frames_q: queue.Queue = queue.Queue() if clocked else queue.Queue(maxsize=256)
    stop = threading.Event()
    reader = threading.Thread(target=_reader, args=(src, frames_q, stop),
                              daemon=True, name="ahjax-stream-reader")
    per_chunk = max(1, int(round(config.chunk_s * src.fps)))
    started = time.monotonic()
    reader.start()
    ended = "end of source"
    pending: list = []

    def process(items):
        frames = [f for f, _, _ in items if f is not _TAIL]
        audio = [a for _, a, _ in items if a is not None]
        capture = np.array([c for f, _, c in items if f is not _TAIL], np.float64)
        words = run.push(frames, np.concatenate(audio) if audio else None, capture)
        line = run.emit(words)
        if config.degrade and line["behind_s"] is not None:
            run.adapt(line["behind_s"])
        return line

    try:
        while True:
            try:
                item = frames_q.get(timeout=config.stall_s)
            except queue.Empty:
                ended = f"stalled: no media for {config.stall_s:g} s"
                break
            if item is _END:
                break
            if isinstance(item, Exception):
                ended = f"source ended early: {item}"
                break
            pending.append(item)
            while clocked and not frames_q.empty() and len(pending) >= per_chunk:
                nxt = frames_q.get_nowait()   # behind: everything that is waiting at once
                if nxt is _END or isinstance(nxt, Exception):
                    frames_q.put(nxt)
                    break
                pending.append(nxt)
            if len(pending) >= per_chunk:
                yield process(pending)
                pending = []
    except GeneratorExit:   # the caller stopped reading: free the reader and Whisper threads
        run.live.close()
        raise
    finally:
        stop.set()
    if any(f is not _TAIL for f, _, _ in pending):   # the frames of an unfinished chunk
        yield process(pending)
    elif pending:   # only the audio after the last frame: into the final line
        run.push([], np.concatenate([a for _, a, _ in pending if a is not None]), [])
    if ended != "end of source":
        run.warnings.append(ended)
    words = run.live.finish()
    last = run.emit(words, final=True)
    media_s = run.emitted / run.fps
    wall = time.monotonic() - started
    lat = np.concatenate(run.latency) if run.latency else np.zeros(0)
    last["ended"] = ended
    last["summary"] = {
        "frames": run.emitted, "media_s": media_s, "wall_s": wall,
        "real_time_factor": wall / media_s if media_s else None,
        "latency_median_s": float(np.median(lat)) if len(lat) else None,
        "latency_p95_s": float(np.percentile(lat, 95)) if len(lat) else None,
        "dropped": run.dropped, "seconds": dict(run.live.seconds),
        "whisper_passes": run.live.asr.passes if run.live.asr else 0,
        "warm_up_s": run.warm_s, "levels": run.levels,
        "warnings": run.warnings}
    if out is not None and run.emitted:
        last["written"] = _write(run.result(), Path(out))
    elif out is not None:
        last["summary"]["warnings"].append("no frame arrived: nothing written")
    yield last


def _write(result, out: Path) -> str:
    """``predict``'s files, moved into ``out`` at once (no half output on failure)."""
    from ahjax.predict import write_outputs
    write_outputs(out, result.save)
    return str(out)


def to_json(chunk: dict, digits: int = 4) -> str:
    """One chunk as a JSON line (arrays as lists, floats rounded)."""
    def conv(x):
        if isinstance(x, np.ndarray):
            return [conv(v) for v in x.tolist()]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        if isinstance(x, (float, np.floating)):
            return round(float(x), digits)
        if isinstance(x, np.integer):
            return int(x)
        return x
    return json.dumps(conv(chunk), separators=(",", ":"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ahjax.stream",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a video file, cam:N or /dev/videoN")
    parser.add_argument("--checkpoint", default=None, help="a two_level run folder")
    parser.add_argument("--out", default=None,
                        help="folder for the final files (default: <source stem>_ahjax_live)")
    parser.add_argument("--realtime", action="store_true", help="play a file at its real pace")
    parser.add_argument("--chunk-s", type=float, default=StreamConfig.chunk_s)
    parser.add_argument("--lag-s", type=float, default=StreamConfig.lag_s,
                        help="decoding lag in seconds (inf: offline decoding at the end)")
    parser.add_argument("--stall-s", type=float, default=StreamConfig.stall_s)
    parser.add_argument("--detect-every", type=int, default=StreamConfig.detect_every,
                        help="face landmarker on every K-th frame (at level 0)")
    parser.add_argument("--no-asr", action="store_true", help="no Whisper (no words)")
    parser.add_argument("--no-degrade", action="store_true",
                        help="never run lighter when behind the clock")
    parser.add_argument("--language", default=None, help="Whisper language code, e.g. en")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    args = parser.parse_args(argv)
    from level1_affect.errors import MediaError
    try:
        config = StreamConfig(chunk_s=args.chunk_s, lag_s=args.lag_s, realtime=args.realtime,
                              stall_s=args.stall_s, asr=not args.no_asr,
                              detect_every=args.detect_every,
                              degrade=not args.no_degrade, language=args.language)
        stem = Path(args.source).stem if not str(args.source).startswith("cam:") else "camera"
        out = Path(args.out) if args.out else Path(f"{stem}_ahjax_live")
        for chunk in stream(args.source, args.checkpoint, config, out=out):
            print(to_json(chunk), flush=True)
            if chunk["final"]:
                s = chunk["summary"]
                latency = (f"latency median {s['latency_median_s']:.2f} s, p95 "
                           f"{s['latency_p95_s']:.2f} s" if s["latency_median_s"] is not None
                           else "latency not measured (not played in real time)")
                written = f"written to {out}" if "written" in chunk else "nothing written"
                print(f"{s['frames']} frames ({s['media_s']:.1f} s) in {s['wall_s']:.1f} s; "
                      f"{latency}; ended: {chunk['ended']}; {written}", file=sys.stderr)
                for w in s["warnings"]:
                    print(f"warning: {w}", file=sys.stderr)
    except (OSError, ValueError, MediaError) as err:   # bad input: one line, exit 2
        if debug_requested(args.debug):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


class _CallableModule(type(sys)):
    """``ahjax.stream(...)`` calls :func:`stream`; the module's names stay reachable
    (``ahjax.stream.StreamConfig``) and ``python -m ahjax.stream`` runs :func:`main`."""

    def __call__(self, *args, **kwargs):
        return stream(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
