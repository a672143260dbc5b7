"""Reconstructions of (corrupted) multi-coil k-space with SigPy, and ESPIRiT maps.

Methods (:data:`RECON_METHODS`): ``rss`` (FFT + root-sum-of-squares, magnitude only),
``combine`` (FFT + sensitivity-weighted coil combination), ``sense`` (l2-regularised SENSE,
conjugate gradient), ``cs_l1`` (l1-wavelet compressed sensing, db4, accelerated proximal
gradient) and ``cs_tv`` (total-variation compressed sensing, primal-dual hybrid gradient).
Iterative methods use SigPy's apps/solvers (:class:`sigpy.app.LinearLeastSquares`, its
wavelet, finite-difference and proximal operators).

Speed, with results unchanged:

* The SENSE forward operator is our own :class:`sigpy.linop.Linop` over ``scipy.fft`` (about
  twice as fast as SigPy's numpy FFT with its shifts): for even sizes the centred FFT equals an
  uncentred FFT between two +-1 checkerboards, so the checkerboard is folded into the maps and
  the data once and every iteration runs plain FFTs.
* When the sampling mask does not depend on the readout position (no 2D point dropping), the 2x
  readout oversampling is removed first (inverse FFT along the readout, crop the field of view,
  FFT), as scanners do: exact for an object inside the field of view and half the work.
* ESPIRiT (SigPy's :class:`~sigpy.mri.app.EspiritCalib`, the reference's calibration width 24,
  threshold 0.005, kernel width 7, crop 0.8) runs on a low-resolution grid (``espirit_grid``,
  64 by default) and the maps are interpolated to the full grid: sensitivity maps are smooth,
  and the full-grid calibration takes ~30 s per 396x768 slice against ~0.2 s.

Arrays: k-space complex64 ``(coils, kx, ky)`` centred, ``kx`` (axis -2) the readout, possibly
2x oversampled; maps complex64 ``(coils, S, S)`` on the image grid (field of view without
oversampling); images complex64 ``(S, S)``. Maps are normalised so that ``sum_c |S_c|^2`` is 1
inside the support and 0 outside, which bounds the SENSE operator's norm by 1 (step sizes are
then fixed instead of estimated by power iterations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from rankiq.service.fft import center_crop, center_pad, coil_combine, fft2c, ifft2c, rss
from rankiq.training.config import JsonConfig
from scipy.ndimage import map_coordinates

RECON_METHODS: tuple[str, ...] = ("rss", "combine", "sense", "cs_l1", "cs_tv")


@dataclass(frozen=True)
class ReconConfig(JsonConfig):
    """Reconstruction choices and parameter ranges.

    Attributes:
        method_weights: relative probability of each method in :data:`RECON_METHODS` order
            (the paper's four methods equally likely, compressed sensing split between l1 and TV).
        iters_mean, iters_std: iterations ``ceil(|N(mean, std)|)`` for iterative methods.
        sense_lamda: l2 weight, log-uniform in ``(lo, hi)``.
        l1_lamda: l1-wavelet weight (image max is 1), log-uniform.
        tv_lamda: total-variation weight (image max is 1), log-uniform.
        truth_lamda, truth_iters: the reference SENSE reconstruction.
        espirit_calib, espirit_thresh, espirit_kernel, espirit_crop: ESPIRiT parameters.
        espirit_grid: side of the low-resolution grid the maps are calibrated on.
        espirit_power_iters: power iterations of the ESPIRiT eigen-solver.
    """

    method_weights: tuple[float, ...] = (0.25, 0.25, 0.25, 0.125, 0.125)
    iters_mean: float = 30.0
    iters_std: float = 3.0
    sense_lamda: tuple[float, float] = (0.01, 100.0)
    l1_lamda: tuple[float, float] = (1e-4, 2e-2)
    tv_lamda: tuple[float, float] = (1e-4, 1e-2)
    truth_lamda: float = 0.005
    truth_iters: int = 20
    espirit_calib: int = 24
    espirit_thresh: float = 0.005
    espirit_kernel: int = 7
    espirit_crop: float = 0.8
    espirit_grid: int = 64
    espirit_power_iters: int = 50


# ----------------------------------------------------------------------------- helpers


def remove_readout_oversampling(kspace: np.ndarray, nx: int) -> np.ndarray:
    """Crop the image field of view along the readout (axis -2) to ``nx`` samples.

    Args:
        kspace: complex ``(coils, Nx, ny)`` with ``Nx >= nx``.
        nx: readout samples to keep (the image rows).

    Returns:
        complex64 ``(coils, nx, ny)`` k-space of the central ``nx`` image rows.
    """
    if kspace.shape[-2] == nx:
        return kspace
    img = ifft2c(kspace, workers=1)
    img = center_crop(img, (nx, kspace.shape[-1]))
    return fft2c(np.ascontiguousarray(img), workers=1).astype(np.complex64)


def normalise_maps(maps: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Scale maps so ``sum_c |S_c|^2 = 1`` where the (interpolated) norm exceeds ``threshold``
    and zero them elsewhere."""
    norm = np.sqrt((np.abs(maps) ** 2).sum(axis=0))
    scale = np.where(norm > threshold, 1.0 / np.maximum(norm, 1e-12), 0.0)
    return (maps * scale[None]).astype(np.complex64)


def _resample(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of ``(coils, h, w)`` maps onto ``shape``, pixel centres aligned."""
    h, w = maps.shape[-2:]
    H, W = shape
    yy = (np.arange(H) + 0.5) * h / H - 0.5
    xx = (np.arange(W) + 0.5) * w / W - 0.5
    grid = np.meshgrid(yy, xx, indexing="ij")
    out = np.empty((maps.shape[0], H, W), dtype=np.complex64)
    for c in range(maps.shape[0]):
        re = map_coordinates(maps[c].real, grid, order=1, mode="nearest")
        im = map_coordinates(maps[c].imag, grid, order=1, mode="nearest")
        out[c] = re + 1j * im
    return out


def espirit_maps(kspace: np.ndarray, cfg: ReconConfig) -> np.ndarray:
    """ESPIRiT sensitivity maps calibrated on a low-resolution grid.

    Args:
        kspace: fully sampled complex ``(coils, S, S)`` (readout oversampling removed).
        cfg: ESPIRiT parameters.

    Returns:
        complex64 ``(coils, S, S)`` maps, normalised (see :func:`normalise_maps`).
    """
    import sigpy.mri as mr

    c, h, w = kspace.shape
    g = (min(h, cfg.espirit_grid), min(w, cfg.espirit_grid))
    small = center_crop(kspace, g).astype(np.complex64)
    calib = min(cfg.espirit_calib, min(g))
    maps = mr.app.EspiritCalib(
        np.ascontiguousarray(small),
        calib_width=calib,
        thresh=cfg.espirit_thresh,
        kernel_width=cfg.espirit_kernel,
        crop=cfg.espirit_crop,
        max_iter=cfg.espirit_power_iters,
        show_pbar=False,
    ).run()
    maps = np.asarray(maps, dtype=np.complex64)
    if g != (h, w):
        maps = _resample(maps, (h, w))
    return normalise_maps(maps)


def _checkerboard(shape: tuple[int, int]) -> np.ndarray:
    """``(-1)^(i+j)`` times the sign ``(-1)^(nx/2 + ny/2)``: centred FFT = cb * fft(cb0 * x)."""
    nx, ny = shape
    i = np.arange(nx)[:, None]
    j = np.arange(ny)[None, :]
    return np.where((i + j) % 2 == 0, 1.0, -1.0).astype(np.float32)


def _sense_linop(maps: np.ndarray, mask: np.ndarray | None):
    """SigPy linop ``x (nx, ny) -> mask * F_uncentred(maps' * x)`` over ``scipy.fft``.

    ``maps'`` already carries the checkerboard (see module docstring).
    """
    import sigpy as sp

    mps = np.ascontiguousarray(maps, dtype=np.complex64)
    wts = None if mask is None else mask.astype(np.float32)
    ishape = list(mps.shape[1:])
    oshape = list(mps.shape)

    class _Forward(sp.linop.Linop):
        def __init__(self) -> None:
            super().__init__(oshape, ishape, repr_str="FFTSense")

        def _apply(self, x):
            k = scipy.fft.fft2(mps * x, norm="ortho", workers=1)
            if wts is not None:
                k *= wts
            return k

        def _adjoint_linop(self):
            return _Adjoint()

    class _Adjoint(sp.linop.Linop):
        def __init__(self) -> None:
            super().__init__(ishape, oshape, repr_str="FFTSense.H")

        def _apply(self, k):
            if wts is not None:
                k = k * wts
            img = scipy.fft.ifft2(k, norm="ortho", workers=1)
            img *= np.conj(mps)
            return img.sum(axis=0)

        def _adjoint_linop(self):
            return _Forward()

    return _Forward()


def _sign(shape: tuple[int, int]) -> float:
    return -1.0 if (shape[0] // 2 + shape[1] // 2) % 2 else 1.0


def draw_method(rng: np.random.Generator, cfg: ReconConfig) -> str:
    """Pick a reconstruction method with ``cfg.method_weights``."""
    p = np.asarray(cfg.method_weights, dtype=np.float64)
    return RECON_METHODS[int(rng.choice(len(RECON_METHODS), p=p / p.sum()))]


def _log_uniform(rng: np.random.Generator, lohi: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(lohi[0]), math.log(lohi[1]))))


def draw_params(rng: np.random.Generator, method: str, cfg: ReconConfig) -> dict:
    """Draw the parameters of ``method``: ``{"method", "lamda", "iters"}`` (iterative) or
    ``{"method"}``."""
    if method in ("rss", "combine"):
        return {"method": method}
    iters = max(1, int(math.ceil(abs(rng.normal(cfg.iters_mean, cfg.iters_std)))))
    lam = {"sense": cfg.sense_lamda, "cs_l1": cfg.l1_lamda, "cs_tv": cfg.tv_lamda}[method]
    return {"method": method, "lamda": _log_uniform(rng, lam), "iters": iters}


def iterative(
    method: str, kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray, lamda: float,
    iters: int,
) -> tuple[np.ndarray, dict]:
    """SENSE / l1-wavelet / TV reconstruction.

    Args:
        method: ``"sense"``, ``"cs_l1"`` or ``"cs_tv"``.
        kspace: complex64 ``(coils, Nx, S)``, ``Nx`` = ``S`` or the oversampled readout;
            unsampled points are zero.
        mask: bool ``(Nx, S)``, True where sampled.
        maps: normalised complex64 ``(coils, S, S)``.
        lamda: regularisation weight (data scaled so the truth's max is 1).
        iters: iterations.

    Returns:
        ``(image, info)``: complex64 ``(S, S)`` and ``{"grid": [nx, ny]}`` (the grid it ran on).
    """
    import sigpy as sp

    s = maps.shape[-2]
    if mask.shape[0] != s and bool((mask == mask[:1]).all()):
        # mask independent of the readout position: drop the oversampling (exact)
        kspace = remove_readout_oversampling(kspace, s)
        mask = mask[:s]
    nx, ny = kspace.shape[-2:]
    mps = maps if nx == s else center_pad(maps, (nx, ny))
    cb = _checkerboard((nx, ny))
    full = bool(mask.all())
    y = (kspace * (cb * _sign((nx, ny)))).astype(np.complex64)
    A = _sense_linop(mps * cb, None if full else mask)
    ishape = (nx, ny)
    if method == "sense":
        app = sp.app.LinearLeastSquares(A, y, lamda=lamda, max_iter=iters, show_pbar=False)
    elif method == "cs_l1":
        W = sp.linop.Wavelet(ishape, wave_name="db4")
        proxg = sp.prox.UnitaryTransform(sp.prox.L1Reg(W.oshape, lamda), W)
        app = sp.app.LinearLeastSquares(A, y, proxg=proxg, max_iter=iters, alpha=1.0,
                                        show_pbar=False)
    elif method == "cs_tv":
        G = sp.linop.FiniteDifference(ishape)
        proxg = sp.prox.L1Reg(G.oshape, lamda)
        # ||[A; G]||^2 <= 1 + 8: tau * sigma * 9 <= 1
        app = sp.app.LinearLeastSquares(A, y, proxg=proxg, G=G, max_iter=iters,
                                        tau=1 / 3, sigma=1 / 3, show_pbar=False)
    else:
        raise ValueError(f"unknown iterative method {method!r}")
    img = np.asarray(app.run(), dtype=np.complex64)
    if nx != s:
        img = center_crop(img, (s, ny))
    return np.ascontiguousarray(img), {"grid": [int(nx), int(ny)]}


def reconstruct(
    kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray, params: dict
) -> tuple[np.ndarray, dict]:
    """Reconstruct with ``params["method"]`` (and its ``lamda``/``iters``).

    Args:
        kspace: complex64 ``(coils, Nx, S)`` (readout possibly oversampled).
        mask: bool ``(Nx, S)`` sampled points.
        maps: normalised complex64 ``(coils, S, S)``.
        params: from :func:`draw_params`.

    Returns:
        ``(image, info)``: complex64 ``(S, S)`` (``rss`` is real-valued: no phase) and extra
        facts about the run.
    """
    method = params["method"]
    s = maps.shape[-1]
    if method in ("rss", "combine"):
        coil = center_crop(ifft2c(kspace, workers=1), (s, s))
        if method == "rss":
            return rss(coil).astype(np.complex64), {}
        return coil_combine(coil, maps).astype(np.complex64), {}
    return iterative(method, kspace, mask, maps, params["lamda"], params["iters"])


def truth(kspace: np.ndarray, maps: np.ndarray, cfg: ReconConfig) -> np.ndarray:
    """The reference: SENSE (``truth_lamda``, ``truth_iters``) of fully sampled k-space.

    Args:
        kspace: complex64 ``(coils, Nx, S)``, fully sampled.
        maps: normalised ``(coils, S, S)``.

    Returns:
        complex64 ``(S, S)``, not yet normalised.
    """
    mask = np.ones(kspace.shape[-2:], dtype=bool)
    img, _ = iterative("sense", kspace, mask, maps, cfg.truth_lamda, cfg.truth_iters)
    return img
