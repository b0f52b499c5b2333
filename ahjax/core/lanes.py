"""Work side by side in daemon threads: :class:`Beside` runs one function beside the caller,
:func:`in_lanes` runs jobs on a few lanes at once.

On a small CPU one XLA program rarely keeps every core busy (compilation, small steps,
Python between them), and two programs side by side fill each other's gaps. Each job
computes what it computes alone; only the wall time changes. The threads are daemons, so a
signal that ends the process does not wait for them; an exception in a job is raised in
the caller's thread.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Hashable, Sequence


class Beside(threading.Thread):
    """``fn()`` in a daemon thread, started by :meth:`start`; :meth:`result` joins it and
    returns its value or raises its exception."""

    def __init__(self, fn: Callable[[], Any], name: str = "ahjax-beside"):
        super().__init__(name=name, daemon=True)
        self._fn, self._value, self._error = fn, None, None

    def run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as err:   # re-raised in the caller's thread by result()
            self._error = err

    def result(self) -> Any:
        self.join()
        if self._error is not None:
            raise self._error
        return self._value


def in_lanes(jobs: Sequence[tuple[Hashable, Callable[[], Any]]], lanes: int) -> dict:
    """``{key: fn()}`` for the ``(key, fn)`` of ``jobs``, started in their order on at most
    ``lanes`` daemon threads (each lane takes the next job when its last one ends), in the
    order of ``jobs``. The first exception stops the lanes taking new jobs and is raised
    as soon as it happens (a job still running on another lane is left to the process)."""
    if lanes < 1:
        raise ValueError(f"in_lanes: lanes={lanes}, must be at least 1")
    keys = [key for key, _ in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"in_lanes: job keys repeat: {keys}")
    pending = list(jobs)
    results: dict = {}
    errors: list[BaseException] = []
    changed = threading.Condition()

    def lane() -> None:
        while True:
            with changed:
                if errors or not pending:
                    return
                key, fn = pending.pop(0)
            try:
                value = fn()
            except BaseException as err:   # raised in the caller's thread below
                with changed:
                    errors.append(err)
                    changed.notify_all()
                return
            with changed:
                results[key] = value
                changed.notify_all()

    for i in range(min(lanes, len(jobs))):
        threading.Thread(target=lane, name=f"ahjax-lane-{i}", daemon=True).start()
    with changed:
        while not errors and len(results) < len(jobs):
            changed.wait()
    if errors:
        raise errors[0]
    return {key: results[key] for key in keys}
