"""K-fold cross-validation grouped by source subject.

The reference split the pairs into contiguous blocks, so slices of one brain could sit in both
the training and the validation set. Here every ``source_id`` (subject/volume) lands in exactly
one validation fold: groups are shuffled with the seed, then assigned largest first to the fold
with the fewest pairs so far (ties: lowest fold), which keeps the folds balanced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rankiq.service.errors import RankIQError


class FoldError(RankIQError):
    """Folds that cannot be formed (fewer subjects than folds)."""

    reason = "bad_folds"


def assign_folds(source_ids: Sequence[str], n_folds: int, seed: int) -> np.ndarray:
    """Validation fold of every item, grouped by source.

    Args:
        source_ids: ``(N,)`` subject id of each labelled pair.
        n_folds: K >= 2.
        seed: seed of the group shuffle.

    Returns:
        int64 ``(N,)`` fold index in ``0..K-1``; items with the same source share a fold.

    Raises:
        FoldError: ``K < 2`` or fewer distinct sources than folds.
    """
    ids = np.asarray(source_ids, dtype=object)
    groups, inverse, counts = np.unique(ids.astype(str), return_inverse=True, return_counts=True)
    if n_folds < 2:
        raise FoldError(f"need at least 2 folds, got {n_folds}")
    if len(groups) < n_folds:
        raise FoldError(f"{len(groups)} source subject(s) cannot fill {n_folds} folds "
                        "(folds are grouped by subject)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(groups))
    order = order[np.argsort(-counts[order], kind="stable")]  # largest first, shuffled ties
    load = np.zeros(n_folds, np.int64)
    group_fold = np.empty(len(groups), np.int64)
    for g in order:
        k = int(np.argmin(load))
        group_fold[g] = k
        load[k] += counts[g]
    return group_fold[inverse]


def split(folds: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, val_indices)`` of fold ``k`` (int64, ascending)."""
    folds = np.asarray(folds)
    return np.flatnonzero(folds != k), np.flatnonzero(folds == k)
