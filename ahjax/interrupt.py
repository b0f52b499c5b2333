"""SIGINT and SIGTERM as an exception, so a command line cleans up and ends in one line.

Python's default SIGTERM ends the process at once (no ``finally``: temporary folders stay)
and SIGINT raises KeyboardInterrupt with a traceback. Inside :func:`signals_raise` both
raise :class:`Interrupted` in the main thread instead: ``finally`` blocks run, and the
command prints ``error: interrupted by SIGTERM`` and exits 128 + the signal (130, 143).
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A signal asked the process to stop (a BaseException: ``except Exception`` in a
    per-video loop must not swallow it). ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _raise(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise():
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only;
    elsewhere, and after the block, the handlers are left as they were)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
