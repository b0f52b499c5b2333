"""The Python front door: from a video to A/H and its named reasons in three lines.

    import ahjax
    model = ahjax.load("runs/two_level-20261206-081500")   # a two_level run folder
    result = model.predict("answer.mp4")
    result.segments         # [{"start_s": 3.2, "end_s": 7.9, ...}]: the decoded A/H segments
    result.contributions    # {"face_voice": (n,), ..., "within_text": (n,)}: per-frame terms
    result.figure("answer.png")

``ahjax.extract(video)`` runs level 1 alone (the per-frame affect tracks and the
transcript). ``python -m ahjax predict`` is a thin wrapper over these functions. This module
is an entry point: it may import every layer, and the core (``ahjax.core.data``, ``ahjax.core.train``,
``ahjax.core.metrics``, ``ahjax.core.assets``, ``ahjax.core.config``) never imports it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import threading
from pathlib import Path

import numpy as np

from ahjax.core.assets import enable_compilation_cache
from level1_affect import schema
from level1_affect.extract import ExtractConfig, Extractor
from level2_conflict import plots
from level2_conflict.runtime import load_trained

__all__ = ["Result", "Model", "load", "extract", "track_columns", "segments_from_decoded"]


def track_columns(arrays: dict, fps: float, times: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
    """The named per-frame columns (as in ``tracks.csv``) of level-1 ``arrays``; ``time_s``
    is each frame's presentation time (``times``; default ``i / fps``)."""
    n = len(arrays["face_present"])
    time_s = np.arange(n) / fps if times is None else np.asarray(times, np.float64)[:n]
    cols = {"frame": np.arange(n), "time_s": time_s,
            "face_present": arrays["face_present"][:, 0]}
    for i, name in enumerate(schema.FACE_EXPR):
        cols[f"face_{name}"] = arrays["face_expr"][:, i]
    for i, name in enumerate(schema.FACE_DESC):
        cols[f"face_{name}"] = arrays["face_desc"][:, i]
    pros = dict(zip(schema.VOICE_PROSODY, arrays["voice_prosody"].T))
    cols.update(voice_active=pros["voice_active"], voice_pitch_hz=pros["pitch_hz"],
                voice_energy=pros["energy"], voice_voiced=pros["voiced"], voice_pause=pros["pause"])
    text = dict(zip(schema.TEXT_AFFECT, arrays["text_affect"].T))
    cols.update(text_sentiment=text["sentiment"], text_change_talk=text["change_talk"],
                text_sustain_talk=text["sustain_talk"], text_hedge=text["hedge"],
                text_hesitation=text["hesitation"], text_word_present=text["word_present"])
    return cols


def segments_from_decoded(decoded: np.ndarray, fps: float, times: np.ndarray | None = None
                          ) -> list[dict]:
    """A/H segments of a 0/1 frame sequence: frames (inclusive) and seconds (from the
    frames' presentation ``times`` when given, else ``i / fps``)."""
    d = np.concatenate([[0], np.asarray(decoded, int), [0]])
    starts = np.flatnonzero(np.diff(d) == 1)
    ends = np.flatnonzero(np.diff(d) == -1) - 1
    t = (np.arange(len(d) - 1) / fps if times is None
         else np.concatenate([np.asarray(times, np.float64), [0.0]]))

    def end_s(e):   # the end of frame e: the next frame's time, or one frame on
        return t[e + 1] if times is not None and e + 1 < len(times) else t[e] + 1.0 / fps
    return [{"start_frame": int(s), "end_frame": int(e), "start_s": round(float(t[s]), 3),
             "end_s": round(float(end_s(e)), 3)} for s, e in zip(starts, ends)]


@dataclasses.dataclass
class Result:
    """What ahjax knows about one video: ``tracks`` (named per-frame columns), ``arrays``
    (level-1 arrays by schema name), ``transcript``; with a two-level model also ``prob``
    (n,) P(A/H), ``decoded`` (n,) 0/1, ``contributions`` (group -> (n,) terms that sum,
    with the bias, to the score) and ``segments`` (decoded A/H segments)."""
    video: str
    fps: float
    n_frames: int
    arrays: dict
    tracks: dict
    transcript: dict
    warnings: list
    seconds: dict
    times: np.ndarray | None = None      # (n,) presentation time of each frame, seconds
    prob: np.ndarray | None = None
    decoded: np.ndarray | None = None
    contributions: dict = dataclasses.field(default_factory=dict)
    segments: list = dataclasses.field(default_factory=list)

    def columns(self) -> dict[str, np.ndarray]:
        """Every per-frame column: the tracks, then A/H and its contributions."""
        cols = dict(self.tracks)
        if self.prob is not None:
            cols["ah_prob"] = self.prob
            cols["ah_decoded"] = self.decoded
            cols.update({f"contrib_{g}": c for g, c in self.contributions.items()})
        return cols

    def table(self) -> list[dict]:
        """One dict per frame (no pandas needed): ``columns()`` row by row."""
        cols = self.columns()
        return [dict(zip(cols, row)) for row in zip(*cols.values())]

    def summary(self) -> dict:
        out = {"video": self.video, "frames": self.n_frames, "fps": self.fps,
               "face_present_rate": float(self.arrays["face_present"].mean()),
               "language": self.transcript.get("language"), "transcript": self.transcript.get("text"),
               "warnings": self.warnings, "seconds": self.seconds}
        if self.prob is not None:
            out["segments"] = self.segments
        return out

    def figure(self, path: str | os.PathLike) -> Path:
        """Draw the per-modality tracks (and A/H with its contributions) into a PNG."""
        n = self.n_frames
        none = np.full(n, -1)
        prob = self.prob if self.prob is not None else np.zeros(n)
        decoded = self.decoded if self.decoded is not None else none
        return plots.plot_video(self.arrays, self.contributions, prob, none, decoded, self.fps,
                                Path(self.video).name, path, times=self.times)

    def save(self, out: str | os.PathLike) -> list[str]:
        """Write ``tracks.csv``, ``transcript.json``, ``summary.json``, the figure and (with
        A/H) ``segments.json`` into the folder ``out``; returns the file names."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "transcript.json").write_text(json.dumps(self.transcript, indent=1))
        names = ["transcript.json"]
        if self.prob is not None:
            (out / "segments.json").write_text(json.dumps(self.segments, indent=1))
            self.figure(out / "ah.png")
            names += ["segments.json", "ah.png"]
        else:
            self.figure(out / "tracks.png")
            names.append("tracks.png")
        cols = self.columns()
        with open(out / "tracks.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(cols))
            for row in zip(*cols.values()):
                w.writerow([f"{x:.6g}" if isinstance(x, (float, np.floating)) else int(x)
                            for x in row])
        (out / "summary.json").write_text(json.dumps(self.summary(), indent=1, default=float))
        return names + ["tracks.csv", "summary.json"]


# One Extractor per extraction config, shared by every call and thread of the process:
# its models are loaded once (under level1_affect.loading.LOAD_LOCK), calls run in parallel.
_extractors: dict = {}
_extractors_lock = threading.Lock()


def _extractor(config):
    """The process's shared ``Extractor`` for ``config`` (built on first use)."""
    with _extractors_lock:
        if config not in _extractors:
            enable_compilation_cache()
            _extractors[config] = Extractor(config)
        return _extractors[config]


def extract(video: str | os.PathLike, config=None) -> Result:
    """Level 1 of one video: per-frame face, voice and text tracks and the transcript.

    ``config``: a ``level1_affect.extract.ExtractConfig`` (default: Whisper on the audio,
    learned change/sustain talk).
    """
    video = Path(video)
    if not video.is_file():
        raise FileNotFoundError(f"{video}: no such video file")
    arrays, info = _extractor(config or ExtractConfig(asr="always")).video(video)
    transcript = {"language": info["language"], "text": info["transcript"],
                  "words": [{"word": w["word"], "start": round(float(w["start"]), 3),
                             "end": round(float(w["end"]), 3)} for w in info["words"]],
                  "warnings": info["warnings"]}
    times = info.get("frame_times")
    return Result(str(video), float(info["fps"]), int(info["n_frames"]), arrays,
                  track_columns(arrays, info["fps"], times), transcript, list(info["warnings"]),
                  dict(info["seconds"]), times)


class Model:
    """A trained two-level model (``ahjax.load``): level 1, then A/H with its reasons.

    A Model may be shared by threads: ``predict`` runs level 1 of several videos at once
    (each model loaded once) and level 2 one video at a time."""

    def __init__(self, trained, path: str | os.PathLike):
        self.trained, self.path = trained, Path(path)
        self._lock = threading.Lock()   # level 2 is one NNX module: one call at a time

    def __repr__(self) -> str:
        return f"ahjax.Model({str(self.path)!r})"

    def predict(self, video: str | os.PathLike, config=None) -> Result:
        """Level 1 and level 2 of one video: the level-1 :class:`Result` with A/H, its
        decoded segments and its contributions."""
        result = extract(video, config)
        with self._lock:
            level2 = self.trained.predict_arrays(result.arrays, result.fps)
        result.prob, result.decoded = level2["prob"], level2["decoded"]
        result.contributions = dict(level2["contributions"])
        result.segments = segments_from_decoded(level2["decoded"], result.fps, result.times)
        return result


def load(run_dir: str | os.PathLike) -> Model:
    """The deployable two-level model of a ``python -m experiments.run two_level`` run
    folder (or of its ``deploy/`` folder); a clear error for anything else."""
    return Model(load_trained(run_dir), run_dir)
