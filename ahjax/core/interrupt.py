"""SIGINT and SIGTERM in a command line: clean up, say so in one line, exit 130 or 143.

Python's default SIGTERM ends the process at once (temporary folders stay) and SIGINT
raises KeyboardInterrupt with a traceback. Within :func:`exit_on_signals` either signal
runs the clean-ups registered with :func:`on_signal` (newest first), prints ``error:
interrupted by SIGTERM`` and ends the process with 128 + the signal number. It does not
raise into the running code: an exception thrown while a native library (XLA, MediaPipe)
is calling back into Python can abort the process instead of unwinding it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_cleanups: list[Callable[[int], str | None]] = []


def add_cleanup(cleanup: Callable[[int], str | None]) -> None:
    """Until :func:`remove_cleanup`, a signal ending the process first calls
    ``cleanup(signum)``; what it returns (if anything) is added to the one-line message."""
    _cleanups.append(cleanup)


def remove_cleanup(cleanup: Callable[[int], str | None]) -> None:
    """Undo :func:`add_cleanup`."""
    _cleanups.remove(cleanup)


@contextlib.contextmanager
def on_signal(cleanup: Callable[[int], str | None]):
    """:func:`add_cleanup` for the duration of the block."""
    add_cleanup(cleanup)
    try:
        yield
    finally:
        remove_cleanup(cleanup)


def _end(signum, frame):
    notes = []
    for cleanup in reversed(list(_cleanups)):
        try:
            note = cleanup(signum)
        except Exception as err:   # a clean-up that fails must not keep the process alive
            note = f"clean-up failed: {err}"
        if note:
            notes.append(note)
    line = f"error: interrupted by {signal.Signals(signum).name}"
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    os.write(2, ("; ".join([line, *notes]) + "\n").encode())
    os._exit(128 + signum)


@contextlib.contextmanager
def exit_on_signals():
    """Within the block, SIGINT and SIGTERM end the process as the module describes
    (main thread only; the earlier handlers come back after the block)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _end) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
