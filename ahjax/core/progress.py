"""A run's plan, said up front, and one line as each of its stages starts and ends.

``Plan([Stage(...), ...])`` holds what a run will do, with a rough duration per stage (0 for
a stage whose result is cached); ``plan.line()`` is the one line printed before anything
starts, and ``with plan.stage(i):`` prints ``[i/n] name: about ...`` and then how long the
stage really took, so a user sees which stage the bars below belong to and how far along
the run is. The estimates come from the caller (docs/performance.md says where they come from).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from typing import Sequence


def fmt_seconds(seconds: float) -> str:
    """``seconds`` in words a user reads at a glance: ``40 s``, ``3 min``, ``1 h 5 min``."""
    seconds = max(float(seconds), 0.0)
    if seconds < 10:
        return f"{int(round(seconds))} s"
    if seconds < 90:   # to the nearest 5 s: an estimate, not a measurement
        return f"{int(round(seconds / 5.0)) * 5} s"
    minutes = int(round(seconds / 60.0))
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a run: its name, what it works on, its estimated seconds (0 when
    ``cached``), and a note such as ``"48 of 56 videos cached"``."""
    name: str
    what: str = ""
    seconds: float = 0.0
    cached: bool = False
    note: str = ""
    # A stage that runs beside another (its name): ``adds`` is what it adds to the run's
    # total, less than its own ``seconds`` because the two share the machine.
    beside: str = ""
    adds: float | None = None

    def estimate(self) -> str:
        """``cached``, or ``about 3 min`` (with the note, when there is one)."""
        if self.cached:
            return "cached" + (f" ({self.note})" if self.note else "")
        text = f"about {fmt_seconds(self.seconds)}"
        if self.beside:
            text += f" beside the {self.beside}"
        return text + (f", {self.note}" if self.note else "")


class Plan:
    """The stages of one run; prints to ``stream`` (stdout by default: the bars are on
    stderr, and an error's one line stays the first line there)."""

    def __init__(self, stages: Sequence[Stage], title: str = "plan", stream=None):
        self.stages = list(stages)
        self.title = title
        self.stream = stream
        self.took: dict[str, float] = {}

    @property
    def seconds(self) -> float:
        """The estimated total in seconds (a stage beside another counts what it adds)."""
        return float(sum(s.seconds if s.adds is None else s.adds
                         for s in self.stages if not s.cached))

    def line(self) -> str:
        """One line: every stage with its estimate, then the total."""
        parts = [f"{i}. {s.name}" + (f" ({s.what})" if s.what else "") + f": {s.estimate()}"
                 for i, s in enumerate(self.stages, 1)]
        return (f"{self.title}: " + "; ".join(parts)
                + f". In all about {fmt_seconds(self.seconds)}.")

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def announce(self) -> None:
        """Print :meth:`line`."""
        self._print(self.line())

    @contextlib.contextmanager
    def stage(self, index: int):
        """Announce stage ``index`` (1-based), run the body, then say how long it took."""
        s = self.stages[index - 1]
        n = len(self.stages)
        self._print(f"[{index}/{n}] {s.name}" + (f" ({s.what})" if s.what else "")
                    + f": {s.estimate()}")
        t0 = time.time()
        yield s
        took = time.time() - t0
        self.took[s.name] = took
        self._print(f"[{index}/{n}] {s.name}: done in {fmt_seconds(took)}")
