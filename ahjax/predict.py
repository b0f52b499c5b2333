"""``python -m ahjax predict VIDEO [--out DIR] [--checkpoint RUN_DIR]``: one video, end to end.

Level 1 always: ``tracks.csv`` (one row per frame: face expression probabilities and
presence, voice activity/pitch/energy, text sentiment and change/sustain talk, ...),
``transcript.json`` (language, text, timed words) and ``tracks.png``. With
``--checkpoint`` pointing at a ``two_level`` run folder, level 2 too: the A/H probability
per frame (``ah_prob``, ``ah_decoded`` and one ``contrib_<group>`` column per named
contribution in ``tracks.csv``), the decoded A/H segments in ``segments.json`` and the
full figure in ``ah.png``. The work is done by ``ahjax.api`` (``ahjax.extract``,
``ahjax.load(...).predict``); this module checks the arguments and writes the files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ahjax import api
from ahjax.core.config import debug_requested
from ahjax.core.interrupt import exit_on_signals, on_signal
from level1_affect.errors import MediaError
from level1_affect.extract import ExtractConfig
from level2_conflict.runtime import load_trained


def predict(video: str | Path, out: str | Path, checkpoint: str | Path | None = None,
            language: str = "en") -> dict:
    """Run level 1 (and level 2 with ``checkpoint``) on ``video``; write files into ``out``.

    ``language``: Whisper's language (``"auto"``: detected). Returns a summary dict
    (frames, fps, face-present rate, language, transcript, warnings, and with a checkpoint
    the A/H segments in seconds).
    """
    video, out = Path(video), Path(out)
    config = ExtractConfig(asr="always", language=language)
    # Every argument is checked before level 1 runs (it takes seconds per video).
    if not video.is_file():
        raise FileNotFoundError(f"{video}: no such video file")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: --out exists and is not a folder")
    level2_model = None
    if checkpoint is not None:
        level2_model = load_trained(checkpoint)
    return write_outputs(out, lambda tmp: _predict_into(video, tmp, level2_model, config))


def write_outputs(out: Path, fill):
    """``fill(folder)`` writes a video's files into a temporary folder beside ``out``; they
    are then moved into ``out`` at once, so a failure leaves no half output and a rerun
    never leaves another video's files (any of :data:`OUTPUTS`) beside these. Returns what
    ``fill`` returns."""
    named = out
    out = Path(os.path.abspath(out))   # "a/../b" is b: no folder a is made on the way
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # A short prefix: a long --out name still leaves room for the random suffix.
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name[:40]}-", dir=out.parent))
    except OSError as err:
        raise OSError(f"{named}: cannot write the output there ({err.strerror or err})") from err
    try:
        with on_signal(lambda signum: shutil.rmtree(tmp, ignore_errors=True)):
            value = fill(tmp)
        out.mkdir(exist_ok=True)
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
        for path in tmp.iterdir():
            os.replace(path, out / path.name)
    except OSError as err:
        # A write that failed in the temporary folder is a failure to write --out.
        if err.filename is None or str(tmp) in str(err.filename) or str(out) in str(err.filename):
            raise OSError(f"{named}: cannot write the output ({err.strerror or err})") from err
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return value


# Every file predict may write; a run removes them all from --out before moving its own in.
OUTPUTS = ("tracks.csv", "transcript.json", "summary.json", "segments.json", "ah.png",
           "tracks.png")


def _predict_into(video: Path, out: Path, level2_model, config) -> dict:
    """Level 1 (and level 2 with ``level2_model``) of ``video``, written into ``out``."""
    result = (api.extract(video, config) if level2_model is None
              else api.Model(level2_model, "").predict(video, config))
    result.save(out)
    return result.summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ahjax predict",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("video")
    parser.add_argument("--out", default=None, help="output folder (default: <video stem>_ahjax)")
    parser.add_argument("--checkpoint", default=None, help="a two_level run folder")
    parser.add_argument("--language", default="en",
                        help="the speech's language for Whisper (default en, which the text "
                             "models read); auto: detected")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(f"{Path(args.video).stem}_ahjax")
    try:
        with exit_on_signals():   # SIGINT/SIGTERM: temporary files removed, one line
            summary = predict(args.video, out, args.checkpoint, args.language)
    except (OSError, ValueError, MediaError) as err:   # bad input: one line, exit 2
        if debug_requested(args.debug):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    for warning in summary.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(summary, indent=1, default=float))
    print(f"written to {out}")
    return 0
