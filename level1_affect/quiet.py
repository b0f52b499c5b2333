"""Silence native libraries' log lines (MediaPipe's C++ absl logging ignores GLOG_* and
prints a few WARNING lines per graph it builds) unless the user asks for them.

``AHJAX_NATIVE_LOGS=1`` keeps them. Python's own ``sys.stderr`` is flushed before; only
file descriptor 2 is pointed at ``/dev/null`` while at least one thread is inside the
block, and restored when the last one leaves, so an error raised inside still propagates.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from ahjax.core import interrupt

# fd 2 is one per process: the first thread in saves it, the last one out restores it.
_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None


def _enter(fd: int) -> None:
    global _depth, _saved_fd
    with _lock:
        if _depth == 0:
            sys.stderr.flush()
            _saved_fd = os.dup(fd)
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
            interrupt.add_cleanup(_give_back)   # a signal's last line must be seen
        _depth += 1


def _leave(fd: int) -> None:
    global _depth, _saved_fd
    with _lock:
        _depth -= 1
        if _depth == 0 and _saved_fd is not None:
            interrupt.remove_cleanup(_give_back)
            try:
                os.dup2(_saved_fd, fd)
            finally:
                os.close(_saved_fd)
                _saved_fd = None


def _give_back(signum: int) -> None:
    """fd 2 back before a signal ends the process (no lock: the handler may interrupt a
    thread that holds it)."""
    if _saved_fd is not None:
        os.dup2(_saved_fd, 2)


@contextlib.contextmanager
def quiet_native_stderr():
    """Within the block, native code writing to fd 2 writes to /dev/null (thread-safe:
    overlapping blocks in several threads restore fd 2 once, when the last one ends)."""
    if os.environ.get("AHJAX_NATIVE_LOGS", "") not in ("", "0"):
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):   # no real fd (e.g. captured): leave it
        yield
        return
    _enter(fd)
    try:
        yield
    finally:
        _leave(fd)
