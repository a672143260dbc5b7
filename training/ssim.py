"""Structural similarity (SSIM) on magnitude images, numpy/scipy only.

The standard definition of Wang et al. (2004) with the usual constants: a Gaussian window of
standard deviation 1.5 pixels truncated to 11x11, ``K1 = 0.01``, ``K2 = 0.03``, population
(not sample) statistics, and the mean taken over the pixels whose window lies fully inside the
image (a 5-pixel border is left out). This matches ``skimage.metrics.structural_similarity``
with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``.

Complex inputs are reduced to magnitudes first: the pair constraint, the stored ``/ssim`` and the
trainer's SSIM baseline all compare ``|image|`` with ``|reference|`` at ``data_range=1`` (the
reference's maximum magnitude is 1).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

SIGMA = 1.5
#: truncate * sigma = 5 -> an 11x11 window
TRUNCATE = 3.5
K1, K2 = 0.01, 0.03
_PAD = int(TRUNCATE * SIGMA + 0.5)


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Per-pixel SSIM of ``|a|`` and ``|b|``.

    Args:
        a, b: real or complex ``(..., H, W)`` of the same shape (leading axes are a batch).
        data_range: the dynamic range of the images (1 for max-normalised images).

    Returns:
        float64 ``(..., H, W)`` SSIM map, border pixels included (use :func:`ssim` for the mean
        over the valid interior).
    """
    x = np.abs(np.asarray(a)).astype(np.float64)
    y = np.abs(np.asarray(b)).astype(np.float64)
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ, {x.shape} vs {y.shape}")
    sig = (0.0,) * (x.ndim - 2) + (SIGMA, SIGMA)

    def filt(z: np.ndarray) -> np.ndarray:
        return gaussian_filter(z, sig, truncate=TRUNCATE, mode="reflect")

    ux, uy = filt(x), filt(y)
    vx = filt(x * x) - ux * ux
    vy = filt(y * y) - uy * uy
    vxy = filt(x * y) - ux * uy
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim_batch(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Mean SSIM per image of two stacks.

    Args:
        a, b: real or complex ``(N, H, W)`` (or ``(H, W)``), magnitudes are compared.
        data_range: dynamic range (1 for max-normalised images).

    Returns:
        float64 ``(N,)`` (a 0-d array for 2D input). Images must be larger than 10x10.
    """
    m = ssim_map(a, b, data_range)
    h, w = m.shape[-2:]
    if h <= 2 * _PAD or w <= 2 * _PAD:
        raise ValueError(f"ssim: images of {h}x{w} are smaller than the 11x11 window")
    return m[..., _PAD : h - _PAD, _PAD : w - _PAD].mean(axis=(-2, -1))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM of two 2D images (magnitudes of complex input), in [-1, 1]; 1 when equal."""
    if np.ndim(a) != 2:
        raise ValueError(f"ssim: expected 2D images, got shape {np.shape(a)}")
    return float(ssim_batch(a, b, data_range))


def mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared error of magnitudes over the last two axes: ``mean((|a| - |b|)^2)``."""
    d = np.abs(np.asarray(a)).astype(np.float64) - np.abs(np.asarray(b)).astype(np.float64)
    return np.mean(d * d, axis=(-2, -1))
