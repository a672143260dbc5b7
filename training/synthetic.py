"""Fresh single-coil corruptions of a clean reference (cheap, for distillation and Figure 6).

The simulator corrupts multi-coil k-space and reconstructs with SigPy (seconds per image at
396 px). Here the reference image itself is the "acquisition": its centred 2D FFT is corrupted
with the simulator's own functions (:mod:`rankiq.training.corruptions`, same order and ranges) and
inverse transformed (a zero-filled single-coil reconstruction), milliseconds per image. The
noise level ``n`` multiplies the noise sigma estimated from the reference's k-space edges, with
a floor of ``NOISE_FLOOR`` times the k-space RMS for noise-free references.
"""

from __future__ import annotations

import numpy as np
from rankiq.service.fft import fft2c, ifft2c
from rankiq.training.corruptions import (
    CorruptionConfig,
    add_noise,
    apply_plan,
    blur,
    draw_plan,
    estimate_noise_sigma,
    motion,
    undersample_1d,
    undersample_2d,
)

NOISE_FLOOR = 0.01
#: Figure 6 corruption types and the level grid (units: px, fraction of outer lines/points
#: dropped, noise multiple, motion shift px)
LEVELS: dict[str, np.ndarray] = {
    "blur": np.linspace(0.0, 2.0, 9),
    "undersample_1d": np.linspace(0.0, 0.3, 9),
    "undersample_2d": np.linspace(0.0, 0.2, 9),
    "noise": np.linspace(0.0, 12.0, 9),
    "motion": np.linspace(0.0, 20.0, 9),
}
UNITS = {"blur": "PSF sigma (px)", "undersample_1d": "outer PE lines dropped",
         "undersample_2d": "outer points dropped", "noise": "noise level (x sigma)",
         "motion": "shift (px)"}


def _kspace(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = fft2c(np.asarray(reference, np.complex64))[None]
    sigma = estimate_noise_sigma(k)
    floor = NOISE_FLOOR * float(np.sqrt(np.mean(np.abs(k) ** 2)))
    return k, np.maximum(sigma, floor)


def random_corruption(reference: np.ndarray, rng: np.random.Generator,
                      cfg: CorruptionConfig | None = None) -> np.ndarray:
    """A randomly corrupted copy of ``reference`` (complex ``(S, S)``), complex64 ``(S, S)``:
    ``k ~ U{0..5}`` corruption types drawn as in the simulator."""
    k, sigma = _kspace(reference)
    plan = draw_plan(rng, k.shape[-1], cfg or CorruptionConfig())
    out, _, _ = apply_plan(k, plan, sigma, rng)
    return ifft2c(out[0]).astype(np.complex64)


def single_corruption(reference: np.ndarray, kind: str, level: float,
                      rng: np.random.Generator) -> np.ndarray:
    """``reference`` (complex ``(S, S)``) with one corruption ``kind`` at ``level`` (see
    :data:`LEVELS` for units); complex64 ``(S, S)``. Undersampling keeps a 30 % centre; motion
    shifts along the phase-encode axis starting at 60 % of the lines."""
    k, sigma = _kspace(reference)
    if kind == "blur":
        k, _ = blur(k, level)
    elif kind == "undersample_1d":
        k, _, _ = undersample_1d(k, level, 0.3, rng)
    elif kind == "undersample_2d":
        k, _, _ = undersample_2d(k, level, 0.3, rng)
    elif kind == "noise":
        k, _ = add_noise(k, level, sigma, rng)
    elif kind == "motion":
        k, _ = motion(k, (0.0, float(level)), int(0.6 * k.shape[-1]))
    else:
        raise ValueError(f"unknown corruption {kind!r} (expected one of {tuple(LEVELS)})")
    return ifft2c(k[0]).astype(np.complex64)
