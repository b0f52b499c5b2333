"""``python -m ahjax.extract --root ROOT [--out DIR] [--workers N]``: level 1 over a BAH tree or a folder of videos.

Runs every encoder (face, voice, text) over each video into the feature store, with a
progress bar; videos already extracted are skipped, so a killed run resumes; a failing
video is reported and skipped (the first few by name, all in ``failures.json``), and the
exit status is 1 when any failed. Prints a summary (videos done/skipped/failed, seconds per
encoder, real-time factor) at the end. ``ROOT`` is a BAH tree (it has a ``split/``
folder) or any folder of video files (ids: their paths without suffix, no labels).
``--workers N`` (N > 1) spreads the videos over N Ray actors, each loading the models once,
on a local Ray (``pip install -e ".[distributed]"``) or, with ``--ray-address``, on an
existing cluster whose nodes all see ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ahjax.config import debug_requested
from ahjax.interrupt import exit_on_signals, on_signal


def main(argv: list[str] | None = None) -> int:
    from ahjax.assets import enable_compilation_cache
    from level1_affect.extract import ExtractConfig, default_store_dir, extract_dataset

    enable_compilation_cache()  # reuse compiled encoders across runs ($AHJAX_JAX_CACHE=0: off)

    parser = argparse.ArgumentParser(prog="python -m ahjax.extract", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True,
                        help="BAH dataset root, or a folder of video files")
    parser.add_argument("--out", help="feature store folder (default: under AHJAX_CACHE)")
    parser.add_argument("--splits", default="train,val,test")
    parser.add_argument("--asr", default="auto", choices=["auto", "always", "never"])
    parser.add_argument("--detect-every", type=int, default=ExtractConfig.detect_every,
                        help="face landmarker every K-th frame, interpolated between "
                             f"(default {ExtractConfig.detect_every}; 1 = every frame)")
    parser.add_argument("--talk-type", default="learned",
                        help="change/sustain talk: learned (default), lexicon or a model folder")
    parser.add_argument("--workers", type=int, default=1,
                        help="extraction workers; more than 1 runs on Ray (default 1)")
    parser.add_argument("--ray-address", default=None,
                        help="join this Ray cluster (e.g. auto, ray://head:10001) instead of "
                             "starting a local one")
    parser.add_argument("--language", default="en",
                        help="the speech's language for Whisper (default en); auto: detected")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (or AHJAX_DEBUG=1)")
    args = parser.parse_args(argv)
    try:
        cfg = ExtractConfig(asr=args.asr, detect_every=args.detect_every,
                            talk_type=args.talk_type, language=args.language)
        # Same default folder as the experiments use, so `--data.root` finds these features.
        out = Path(args.out) if args.out else default_store_dir(args.root, cfg)
        if args.workers < 1:
            raise ValueError(f"--workers {args.workers}: must be at least 1")
        # SIGINT/SIGTERM: one line; what is stored stays (each video is written at once).
        with exit_on_signals(), on_signal(lambda signum: "a rerun resumes"):
            summary = extract_dataset(args.root, out, cfg, splits=tuple(args.splits.split(",")),
                                      workers=args.workers, ray_address=args.ray_address)
    except (OSError, ValueError, ImportError) as err:   # bad input: one line, exit 2
        if debug_requested(args.debug):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    secs = summary["seconds"]
    total = sum(secs.values())
    if summary["video_seconds"]:
        summary["real_time_factor"] = total / summary["video_seconds"]
    summary["out"] = str(out)
    failed = summary.pop("failed")
    # Counts only: the failures themselves are in failures.json (there may be thousands).
    summary["failed"] = len(failed)
    summary["failures"] = str(out / "failures.json")
    print(json.dumps(summary, indent=1))
    return 1 if failed else 0   # any video failed: non-zero, after the others were done


if __name__ == "__main__":
    sys.exit(main())
