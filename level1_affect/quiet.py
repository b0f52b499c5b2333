"""Silence native libraries' log lines (MediaPipe's C++ absl logging ignores GLOG_* and
prints a few WARNING lines per graph it builds) unless the user asks for them.

``AHJAX_NATIVE_LOGS=1`` keeps them. Python's own ``sys.stderr`` (warnings, tracebacks,
progress bars) is flushed before and untouched after; only file descriptor 2 is pointed at
``/dev/null`` for the duration of the block, so an error raised inside still propagates.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_native_stderr():
    """Within the block, native code writing to fd 2 writes to /dev/null."""
    if os.environ.get("AHJAX_NATIVE_LOGS", "") not in ("", "0"):
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):   # no real fd (e.g. captured): leave it
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            try:
                yield
            finally:
                os.dup2(saved, fd)
    finally:
        os.close(saved)
