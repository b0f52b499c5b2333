"""A whole session live: does a chunk at minute 45 cost what it costs at minute 1?

``session_video(folder, minutes)`` joins distinct 60 s demo videos end to end (cycled) into
one file; ``measure(path, checkpoint, realtime)`` streams it through ``ahjax.stream`` and
reports, per minute of media, the processing time per chunk (wall seconds between
consecutive lines), the latency from a frame's capture to its line (median, p95; real time
only) and the process's RSS; ``first_line_s`` times a fresh ``python -m ahjax stream``
process from its start to its first JSON line. ``measure_at(rev, ...)`` runs ``measure``
with the ``ahjax`` of git revision ``rev`` (a temporary worktree, a child process), for
before/after figures from one sitting. Only ``ahjax.stream``'s public API is used, so the
same code measures both sides.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np



def _module(*names: str):
    """The first of ``names`` that imports: :func:`measure_at` runs this file inside older
    revisions, whose modules had other names (``ahjax.stream``, ``ahjax.data.demo``)."""
    for name in names[:-1]:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    return importlib.import_module(names[-1])


def _stream_command(tree: str | Path | None) -> list[str]:
    """``python -m ahjax stream`` (``-m ahjax.stream`` in revisions before the one command line)."""
    root = Path(tree) if tree else Path(__file__).resolve().parent.parent
    return ["-m", "ahjax", "stream"] if (root / "ahjax" / "__main__.py").is_file() else [
        "-m", "ahjax.stream"]


def session_video(folder: str | Path, minutes: float, distinct: int = 4) -> Path:
    """An ``minutes``-long video: ``distinct`` 60 s demo videos (seeds 0..) cycled, joined
    without re-encoding."""
    from imageio_ffmpeg import get_ffmpeg_exe

    folder = Path(folder)
    n = max(1, int(np.ceil(minutes)))
    parts = []
    for seed in range(min(distinct, n)):
        root = _module("ahjax.core.data.demo", "ahjax.data.demo").make_demo(folder / f"demo{seed}", seed=seed, participants=1, questions=(4,),
                              min_duration=60.0, max_duration=60.0)
        parts.append(sorted((root / "Videos").rglob("*.mp4"))[0])
    listing = folder / "parts.txt"
    listing.write_text("".join(f"file '{parts[i % len(parts)]}'\n" for i in range(n)))
    out = folder / f"session_{n}min.mp4"
    subprocess.run([get_ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0",
                    "-i", str(listing), "-c", "copy", str(out)], check=True)
    return out


class _Recorded:
    """A source that remembers each frame's capture time (for per-frame latency)."""

    def __init__(self, src):
        self.src, self.capture = src, []
        self.name, self.fps, self.has_audio, self.clocked = (
            src.name, src.fps, src.has_audio, src.clocked)

    def frames(self):
        for frame, audio, capture in self.src.frames():
            if frame is None or isinstance(frame, np.ndarray):   # not the audio's tail
                self.capture.append(capture)
            yield frame, audio, capture


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def measure(path: str | Path, checkpoint: str | Path, realtime: bool) -> dict:
    """Stream ``path`` (as fast as possible, no degradation; or in real time, degrading
    when behind) and report per minute of media: chunks, mean and max processing seconds
    per chunk, latency median and p95 (real time), RSS at the minute's end."""
    load = list(os.getloadavg())
    t0 = time.monotonic()
    live = _module("ahjax.streaming", "ahjax.stream")
    media = _module("level1_affect.media", "ahjax.stream")   # where file_source lives
    src = _Recorded(media.file_source(path, realtime=realtime))
    config = live.StreamConfig(realtime=realtime, degrade=realtime)
    minutes: dict[int, dict] = {}
    prev, first_line, rss0 = None, None, _rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        for line in live.stream(src, checkpoint, config, out=Path(tmp) / "out"):
            now = time.monotonic()
            if line["final"]:
                summary = line["summary"]
                break
            first_line = now - t0 if first_line is None else first_line
            a, b = line["frames"]
            m = minutes.setdefault(int(a / src.fps // 60), {"intervals": [], "latency": []})
            if prev is not None:
                m["intervals"].append(now - prev)
            prev = now
            cap = np.asarray(src.capture[a:b], np.float64)
            m["latency"] += list(now - cap[np.isfinite(cap)])
            m.setdefault("rss", []).append(_rss_mb())
            m.setdefault("levels", []).append(line["level"])
            for k, v in (line.get("cost_s") or {}).items():   # absent in older revisions
                m.setdefault("cost", {}).setdefault(k, []).append(v)
            for k, v in (line.get("asr") or {}).items():
                m.setdefault("asr", {}).setdefault(k, []).append(v)
    rows = []
    for k in sorted(minutes):
        m = minutes[k]
        iv, lat = np.asarray(m["intervals"]), np.asarray(m["latency"])
        rows.append({"minute": k + 1, "chunks": len(m["levels"]),
                     "process_s_mean": float(iv.mean()) if len(iv) else None,
                     "process_s_max": float(iv.max()) if len(iv) else None,
                     "latency_median_s": float(np.median(lat)) if len(lat) else None,
                     "latency_p95_s": float(np.percentile(lat, 95)) if len(lat) else None,
                     "rss_mb": m["rss"][-1],
                     # The minute's lowest and highest reading: a Whisper pass holds its
                     # audio and buffers for a moment, so one reading a minute is noisy.
                     "rss_min_mb": min(m["rss"]), "rss_max_mb": max(m["rss"]),
                     "levels": {str(v): m["levels"].count(v) for v in sorted(set(m["levels"]))},
                     # Mean seconds per chunk of each part of the main thread's work.
                     "cost_s": {k: float(np.mean(v)) for k, v in m.get("cost", {}).items()},
                     # Whisper at the minute's end: passes so far; mean of the latest
                     # pass's seconds, its audio and the words' lag behind the audio.
                     "asr": ({"passes": int(m["asr"]["passes"][-1]),
                              **{k: float(np.mean(m["asr"][k]))
                                 for k in ("pass_s", "buffer_s", "words_lag_s")}}
                             if "asr" in m else None)})
    return {"realtime": realtime, "load_average_before": load,
            "load_average_after": list(os.getloadavg()), "rss_mb_before": rss0,
            "first_line_s": first_line, "wall_s": summary["wall_s"],
            "media_s": summary["media_s"], "real_time_factor": summary["real_time_factor"],
            "whisper_passes": summary["whisper_passes"], "seconds": summary["seconds"],
            "warm_up_s": summary["warm_up_s"], "per_minute": rows}


def first_line_s(path: str | Path, checkpoint: str | Path, cwd: str | Path | None = None) -> dict:
    """Seconds from starting ``python -m ahjax stream PATH --checkpoint RUN --realtime`` to
    its first JSON line (the process is then stopped)."""
    load = list(os.getloadavg())
    env = {**os.environ, "PYTHONPATH": str(cwd)} if cwd else None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, *_stream_command(cwd), str(path), "--checkpoint",
                                 str(checkpoint), "--realtime", "--out", str(Path(tmp) / "o")],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                cwd=cwd, env=env)
        line = proc.stdout.readline()
        took = time.monotonic() - t0
        proc.terminate()
        proc.wait(timeout=60)
    return {"first_line_s": took, "got_a_line": line.startswith("{"), "load_average_before": load}


def measure_at(rev: str, path: str | Path, checkpoint: str | Path, realtime: bool) -> dict:
    """:func:`measure` with the code of git revision ``rev`` (temporary worktree, child
    process), and its time to the first line."""
    path, checkpoint = Path(path).resolve(), Path(checkpoint).resolve()
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=repo,
                       check=True, capture_output=True)
        try:
            here = str(Path(__file__))
            code = ("import importlib.util, json, sys; "
                    f"spec = importlib.util.spec_from_file_location('long_stream', {here!r}); "
                    "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
                    f"print(json.dumps(m.measure({str(path)!r}, {str(checkpoint)!r}, "
                    f"{realtime!r})))")
            proc = subprocess.run([sys.executable, "-c", code], cwd=tree, text=True,
                                  capture_output=True, env={**os.environ, "PYTHONPATH": str(tree)})
            if proc.returncode:
                raise RuntimeError(f"baseline {rev} failed: {proc.stderr[-2000:]}")
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            out["first_line"] = first_line_s(path, checkpoint, cwd=tree)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=repo,
                           capture_output=True)
    out["rev"] = rev
    return out


def growth(result: dict) -> dict:
    """Minute 2 against the last minute: processing time ratio, RSS growth, last p95."""
    rows = [r for r in result["per_minute"] if r["process_s_mean"] is not None]
    two = next((r for r in rows if r["minute"] == 2), rows[0])
    # The last full minute (the final one may hold a few chunks only).
    last = rows[-1] if rows[-1]["chunks"] >= 50 or len(rows) < 2 else rows[-2]
    return {"minute_2_process_s": two["process_s_mean"], "last_minute": last["minute"],
            "last_process_s": last["process_s_mean"],
            "process_ratio": last["process_s_mean"] / two["process_s_mean"],
            "rss_growth_mb": last["rss_mb"] - two["rss_mb"],
            "rss_min_growth_mb": (last["rss_min_mb"] - two["rss_min_mb"]
                                  if "rss_min_mb" in two else None),
            "last_latency_p95_s": last["latency_p95_s"]}


def bench(checkpoint: str | Path, minutes: float, source: str | Path | None = None,
          baseline: str | None = None, modes=("fast", "realtime"), log=None) -> dict:
    """The long-session benchmark: per mode (``fast``: as fast as possible, ``realtime``),
    the code of ``baseline`` (if given) then this code, back to back on one source; each
    part is also handed to ``log`` as it finishes."""
    out: dict = {"checkpoint": str(checkpoint), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        path = Path(source) if source else session_video(tmp, minutes)
        out["source"] = str(source) if source else f"{int(np.ceil(minutes))} x 60 s demo videos"
        out["source_build_s"] = time.monotonic() - t0
        for mode in modes:
            sides = ([("before", baseline)] if baseline else []) + [("after", None)]
            for side, rev in sides:
                realtime = mode == "realtime"
                res = (measure_at(rev, path, checkpoint, realtime) if rev
                       else measure(path, checkpoint, realtime))
                if rev is None:
                    res["first_line"] = first_line_s(path, checkpoint,
                                                     cwd=Path(__file__).resolve().parent.parent)
                res["growth"] = growth(res)
                out["runs"][f"{mode}/{side}"] = res
                if log:
                    log(f"{mode}/{side}", res)
    return out


def files_against(rev: str, path: str | Path, checkpoint: str | Path, asr: bool) -> dict:
    """The final files of ``python -m ahjax stream`` (as fast as possible) with the code of
    git revision ``rev`` and with this code, on one video: per ``tracks.csv`` column the
    largest difference, whether the segments and the words are the same."""
    path, checkpoint = Path(path).resolve(), Path(checkpoint).resolve()
    repo = Path(__file__).resolve().parent.parent
    out: dict = {"rev": rev, "asr": asr}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=repo,
                       check=True, capture_output=True)
        try:
            got = {}
            for side, cwd in (("before", tree), ("after", repo)):
                folder = Path(tmp) / side
                cmd = [sys.executable, *_stream_command(cwd), str(path), "--checkpoint",
                       str(checkpoint), "--out", str(folder)] + ([] if asr else ["--no-asr"])
                subprocess.run(cmd, cwd=cwd, check=True, capture_output=True,
                               env={**os.environ, "PYTHONPATH": str(cwd)})
                with open(folder / "tracks.csv") as f:
                    rows = list(csv.DictReader(f))
                got[side] = {"cols": {k: np.array([float(r[k]) for r in rows]) for k in rows[0]},
                             "segments": json.loads((folder / "segments.json").read_text()),
                             "words": [w["word"] for w in json.loads(
                                 (folder / "transcript.json").read_text())["words"]],
                             "files": sorted(p.name for p in folder.iterdir())}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=repo,
                           capture_output=True)
    a, b = got["before"], got["after"]
    out["same_files"] = a["files"] == b["files"]
    out["frames"] = [len(a["cols"]["frame"]), len(b["cols"]["frame"])]
    same_n = out["frames"][0] == out["frames"][1]
    out["max_abs_diff"] = {k: float(np.abs(a["cols"][k] - b["cols"][k]).max())
                           for k in a["cols"] if k in b["cols"] and same_n}
    out["same_segments"] = a["segments"] == b["segments"]
    out["same_words"] = a["words"] == b["words"]
    out["words"] = [len(a["words"]), len(b["words"])]
    out["decoded_agreement"] = (float(np.mean(a["cols"]["ah_decoded"] == b["cols"]["ah_decoded"]))
                                if same_n else None)
    return out
