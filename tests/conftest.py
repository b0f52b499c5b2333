"""Shared test helpers. pytest puts tests/ on ``sys.path`` for this file, so test modules
import helper modules (``bah_fixture``, ``test_windows``) by name."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def run_module():
    """``run_module("ahjax", "inspect", root)``: ``python -m ...`` in a child process from the
    repository root, output captured as text."""
    def run(*args, cwd=REPO, timeout=300):
        return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True,
                              text=True, cwd=cwd, timeout=timeout)
    return run
