"""No-reference image-quality features of one magnitude slice (pure NumPy/SciPy, no torch).

The no-reference model (:mod:`rankiq.service.models`, ``kind: "features"``) scores a slice
from a small set of physically defined measurements, combined by a scorer fitted to graded
corruption ladders of realistic simulated acquisitions and the reference-subtracted IQ-Net's
order (``rankiq train-noref``, :mod:`rankiq.training.noref`). Every measurement is relative
to the slice's own tissue level, so the score does not depend on intensity scale, and is
taken on an *analysis grid* that never upsamples.

Analysis grid (:func:`analysis_grid`): zero rows and columns at the border (padding of the
field of view) are cropped, the slice is zero-padded to a square; a side above
``ANALYSIS_MAX`` is brought down to it by Fourier cropping (the scanner's own interpolation),
a smaller one is kept as acquired. A 512x512 and a 256x256 acquisition of the same field of
view thus land on the same grid, and a 64x64 slice is never interpolated into blur. A slice
the scanner interpolated to a larger matrix than it acquired (zero-filled interpolation, as
the DICOM header says: :func:`interpolation_factor`) is taken back to the acquired sampling
first (its acquired samples for an integer factor, :func:`acquired_lattice`; else a Fourier
crop): interpolation is a low-pass filter, and read at the interpolated grid it looks like
blur.

Masks (:func:`masks`): *pad* = pixels outside the bounding box of the non-zero pixels (zero
padding added by the grid or present in the file); *foreground* = the image smoothed by a
Gaussian (sigma ``SMOOTH_PX``) above ``FG_FRACTION`` of its maximum, holes filled; *air* =
pad-free pixels farther than ``AIR_MARGIN`` of the side from the foreground, exact zeros
included (air the scanner masked is noise-free air). The tissue *level* is the median of the
foreground.

Features (:data:`FEATURES`, all dimensionless, higher = worse unless noted):

* ``noise``: log of the noise standard deviation over the level. The noise is the median
  absolute response of Immerkaer's Laplacian-difference kernel inside the foreground,
  divided by 0.6745 (Gaussian MAD) and the kernel's norm 6; structure adds little to a median.
* ``air``: log of the mean air intensity over the level (thermal noise, ghosts and aliasing
  land in the air); when a slice has no air it takes ``noise + log(1.25)`` (a Rayleigh floor).
* ``air_far``: the same for air farther than ``FAR`` of the side from the foreground (ghosts
  of a larger displacement land farther out; the thermal floor is the same everywhere).
* ``air_reach``: how far from the foreground the air's excess over its own median lies: the
  excess-weighted mean distance (fraction of the side) over the plain mean distance of the
  air pixels (about 1 for a uniform floor; ghosts of a larger displacement reach farther).
* ``air_structure``: log of (RMS / mean) of the non-zero air: 0.12 for a Rayleigh floor,
  more for ghosts and aliasing that are brighter in some places than in others.
* ``ghost``: ``|log|`` of the ratio of the mean air intensity beside the foreground along
  the columns (above/below it) to that along the rows (left/right of it): motion and 1D
  undersampling replicate the object along the phase-encode axis only, thermal noise is
  isotropic (0 without air on both sides).
* ``echo``: the largest autocorrelation of the Laplacian-filtered slice at lags of 3 px to a
  quarter of the side, in any direction (Fisher z): an object displaced during the
  acquisition leaves a shifted copy of its edges, white noise and a single set of edges
  do not correlate at such lags.
* ``blur``: the Crete-Roffet blur measure of the foreground (1 - the fraction of first
  differences that a 9-pixel box blur removes; larger = blurrier), as a logit.
* ``band_k``: log of the share of the slice's spectral energy (DC excluded) in radial band
  ``k`` of ``BANDS`` (cycles per pixel of the analysis grid): noise raises the high bands,
  blur lowers them, undersampling removes parts of them.
* ``efc``: MRIQC's entropy focus criterion of the analysis grid (its zero padding cropped,
  so padding the field of view changes nothing; masked air adds no entropy): ghosting,
  noise and blur spread the energy (higher). Up to 2.4.0 it was normalised by the dilated
  foreground's area, which grew with added noise inside the anatomy (``FEATURES_VERSION``).
* ``border`` (context, not a defect): the share of the outermost ring of the slice's
  non-zero bounding box that lies in the foreground: about 0 for a whole head in air or in a
  masked background, near 1 for a field of view inside the anatomy, where "air" is dark
  tissue and the air features mean something else.

Air gate (:func:`air_weight`, 2.3.0): the five air features (``AIR_FEATURES``) are blended
towards their values for a slice without air (``NO_AIR``) as ``border`` rises from 0.2 to 0.6
(weight 1 -> 0, linear). Inside the anatomy the pixels below the foreground cut are CSF,
sulci and muscle, whose "noise", "reach" and "structure" are anatomy: the scorer learnt them
from few simulated crops and read them backwards on real ones (adding noise to pydicom's
``emri_small`` crops lowered their score). A whole head in air is unaffected (``border`` ~0).

Arrays: slices are float ``(H, W)`` magnitudes; features float64 ``(F,)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from rankiq.service import noref_kernels as kernels
from rankiq.service.fft import center_pad
from rankiq.service.preprocess import to_grid

ANALYSIS_MAX = 256
#: what a ``features`` model's ``metadata.json`` must say in ``features_version`` (absent: "1")
#: for this module to compute its inputs: "2" (2.5.0) normalises ``efc`` by the analysis
#: grid's area, "1" by the dilated foreground's
FEATURES_VERSION = "2"
#: the smallest analysis side an acquired-matrix crop may give (px)
MIN_ANALYSIS = 32
#: an original image larger than its acquired matrix by more than this factor (and at most
#: by INTERPOLATION_MAX: beyond, the header is not believed) is cropped back to it
INTERPOLATION_MIN, INTERPOLATION_MAX = 1.05, 8.0
#: on an interpolation's acquired samples, values below this fraction of the slice's peak
#: are the round-off of masked (zero) air
ROUND_OFF = 1e-6
SMOOTH_PX = 1.5
FG_FRACTION = 0.15
DARK_MIN = 0.05  # dark_tissue: the lower cut, at least this fraction of the peak, ...
DARK_AIR_FACTOR = 3.0  # ... else this many times the darkest level ...
DARK_AIR_QUANTILE = 0.05  # ... which is this quantile of the smoothed slice in its non-zero box
AIR_MARGIN = 1 / 32
FAR = 1 / 8
BANDS: tuple[float, ...] = (0.0, 0.04, 0.08, 0.15, 0.25, 0.35, 0.5, 0.71)
IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
FEATURES: tuple[str, ...] = (
    "noise", "air", "air_far", "air_reach", "air_structure", "ghost", "echo", "blur",
    *(f"band_{i}" for i in range(len(BANDS) - 1)), "efc", "border",
)
_EPS = 1e-6
AIR_MIN = 1e-3  # air below this fraction of the tissue level is not measurable (round-off)
AIR_FLOOR = math.log(AIR_MIN)  # ``air`` of a slice without measurable air
#: ``border`` below which the air features count fully, above which not at all (linear in
#: between, so the score never jumps): a field of view inside the anatomy has no air, and
#: what lies below the foreground cut there is dark tissue (see :func:`air_weight`)
AIR_GATE: tuple[float, float] = (0.2, 0.6)
#: the features measured in the air, and their values for a slice without air
AIR_FEATURES: tuple[str, ...] = ("air", "air_far", "air_reach", "air_structure", "ghost")
NO_AIR: tuple[float, ...] = (AIR_FLOOR, AIR_FLOOR, 0.0, math.log(1.128), 0.0)


def acquired_lattice(shape: tuple[int, int], interpolation: float
                     ) -> tuple[int, int, int] | None:
    """Where an integer interpolation's acquired samples lie: ``(step, row0, col0)``, so that
    ``x[row0::step, col0::step]`` is the acquired matrix, or ``None`` (no interpolation, a
    non-integer factor, a side not divisible by it, or fewer than :data:`MIN_ANALYSIS` px).

    Zero-filled interpolation by an integer factor (a scanner's ZIP) passes through the
    acquired samples, so taking them back is exact. Fourier-cropping the interpolated
    *magnitude* is not: where the scanner masked the air before interpolating, the magnitude
    of the ringing at the mask's edge is positive, and cropping leaves it in the air, which then
    reads as ghosting (+53 % and +101 % on two real masked slices). The offsets put the centre
    samples together (``side // 2``, the centred FFT's origin).
    """
    step = int(round(interpolation))
    if step < 2 or abs(interpolation - step) > 0.02:
        return None
    h, w = shape
    if h % step or w % step or max(h, w) // step < MIN_ANALYSIS:
        return None
    return step, h // 2 - step * (h // step // 2), w // 2 - step * (w // step // 2)


def analysis_box(x: np.ndarray, interpolation: float = 1.0) -> tuple[int, int, int, int] | None:
    """The region ``(row0, row1, col0, col1)`` of an ``(H, W)`` slice that
    :func:`analysis_grid` analyses (its exact-zero border cropped, on the acquired lattice
    where there is one), in the slice's own pixels; ``None`` for a blank slice."""
    px = np.abs(np.asarray(x))
    return _box(px, acquired_lattice((px.shape[0], px.shape[1]), interpolation))


def _box(px: np.ndarray, lattice: tuple[int, int, int] | None
         ) -> tuple[int, int, int, int] | None:
    """:func:`analysis_box` of a magnitude slice ``px`` whose :func:`acquired_lattice` is
    known (what :func:`analysis_grid` has at hand)."""
    h, w = px.shape
    step, r_off, c_off = lattice if lattice is not None else (1, 0, 0)
    px = px[r_off::step, c_off::step]
    if lattice is not None:
        px = px >= ROUND_OFF * float(px.max(initial=0.0))
    rows, cols = np.flatnonzero(px.any(axis=1)), np.flatnonzero(px.any(axis=0))
    if not (rows.size and cols.size):
        return None
    return (r_off + step * int(rows[0]), min(h, r_off + step * (int(rows[-1]) + 1)),
            c_off + step * int(cols[0]), min(w, c_off + step * (int(cols[-1]) + 1)))


def analysis_grid(x: np.ndarray, interpolation: float = 1.0) -> np.ndarray:
    """``(H, W)`` magnitude -> float32 ``(G, G)``: take back the acquired samples of an
    integer interpolation (:func:`acquired_lattice`), crop exact-zero border rows and columns
    (field-of-view padding), zero-pad to square, Fourier-crop the side to what was acquired
    where the factor is not an integer (``side / interpolation``, from
    :func:`interpolation_factor`) and to at most :data:`ANALYSIS_MAX`; never upsample."""
    x = np.abs(np.asarray(x)).astype(np.float32)
    lattice = acquired_lattice((x.shape[0], x.shape[1]), interpolation)
    step, r0, c0 = lattice if lattice is not None else (1, 0, 0)
    box = _box(x, lattice)
    if box is not None:  # zero padding of the field of view carries no information
        r0, r1, c0, c1 = box
        x = x[r0:r1:step, c0:c1:step]
    else:
        x = x[r0::step, c0::step]
    if lattice is not None:
        # a float-stored interpolation leaves its masked air at round-off, not exact zero
        x[x < ROUND_OFF * float(x.max(initial=0.0))] = 0.0
        interpolation = 1.0
    side = max(x.shape)
    if x.shape != (side, side):
        x = center_pad(x, (side, side))
    target = min(ANALYSIS_MAX, side)
    if interpolation > 1.0:
        target = min(target, max(MIN_ANALYSIS, int(round(side / interpolation))))
    if target < side:
        x = to_grid(x, (target, target))
        x = np.maximum(x, 0)  # Fourier cropping rings slightly below zero at sharp edges
    return x.astype(np.float32, copy=False)


def interpolation_factor(shape: tuple[int, int], acquired: float | None,
                         image_type: str = "") -> float:
    """How much larger than the acquired sampling a slice's matrix is (1: as acquired).

    Args:
        shape: the slice's ``(rows, cols)``.
        acquired: the larger in-plane dimension of the acquired k-space (DICOM Acquisition
            Matrix, or the enhanced MR frequency-encoding steps), or ``None`` when unknown.
        image_type: DICOM ImageType (``ORIGINAL\\PRIMARY\\...``).

    Returns:
        ``max(shape) / acquired`` for an original image interpolated by more than
        :data:`INTERPOLATION_MIN` (at most :data:`INTERPOLATION_MAX`), else 1. A derived image
        (a reformat, a projection) keeps 1: its header describes the acquisition's plane, not
        its own. The frequency-encoding matrix spans the full field of view; the phase-encode
        axis may be sampled more coarsely still, which this leaves alone (never too much
        cropping, only too little).
    """
    if acquired is None or not np.isfinite(acquired) or acquired < 16:
        return 1.0
    if not image_type.upper().startswith("ORIGINAL"):
        return 1.0
    factor = max(shape) / float(acquired)
    if factor <= INTERPOLATION_MIN or factor > INTERPOLATION_MAX:
        return 1.0
    return factor


def masks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(near, foreground, air, level)`` of an analysis-grid slice (see module docstring)."""
    near, fg, air, level, _ = _masks(x)
    return near, fg, air, level


def _gaussian_taps(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The 1D Gaussian of ``scipy.ndimage.gaussian_filter`` (radius ``int(truncate * sigma +
    0.5)``, unit sum), float64 ``(2r + 1,)``."""
    r = int(truncate * sigma + 0.5)
    t = np.arange(-r, r + 1)
    w = np.exp(-0.5 / (sigma * sigma) * t ** 2)
    return w / w.sum()


_SMOOTH_TAPS = _gaussian_taps(SMOOTH_PX)


def _masks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]:
    """:func:`masks` plus the city-block distance ``(G, G)`` of every pixel to the foreground
    (px; 0 inside it). ``distance <= k`` is the foreground dilated ``k`` times by the 4-connected
    cross, computed once instead of ``k`` dilation passes. ``x``: float64 ``(G, G)``."""
    near, fg, air, level, dist, _ = _measure(x)
    return near, fg, air, level, dist


def _measure(x: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray, float]:
    """:func:`_masks` and the slice's :func:`dark_tissue` ratio, from one smoothing."""
    sm = kernels.smooth(x, _SMOOTH_TAPS)
    peak = float(sm.max())
    if peak <= 0:
        z = np.zeros(x.shape, dtype=bool)
        return z, z, z, 0.0, np.full(x.shape, np.iinfo(np.int32).max, np.int32), 1.0
    fg = kernels.fill_holes(sm > FG_FRACTION * peak)
    far = np.iinfo(np.int32).max  # no foreground: every pixel is infinitely far from it
    dist = kernels.taxicab(fg) if fg.any() else np.full(x.shape, far, np.int32)
    margin = max(2, int(round(AIR_MARGIN * x.shape[0])))
    near = dist <= margin
    # zeros outside the non-zero bounding box are padding; inside it, zeros are air the
    # scanner masked (noise-free air: adding noise to it must make the slice worse, not better)
    air = np.zeros(x.shape, dtype=bool)
    box = _bbox(x)
    if box is not None:
        air[box] = ~near[box]
    level = kernels.masked_median(x, fg, False) if fg.any() else 0.0
    return near, fg, air, level, dist, dark_tissue(x, sm, peak, fg)


def dark_tissue(x: np.ndarray, smoothed: np.ndarray, peak: float, fg: np.ndarray) -> float:
    """How much tissue lies below the foreground cut: the area above a cut set by the air's
    noise floor over the area of the foreground ``fg`` (above ``FG_FRACTION`` of ``peak``);
    1 when there is none.

    The features cut the foreground at 15 % of the smoothed peak, which fits the brain, where
    all tissue is bright. In a shoulder or a limb, muscle in T1 lies below it and is measured
    as "air" full of "noise": a clean real shoulder scores as corrupted. This ratio tells such
    anatomy from the training brains (:mod:`rankiq.service.domain`, reason ``dark_tissue``).
    The lower cut is ``DARK_AIR_FACTOR`` times the darkest level (the ``DARK_AIR_QUANTILE``
    quantile of the smoothed slice inside the bounding box of its non-zero pixels, every
    second pixel: the air's floor where the slice has air; zeros inside the box are air the
    scanner masked, padding outside it is not counted), at least ``DARK_MIN`` of ``peak``;
    the area above it is joined with ``fg`` (whose holes are filled). A low-SNR or many-coil
    slice, whose floor is itself high, and a field of view without air (whose darkest pixels
    are tissue) keep the 15 % cut: ratio 1.

    Args:
        x: float64 ``(G, G)`` analysis-grid slice.
        smoothed: ``x`` smoothed as for the masks; ``peak`` its maximum (> 0).
        fg: bool ``(G, G)``, the foreground at ``FG_FRACTION``.
    """
    box = _bbox(x)
    n = int(np.count_nonzero(fg))
    if box is None or n == 0:
        return 1.0
    # every second pixel each way: a low quantile of a smooth image needs no more
    sample = smoothed[box][::2, ::2].ravel()
    k = int(DARK_AIR_QUANTILE * (sample.size - 1))
    floor = float(np.partition(sample, k)[k])
    cut = max(DARK_MIN, DARK_AIR_FACTOR * floor / peak)
    if cut >= FG_FRACTION:
        return 1.0
    return float(np.count_nonzero(fg | (smoothed > cut * peak))) / n


def _bbox(m: np.ndarray) -> tuple[slice, slice] | None:
    """Rows and columns of the bounding box of the non-zero pixels of ``(H, W)`` ``m``
    (``None`` when ``m`` is all zero)."""
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if not (rows.size and cols.size):
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _blur_measure(x: np.ndarray, fg: np.ndarray) -> float:
    """Crete-Roffet blur (0 sharp .. 1 flat) over the foreground, the blurrier axis: per axis,
    ``1 -`` the share of the absolute first differences (pairs inside the foreground) that a
    9-pixel box mean (edges reflected) removes. ``x`` float64 ``(G, G)``."""
    s0, v0, s1, v1 = kernels.blur_sums(x, fg)
    return max((s - v) / s if s > 0 else 1.0 for s, v in ((s0, v0), (s1, v1)))


def _band_shares(x: np.ndarray) -> np.ndarray:
    """Share of the spectral energy (DC excluded) in each radial band of :data:`BANDS`."""
    f = scipy.fft.rfft2(x, workers=1)  # the half spectrum: the other half mirrors it
    e = kernels.band_energy(f, _half_bands(x.shape[0]), len(BANDS) - 1)
    return e / (float(e.sum()) or 1.0)


@functools.lru_cache(maxsize=8)
def _half_bands(n: int) -> np.ndarray:
    """Radial band of every frequency of the half spectrum of a real ``n x n`` slice
    (:func:`scipy.fft.rfft2` layout), int ``(n, n // 2 + 1)``."""
    k = np.arange(n)
    rows = np.where(k < n - n // 2, k, k - n) / n  # cycles per pixel, as in the full spectrum
    cols = np.arange(n // 2 + 1) / n
    idx = np.digitize(np.hypot(rows[:, None], cols[None, :]), BANDS[1:-1])
    idx.flags.writeable = False
    return idx


def _reach(x: np.ndarray, fg: np.ndarray, air: np.ndarray) -> float:
    """Excess-weighted over plain mean distance of the air from the foreground (``air_reach``),
    distances Euclidean to the nearest foreground pixel (px). ``x`` float64 ``(G, G)``."""
    return float(kernels.reach_ratio(x, air, kernels.squared_distance(fg)))


def _ghost(x: np.ndarray, fg: np.ndarray, air: np.ndarray) -> float:
    """Anisotropy of the air beside the foreground (see ``ghost`` in the module docstring)."""
    n_cols, sum_cols, n_rows, sum_rows = kernels.ghost_sums(x, fg, air)
    if n_cols < 32 or n_rows < 32:
        return 0.0
    return abs(math.log((sum_cols / n_cols + _EPS) / (sum_rows / n_rows + _EPS)))


@functools.lru_cache(maxsize=8)
def _lag_ring(m: int, top: int) -> np.ndarray:
    """Boolean ``(m, m)``: circular lags of 3..``top`` px (shared by every slice of a size)."""
    d = np.minimum(np.arange(m), m - np.arange(m))  # circular lag per axis
    lag = np.hypot(d[:, None], d[None, :])
    ring = (lag >= 3) & (lag <= top)
    ring.flags.writeable = False
    return ring


def _echo(lap: np.ndarray, valid: np.ndarray) -> float:
    """Largest edge autocorrelation at lags 3..side/4 (see ``echo`` in the module docstring)."""
    y = np.where(valid, lap, 0.0)
    y = y - y[valid].mean() if valid.any() else y
    n = y.shape[0]
    top = max(4, n // 4)
    # zero padding to n + top makes the circular autocorrelation exact for lags up to top
    m = scipy.fft.next_fast_len(n + top, real=True)
    # single precision: a third of the time (the transforms are memory-bound), and the
    # correlation it yields differs by ~1e-7, below the float32 the features are kept in.
    # rfft2 of y padded to (m, m), skipping the transforms of the all-zero padding rows
    f = scipy.fft.rfft(y.astype(np.float32), n=m, axis=1, workers=1)
    f = scipy.fft.fft(f, n=m, axis=0, workers=1, overwrite_x=True)
    p = np.abs(f)
    p *= p
    # the autocorrelation is point-symmetric (ac[-i, -j] = ac[i, j]): row lags 0..top hold
    # every value of the ring, so only those rows are transformed back (ihfft: the first half
    # of the inverse transform of a real input, at half the cost)
    half = scipy.fft.ihfft(p, axis=0, workers=1)[:top + 1]
    ac = scipy.fft.irfft(half, n=m, axis=1, workers=1)
    if ac[0, 0] <= 0:
        return 0.0
    r = float(ac[_lag_ring(m, top)[:top + 1]].max()) / float(ac[0, 0])
    r = min(max(r, 0.0), 0.999)
    return math.atanh(r)


def _efc(x: np.ndarray) -> float:
    """MRIQC's EFC of the analysis grid ``x`` (float64 ``(G, G)``): the entropy of every pixel,
    normalised by its maximum for the grid's area. The grid is fixed for a slice (its zero
    padding cropped), so the normaliser does not move with the corruption; the foreground's
    area did (up to 2.4.0): noise lifted dark tissue above the foreground cut, the area grew and
    the EFC of a noisier window inside the head *fell*."""
    n = int(x.size)
    e = float(kernels.efc_entropy(x))
    if e <= 0 or n < 2:
        return 0.0
    e_max = -n * (1 / math.sqrt(n)) * math.log(1 / math.sqrt(n))
    return e / e_max


def features(x: np.ndarray) -> np.ndarray:
    """:data:`FEATURES` of one analysis-grid slice, float64 ``(F,)``; NaN-free.

    Raises:
        ValueError: the slice has no foreground (blank or constant).
    """
    return _features(x)[0]


def _erode(m: np.ndarray) -> np.ndarray:
    """``ndimage.binary_erosion(m, iterations=1)`` (4-connected cross, outside = background)
    as five shifted views."""
    out = np.zeros_like(m)
    out[1:-1, 1:-1] = (m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1]
                       & m[1:-1, :-2] & m[1:-1, 2:])
    return out


def _features(x: np.ndarray
              ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], float]:
    """:func:`features`, the ``(near, foreground, air)`` masks it measured them on (what
    :func:`evidence_components` needs for the same slice) and the :func:`dark_tissue` ratio."""
    x = np.asarray(x, dtype=np.float64)
    near, fg, air, level, dist, dark = _measure(x)
    if level <= 0 or fg.sum() < 16:
        raise ValueError("no foreground")
    lap = kernels.laplacian(x)
    inner = _erode(fg)
    if inner.sum() < 16:
        inner = fg
    sigma = kernels.masked_median(lap, inner, True) / 0.6745 / 6.0
    noise = math.log(sigma / level + _EPS)
    border = _border(x, fg)
    w = air_weight(border)
    n, total, n_far, total_far, n_live, total_live, sq_live = kernels.air_sums(
        x, air, dist, max(3, int(FAR * x.shape[0])))
    air_f, air_far, log_reach, structure, ghost = NO_AIR
    if w > 0 and n >= 32 and total / n > AIR_MIN * level:
        mean = total / n
        air_f = math.log(mean / level)
        far = total_far / n_far if n_far >= 32 else mean
        air_far = math.log(max(far, AIR_MIN * level) / level)
        log_reach = math.log(_reach(x, fg, air))
        # the structure of what the scanner left unmasked
        if n_live >= 32:
            structure = math.log(math.sqrt(sq_live / n_live) / (total_live / n_live))
    # else: no measurable air (masked to zero, or no background in the field of view)
    if w > 0:
        ghost = _ghost(x, fg, air)
    if w < 1:  # partly inside the anatomy: towards the values of a slice without air
        air_f, air_far, log_reach, structure, ghost = (
            w * v + (1 - w) * v0
            for v, v0 in zip((air_f, air_far, log_reach, structure, ghost), NO_AIR, strict=True))
    echo = _echo(lap, near)
    b = min(max(_blur_measure(x, fg), 1e-4), 1 - 1e-4)
    bands = np.log(_band_shares(x) + 1e-9)
    return np.array([noise, air_f, air_far, log_reach, structure, ghost, echo,
                     math.log(b / (1 - b)), *bands, _efc(x), border],
                    dtype=np.float64), (near, fg, air), dark


def air_weight(border: float) -> float:
    """How much the air features count for a slice with this ``border`` (1 for a head in air,
    0 for a field of view inside the anatomy; linear across :data:`AIR_GATE`)."""
    lo, hi = AIR_GATE
    return min(max((hi - border) / (hi - lo), 0.0), 1.0)


def _border(x: np.ndarray, fg: np.ndarray) -> float:
    """Share of the outermost ring of the slice's non-zero bounding box ``(G, G)`` that is
    foreground: zeros count as not foreground, so a head whose air the scanner masked touches
    its box at a few points only (low), while a field of view inside the anatomy is tissue all
    round (high)."""
    rows, cols = np.flatnonzero(x.any(axis=1)), np.flatnonzero(x.any(axis=0))
    if rows.size < 3 or cols.size < 3:
        return 0.0
    box = fg[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    ring = np.concatenate([box[0], box[-1], box[1:-1, 0], box[1:-1, -1]])
    return float(ring.mean())


@dataclass(frozen=True)
class FeatureInput:
    """What the no-reference model sees for a stack of slices.

    Attributes:
        features: float32 ``(S, F)``, :data:`FEATURES` per slice (zeros for blank slices).
        empty: bool ``(S,)``, slices without foreground (blank or constant): not scored.
        grids: float32 ``(S, G, G)``, the analysis-grid slices (for saliency and display).
        dark_tissue: float32 ``(S,)``, each slice's :func:`dark_tissue` ratio (1 for blank
            slices): tissue darker than the foreground cut, which the features misread as air.
        masks: per slice, the ``(near, foreground, air)`` masks the features were measured on,
            bit-packed (``np.packbits`` of bool ``(3, G, G)``), or ``None``: not kept, a blank
            slice, or a slice whose own grid was centre-padded (masks of ``grids[i]`` then
            differ at the padding). Empty unless asked for (``keep_masks``).
        interpolation: the series' :func:`interpolation_factor` the grids were made with.
    """

    features: np.ndarray
    empty: np.ndarray
    grids: np.ndarray
    dark_tissue: np.ndarray
    masks: tuple[np.ndarray | None, ...] = ()
    interpolation: float = 1.0

    def slice_masks(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Bool ``(near, foreground, air)``, each ``(G, G)``, of ``grids[i]`` as measured
        for its features (what :func:`masks` gives for it), or ``None`` where not kept."""
        packed = self.masks[i] if i < len(self.masks) else None
        if packed is None:
            return None
        g = self.grids.shape[1:]
        near, fg, air = np.unpackbits(packed, count=3 * g[0] * g[1]).view(bool).reshape(3, *g)
        return near, fg, air


def prepare_features(pixels: np.ndarray, *, keep_masks: bool = False,
                     interpolation: float = 1.0) -> FeatureInput:
    """``(S, H, W)`` magnitude slices -> :class:`FeatureInput` (one slice at a time; slices
    whose analysis grids differ, e.g. by their zero borders, are centre-padded to the largest
    for ``grids``). ``keep_masks``: also keep each slice's masks (:attr:`FeatureInput.masks`)
    so that its evidence maps (:func:`evidence_components`) need not measure them again.
    ``interpolation``: the series' :func:`interpolation_factor` (see :func:`analysis_grid`)."""
    own = [analysis_grid(p, interpolation) for p in pixels]
    side = max((g.shape[0] for g in own), default=1)
    feats = np.zeros((len(own), len(FEATURES)), np.float32)
    empty = np.zeros(len(own), bool)
    dark = np.ones(len(own), np.float32)
    kept: list[np.ndarray | None] = [None] * len(own)
    for i, g in enumerate(own):
        try:
            feats[i], measured, dark[i] = _features(g)
        except ValueError:
            empty[i] = True
            continue
        if keep_masks and g.shape[0] == side:
            kept[i] = np.packbits(np.stack(measured))
    grids = np.zeros((len(own), side, side), np.float32)
    for i, g in enumerate(own):
        grids[i] = center_pad(g, (side, side))
    return FeatureInput(feats, empty, grids, dark, tuple(kept) if keep_masks else (),
                        interpolation)


def evidence_maps(x: np.ndarray) -> np.ndarray:
    """Where each feature's evidence lies in an analysis-grid slice: float32 ``(F, G, G)``,
    each map non-negative with unit sum (uniform where a feature has no spatial support).

    noise/blur/bands: local high-pass energy inside the foreground (noise and lost or added
    detail); air/air_structure/ghost: air intensity; echo: the EFC density ``-p log p`` near
    the object; efc: the EFC density of every non-zero pixel (the feature's own support).
    """
    maps, which = evidence_components(x)
    return maps[list(which)]


#: the evidence component (0 detail, 1 air, 2 EFC density near the object, 3 EFC density of
#: the whole grid, where ``efc`` is measured) behind each feature of FEATURES
_EVIDENCE_OF = {"air": 1, "air_far": 1, "air_reach": 1, "air_structure": 1, "ghost": 1,
                "echo": 2, "efc": 3, "border": 1}
N_EVIDENCE = max(_EVIDENCE_OF.values()) + 1
EVIDENCE: tuple[int, ...] = tuple(_EVIDENCE_OF.get(name, 0) for name in FEATURES)


Masks = tuple[np.ndarray, np.ndarray, np.ndarray]  # bool (near, foreground, air), each (G, G)
EVIDENCE_SIGMA = 2.0  # px: the evidence maps are smoothed by this Gaussian (display maps)
_EVIDENCE_TAPS = _gaussian_taps(EVIDENCE_SIGMA)


def _evidence_densities(x: np.ndarray, measured: Masks | None) -> np.ndarray:
    """Unsmoothed evidence of a float32 analysis-grid slice, float32 ``(N_EVIDENCE, G, G)``,
    each non-negative: the detail (``|Laplacian|`` inside the foreground), the air intensity,
    the EFC density ``-p log p`` of the non-zero pixels near the object and of all of them."""
    near, fg, air = measured if measured is not None else masks(x)[:3]
    raw = np.empty((N_EVIDENCE, *x.shape), np.float32)
    # IMMERKAER by the compiled kernel (ndimage.convolve with mode="nearest", in float64)
    np.multiply(np.abs(kernels.laplacian(x.astype(np.float64))), fg, out=raw[0])
    np.copyto(raw[1], np.where(air, x, np.float32(0)))
    b = math.sqrt(float((x.astype(np.float64) ** 2).sum())) or 1.0
    p = np.where(x > 0, x / np.float32(b), np.float32(1))
    np.multiply(-p, np.log(p), out=raw[3])
    np.multiply(raw[3], near, out=raw[2])
    return raw


def evidence_components(
    x: np.ndarray, measured: Masks | None = None,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The distinct evidence maps of an analysis-grid slice, float32 ``(N_EVIDENCE, G, G)`` with
    unit sums, and the component of each feature (:data:`EVIDENCE`): what
    :func:`evidence_maps` expands to one map per feature. Display maps, kept in float32.

    Args:
        x: the analysis-grid slice ``(G, G)``.
        measured: its ``(near, foreground, air)`` masks when already known
            (:meth:`FeatureInput.slice_masks`); otherwise :func:`masks` measures them.
    """
    x = np.asarray(x, dtype=np.float32)
    out = np.stack([_smooth_evidence(d) for d in _evidence_densities(x, measured)])
    for k in range(N_EVIDENCE):
        s = float(out[k].sum(dtype=np.float64))
        if s > 0:
            out[k] /= s  # float32 / a Python float: float32
        else:
            out[k] = 1.0 / x.size
    return out, EVIDENCE


def evidence_map(x: np.ndarray, weights: np.ndarray, measured: Masks | None = None
                 ) -> np.ndarray:
    """``sum_k weights[k] * evidence_components(x)[0][k]``, float32 ``(G, G)``, smoothed once
    instead of once per component: the Gaussian (unit-sum symmetric kernel, reflected edges) keeps
    every map's sum, so normalising the densities before smoothing gives the same map (to
    float32 round-off).

    Args:
        x: the analysis-grid slice ``(G, G)``.
        weights: float ``(N_EVIDENCE,)``, one weight per evidence component.
        measured: as for :func:`evidence_components`.
    """
    x = np.asarray(x, dtype=np.float32)
    raw = _evidence_densities(x, measured)
    mix = np.zeros(x.shape, np.float32)
    for k in range(N_EVIDENCE):
        s = float(raw[k].sum(dtype=np.float64))
        if s > 0:
            mix += raw[k] * np.float32(weights[k] / s)
        else:  # no support: a uniform map
            mix += np.float32(weights[k] / x.size)
    return _smooth_evidence(mix)


def _smooth_evidence(m: np.ndarray) -> np.ndarray:
    """``ndimage.gaussian_filter(m, EVIDENCE_SIGMA)`` of a float32 ``(G, G)`` map, by the
    compiled separable kernel (in float64), float32."""
    return kernels.smooth(m.astype(np.float64), _EVIDENCE_TAPS).astype(np.float32)


def warm() -> None:
    """Compile (or load from Numba's cache) the kernels of :func:`features` now, e.g. before
    forking workers or answering the first request, instead of on the first slice."""
    y, x = np.mgrid[:48, :48] / 48 - 0.5
    phantom = (np.hypot(x, y) < 0.3) * 100.0 + np.random.default_rng(0).rayleigh(2.0, (48, 48))
    _features(analysis_grid(phantom))
