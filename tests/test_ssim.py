"""training.ssim against an independent, hand-written SSIM (Wang et al. 2004): an explicit
11x11 Gaussian window (sigma 1.5, normalised), population statistics, C1 = (0.01 L)^2,
C2 = (0.03 L)^2, averaged over the pixels whose window lies inside the image."""

from __future__ import annotations

import numpy as np
import pytest
from rankiq.training.ssim import ssim, ssim_batch


def _reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """Direct double loop over window positions; no filtering library."""
    r = 5
    g = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    h, wd = x.shape
    vals = []
    for i in range(r, h - r):
        for j in range(r, wd - r):
            a = x[i - r:i + r + 1, j - r:j + r + 1]
            b = y[i - r:i + r + 1, j - r:j + r + 1]
            mx, my = (w * a).sum(), (w * b).sum()
            vx, vy = (w * (a - mx) ** 2).sum(), (w * (b - my) ** 2).sum()
            cxy = (w * (a - mx) * (b - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2)
                        / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def _pair(seed: int, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n] / n
    x = 0.6 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy) + 0.05 * rng.standard_normal((n, n))
    return x, np.abs(x + 0.1 * rng.standard_normal((n, n)))  # magnitudes, as compared


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_a_hand_written_ssim(seed):
    x, y = _pair(seed)
    want = _reference_ssim(x, y)
    assert 0.2 < want < 0.95  # structure and noise both matter here (C2 is not negligible)
    assert ssim(x, y) == pytest.approx(want, rel=1e-9)
    assert ssim(2 * x, 2 * y, data_range=2.0) == pytest.approx(want, rel=1e-9)


def test_low_contrast_images_depend_on_the_constants():
    # tiny variances: the contrast-structure term is dominated by C2 = (0.03 L)^2
    x, y = _pair(2)
    x, y = 0.5 + 0.01 * (x - 0.5), 0.5 + 0.01 * (y - 0.5)
    assert ssim(x, y) == pytest.approx(_reference_ssim(x, y), rel=1e-9)
    assert ssim_batch(np.stack([x, x]), np.stack([y, x])) == pytest.approx(
        [_reference_ssim(x, y), 1.0], rel=1e-9)
