"""k-space corruptions of the paper's "Images for Ranking" section, as pure functions.

Array conventions (those of :mod:`rankiq.service.fft`): multi-coil k-space is complex
``(coils, kx, ky)``, centred (DC at index ``N // 2`` of each axis). ``kx`` (axis -2) is the
readout; ``ky`` (axis -1) is the phase-encode (PE) direction, so a "PE line" is
``kspace[..., :, j]`` and lines are acquired in order ``j = 0 .. Ny - 1``. Spatial frequencies
are in cycles per image pixel, ``f = (i - N//2) / N`` along each axis. The simulator corrupts
k-space after removing the 2x readout oversampling (S x S); the functions work on either grid,
and on an oversampled one the pixel size is unchanged (the field of view doubles with the
sample count), so shifts and blur widths in pixels mean the same.

Each ``apply`` function takes the k-space, explicit parameters (and a ``numpy.random.Generator``
where it draws a mask) and returns ``(corrupted_kspace, params)``, ``params`` being a JSON-ready
dict with everything needed to reproduce or grade the corruption. :func:`draw_plan` draws which
corruptions an image gets and their levels; :func:`apply_plan` applies them in the fixed
physical order ``motion -> noise -> blur -> undersample_1d -> undersample_2d`` (the object moves
during acquisition, noise is acquired with the data, a low-pass filter is applied to what was
acquired, and lines/points that were never acquired hold neither signal nor noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rankiq.training.config import JsonConfig

CORRUPTIONS: tuple[str, ...] = ("blur", "undersample_1d", "undersample_2d", "noise", "motion")
APPLY_ORDER: tuple[str, ...] = ("motion", "noise", "blur", "undersample_1d", "undersample_2d")
#: numeric severity per corruption type (0 when absent), the ``/severity/<name>`` datasets
SEVERITY_NAMES: tuple[str, ...] = (
    "blur_sigma",
    "undersample_1d_fraction",
    "undersample_2d_fraction",
    "noise_level",
    "motion_shift_px",
    "motion_start_fraction",
)


@dataclass(frozen=True)
class CorruptionConfig(JsonConfig):
    """Ranges of the random corruptions (all configurable; defaults and their reasons in
    README, "Simulated training pairs").

    Attributes:
        max_corruptions: each image gets ``k ~ U{0..max}`` distinct corruption types.
        blur_sigma_px: Gaussian point-spread-function std in image pixels, ``U(lo, hi)``.
        us1d_drop: fraction of the PE lines *outside the centre* that are dropped, ``U(lo, hi)``.
        us1d_center: fully sampled central fraction of the PE lines, ``U(lo, hi)``.
        us2d_drop: fraction of the points outside the central rectangle dropped, ``U(lo, hi)``.
        us2d_center: side of the fully sampled centre as a fraction of each axis, ``U(lo, hi)``.
        noise_level: ``n`` in ``n * sigma``, ``U(lo, hi)``.
        noise_edge_fraction: width of each k-space edge (fraction of the PE lines; 30 of 396 in
            the reference) used to estimate the per-coil noise sigma.
        motion_max_shift_px: shift per moving axis ``U(-max, max)`` pixels.
        motion_two_axes_prob: probability of moving along both axes (else one, at random).
        motion_start_std: std of the start line as a fraction of the PE lines (mean Ny/2).
        motion_center_exclusion: no motion when the start falls within this central fraction.
    """

    max_corruptions: int = 5
    blur_sigma_px: tuple[float, float] = (0.0, 2.0)
    us1d_drop: tuple[float, float] = (0.0, 0.30)
    us1d_center: tuple[float, float] = (0.20, 0.40)
    us2d_drop: tuple[float, float] = (0.0, 0.20)
    us2d_center: tuple[float, float] = (0.20, 0.40)
    noise_level: tuple[float, float] = (0.0, 12.0)
    noise_edge_fraction: float = 30 / 396
    motion_max_shift_px: float = 20.0
    motion_two_axes_prob: float = 0.5
    motion_start_std: float = 0.2
    motion_center_exclusion: float = 0.10


def frequencies(n: int) -> np.ndarray:
    """Centred spatial frequencies of an ``n``-sample axis in cycles per pixel (float64)."""
    return (np.arange(n) - n // 2) / n


def estimate_noise_sigma(kspace: np.ndarray, edge_fraction: float = 30 / 396) -> np.ndarray:
    """Per-coil noise level from the k-space edges (the reference's estimator).

    The median magnitude of the outermost PE lines on each side (``edge_fraction`` of the lines,
    at least one), ignoring exact zeros (zero-filled edges of real data). For complex Gaussian
    noise with ``E|n|^2 = sigma^2`` the median of ``|n|`` is ``sigma * sqrt(ln 2)``, which is
    divided out so the estimate is the complex standard deviation.

    Args:
        kspace: complex ``(coils, kx, ky)``.
        edge_fraction: fraction of the ``ky`` lines on each side.

    Returns:
        float64 ``(coils,)``; 0 for a coil whose edges are all zero.
    """
    ny = kspace.shape[-1]
    w = max(1, int(round(edge_fraction * ny)))
    edge = np.concatenate([kspace[..., :w], kspace[..., ny - w :]], axis=-1)
    mag = np.abs(edge).reshape(edge.shape[0], -1).astype(np.float64)
    out = np.zeros(edge.shape[0])
    for c in range(edge.shape[0]):
        nz = mag[c][mag[c] > 0]
        out[c] = np.median(nz) / math.sqrt(math.log(2)) if nz.size else 0.0
    return out


def blur(kspace: np.ndarray, sigma_px: float) -> tuple[np.ndarray, dict]:
    """Gaussian low-pass: convolve the image with a Gaussian of std ``sigma_px`` pixels.

    In k-space this is ``exp(-2 pi^2 sigma^2 |f|^2)`` with ``f`` in cycles/pixel.
    """
    fx = frequencies(kspace.shape[-2])[:, None]
    fy = frequencies(kspace.shape[-1])[None, :]
    h = np.exp(-2 * math.pi**2 * sigma_px**2 * (fx**2 + fy**2)).astype(np.float32)
    edge = float(np.exp(-2 * math.pi**2 * sigma_px**2 * 0.25))
    return (kspace * h).astype(kspace.dtype), {"sigma_px": float(sigma_px),
                                                "edge_attenuation": edge}


def center_slice(n: int, fraction: float) -> slice:
    """The central ``round(fraction * n)`` indices of an ``n``-sample axis, centred on n//2."""
    w = min(n, max(0, int(round(fraction * n))))
    start = n // 2 - w // 2
    return slice(start, start + w)


def undersample_1d_mask(
    ny: int, drop_fraction: float, center_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean ``(ny,)`` mask of kept PE lines: the centre is kept, ``round(drop * outer)`` of
    the outer lines are dropped at random."""
    keep = np.ones(ny, dtype=bool)
    center = np.zeros(ny, dtype=bool)
    center[center_slice(ny, center_fraction)] = True
    outer = np.flatnonzero(~center)
    n_drop = int(round(drop_fraction * outer.size))
    if n_drop:
        keep[rng.choice(outer, size=n_drop, replace=False)] = False
    return keep


def undersample_1d(
    kspace: np.ndarray, drop_fraction: float, center_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, dict, np.ndarray]:
    """Drop PE lines outside a fully sampled centre.

    Returns:
        ``(kspace, params, mask)`` with ``mask`` bool ``(kx, ky)`` of sampled points.
    """
    nx, ny = kspace.shape[-2:]
    keep = undersample_1d_mask(ny, drop_fraction, center_fraction, rng)
    dropped = int((~keep).sum())
    params = {
        "drop_fraction": float(drop_fraction),
        "center_fraction": float(center_fraction),
        "lines_dropped": dropped,
        "lines_total": ny,
        "dropped_fraction_total": dropped / ny,
    }
    mask = np.broadcast_to(keep[None, :], (nx, ny))
    return kspace * keep[None, None, :], params, mask


def undersample_2d_mask(
    shape: tuple[int, int], drop_fraction: float, center_fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Boolean ``shape`` mask of kept points: a central rectangle (``center_fraction`` of each
    axis, a square in k-space units) is kept, ``round(drop * outer)`` outer points dropped."""
    nx, ny = shape
    center = np.zeros(shape, dtype=bool)
    center[center_slice(nx, center_fraction), center_slice(ny, center_fraction)] = True
    outer = np.flatnonzero(~center.ravel())
    keep = np.ones(nx * ny, dtype=bool)
    n_drop = int(round(drop_fraction * outer.size))
    if n_drop:
        keep[rng.choice(outer, size=n_drop, replace=False)] = False
    return keep.reshape(shape)


def undersample_2d(
    kspace: np.ndarray, drop_fraction: float, center_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, dict, np.ndarray]:
    """Drop individual k-space points outside a fully sampled central square.

    Returns:
        ``(kspace, params, mask)`` with ``mask`` bool ``(kx, ky)`` of kept points.
    """
    shape = kspace.shape[-2:]
    keep = undersample_2d_mask(shape, drop_fraction, center_fraction, rng)
    dropped = int((~keep).sum())
    total = int(keep.size)
    params = {
        "drop_fraction": float(drop_fraction),
        "center_fraction": float(center_fraction),
        "points_dropped": dropped,
        "points_total": total,
        "dropped_fraction_total": dropped / total,
    }
    return kspace * keep, params, keep


def add_noise(
    kspace: np.ndarray, level: float, sigma: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """Add complex Gaussian noise of standard deviation ``level * sigma[c]`` to coil ``c``
    (``E|n|^2 = (level sigma)^2``; real and imaginary parts each ``level sigma / sqrt(2)``)."""
    std = (level * np.asarray(sigma, dtype=np.float64) / math.sqrt(2)).astype(np.float32)
    shape = kspace.shape
    noise = rng.standard_normal(shape, dtype=np.float32) + 1j * rng.standard_normal(
        shape, dtype=np.float32
    )
    noise *= std.reshape((-1,) + (1,) * (len(shape) - 1))
    return (kspace + noise).astype(kspace.dtype), {
        "level": float(level),
        "sigma_mean": float(np.mean(sigma)),
    }


def motion(
    kspace: np.ndarray, shift_px: tuple[float, float], start_line: int
) -> tuple[np.ndarray, dict]:
    """One abrupt translation during acquisition: PE lines ``j >= start_line`` see the object
    shifted by ``shift_px = (dx, dy)`` pixels (readout, PE), i.e. a linear phase
    ``exp(-2 pi i (fx dx + fy dy))``; earlier lines are untouched."""
    nx, ny = kspace.shape[-2:]
    start = int(min(max(start_line, 0), ny))
    out = kspace.copy()
    fx = frequencies(nx)[:, None]
    fy = frequencies(ny)[None, start:]
    phase = np.exp(-2j * math.pi * (fx * shift_px[0] + fy * shift_px[1])).astype(np.complex64)
    out[..., start:] *= phase
    return out, {
        "shift_px": [float(shift_px[0]), float(shift_px[1])],
        "shift_euclidean_px": float(math.hypot(*shift_px)),
        "start_line": start,
        "start_fraction": start / ny,
        "lines_moved": ny - start,
    }


def _uniform(rng: np.random.Generator, lohi: tuple[float, float]) -> float:
    return float(rng.uniform(lohi[0], lohi[1]))


def draw_plan(rng: np.random.Generator, ny: int, cfg: CorruptionConfig) -> dict[str, dict]:
    """Draw which corruptions an image gets (``k ~ U{0..max}`` distinct types) and their levels.

    Args:
        rng: the image's generator.
        ny: number of PE lines (for the motion start line).
        cfg: ranges.

    Returns:
        ``{type: draw}`` for the chosen types, e.g. ``{"noise": {"level": 3.2}}``. A motion draw
        whose start falls in the central exclusion zone (or outside the lines) has
        ``"applied": False`` and changes nothing, as in the reference.
    """
    k = int(rng.integers(0, cfg.max_corruptions + 1))
    k = min(k, len(CORRUPTIONS))
    chosen = sorted(rng.choice(len(CORRUPTIONS), size=k, replace=False).tolist())
    plan: dict[str, dict] = {}
    for idx in chosen:
        name = CORRUPTIONS[idx]
        if name == "blur":
            plan[name] = {"sigma_px": _uniform(rng, cfg.blur_sigma_px)}
        elif name == "undersample_1d":
            plan[name] = {"drop_fraction": _uniform(rng, cfg.us1d_drop),
                          "center_fraction": _uniform(rng, cfg.us1d_center)}
        elif name == "undersample_2d":
            plan[name] = {"drop_fraction": _uniform(rng, cfg.us2d_drop),
                          "center_fraction": _uniform(rng, cfg.us2d_center)}
        elif name == "noise":
            plan[name] = {"level": _uniform(rng, cfg.noise_level)}
        elif name == "motion":
            two = bool(rng.random() < cfg.motion_two_axes_prob)
            m = cfg.motion_max_shift_px
            shift = [float(rng.uniform(-m, m)), float(rng.uniform(-m, m))]
            if not two:
                shift[int(rng.integers(0, 2))] = 0.0
            start = int(round(rng.normal(ny / 2, cfg.motion_start_std * ny)))
            central = abs(start - ny / 2) < cfg.motion_center_exclusion * ny / 2
            plan[name] = {"shift_px": shift, "start_line": start,
                          "applied": bool(not central and 0 <= start < ny)}
    return plan


def apply_plan(
    kspace: np.ndarray, plan: dict[str, dict], sigma: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, dict]]:
    """Apply a drawn plan in :data:`APPLY_ORDER`.

    Args:
        kspace: complex64 ``(coils, kx, ky)``, not modified.
        plan: from :func:`draw_plan`.
        sigma: per-coil noise sigma ``(coils,)`` (:func:`estimate_noise_sigma` of clean data).
        rng: generator for noise and masks.

    Returns:
        ``(kspace, mask, params)``: the corrupted k-space, the bool ``(kx, ky)`` sampling mask
        (all True without undersampling) and ``{type: params}`` of what was applied.
    """
    k = kspace
    mask = np.ones(kspace.shape[-2:], dtype=bool)
    params: dict[str, dict] = {}
    for name in APPLY_ORDER:
        if name not in plan:
            continue
        d = plan[name]
        if name == "motion":
            if d["applied"]:
                k, p = motion(k, tuple(d["shift_px"]), d["start_line"])
                params[name] = {"applied": True, **p}
            else:
                ny = kspace.shape[-1]
                params[name] = {"applied": False, "shift_px": d["shift_px"],
                                "shift_euclidean_px": 0.0, "start_line": d["start_line"],
                                "start_fraction": d["start_line"] / ny, "lines_moved": 0}
        elif name == "noise":
            k, params[name] = add_noise(k, d["level"], sigma, rng)
        elif name == "blur":
            k, params[name] = blur(k, d["sigma_px"])
        elif name == "undersample_1d":
            k, params[name], m = undersample_1d(k, d["drop_fraction"], d["center_fraction"], rng)
            mask = mask & m
        elif name == "undersample_2d":
            k, params[name], m = undersample_2d(k, d["drop_fraction"], d["center_fraction"], rng)
            mask = mask & m
    return k.astype(np.complex64, copy=False), mask, params


def severity(params: dict[str, dict]) -> dict[str, float]:
    """Numeric severity per :data:`SEVERITY_NAMES` from applied params (0 when absent).

    Undersampling severities are the fraction of *all* PE lines / k-space points dropped.
    """
    out = dict.fromkeys(SEVERITY_NAMES, 0.0)
    if "blur" in params:
        out["blur_sigma"] = params["blur"]["sigma_px"]
    if "undersample_1d" in params:
        out["undersample_1d_fraction"] = params["undersample_1d"]["dropped_fraction_total"]
    if "undersample_2d" in params:
        out["undersample_2d_fraction"] = params["undersample_2d"]["dropped_fraction_total"]
    if "noise" in params:
        out["noise_level"] = params["noise"]["level"]
    if "motion" in params and params["motion"]["applied"]:
        out["motion_shift_px"] = params["motion"]["shift_euclidean_px"]
        out["motion_start_fraction"] = params["motion"]["start_fraction"]
    return out
