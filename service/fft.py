"""Centred 2D Fourier transforms and coil combination, shared by serving and simulation.

Conventions follow fastMRI (``fastmri/data/transforms.py``): k-space and images are centred
(DC in the middle), transforms are orthonormal, and the last two axes are the 2D plane
``(..., kx, ky)`` / ``(..., x, y)``. ``scipy.fft`` with ``workers`` is used because it is about
twice as fast as NumPy for multi-coil slices.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from rankiq.service.settings import fft_workers  # threads, decided at each call


def fft2c(image: np.ndarray, workers: int | None = None) -> np.ndarray:
    """Centred orthonormal 2D FFT over the last two axes.

    Args:
        image: complex array ``(..., x, y)``.
        workers: FFT threads (default :func:`fft_workers`).

    Returns:
        complex k-space ``(..., kx, ky)``, same shape and precision.
    """
    axes = (-2, -1)
    shifted = scipy.fft.ifftshift(image, axes=axes)
    k = scipy.fft.fft2(shifted, axes=axes, norm="ortho", workers=workers or fft_workers())
    return scipy.fft.fftshift(k, axes=axes)


def ifft2c(kspace: np.ndarray, workers: int | None = None) -> np.ndarray:
    """Centred orthonormal inverse 2D FFT over the last two axes.

    Args:
        kspace: complex array ``(..., kx, ky)``.
        workers: FFT threads (default :func:`fft_workers`).

    Returns:
        complex image ``(..., x, y)``, same shape and precision.
    """
    axes = (-2, -1)
    shifted = scipy.fft.ifftshift(kspace, axes=axes)
    img = scipy.fft.ifft2(shifted, axes=axes, norm="ortho", workers=workers or fft_workers())
    return scipy.fft.fftshift(img, axes=axes)


def rss(coil_images: np.ndarray, coil_axis: int = -3) -> np.ndarray:
    """Root-sum-of-squares coil combination.

    Args:
        coil_images: complex ``(..., coils, x, y)``.
        coil_axis: axis holding the coils.

    Returns:
        real magnitude ``(..., x, y)`` (float32 for complex64 input).
    """
    mag2 = coil_images.real**2 + coil_images.imag**2
    return np.sqrt(mag2.sum(axis=coil_axis))


def coil_combine(coil_images: np.ndarray, maps: np.ndarray, coil_axis: int = -3) -> np.ndarray:
    """Sensitivity-weighted (Roemer) coil combination: sum_c conj(S_c) x_c / sum_c |S_c|^2.

    Args:
        coil_images: complex ``(..., coils, x, y)``.
        maps: complex sensitivity maps broadcastable to ``coil_images``.
        coil_axis: axis holding the coils.

    Returns:
        complex image ``(..., x, y)``; pixels where the maps vanish are 0.
    """
    num = (np.conj(maps) * coil_images).sum(axis=coil_axis)
    den = (np.abs(maps) ** 2).sum(axis=coil_axis)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 1e-12)
    return out


def center_crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre-crop (or keep) the last two axes to ``shape``, fastMRI's convention.

    Raises ValueError when ``shape`` is larger than the image.
    """
    h, w = image.shape[-2:]
    th, tw = shape
    if th > h or tw > w:
        raise ValueError(f"cannot crop {(h, w)} to larger {shape}")
    top, left = (h - th) // 2, (w - tw) // 2
    return image[..., top : top + th, left : left + tw]


def center_pad(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad the last two axes symmetrically to ``shape`` (a no-op where already that size).

    The original sits at offset ``(H - h) // 2``, the same centre ``center_crop`` uses, so
    ``center_crop(center_pad(x, s), x.shape[-2:])`` returns ``x``.
    """
    h, w = image.shape[-2:]
    th, tw = shape
    if th < h or tw < w:
        raise ValueError(f"cannot pad {(h, w)} to smaller {shape}")
    out = np.zeros(image.shape[:-2] + (th, tw), dtype=image.dtype)
    top, left = (th - h) // 2, (tw - w) // 2
    out[..., top : top + h, left : left + w] = image
    return out
