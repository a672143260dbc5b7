"""Shared pytest configuration.

Workers put their own fixtures in their test modules or tests/helpers_<area>.py; this file only
holds what every test needs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # so tests can `import helpers_<area>`

# Tests share 2 cores with each other's subprocesses: keep native thread pools small.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("RANKIQ_FFT_WORKERS", "2")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where pyproject.toml lives)."""
    return REPO


@pytest.fixture(scope="session")
def rankiq_exe() -> Path:
    """The installed ``rankiq`` console script of the environment running the tests."""
    exe = Path(sys.executable).parent / "rankiq"
    assert exe.exists(), f"rankiq console script not installed next to {sys.executable}"
    return exe
