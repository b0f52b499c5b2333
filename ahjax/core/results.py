"""Results tables: ``results.json`` and ``results.md`` from ``{split: {method: {metric: x}}}``."""

from __future__ import annotations

import json
import math
from pathlib import Path

SPLITS = ("test", "val", "train")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_table(value) -> bool:
    """A ``{method: {metric: number, ...}}`` mapping (non-numeric cells such as ``CONF`` allowed)."""
    return isinstance(value, dict) and bool(value) and all(
        isinstance(row, dict) and any(_is_number(x) for x in row.values())
        for row in value.values())


def markdown_table(table: dict, metrics: list[str] | None = None) -> str:
    """A Markdown table with one row per method and one column per metric."""
    if metrics is None:
        metrics = []
        for row in table.values():
            metrics += [m for m, x in row.items() if _is_number(x) and m not in metrics]
    lines = ["| method | " + " | ".join(metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for method, row in table.items():
        cells = []
        for m in metrics:
            x = row.get(m)
            cells.append("" if x is None else (f"{x:.4f}" if isinstance(x, float) and math.isfinite(x) else str(x)))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_markdown(results: dict, title: str = "results") -> str:
    """The ``summary`` (a paragraph, when there is one), every split's table, then any other
    top-level entry that is a table, a ``verdict`` (``{check: bool}``) as a list, the notes."""
    parts = [f"# {title}", ""]
    if isinstance(results.get("summary"), str) and results["summary"]:
        parts += [results["summary"], ""]
    keys = [k for k in SPLITS if k in results] + [k for k in results if k not in SPLITS]
    for key in keys:
        value = results[key]
        if _is_table(value):
            parts += [f"## {key}", "", markdown_table(value), ""]
    checks = results.get("verdict")
    if isinstance(checks, dict) and checks and all(isinstance(v, bool) for v in checks.values()):
        parts += ["## verdict", ""] + [f"- {'yes' if ok else '**no**'}: {k}"
                                       for k, ok in checks.items()] + [""]
    notes = results.get("notes")
    if isinstance(notes, (list, tuple)):
        parts += ["## notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)


def write(results: dict, run_dir: str | Path, title: str = "results") -> None:
    """Write ``results.json`` and ``results.md`` into ``run_dir``."""
    run_dir = Path(run_dir)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (run_dir / "results.md").write_text(to_markdown(results, title))


def write_partial(results: dict, run_dir: str | Path, title: str, done: int, total: int) -> None:
    """``write`` what a long run has so far, marked as partial, so a crash or a stop later
    keeps the finished rows; the run's final ``write`` replaces both files."""
    marked = dict(results)
    marked["notes"] = list(results.get("notes", [])) + [
        f"PARTIAL: {done} of {total} finished so far (the run was still going, or stopped "
        "before the end)."]
    write(marked, run_dir, f"{title} (partial: {done}/{total})")
