"""Confidence intervals of held-out ranking accuracy.

Pairs of one source share anatomy (and, with the simulated panel, reader draws), so they are
not independent: the cluster bootstrap resamples whole groups (subjects or source volumes);
the Wilson interval treats pairs as independent and is reported beside it for comparison.
"""

from __future__ import annotations

import math

import numpy as np


def wilson_ci(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Wilson score 95 % interval of ``k`` successes in ``n`` trials (None when ``n == 0``)."""
    if n <= 0:
        return None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def cluster_bootstrap_ci(correct: np.ndarray, groups: np.ndarray, n_boot: int = 2000,
                         seed: int = 0) -> tuple[float, float] | None:
    """Percentile 95 % interval of the accuracy ``mean(correct)`` resampling whole groups.

    Args:
        correct: bool ``(N,)`` per held-out pair.
        groups: ``(N,)`` group key per pair (subject or source volume).

    Returns:
        ``(lo, hi)``, or None with fewer than 2 groups (a single group cannot be resampled).
    """
    correct = np.asarray(correct, dtype=np.float64)
    keys, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    if len(keys) < 2:
        return None
    ok = np.bincount(inv, weights=correct, minlength=len(keys))
    n = np.bincount(inv, minlength=len(keys)).astype(np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    acc = ok[pick].sum(1) / np.maximum(n[pick].sum(1), 1)
    lo, hi = np.percentile(acc, [2.5, 97.5])
    return (float(lo), float(hi))


def held_out_accuracy(correct: np.ndarray, groups: np.ndarray, seed: int = 0) -> dict:
    """Pooled held-out accuracy with both intervals: ``{"accuracy", "n", "n_groups",
    "ci95_cluster_bootstrap", "ci95_wilson"}`` (fractions)."""
    correct = np.asarray(correct, dtype=bool)
    n = int(correct.size)
    return {"accuracy": float(correct.mean()) if n else None, "n": n,
            "n_groups": int(len(np.unique(np.asarray(groups).astype(str)))),
            "ci95_cluster_bootstrap": cluster_bootstrap_ci(correct, groups, seed=seed),
            "ci95_wilson": wilson_ci(int(correct.sum()), n)}
