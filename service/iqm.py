"""MRIQC's no-reference image-quality metrics (IQMs) for magnitude MR images.

The baselines a no-reference RankIQ model must beat (``rankiq evaluate real``). Formulas follow
MRIQC's ``mriqc/qc/anatomical.py`` (Esteban et al. 2017); MRIQC works on a 3D T1w volume with
an FSL FAST tissue segmentation, while these functions take a single magnitude slice ``(H, W)``
or a stack ``(S, H, W)`` with no segmentation, so the masks are derived from intensities by the
documented rules below. NumPy and ``scipy.ndimage`` only (serving code: no torch, no training).

Masks (per slice; statistics pool all slices of a stack):

* **head** (:func:`head_mask`): Otsu threshold of the intensities, closing (3x3, 2 iterations),
  hole filling (so dark ventricles/CSF inside the head count as head), largest connected
  component (drops isolated background speckle and ghosts outside the object).
* **air** (:func:`air_mask`): outside the head mask dilated (3x3 square) by
  ``AIR_MARGIN_FRACTION`` of the matrix side (at least 2 px), so the partial-volume rim of the
  head is neither.
* **two tissue classes** (:func:`tissue_classes`): a second Otsu threshold of the intensities
  inside the head mask splits it into a dark and a bright class, the stand-in for MRIQC's GM
  and WM labels (which tissue is brighter depends on the contrast; CJV is symmetric).

Directions (:data:`IQMS`): EFC and CJV are *higher is worse*; FBER and SNR are *higher is
better*. An IQM that cannot be computed on an image (no air around the object for FBER, an
empty class) is NaN, never a made-up number.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

#: air starts this fraction of the matrix side outside the head mask (at least 2 px)
AIR_MARGIN_FRACTION = 0.03
#: histogram bins of the Otsu thresholds
OTSU_BINS = 256
#: 3x3 closing iterations of the head mask (bridges thin dark gaps in the object's outline)
CLOSING_ITERATIONS = 2


def _stack(image: np.ndarray) -> np.ndarray:
    """``(S, H, W)`` float64 view of a magnitude ``(H, W)`` or ``(S, H, W)`` image."""
    x = np.asarray(image)
    if np.iscomplexobj(x):
        x = np.abs(x)
    x = x.astype(np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected an (H, W) or (S, H, W) image, got shape {x.shape}")
    return x


def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold of ``values`` (1D): the histogram cut maximising the between-class
    variance. Returns the upper edge of the last bin of the lower class (``values > t`` is the
    upper class); for a constant input, that constant (so the upper class is empty)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def head_mask(image: np.ndarray) -> np.ndarray:
    """Head (object) mask, bool with the shape of ``image`` (see the module docstring)."""
    x = _stack(image)
    out = np.zeros(x.shape, dtype=bool)
    for s, sl in enumerate(x):
        m = sl > otsu_threshold(sl)
        if not m.any():
            continue
        # closing on a padded copy: the image border must not erode an object that touches it
        p = CLOSING_ITERATIONS
        m = ndimage.binary_closing(np.pad(m, p), structure=np.ones((3, 3)),
                                   iterations=p)[p:-p, p:-p]
        m = ndimage.binary_fill_holes(m)
        labels, n = ndimage.label(m)
        if n > 1:
            sizes = np.bincount(labels.ravel())[1:]
            m = labels == (int(np.argmax(sizes)) + 1)
        out[s] = m
    return out.reshape(np.shape(image))


def air_mask(image: np.ndarray, head: np.ndarray | None = None) -> np.ndarray:
    """Air (background) mask: outside the dilated head mask; bool, the shape of ``image``."""
    x = _stack(image)
    h = (head_mask(image) if head is None else np.asarray(head, dtype=bool)).reshape(x.shape)
    margin = max(2, int(round(AIR_MARGIN_FRACTION * max(x.shape[1:]))))
    out = np.zeros(x.shape, dtype=bool)
    for s in range(x.shape[0]):
        out[s] = ~ndimage.binary_dilation(h[s], structure=np.ones((3, 3)), iterations=margin)
    return out.reshape(np.shape(image))


def tissue_classes(image: np.ndarray, head: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(dark, bright)`` bool masks: the head split at the Otsu threshold of its intensities
    (pooled over all slices)."""
    x = _stack(image)
    h = (head_mask(image) if head is None else np.asarray(head, dtype=bool)).reshape(x.shape)
    if not h.any():
        empty = np.zeros(x.shape, dtype=bool).reshape(np.shape(image))
        return empty, empty
    t = otsu_threshold(x[h])
    bright = h & (x > t)
    dark = h & ~bright
    return dark.reshape(np.shape(image)), bright.reshape(np.shape(image))


def efc(image: np.ndarray) -> float:
    """Entropy focus criterion (Atkinson 1997), normalised by its maximum as MRIQC does.

    ``E = -sum_j (x_j / b) ln(x_j / b)`` with ``b = sqrt(sum_j x_j^2)`` over all ``N`` pixels,
    divided by ``E_max = -N (1/sqrt N) ln(1/sqrt N)``, the value of a constant image. So EFC is
    1 for a constant image and 0 when all energy sits in one pixel. **Higher is worse**: ghosts,
    blur and noise spread energy across pixels. NaN for an all-zero image.
    """
    x = np.abs(_stack(image)).ravel()
    n = x.size
    b = float(np.sqrt(np.sum(x**2)))
    if n < 2 or b <= 0:
        return float("nan")
    e_max = n * (1.0 / np.sqrt(n)) * np.log(1.0 / np.sqrt(n))
    return float(np.sum((x / b) * np.log((x + 1e-16) / b)) / e_max)


def fber(image: np.ndarray) -> float:
    """Foreground-background energy ratio (Shehzad 2015; MRIQC's median form):
    ``median(|x|^2 in head) / median(|x|^2 in air)``. **Higher is better**.

    NaN when there is no air or no head. Where MRIQC returns the sentinel -1 for an air region
    without energy (a zeroed background), this returns ``inf`` (the ratio's limit), so that a
    ranking by FBER puts a noise-free background first rather than last.
    """
    x = _stack(image)
    h = head_mask(image).reshape(x.shape)
    a = air_mask(image, h).reshape(x.shape)
    if not h.any() or not a.any():
        return float("nan")
    fg = float(np.median(x[h] ** 2))
    bg = float(np.median(x[a] ** 2))
    if bg <= 0:
        return float("inf")
    return fg / bg


def snr_region(values: np.ndarray) -> float:
    """MRIQC's ``snr``: ``mean / (std * sqrt(n / (n - 1)))`` of the pixels of one region
    (the sample standard deviation). NaN for fewer than 2 pixels or a constant region."""
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    if n < 2:
        return float("nan")
    sd = float(v.std() * np.sqrt(n / (n - 1)))
    return float(v.mean() / sd) if sd > 0 else float("nan")


def snr(image: np.ndarray) -> float:
    """Signal-to-noise ratio from the foreground alone, MRIQC's ``snr_total`` analogue: the
    mean of :func:`snr_region` over the two tissue classes (:func:`tissue_classes`), as MRIQC
    averages it over its CSF/GM/WM masks. Splitting first keeps tissue contrast out of the
    "noise" std. **Higher is better**. NaN when a class is empty or constant."""
    dark, bright = tissue_classes(image)
    x = _stack(image).reshape(np.shape(dark))
    vals = [snr_region(x[m]) for m in (dark, bright)]
    return float(np.mean(vals))


def cjv(image: np.ndarray) -> float:
    """Coefficient of joint variation (Ganzetti 2016):
    ``(sd_bright + sd_dark) / |mean_bright - mean_dark|`` of the two tissue classes (the
    stand-ins for WM and GM). **Higher is worse** (noise, blur and ghosting widen both classes
    and pull their means together). NaN when a class has fewer than 2 pixels or equal means."""
    dark, bright = tissue_classes(image)
    x = _stack(image).reshape(np.shape(dark))
    a, b = x[dark], x[bright]
    if a.size < 2 or b.size < 2:
        return float("nan")
    gap = abs(float(b.mean()) - float(a.mean()))
    if gap <= 0:
        return float("nan")
    return float((a.std(ddof=1) + b.std(ddof=1)) / gap)


#: name -> (function of a magnitude image, higher_is_worse)
IQMS: dict[str, tuple[Callable[[np.ndarray], float], bool]] = {
    "efc": (efc, True),
    "fber": (fber, False),
    "snr": (snr, False),
    "cjv": (cjv, True),
}


def badness(name: str, image: np.ndarray) -> float:
    """IQM ``name`` of ``image`` oriented so that higher is worse (RankIQ's direction)."""
    fn, higher_is_worse = IQMS[name]
    v = fn(image)
    return v if higher_is_worse else -v
