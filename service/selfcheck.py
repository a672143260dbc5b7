"""Start-up self-check of loaded models on a built-in synthetic image.

The service reports ready (``/readyz``) only after every model passed: the graphs run on this
machine's provider, return finite scores of the right shape, are deterministic, score an image
against itself (reference mode) without error, give classifier probabilities that sum to 1 and,
where there is a saliency graph, maps of the network input's shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rankiq.service.io.types import ImageSeries

if TYPE_CHECKING:
    from rankiq.service.models import ScoringModel


def phantom(n: int = 96, *, seed: int = 0) -> np.ndarray:
    """A head-like synthetic complex image ``(n, n)`` (complex64): nested ellipses with a
    smooth phase and a little noise. Deterministic for a given ``seed``."""
    y, x = np.mgrid[-1:1:complex(0, n), -1:1:complex(0, n)]
    img = np.zeros((n, n), np.float32)
    for cx, cy, a, b, v in ((0, 0, 0.72, 0.92, 1.0), (0, 0, 0.66, 0.86, -0.6),
                            (0.22, 0.1, 0.12, 0.3, 0.3), (-0.22, 0.1, 0.14, 0.32, 0.25),
                            (0, -0.45, 0.2, 0.1, 0.35)):
        img += v * (((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1)
    rng = np.random.default_rng(seed)
    img = np.clip(img, 0, None) + 0.01 * rng.standard_normal((n, n)).astype(np.float32)
    phase = np.exp(1j * 0.8 * (x + 0.5 * y)).astype(np.complex64)
    return (img * phase).astype(np.complex64)


def synthetic_series(image: np.ndarray) -> ImageSeries:
    """Wrap a complex ``(H, W)`` image as a one-slice series (magnitude and complex pixels)."""
    cplx = image[None].astype(np.complex64)
    return ImageSeries(pixels=np.abs(cplx).astype(np.float32), kind="fastmri",
                       series_key="selfcheck", contrast="other", complex_pixels=cplx)


def self_check(model: ScoringModel) -> None:
    """Run the checks listed in the module docstring on ``model``.

    Raises:
        RuntimeError: naming the first failed check.
    """
    from rankiq.service.scoring import score_series

    clean = phantom()
    rng = np.random.default_rng(1)
    noisy = clean + 0.08 * (rng.standard_normal(clean.shape)
                            + 1j * rng.standard_normal(clean.shape)).astype(np.complex64)
    img, ref = synthetic_series(noisy), synthetic_series(clean)
    reference = ref if model.mode == "reference" else None
    first = score_series(model, img, reference)
    again = score_series(model, img, reference)
    if first.scores.shape != (1,) or not np.isfinite(first.scores).all():
        raise RuntimeError(f"{model.name}: scores of shape {first.scores.shape}, finite="
                           f"{bool(np.isfinite(first.scores).all())}")
    if not np.allclose(first.scores, again.scores, rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"{model.name}: scores differ between two identical runs")
    if model.mode == "reference":
        same = score_series(model, ref, ref)
        if not np.isfinite(same.scores).all():
            raise RuntimeError(f"{model.name}: non-finite score for an image against itself")
    probs = model.classify(first.scores, first.scores)
    if probs.shape != (1, 3) or not np.isclose(probs.sum(), 1.0, atol=1e-6):
        raise RuntimeError(f"{model.name}: classifier probabilities {probs!r}")
    if model.has_saliency:
        sal = score_series(model, img, reference, saliency=True)
        want = (1, model.channels, *model.grid)
        if model.kind == "features":  # saliency on the slice's own analysis grid
            from rankiq.service.noref import analysis_grid

            want = (1, 1, *analysis_grid(img.pixels[0]).shape)
        if sal.saliency is None or sal.saliency.shape != want:
            raise RuntimeError(f"{model.name}: saliency shape "
                               f"{None if sal.saliency is None else sal.saliency.shape} != {want}")
        if not np.allclose(sal.scores, first.scores, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"{model.name}: saliency graph scores differ from score graph")
