"""The one preprocessing contract shared by training and serving.

Nothing else in RankIQ may normalise images for a network: the simulator, the trainer, the
ONNX scorer and the service all call :func:`prepare`, so training and serving cannot drift.
``PREPROCESS_VERSION`` is written into every exported model's metadata and checked at load.

Pipeline, per slice (a slice is the unit the networks were trained on):

1. Geometry (:func:`to_grid`): zero-pad the image to a square (centred, no content lost), then
   resample to the model grid by Fourier interpolation (centred spectrum cropped or zero-padded,
   intensity preserved). MR images are band-limited Fourier reconstructions, so this is the
   scanner's own interpolation, and a 256x256 and a 512x512 acquisition of the same field of
   view land on the same grid. For complex images (k-space input) zero-filling k-space before
   reading an image changes the network input only at round-off level (~1e-6 relative, tested).
   Magnitude images (DICOM) are band-limited only where smooth (the magnitude of an
   interpolated image is not the interpolated magnitude): zero-filling changes smooth anatomy at
   ~1e-6 but sharp edges by a few % RMS. Anatomy is scaled by the field of view, not by pixel
   spacing.
2. Intensity:
   * reference mode: the reference is divided by its robust maximum (the ``percentile``-th
     percentile of its magnitude); the image is multiplied by the least-squares scale that best
     fits it to that reference (complex scale for complex input, real for magnitude), as the
     paper's pipeline did; the network sees ``image - reference``.
   * no-reference mode: the image is divided by its own robust maximum.
   Both are invariant to multiplying the inputs by any k > 0 (and so to DICOM rescale encodings).
3. Layout: magnitude input gives one channel ``|x|``; complex input gives two channels
   ``(real, imag)``; arrays are float32 ``(slices, channels, H, W)``.

An all-zero slice cannot be normalised: it is passed through as zeros and flagged in
``Prepared.empty`` so callers can report it instead of trusting its score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.fft
from rankiq.service.errors import GeometryMismatch, InvalidImage
from rankiq.service.fft import center_pad, fft_workers

PREPROCESS_VERSION = "1"
DEFAULT_GRID: tuple[int, int] = (396, 396)
DEFAULT_PERCENTILE = 99.5
MIN_MATRIX = 16
MAX_MATRIX = 4096

InputKind = Literal["magnitude", "complex"]


@dataclass(frozen=True)
class Prepared:
    """Network-ready arrays for a stack of slices.

    Attributes:
        image: float32 ``(S, C, H, W)``; the image normalised (and, with a reference, fitted to
            it). ``C`` is 1 for magnitude input and 2 (real, imag) for complex input.
        reference: float32 ``(S, C, H, W)`` normalised reference, or ``None`` (no-reference).
        empty: bool ``(S,)``; slices whose normaliser was zero (blank slices).
    """

    image: np.ndarray
    reference: np.ndarray | None
    empty: np.ndarray

    @property
    def network_input(self) -> np.ndarray:
        """What IQ-Net sees: ``image - reference`` in reference mode, else ``image``."""
        if self.reference is None:
            return self.image
        return self.image - self.reference


def as_slices(x: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``x`` as ``(S, H, W)``: a 2D image becomes one slice. Validates values and size."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise InvalidImage(f"{name} must be 2D or (slices, rows, cols), got shape {x.shape}")
    h, w = x.shape[-2:]
    if min(h, w) < MIN_MATRIX or max(h, w) > MAX_MATRIX:
        raise InvalidImage(
            f"{name} matrix {h}x{w} outside the supported {MIN_MATRIX}..{MAX_MATRIX} range"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.complexfloating)):
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InvalidImage(f"{name} contains NaN or Inf values")
    return x


def to_grid(x: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Bring images onto the model grid: pad to square, then Fourier-resample.

    Args:
        x: real or complex ``(..., h, w)``.
        grid: target ``(H, W)``.

    Returns:
        ``(..., H, W)``; complex64 for complex input, float32 (the real part) for real input.
        Intensities are preserved (a constant image keeps its value).
    """
    is_complex = np.iscomplexobj(x)
    h, w = x.shape[-2:]
    side = max(h, w)
    if (h, w) != (side, side):
        x = center_pad(x, (side, side))
    if (side, side) != tuple(grid):
        th, tw = grid
        workers = fft_workers()
        k = scipy.fft.fft2(scipy.fft.ifftshift(x, axes=(-2, -1)), norm="ortho", workers=workers)
        # Centred crop-or-pad of the spectrum (per axis; the grid may be non-square), done as one
        # scatter between unshifted spectra instead of fftshift + crop + pad + ifftshift copies.
        (src_r, dst_r), (src_c, dst_c) = _spectrum_map(side, th), _spectrum_map(side, tw)
        z = np.zeros(k.shape[:-2] + (th, tw), dtype=np.complex64)
        z[..., dst_r[:, None], dst_c[None, :]] = k[..., src_r[:, None], src_c[None, :]]
        y = scipy.fft.ifft2(z, norm="ortho", workers=workers, overwrite_x=True)
        if not is_complex:
            y = y.real  # the shift below then moves half the bytes
        # orthonormal FFTs: rescale so intensities are preserved across matrix sizes
        x = scipy.fft.fftshift(y, axes=(-2, -1)) * np.float32(np.sqrt(th * tw / (side * side)))
    if is_complex:
        return x.astype(np.complex64, copy=False)
    return np.real(x).astype(np.float32, copy=False)


def _spectrum_map(n: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Unshifted-FFT bin indices kept from an ``n``-point axis and where they land on ``t`` points.

    Equivalent to ``ifftshift(center_pad(center_crop(fftshift(k), m), t))`` with ``m = min(n, t)``:
    bin ``i`` sits at centred position ``(i + n // 2) % n``, the crop keeps centred positions
    ``[(n - m) // 2, (n - m) // 2 + m)``, the pad adds ``(t - m) // 2``, and centred position
    ``c`` of the ``t``-point axis is unshifted bin ``(c - t // 2) % t``.
    """
    m = min(n, t)
    centred = (np.arange(n) + n // 2) % n - (n - m) // 2
    keep = (centred >= 0) & (centred < m)
    src = np.nonzero(keep)[0]
    dst = (centred[keep] + (t - m) // 2 - t // 2) % t
    return src, dst


def robust_max(x: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """Per-slice robust maximum: the ``percentile``-th percentile of ``|x|`` over each slice.

    Args:
        x: ``(S, H, W)`` real or complex.

    Returns:
        float64 ``(S,)``; falls back to the true maximum where the percentile is 0 (sparse
        images), and is 0 only for all-zero slices.
    """
    mag = np.abs(x).reshape(x.shape[0], -1)
    p = np.percentile(mag, percentile, axis=1)
    return np.where(p > 0, p, mag.max(axis=1)).astype(np.float64)


def least_squares_scale(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-slice scale ``a`` minimising ``||a * image - target||^2``.

    Args:
        image, target: ``(S, H, W)``, both real or both complex.

    Returns:
        ``(S,)`` real (real input) or complex (complex input) scales; 0 where ``image`` is 0.
    """
    flat_i = image.reshape(image.shape[0], -1).astype(np.complex128 if np.iscomplexobj(image)
                                                      else np.float64)
    flat_t = target.reshape(target.shape[0], -1)
    num = np.sum(np.conj(flat_i) * flat_t, axis=1)
    den = np.sum(np.abs(flat_i) ** 2, axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0)


def _channels(x: np.ndarray, input_kind: InputKind) -> np.ndarray:
    """``(S, H, W)`` -> float32 ``(S, C, H, W)``: |x| for magnitude, (real, imag) for complex."""
    if input_kind == "magnitude":
        return np.abs(x).astype(np.float32)[:, None]
    if input_kind == "complex":
        x = x.astype(np.complex64, copy=False)
        return np.stack([x.real, x.imag], axis=1).astype(np.float32)
    raise ValueError(f"input_kind must be 'magnitude' or 'complex', not {input_kind!r}")


def prepare(
    image: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    grid: tuple[int, int] = DEFAULT_GRID,
    input_kind: InputKind = "magnitude",
    percentile: float = DEFAULT_PERCENTILE,
) -> Prepared:
    """Prepare an image (and optional reference) for a scoring network.

    Args:
        image: ``(H, W)`` or ``(S, H, W)``, real (magnitude, e.g. DICOM) or complex.
        reference: same geometry as ``image`` or ``None`` for no-reference scoring.
        grid: model grid ``(H, W)``.
        input_kind: ``"magnitude"`` (1 channel) or ``"complex"`` (2 channels, real/imag).
        percentile: percentile used as the robust maximum.

    Returns:
        :class:`Prepared` with float32 ``(S, C, grid_H, grid_W)`` arrays.

    Raises:
        InvalidImage: NaN/Inf, wrong rank or a matrix outside 16..4096.
        GeometryMismatch: reference and image differ in slices, rows or columns.
    """
    img = as_slices(image, "image")
    ref = None
    if reference is not None:
        ref = as_slices(reference, "reference")
        if ref.shape != img.shape:
            raise GeometryMismatch(
                f"reference geometry {ref.shape} (slices, rows, cols) differs from "
                f"image {img.shape}"
            )
    if input_kind == "magnitude":
        # magnitude images: take |.| before any interpolation, as DICOM stores them
        img = np.abs(img).astype(np.float32, copy=False)
        ref = None if ref is None else np.abs(ref).astype(np.float32, copy=False)
    img = to_grid(img, grid)
    if ref is None:
        m = robust_max(img, percentile)
        empty = m <= 0
        img_n = img / np.where(empty, 1.0, m)[:, None, None].astype(np.float32)
        return Prepared(image=_channels(img_n, input_kind), reference=None, empty=empty)
    ref = to_grid(ref, grid)
    m = robust_max(ref, percentile)
    empty = m <= 0
    ref_n = ref / np.where(empty, 1.0, m)[:, None, None].astype(np.float32)
    a = least_squares_scale(img, ref_n)
    img_fit = img * a[:, None, None].astype(img.dtype)
    return Prepared(
        image=_channels(img_fit, input_kind),
        reference=_channels(ref_n, input_kind),
        empty=empty,
    )
