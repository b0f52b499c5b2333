"""Shared test helpers. pytest puts tests/ on ``sys.path`` for this file, so test modules
import helper modules (``bah_fixture``, ``test_windows``, this one) by name."""

import subprocess
import sys
from pathlib import Path

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
