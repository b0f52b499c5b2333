"""Summarise a BAH tree: ``python -m ahjax inspect ROOT [--json]``.

Prints videos, participants, labelled frames and A/H frames per split, as an aligned
table or (``--json``) exactly one JSON object ``{"splits": {split: {videos, participants,
frames, ah_frames, missing_videos}}}``. Split entries whose video file is missing are
counted and named on stderr. A malformed tree exits with status 2 and the error on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from ahjax.core.data.bah import SPLITS, load_bah
from ahjax.core.data.errors import BahFormatError

COLUMNS = ("videos", "participants", "frames", "ah_frames", "missing_videos")


def format_table(summary: dict) -> str:
    """An aligned plain-text table of ``summary["splits"]`` with an A/H share column."""
    rows = [("split",) + COLUMNS + ("ah_share",)]
    for split, c in summary["splits"].items():
        share = f"{c['ah_frames'] / c['frames']:.1%}" if c["frames"] else "-"
        rows.append((split,) + tuple(f"{c[k]:,}" for k in COLUMNS) + (share,))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 on a malformed tree)."""
    parser = argparse.ArgumentParser(prog="python -m ahjax inspect",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("root", help="the BAH dataset root (holding split/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--splits", default=",".join(SPLITS),
                        help="comma-separated splits to read (default train,val,test)")
    args = parser.parse_args(argv)
    try:
        index = load_bah(args.root, tuple(s for s in args.splits.split(",") if s))
    except (BahFormatError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for warning in index.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    summary = index.summary()
    missing = [v.video_id for s in index.splits for v in index.split(s) if v.video_path is None]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        print(f"warning: {len(missing)} split entries have no video file under {args.root}: "
              f"{shown}", file=sys.stderr)
    print(json.dumps(summary) if args.json else format_table(summary))
    return 0
