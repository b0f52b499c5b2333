"""``python -m ahjax stream SOURCE --checkpoint RUN``: A/H while the person is still talking.

SOURCE is a video file (as fast as possible, or at its real pace with ``--realtime``) or a
capture device (``cam:0``, ``/dev/video*``; video only). One JSON line per chunk goes to
stdout (its keys: docs/live.md), logs to stderr; at the end the same files as ``python -m
ahjax predict`` go to ``--out``. Python: ``for chunk in ahjax.stream("answer.mp4", run)``.
The pieces: ``level1_affect.media`` (sources), ``level1_affect.live`` (incremental level
1), ``level2_conflict.stateful`` (the causal model, its state carried) and
``level2_conflict.hsmm.OnlineDecoder`` (fixed-lag decoding). A chunk's cost and the memory
do not grow with the session: final rows are appended to ``tracks.csv`` and dropped.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from ahjax.api import segments_from_decoded, track_columns
from ahjax.core.assets import enable_compilation_cache
from ahjax.core.config import debug_requested
from ahjax.predict import write_outputs
from level1_affect import talk_type
from level1_affect.errors import MediaError
from level1_affect.face import FaceEncoder
from level1_affect.live import LiveLevel1, LiveText
from level1_affect.media import SAMPLE_RATE, TAIL, Source, check_source, is_device, open_source
from level1_affect.text import TextEncoder
from level1_affect.whisper.transcribe import WhisperJax
from level2_conflict import plots
from level2_conflict.runtime import load_trained

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


# ------------------------------- the stream -------------------------------------------
def load_live_model(checkpoint: str | os.PathLike):
    """The causal model of a two_level run (``deploy_causal/``), else its ``deploy/`` one
    (an offline model reads centred windows: its newest frames lack their future; a
    warning says so), or a model folder given directly."""
    path = Path(checkpoint)
    if (path / "deploy_causal" / "level2.json").is_file():
        path = path / "deploy_causal"
    return load_trained(path)


class _Segments:
    """A/H segments of decided labels, grown as labels are decided (not recomputed)."""

    def __init__(self, fps: float):
        self.fps, self.n, self.items = fps, 0, []

    def add(self, labels: np.ndarray) -> None:
        for seg in segments_from_decoded(labels, self.fps):
            s, e = seg["start_frame"] + self.n, seg["end_frame"] + self.n
            if self.items and s == self.n and self.items[-1]["end_frame"] == self.n - 1:
                s = self.items.pop()["start_frame"]   # the last segment goes on
            self.items.append({"start_frame": s, "end_frame": e,
                               "start_s": round(float(s / self.fps), 3),
                               "end_s": round(float(e / self.fps + 1.0 / self.fps), 3)})
        self.n += len(labels)


class _Latency:
    """Capture-to-line delays in 1 ms bins (fixed memory for any session length)."""

    def __init__(self, top_s: float = 60.0):
        self.bins = np.zeros(int(top_s * 1000) + 1, np.int64)

    def add(self, values: np.ndarray) -> None:
        idx = np.clip(np.round(np.asarray(values) * 1000).astype(np.int64), 0, len(self.bins) - 1)
        np.add.at(self.bins, idx, 1)

    def quantile(self, q: float) -> float | None:
        total = self.bins.sum()
        if total == 0:
            return None
        return float(np.searchsorted(np.cumsum(self.bins), q * total) / 1000.0)


class _Thin:
    """Every ``k``-th frame of a session's per-frame values, at most ``cap`` of them (``k``
    doubles when full): what the figure of a long session is drawn from."""

    def __init__(self, cap: int = 8192):
        self.cap, self.k, self.n, self.parts = cap, 1, 0, []

    def add(self, values: dict) -> None:
        m = len(next(iter(values.values())))
        keep = (np.arange(self.n, self.n + m) % self.k) == 0
        self.parts.append(_map_leaves(lambda v: np.asarray(v)[keep], values))
        self.n += m
        if sum(len(next(iter(p.values()))) for p in self.parts) > self.cap:
            joined = self.values()
            frames = joined.pop("_frame")
            self.k *= 2
            keep = frames % self.k == 0
            self.parts = [{**_map_leaves(lambda v: v[keep], joined), "_frame": frames[keep]}]

    def values(self) -> dict:
        return _map_leaves(lambda *v: np.concatenate(v), *self.parts) if self.parts else {}


def _map_leaves(fn, *trees):
    """``fn`` over the leaves of dicts of arrays (nested one level for contributions)."""
    first = trees[0]
    return {k: (_map_leaves(fn, *(t[k] for t in trees)) if isinstance(first[k], dict)
                else fn(*(t[k] for t in trees))) for k in first}


class _Run:
    """The state of one stream: level 1, level 2, the decoder, and the rows not written
    yet. Nothing here grows with the session: rows leave memory once their text, A/H
    label and values are final and are appended to the output's ``tracks.csv``."""

    def __init__(self, src: Source, model, config: StreamConfig, face_encoder=None,
                 whisper=None, text_encoder=None, out: Path | None = None):
        self.src, self.model, self.config = src, model, config
        self.fps = src.fps
        if face_encoder is None:
            face_encoder = FaceEncoder(detect_every=config.detect_every)
        if whisper is None and config.asr and src.has_audio:
            whisper = WhisperJax.load()
        self.live = LiveLevel1(self.fps, face_encoder, whisper=whisper if config.asr else None,
                               text_encoder=text_encoder, audio=src.has_audio,
                               asr_every_s=config.asr_every_s, language=config.language)
        self.decoder = model.online_decoder(self.fps, config.lag_s) if model is not None else None
        self.scorer = model.live_scorer(self.fps) if model is not None else None
        self.emitted = 0
        self.written = 0                        # frames appended to the output
        # Values of frames [written, emitted): A/H probability and contributions.
        self.prob = np.zeros(0, np.float32)
        self.contrib: dict[str, np.ndarray] = {}
        self.decided = np.zeros(0, np.int64)    # final labels of frames [written, ...)
        self.segments = _Segments(self.fps)
        self.capture = np.zeros(0)              # capture times of frames [emitted, pushed)
        self.latency = _Latency()
        self.face_present = 0.0
        self.thin = _Thin()
        self.level, self.calm = 0, 0
        self.levels: list[int] = []   # the level of each chunk
        self.warm_s = 0.0
        self.dropped = 0
        self.warnings: list[str] = []
        self.last_frame = None
        self.out = out
        self.spool = None             # (folder, open tracks.csv, csv writer) once rows come
        self._spent = dict(self.live.seconds)   # level 1's seconds at the last line

    def push(self, frames: list, audio, capture) -> list[dict]:
        filled = []
        for f in frames:
            if f is None:   # a dropped frame: the previous one again (counted)
                self.dropped += 1
                f = (self.last_frame if self.last_frame is not None
                     else np.zeros((64, 64, 3), np.uint8))
            self.last_frame = f
            filled.append(f)
        self.capture = np.concatenate([self.capture, np.asarray(capture, np.float64)])
        return self.live.push(filled, audio)

    def emit(self, words: list[dict], final: bool = False) -> dict:
        n = self.live.ready()
        first, self.emitted = self.emitted, n
        tracks = track_columns(self.live.arrays(n, start=first), self.fps)
        tracks["frame"] = tracks["frame"] + first
        tracks["time_s"] = tracks["time_s"] + first / self.fps
        out = {"t_start": first / self.fps, "t_end": n / self.fps, "frames": [first, n],
               "tracks": tracks, "words": words, "level": self.level, "final": final}
        self.levels.append(self.level)
        t0 = time.perf_counter()
        if self.model is not None:
            revised = self.live.revised()
            start, scores = self.scorer.scores(
                self.live.arrays(n, start=self.scorer.settled), n,
                final=self.live.text_final(), revised_from=first if revised is None else revised)
            prob = scores["prob"][first - start:]
            contrib = {g: c[first - start:] for g, c in scores["contributions"].items()}
            self.prob = np.concatenate([self.prob, prob])
            for g, c in contrib.items():
                self.contrib[g] = np.concatenate([self.contrib.get(g, np.zeros(0, np.float32)), c])
            new = np.concatenate([self.decoder.push(prob)]
                                 + ([self.decoder.finish()] if final else []))
            self.decided = np.concatenate([self.decided, new])
            self.segments.add(new)
            segments = [dict(s) for s in self.segments.items]
            if not final and segments and segments[-1]["end_frame"] >= self.segments.n - 1:
                segments[-1]["open"] = True
            out.update(ah_prob=prob, contributions=contrib, segments=segments,
                       decided_until_s=self.segments.n / self.fps)
        t1 = time.perf_counter()
        now = time.monotonic()
        capture, self.capture = self.capture[:n - first], self.capture[n - first:]
        lat = now - capture
        lat = lat[np.isfinite(lat)]
        self.latency.add(lat)
        out["latency_s"] = ({"median": float(np.median(lat)), "max": float(lat.max())}
                            if len(lat) else None)
        out["behind_s"] = (float(now - capture[-1]) if len(capture) and np.isfinite(capture[-1])
                           else None)
        out["dropped"] = self.dropped
        self._settle()
        # Where this chunk's time went (seconds of this process's main thread; Whisper runs
        # beside it, its latest pass in ``asr``).
        seconds = self.live.seconds
        cost = {k: seconds[k] - self._spent.get(k, 0.0) for k in ("face", "voice", "text")}
        self._spent = dict(seconds)
        out["cost_s"] = {**cost, "level2": t1 - t0, "output": time.perf_counter() - t1}
        out["asr"] = self.live.asr_status()
        return out

    def _settle(self) -> None:
        """Append the frames whose every value is final to the output; drop their rows."""
        upto = min(self.emitted, self.live.text_final())
        if self.model is not None:
            upto = min(upto, self.written + len(self.decided))
        if upto > self.written:
            arrays = self.live.arrays(upto, start=self.written)
            cols = track_columns(arrays, self.fps)
            cols["frame"] = cols["frame"] + self.written
            cols["time_s"] = cols["time_s"] + self.written / self.fps
            k = upto - self.written
            thin = dict(arrays)
            if self.model is not None:
                cols["ah_prob"], cols["ah_decoded"] = self.prob[:k], self.decided[:k]
                cols.update({f"contrib_{g}": c[:k] for g, c in self.contrib.items()})
                thin.update(_prob=self.prob[:k], _decoded=self.decided[:k],
                            _contrib={g: c[:k] for g, c in self.contrib.items()})
                self.prob, self.decided = self.prob[k:], self.decided[k:]
                self.contrib = {g: c[k:] for g, c in self.contrib.items()}
            self.face_present += float(np.sum(arrays["face_present"], dtype=np.float64))
            self.thin.add({**thin, "_frame": np.arange(self.written, upto)})
            if self.out is not None:
                self._append(cols)
            self.written = upto
        keep = self.written if self.scorer is None else min(self.written, self.scorer.settled)
        self.live.release(keep)

    def _append(self, cols: dict) -> None:
        if self.spool is None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=f".{self.out.name}-", dir=self.out.parent))
            f = open(folder / "tracks.csv", "w", newline="")
            self.spool = (folder, f, csv.writer(f))
            self.spool[2].writerow(list(cols))
        w = self.spool[2]
        for row in zip(*cols.values()):
            w.writerow([f"{x:.6g}" if isinstance(x, (float, np.floating)) else int(x)
                        for x in row])

    def discard(self) -> None:
        """Remove the output being written (the stream was abandoned or failed)."""
        if self.spool is not None:
            self.spool[1].close()
            shutil.rmtree(self.spool[0], ignore_errors=True)
            self.spool = None

    def write(self) -> str:
        """The rest of ``predict``'s files beside the appended ``tracks.csv``, all moved
        into ``out`` at once (no half output on failure)."""
        folder, f, _ = self.spool
        f.close()
        words = self.live.words
        transcript = {"language": self.live.asr.language if self.live.asr else None,
                      "text": " ".join(w["word"].strip() for w in words),
                      "words": words, "warnings": list(self.warnings)}
        summary = {"video": self.src.name, "frames": self.written, "fps": self.fps,
                   "face_present_rate": self.face_present / max(self.written, 1),
                   "language": transcript["language"], "transcript": transcript["text"],
                   "warnings": list(self.warnings), "seconds": dict(self.live.seconds)}
        thin = self.thin.values()
        frames = thin.pop("_frame")
        times = frames / self.fps if self.thin.k > 1 else None

        def fill(tmp: Path) -> None:
            os.replace(folder / "tracks.csv", tmp / "tracks.csv")
            (tmp / "transcript.json").write_text(json.dumps(transcript, indent=1))
            if self.model is not None:
                summary["segments"] = self.segments.items
                (tmp / "segments.json").write_text(json.dumps(self.segments.items, indent=1))
                plots.plot_video(thin, thin.pop("_contrib"), thin.pop("_prob"),
                                 np.full(len(frames), -1), thin.pop("_decoded"), self.fps,
                                 Path(self.src.name).name, tmp / "ah.png", times=times)
            else:
                plots.plot_video(thin, {}, np.zeros(len(frames)), np.full(len(frames), -1),
                                 np.full(len(frames), -1), self.fps, Path(self.src.name).name,
                                 tmp / "tracks.png", times=times)
            (tmp / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
        try:
            write_outputs(self.out, fill)
        finally:
            self.discard()
        return str(self.out)

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


def text_encoder_for_live():
    """The text encoder a stream uses, its talk-type model loaded (never trained here)."""
    folder = talk_type.default_dir()
    if not (folder / "weights.npz").is_file():
        raise FileNotFoundError(
            f"{folder}: the default talk-type model is missing; train it once first with: "
            "python -c 'from level1_affect.talk_type import ensure_default; ensure_default()'")
    return TextEncoder(embeddings=False, talk_model=talk_type.load(folder))


def prepare(checkpoint, config: StreamConfig, face_encoder, whisper, speech: bool):
    """``(model, text encoder, whisper, seconds)``: everything a stream needs, loaded and
    compiled on dummy input before a source is opened (a live source's clock does not
    wait, and the first chunk does not pay for it). Speech (text encoder, Whisper) loads
    in two threads beside the level-2 model and the face landmarker; nothing is trained."""
    t0 = time.monotonic()

    def text_part():
        encoder = text_encoder_for_live()
        LiveText(encoder, 30.0).add([{"word": "well.", "start": 0.0, "end": 0.4}])
        return encoder

    def whisper_part(whisper):
        if whisper is None:
            whisper = WhisperJax.load()
        noise = 0.01 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)
        whisper.transcribe(noise.astype(np.float32), language=config.language or "en")
        return whisper

    with ThreadPoolExecutor(2) as pool:
        text = pool.submit(text_part) if speech else None
        asr = pool.submit(whisper_part, whisper) if speech else None
        model = load_live_model(checkpoint) if checkpoint is not None else None
        if model is not None:
            model.live_scorer(30.0).warm_up()
        with face_encoder.session(30.0) as session:   # loads the landmarker
            session.push([np.zeros((64, 64, 3), np.uint8)])
        text = text.result() if text is not None else None
        whisper = asr.result() if asr is not None else None
    return model, text, whisper, time.monotonic() - t0


def stream(source, checkpoint=None, config: StreamConfig = StreamConfig(), *,
           out: str | os.PathLike | None = None, face_encoder=None, whisper=None
           ) -> Iterator[dict]:
    """Chunks of A/H while ``source`` (a video path, ``cam:N``, a device or a ``Source``)
    plays, from the causal model of ``checkpoint`` (None: level 1 only); ``out``: a folder
    for ``predict``'s files at the end. A source that ends early, fails or stalls ends the
    stream cleanly (``ended`` says why). docs/live.md: the keys of a chunk."""
    enable_compilation_cache()
    check_source(source)   # a typo fails at once, not after the models are loaded
    if face_encoder is None:
        face_encoder = FaceEncoder(detect_every=config.detect_every)
    speech = config.asr and not is_device(source) and getattr(source, "has_audio", True)
    model, text_encoder, whisper, warm_s = prepare(checkpoint, config, face_encoder, whisper,
                                                   speech)
    src = open_source(source, config.realtime)
    run = _Run(src, model, config, face_encoder, whisper if speech else None, text_encoder,
               Path(out) if out is not None else None)
    run.warm_s = warm_s
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
                            "frames are read without the future it was trained with, and "
                            "each chunk re-reads the whole stream")
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
        frames = [f for f, _, _ in items if f is not TAIL]
        audio = [a for _, a, _ in items if a is not None]
        capture = np.array([c for f, _, c in items if f is not TAIL], np.float64)
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
    except BaseException:   # the caller stopped reading, or a failure: free the threads
        run.live.close()
        run.discard()
        raise
    finally:
        stop.set()
    if any(f is not TAIL for f, _, _ in pending):   # the frames of an unfinished chunk
        yield process(pending)
    elif pending:   # only the audio after the last frame: into the final line
        run.push([], np.concatenate([a for _, a, _ in pending if a is not None]), [])
    if ended != "end of source":
        run.warnings.append(ended)
    words = run.live.finish()
    last = run.emit(words, final=True)
    media_s = run.emitted / run.fps
    wall = time.monotonic() - started
    last["ended"] = ended
    last["summary"] = {
        "frames": run.emitted, "media_s": media_s, "wall_s": wall,
        "real_time_factor": wall / media_s if media_s else None,
        "latency_median_s": run.latency.quantile(0.5),
        "latency_p95_s": run.latency.quantile(0.95),
        "dropped": run.dropped, "seconds": dict(run.live.seconds),
        "whisper_passes": run.live.asr.passes if run.live.asr else 0,
        "warm_up_s": run.warm_s, "levels": run.levels,
        "warnings": run.warnings}
    if out is not None and run.spool is not None:
        last["written"] = run.write()
    elif out is not None:
        last["summary"]["warnings"].append("no frame arrived: nothing written")
    yield last


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
    parser = argparse.ArgumentParser(prog="python -m ahjax stream",
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
