"""Tiny training data for the training tests: a synthetic pairs file and label CSVs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from helpers_pairs import write_synthetic_pairs


def mse_labels(pairs: Path) -> dict[int, str]:
    """An easy ranking: the image with the lower MSE to the reference is better."""
    import h5py

    with h5py.File(pairs, "r") as f:
        mse = f["mse"][:]
        pids = f["pair_id"][:]
    return {int(p): ("1" if m[0] < m[1] else "2") for p, m in zip(pids, mse, strict=True)}


def write_consensus(path: Path, labels: dict[int, str]) -> Path:
    """A consensus CSV (``pair_id,outcome,n_votes,n_readers,agreement``)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["pair_id", "outcome", "n_votes", "n_readers", "agreement"])
        for pid, o in sorted(labels.items()):
            w.writerow([pid, o, 3, 3, "1.0"])
    return path


def easy_data(tmp: Path, n_pairs: int = 48, size: int = 32, seed: int = 0,
              n_sources: int = 12) -> tuple[Path, Path]:
    """(pairs file, consensus CSV) with MSE-ordered labels."""
    pairs = write_synthetic_pairs(tmp / "pairs.h5", n_pairs, size=size, seed=seed,
                                  n_sources=n_sources)
    return pairs, write_consensus(tmp / "consensus.csv", mse_labels(pairs))


def rng_images(n: int, size: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """float32 ``(n, channels, size, size)`` standard normal images."""
    return np.random.default_rng(seed).standard_normal((n, channels, size, size)).astype(
        np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny convolutions run fastest on one thread (and the machine is shared); restored.
    Import it into a test module to apply it there (autouse, module scope)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
