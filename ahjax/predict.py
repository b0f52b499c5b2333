"""``python -m ahjax.predict VIDEO [--out DIR] [--checkpoint RUN_DIR]``: one video, end to end.

Level 1 always: ``tracks.csv`` (one row per frame: face expression probabilities and
presence, voice activity/pitch/energy, text sentiment and change/sustain talk, ...),
``transcript.json`` (language, text, timed words) and ``tracks.png``. With
``--checkpoint`` pointing at a ``two_level`` run folder, level 2 too: the A/H probability
per frame (``ah_prob``, ``ah_decoded`` and one ``contrib_<group>`` column per named
contribution in ``tracks.csv``), the decoded A/H segments in ``segments.json`` and the
full figure in ``ah.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from level1_affect import schema


def track_columns(arrays: dict, fps: float) -> dict[str, np.ndarray]:
    """The named per-frame columns of ``tracks.csv`` from level-1 arrays."""
    n = len(arrays["face_present"])
    cols = {"frame": np.arange(n), "time_s": np.arange(n) / fps,
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


def write_csv(cols: dict[str, np.ndarray], path: Path) -> None:
    """Write equal-length columns as CSV with a header row."""
    names = list(cols)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for row in zip(*(cols[k] for k in names)):
            w.writerow([f"{x:.6g}" if isinstance(x, (float, np.floating)) else int(x) for x in row])


def predict(video: str | Path, out: str | Path, checkpoint: str | Path | None = None) -> dict:
    """Run level 1 (and level 2 with ``checkpoint``) on ``video``; write files into ``out``.

    Returns a summary dict (frames, fps, face-present rate, language, transcript, and with
    a checkpoint the A/H segments in seconds).
    """
    video, out = Path(video), Path(out)
    # Every argument is checked before level 1 runs (it takes seconds per video).
    if not video.is_file():
        raise FileNotFoundError(f"{video}: no such video file")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: --out exists and is not a folder")
    level2_model = None
    if checkpoint is not None:
        from experiments.two_level import load_trained
        level2_model = load_trained(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written into a temporary folder and moved into place at the end, so a failure leaves
    # no half output and a rerun never leaves another video's files beside these.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        summary = _predict_into(video, tmp, level2_model)
        out.mkdir(exist_ok=True)
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
        for path in tmp.iterdir():
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


# Every file predict may write; a run removes them all from --out before moving its own in.
OUTPUTS = ("tracks.csv", "transcript.json", "summary.json", "segments.json", "ah.png",
           "tracks.png")


def _predict_into(video: Path, out: Path, level2_model) -> dict:
    """Level 1 (and level 2 with ``level2_model``) of ``video``, written into ``out``."""
    from ahjax.assets import enable_compilation_cache
    from level1_affect.extract import Extractor, ExtractConfig
    from level2_conflict import plots

    enable_compilation_cache()  # reuse compiled encoders/models across calls
    arrays, info = Extractor(ExtractConfig(asr="always")).video(video)
    fps = info["fps"]
    cols = track_columns(arrays, fps)
    transcript = {"language": info["language"], "text": info["transcript"],
                  "words": [{"word": w["word"], "start": round(float(w["start"]), 3),
                             "end": round(float(w["end"]), 3)} for w in info["words"]],
                  "warnings": info["warnings"]}
    (out / "transcript.json").write_text(json.dumps(transcript, indent=1))
    summary = {"video": str(video), "frames": info["n_frames"], "fps": fps,
               "face_present_rate": float(arrays["face_present"].mean()),
               "language": info["language"], "transcript": info["transcript"],
               "warnings": info["warnings"], "seconds": info["seconds"]}
    n = info["n_frames"]
    empty = np.full(n, 0.0)
    if level2_model is not None:
        level2 = level2_model.predict(arrays, fps)
        cols["ah_prob"] = level2["prob"]
        cols["ah_decoded"] = level2["decoded"]
        for g, c in level2["contributions"].items():
            cols[f"contrib_{g}"] = c
        segs = _segments(level2["decoded"], fps)
        (out / "segments.json").write_text(json.dumps(segs, indent=1))
        summary["segments"] = segs
        plots.plot_video(arrays, level2["contributions"], level2["prob"], np.full(n, -1),
                         level2["decoded"], fps, video.name, out / "ah.png")
    else:
        plots.plot_video(arrays, {}, empty, np.full(n, -1), np.full(n, -1), fps, video.name,
                         out / "tracks.png")
    write_csv(cols, out / "tracks.csv")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def _segments(decoded: np.ndarray, fps: float) -> list[dict]:
    d = np.concatenate([[0], np.asarray(decoded, int), [0]])
    starts = np.flatnonzero(np.diff(d) == 1)
    ends = np.flatnonzero(np.diff(d) == -1) - 1
    return [{"start_frame": int(s), "end_frame": int(e), "start_s": round(s / fps, 3),
             "end_s": round((e + 1) / fps, 3)} for s, e in zip(starts, ends)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ahjax.predict",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("video")
    parser.add_argument("--out", default=None, help="output folder (default: <video stem>_ahjax)")
    parser.add_argument("--checkpoint", default=None, help="a two_level run folder")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(f"{Path(args.video).stem}_ahjax")
    from level1_affect.errors import MediaError
    try:
        summary = predict(args.video, out, args.checkpoint)
    except (OSError, ValueError, MediaError) as err:   # bad input: one line, exit 2
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1, default=float))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
