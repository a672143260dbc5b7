"""Shared fixtures-as-functions for the simulator tests (tiny phantom slices)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=4)
def prepared_phantom(size: int = 48, seed: int = 0):
    """A prepared phantom slice (truth, maps, normalised k-space) of side ``size``."""
    from rankiq.training.simulate import SimConfig, prepare_slice
    from rankiq.training.sources import PhantomSource

    cfg = SimConfig()
    return prepare_slice(PhantomSource(cfg.source), 0, seed, size, cfg)


def combine_fit(ps, kspace: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Coil-combined, truth-fitted image of ``kspace`` (as the simulator would store it)."""
    from rankiq.training.reconstruct import reconstruct
    from rankiq.training.simulate import fit_to_truth

    m = np.ones(kspace.shape[-2:], bool) if mask is None else mask
    img, _ = reconstruct(kspace, m, ps.maps, {"method": "combine"})
    return fit_to_truth(img, ps.truth, "combine")[0]
