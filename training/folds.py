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


def assign_folds(source_ids: Sequence[str] | np.ndarray, n_folds: int, seed: int) -> np.ndarray:
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


#: source-id prefix -> the one volume every such source is synthesised from
SYNTHETIC_VOLUMES = {"brain-": "mni152-2009a", "phantom-": "shepp-logan"}


def source_volume(source_id: str) -> str:
    """The true source volume of a pair's source id.

    Synthetic ``brain-sNNNN`` subjects are all deformations of one MNI152 template volume and
    ``phantom-N`` of one Shepp-Logan phantom; ``nifti-<stem>`` and ``fastmri-<stem>`` are real
    volumes (their own id).
    """
    for prefix, volume in SYNTHETIC_VOLUMES.items():
        if source_id.startswith(prefix):
            return volume
    return source_id


def fold_groups(source_ids: Sequence[str] | np.ndarray, by: str, n_folds: int
                ) -> tuple[np.ndarray, dict]:
    """Grouping keys for :func:`assign_folds` and what they are.

    ``by="volume"`` groups by :func:`source_volume` when there are at least ``n_folds``
    volumes; with fewer (the synthetic brain source has one) it falls back to subjects, and
    the returned info says so. Returns ``(keys (N,) object, {"by", "n_volumes",
    "n_subjects", "fallback"})``.
    """
    ids = np.asarray(source_ids, dtype=object).astype(str)
    vols = np.array([source_volume(s) for s in ids], dtype=object)
    n_vol, n_sub = len(set(vols.tolist())), len(set(ids.tolist()))
    use_volume = by == "volume" and n_vol >= n_folds
    info = {"by": "volume" if use_volume else "subject", "n_volumes": n_vol,
            "n_subjects": n_sub, "fallback": by == "volume" and not use_volume}
    return (vols if use_volume else ids.astype(object)), info


def inner_split(train_idx: np.ndarray, groups: np.ndarray, fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Split training indices into ``(fit, select)``, grouped: about ``fraction`` of the
    groups go to the epoch-selection set. ``groups`` ``(N_all,)`` keys of every item.

    Raises:
        FoldError: fewer than 2 groups among the training indices.
    """
    g = np.asarray(groups, dtype=object)[train_idx]
    n_inner = max(2, round(1 / fraction))
    n_groups = len(set(np.asarray(g).astype(str).tolist()))
    if n_groups < 2:
        raise FoldError("the training folds hold one group only: no inner split for epoch "
                        "selection (use selection 'validation' or more subjects)")
    f = assign_folds(g, min(n_inner, n_groups), seed)
    return train_idx[f != 0], train_idx[f == 0]
