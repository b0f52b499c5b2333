"""Shared test helpers. pytest puts tests/ on ``sys.path`` for this file, so test modules
import helper modules (``bah_fixture``, ``test_windows``, this one) by name."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def run_python(*args, cwd=REPO, timeout=300) -> subprocess.CompletedProcess:
    """``python -m ARGS`` in a child process from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="session")
def run_module():
    """:func:`run_python` as a fixture: ``run_module("ahjax", "inspect", root)``."""
    return run_python


def encode_frames(out, stream, images, times=None) -> None:
    """Encode RGB ``images`` into ``stream`` of the open container ``out`` and flush it;
    frame i at ``times[i]`` seconds when given (the stream's time base then 1 ms)."""
    import av
    from fractions import Fraction
    for i, img in enumerate(images):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, np.uint8), format="rgb24")
        if times is not None:
            frame.pts, frame.time_base = int(round(times[i] * 1000)), Fraction(1, 1000)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
