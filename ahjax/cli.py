"""``python -m ahjax COMMAND ...``: the command lines.

``extract`` (level 1 over a BAH tree or a folder of videos), ``predict`` (one video, end
to end), ``stream`` (A/H while a video plays or a camera films), ``inspect`` (a BAH tree's
counts) and ``demo`` (write the synthetic demo tree). ``python -m ahjax COMMAND --help``
says more; bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from ahjax.core.assets import enable_compilation_cache
from ahjax.core.config import debug_requested
from ahjax.core.interrupt import exit_on_signals, on_signal


def extract_main(argv: list[str] | None = None) -> int:
    """Level 1 over every video of ``--root`` into the feature store."""
    # Here, not at the top: level 1 imports JAX and its encoders; inspect and demo stay light.
    from level1_affect.dataset import ExtractConfig, default_store_dir, extract_dataset

    enable_compilation_cache()  # reuse compiled encoders across runs ($AHJAX_JAX_CACHE=0: off)

    parser = argparse.ArgumentParser(prog="python -m ahjax extract", description=EXTRACT_HELP)
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


EXTRACT_HELP = """level 1 over a BAH tree or a folder of videos."""


COMMANDS = {
    "extract": ("level 1 for every video of a BAH tree or folder (resumable)", "ahjax.cli", "extract_main"),
    "predict": ("one video, end to end: tracks, transcript, A/H with --checkpoint", "ahjax.predict", "main"),
    "stream": ("A/H while a video plays or a camera films, one JSON line per chunk", "ahjax.streaming", "main"),
    "inspect": ("a BAH tree's counts per split", "ahjax.core.data.inspect", "main"),
    "demo": ("write the synthetic demo dataset", "ahjax.core.data.demo", "main"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``COMMAND args`` to that command's own parser."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name.ljust(width)}  {help_}" for name, (help_, _, _) in COMMANDS.items()]
        print("usage: python -m ahjax COMMAND [args]\n\ncommands:\n" + "\n".join(lines),
              file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    _, module, function = COMMANDS[argv[0]]
    return getattr(importlib.import_module(module), function)(argv[1:])
