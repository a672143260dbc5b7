"""Graded corruption ladders of real magnitude images (for ``rankiq evaluate real``).

A ladder is one image at :data:`N_LEVELS` levels of one corruption type: level 0 is the clean
image, levels 1..5 are increasingly corrupted. Every corruption is applied in the k-space of
the magnitude image (centred orthonormal FFT of :mod:`rankiq.service.fft`, the image taken as
real-valued complex data), then the magnitude of the inverse FFT is kept, as a scanner would.

Types and levels (:data:`LEVELS`); the phase-encode (PE) axis is the last one, the
convention of :mod:`rankiq.training.corruptions`:

* ``noise``: complex Gaussian noise of std ``level x`` the head-mask mean intensity
  (:func:`rankiq.service.iqm.head_mask`), added through
  :func:`rankiq.training.corruptions.add_noise`. One noise field per ladder, scaled by the level.
* ``blur``: k-space multiplied by ``exp(-sigma r)``, ``r`` the radius on a ``[-1, 1]``
  k-space grid (1 at the edge of each axis): a Lorentzian-like point spread function.
* ``motion``: one abrupt translation (:func:`rankiq.training.corruptions.motion`): the PE lines
  after 60 % of the acquisition see the object shifted by ``level x`` the matrix side, split
  equally between the two axes (so a 256-matrix shifts 2.6 .. 20 px and a 64-matrix 0.6 .. 5).
* ``undersample``: PE lines dropped at random outside a fully sampled centre (20 % of the
  lines), zero-filled; the level is the fraction of all lines *kept*. The masks are nested:
  every level drops the lines of the level before it and more.

Everything is deterministic for a seed: the ladder of image ``i`` and type ``t`` uses
``numpy.random.default_rng([seed, i, type index])``.
"""

from __future__ import annotations

import numpy as np
from rankiq.service.fft import fft2c, ifft2c
from rankiq.service.iqm import head_mask
from rankiq.training.corruptions import add_noise, center_slice, motion

N_LEVELS = 6
TYPES: tuple[str, ...] = ("noise", "blur", "motion", "undersample")
#: the five corrupted levels of each type (level 0 is the clean image)
LEVELS: dict[str, tuple[float, ...]] = {
    "noise": (0.01, 0.02, 0.04, 0.07, 0.10),  # noise std / head-mask mean
    "blur": (0.3, 0.6, 1.0, 1.6, 2.5),  # sigma of exp(-sigma r)
    "motion": (0.01, 0.02, 0.04, 0.06, 0.08),  # shift / matrix side
    "undersample": (0.9, 0.8, 0.65, 0.5, 0.4),  # fraction of PE lines kept
}
MOTION_START_FRACTION = 0.6
UNDERSAMPLE_CENTER_FRACTION = 0.2


def level_value(kind: str, level: int) -> float:
    """The parameter of ``kind`` at ``level`` (0 = clean: 0 for noise/blur/motion, 1 kept)."""
    if kind not in LEVELS:
        raise ValueError(f"unknown corruption type {kind!r} (one of {', '.join(TYPES)})")
    if not 0 <= level < N_LEVELS:
        raise ValueError(f"level {level} outside 0..{N_LEVELS - 1}")
    if level == 0:
        return 1.0 if kind == "undersample" else 0.0
    return LEVELS[kind][level - 1]


def exp_lowpass(kspace: np.ndarray, sigma: float) -> np.ndarray:
    """``kspace * exp(-sigma r)``, ``r = sqrt(u^2 + v^2)`` with ``u, v`` in ``[-1, 1]`` along
    the two last axes (centred k-space: 0 at DC, 1 at the highest frequency)."""
    nx, ny = kspace.shape[-2:]
    u = (np.arange(nx) - nx // 2) / max(nx // 2, 1)
    v = (np.arange(ny) - ny // 2) / max(ny // 2, 1)
    r = np.sqrt(u[:, None] ** 2 + v[None, :] ** 2)
    return (kspace * np.exp(-sigma * r)).astype(kspace.dtype)


def nested_line_masks(ny: int, kept: tuple[float, ...], center_fraction: float,
                      rng: np.random.Generator) -> list[np.ndarray]:
    """Bool ``(ny,)`` masks of kept PE lines, one per fraction in ``kept`` (decreasing).

    The centre (``center_fraction`` of the lines, :func:`~rankiq.training.corruptions.
    center_slice`) is always kept; outer lines are dropped in one random order, so each mask's
    kept set contains the next one's. The number kept is ``round(fraction * ny)``, at least the
    centre.
    """
    center = np.zeros(ny, dtype=bool)
    center[center_slice(ny, center_fraction)] = True
    order = rng.permutation(np.flatnonzero(~center))  # drop order of the outer lines
    masks = []
    for frac in kept:
        n_drop = min(order.size, max(0, ny - int(round(frac * ny))))
        keep = np.ones(ny, dtype=bool)
        keep[order[:n_drop]] = False
        masks.append(keep)
    return masks


def ladder(image: np.ndarray, kind: str, rng: np.random.Generator) -> list[np.ndarray]:
    """The :data:`N_LEVELS` images of one ladder.

    Args:
        image: magnitude ``(H, W)`` (any real dtype, non-negative).
        kind: one of :data:`TYPES`.
        rng: the ladder's generator (noise field, dropped lines).

    Returns:
        ``N_LEVELS`` float32 ``(H, W)`` magnitude images; index 0 is ``image`` itself (as
        float32, not passed through the FFT).
    """
    if kind not in LEVELS:
        raise ValueError(f"unknown corruption type {kind!r} (one of {', '.join(TYPES)})")
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected an (H, W) image, got shape {x.shape}")
    k = fft2c(x.astype(np.complex64))[None]  # (coils=1, kx, ky)
    levels = LEVELS[kind]
    ks: list[np.ndarray] = []
    if kind == "noise":
        h = head_mask(x)
        fg_mean = float(x[h].mean()) if h.any() else float(x.mean())
        # one noise field (unit level); each level adds it scaled: nested and monotone
        state = rng.bit_generator.state
        for lv in levels:
            rng.bit_generator.state = state
            kn, _ = add_noise(k, lv, np.array([fg_mean]), rng)
            ks.append(kn)
    elif kind == "blur":
        ks = [exp_lowpass(k, s) for s in levels]
    elif kind == "motion":
        ny = k.shape[-1]
        start = int(round(MOTION_START_FRACTION * ny))
        side = max(x.shape)
        for f in levels:
            d = f * side / np.sqrt(2.0)
            ks.append(motion(k, (d, d), start)[0])
    else:  # undersample
        masks = nested_line_masks(k.shape[-1], levels, UNDERSAMPLE_CENTER_FRACTION, rng)
        ks = [k * m[None, None, :] for m in masks]
    out = [x.copy()]
    out += [np.abs(ifft2c(kk)[0]).astype(np.float32) for kk in ks]
    return out


def ladders(image: np.ndarray, seed: int, index: int,
            kinds: tuple[str, ...] = TYPES) -> dict[str, list[np.ndarray]]:
    """Every ladder of one image: ``{type: [level 0 .. level 5]}``, deterministic for
    ``(seed, index)`` (``index`` tells images apart)."""
    return {kind: ladder(image, kind, np.random.default_rng([seed, index, TYPES.index(kind)]))
            for kind in kinds}
