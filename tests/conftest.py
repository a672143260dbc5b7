"""Shared pytest configuration.

Workers put their own fixtures in their test modules or tests/helpers_<area>.py; this file only
holds what every test needs.
"""

from __future__ import annotations

import os
import re
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


# -- marker consistency ----------------------------------------------------------------------------
# `make test-fast` runs `-m "not slow and not torch"`; a test that needs torch or a live server
# but lacks its marker would slow the fast loop or fail without the train extra, so collection
# refuses it.
_NEEDS_TORCH = re.compile(r"^\s*(import torch\b|from torch\b"
                          r"|(\w+ = )?pytest\.importorskip\(.torch.\)"
                          r"|from helpers_(export|train) import)", re.M)
_SERVER_FIXTURES = {"server", "live_server"}  # fixtures that start a live service


def _source(obj: object) -> str:
    import inspect

    try:
        return inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse tests whose needs (torch, a live server) are not stated by their markers."""
    problems = []
    module_torch: dict[str, bool] = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        if module.__name__ not in module_torch:
            module_torch[module.__name__] = bool(_NEEDS_TORCH.search(_source(module)))
        func = getattr(item, "function", None)
        needs_torch = module_torch[module.__name__] or bool(
            func is not None and _NEEDS_TORCH.search(_source(func)))
        if needs_torch and item.get_closest_marker("torch") is None:
            problems.append(f"{item.nodeid}: needs torch but is not marked torch")
        if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) and (
                item.get_closest_marker("slow") is None):
            problems.append(f"{item.nodeid}: starts a live server but is not marked slow")
    if problems:
        raise pytest.UsageError("inconsistent test markers:\n  " + "\n  ".join(problems))
