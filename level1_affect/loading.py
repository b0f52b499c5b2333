"""Lazy model loading that threads may share: each model is built once, under one lock.

Loading imports heavy libraries (transformers' lazy module is not safe to import from two
threads at once) and reads weights; inference on a loaded model needs no lock.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

#: Held while any level-1 model is built; re-entrant, so a loader may load another.
LOAD_LOCK = threading.RLock()


def load_once(owner: Any, attr: str, build: Callable[[], Any]) -> Any:
    """``owner.attr``, built by ``build()`` on first use (once, whatever the threads)."""
    value = getattr(owner, attr)
    if value is None:
        with LOAD_LOCK:
            value = getattr(owner, attr)
            if value is None:
                value = build()
                setattr(owner, attr, value)
    return value
