"""Is an input inside what a model was trained on? (``in_range`` and its reasons)

A model's ``metadata.json`` may carry a ``domain`` written at export from its training data::

    {"matrix": [lo, hi],              # largest in-plane side, pixels
     "spacing_mm": [lo, hi],          # in-plane pixel spacing, mm
     "feature_mean": [...],           # features models: mean of the training features (F,)
     "feature_precision": [[...]],    # inverse covariance (F, F) of the training features
     "distance_p99": d,               # 99th percentile of the training Mahalanobis distances
     "distance_cut": c}               # beyond it a slice is out of distribution (default p99)

Reasons (short codes, in this order): ``not_mr`` (the Modality is not MR), ``matrix_too_small``
/ ``matrix_too_large``, ``spacing_too_small`` / ``spacing_too_large`` (when the spacing is
known), ``features_out_of_distribution`` (features models: the median slice is farther from the
training features than ``distance_cut``, 1.25 times the farthest training slice, which
includes heavily corrupted ones: a cartoon, a photograph or a non-MR image is out, a badly
blurred MR image is in and gets flagged), ``dark_tissue`` (features models: in the median slice
the tissue darker than the features' foreground cut spans more than ``DARK_TISSUE_MAX`` times
the foreground, :func:`rankiq.service.noref.dark_tissue`: muscle in a T1 shoulder or limb, which
the brain-trained features read as noisy air). Scores out of range are still returned:
callers label them (HTTP, CLI) or report the series as not assessable (batch QA).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

#: ``dark_tissue`` beyond this ratio is out of range. Nearly all training acquisitions (MNI152
#: and Colin27 brains) stay below it: 150 simulated ones gave a 99th percentile of 1.12 clean
#: and 1.24 corrupted (a few single slices reach 1.9-2.1); real brain and abdomen slices
#: 1.00-1.22 at every corruption level; a real T1 shoulder (muscle below 15 % of the fat) 1.63.
DARK_TISSUE_MAX = 1.4

if TYPE_CHECKING:
    from rankiq.service.io.types import ImageSeries
    from rankiq.service.models import ScoringModel


def mahalanobis(features: np.ndarray, domain: dict[str, Any]) -> np.ndarray:
    """Distances ``(S,)`` of feature rows ``(S, F)`` from the training distribution."""
    mu = np.asarray(domain["feature_mean"], np.float64)
    prec = np.asarray(domain["feature_precision"], np.float64)
    d = np.asarray(features, np.float64) - mu
    return np.sqrt(np.maximum(np.einsum("sf,fg,sg->s", d, prec, d), 0.0))


def check_range(model: ScoringModel, series: ImageSeries, x: np.ndarray,
                blank: np.ndarray, dark_tissue: np.ndarray | None = None
                ) -> tuple[bool, tuple[str, ...]]:
    """``(in_range, reasons)`` for a series scored by ``model`` (``x``: its network input
    ``(S, ...)``; ``blank``: bool ``(S,)``; ``dark_tissue``: a features model's per-slice
    :attr:`rankiq.service.noref.FeatureInput.dark_tissue`, ``(S,)``)."""
    reasons: list[str] = []
    if str(series.modality or "MR").upper() != "MR":
        reasons.append("not_mr")
    domain = model.metadata.get("domain") or {}
    if "matrix" in domain:
        side = max(series.pixels.shape[-2:])
        lo, hi = domain["matrix"]
        if side < lo:
            reasons.append("matrix_too_small")
        elif side > hi:
            reasons.append("matrix_too_large")
    if "spacing_mm" in domain and series.pixel_spacing:
        sp = min(float(s) for s in series.pixel_spacing)
        lo, hi = domain["spacing_mm"]
        if sp < lo:
            reasons.append("spacing_too_small")
        elif sp > hi:
            reasons.append("spacing_too_large")
    if model.kind == "features" and "feature_precision" in domain:
        keep = ~np.asarray(blank, bool)
        if keep.any():
            dist = mahalanobis(np.asarray(x)[keep], domain)
            cut = float(domain.get("distance_cut", domain["distance_p99"]))
            if float(np.median(dist)) > cut:
                reasons.append("features_out_of_distribution")
    if model.kind == "features" and dark_tissue is not None:
        keep = ~np.asarray(blank, bool)
        if keep.any() and float(np.median(np.asarray(dark_tissue)[keep])) > DARK_TISSUE_MAX:
            reasons.append("dark_tissue")
    return not reasons, tuple(reasons)
