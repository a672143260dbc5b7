"""Small synthetic pairs files in the simulator's layout, for tests of any worker.

:func:`write_synthetic_pairs` writes an HDF5 file with the layout of ``rankiq simulate``
(root attrs ``format="rankiq-pairs"``, ``format_version=1``, ``seed``, ``size``, ``n_pairs``;
datasets ``/reference``, ``/image1``, ``/image2`` complex64 ``(N, S, S)``; ``/pair_id`` int64;
``/source_id`` str; ``/slice_index`` int32; ``/contrast`` str; ``/recon`` str ``(N, 2)``;
``/params`` JSON str ``(N, 2)``; ``/mse``, ``/ssim`` float32 ``(N, 2)``; ``/severity/<name>``
float32 ``(N, 2)``, 0 when a corruption is absent).

It is a cheap numpy stand-in, not the real simulator: an ellipse "head" phantom (skull ring,
brain, ventricles, a few small blobs, smooth phase) per source, and per image, in k-space:
2D point dropping, exponential blur, complex noise, one abrupt translational motion, 1D
phase-encode undersampling; "cs_*" recons are imitated by a light image-domain smoothing.
Images are normalised to max 1 then least-squares scaled onto the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from rankiq.service.fft import fft2c, ifft2c
from rankiq.service.preprocess import least_squares_scale
from scipy import ndimage

SEVERITY_NAMES = ("blur_sigma", "undersample_1d_fraction", "undersample_2d_fraction",
                  "noise_level", "motion_shift_px", "motion_start_fraction")
RECONS = ("rss", "combine", "sense", "cs_l1", "cs_tv")
CONTRASTS = ("T1", "T1post", "T2", "FLAIR")


def phantom(size: int, rng: np.random.Generator) -> np.ndarray:
    """A complex64 ``(size, size)`` head-like phantom with max magnitude 1 and smooth phase."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]

    def ellipse(cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1

    j = rng.uniform(-0.05, 0.05, 4)
    img = 0.3 * ellipse(0, 0, 0.85 + j[0], 0.95 + j[1]).astype(np.float64)
    img[ellipse(0, 0, 0.75 + j[0], 0.85 + j[1])] = 0.8
    img[ellipse(-0.2 + j[2], 0, 0.12, 0.3)] = 0.25
    img[ellipse(0.2 + j[3], 0, 0.12, 0.3)] = 0.25
    for _ in range(rng.integers(2, 6)):
        cx, cy = rng.uniform(-0.5, 0.5, 2)
        img[ellipse(cx, cy, *rng.uniform(0.04, 0.12, 2))] = rng.uniform(0.4, 1.0)
    img = ndimage.gaussian_filter(img, 0.6)
    phase = np.exp(1j * (rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y))
    out = img * phase
    return (out / np.abs(out).max()).astype(np.complex64)


def corrupt(ref: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict, str]:
    """One corrupted image of ``ref`` ``(S, S)``: returns (image, severities, recon name)."""
    s = ref.shape[0]
    k = fft2c(ref.astype(np.complex128))
    sev = dict.fromkeys(SEVERITY_NAMES, 0.0)
    r = np.hypot(*np.meshgrid(np.linspace(-1, 1, s), np.linspace(-1, 1, s), indexing="ij"))
    if rng.random() < 0.5:  # 2D point dropping outside a central disc
        frac = rng.uniform(0.0, 0.14)
        k = k * ~((rng.random(k.shape) < frac) & (r > 0.3))
        sev["undersample_2d_fraction"] = frac
    sigma = rng.uniform(0.0, 2.0)  # exponential blur exp(-sigma r)
    k = k * np.exp(-sigma * r)
    sev["blur_sigma"] = sigma
    if rng.random() < 0.5:
        level = rng.uniform(0.0, 11.0)
        k = k + level * 0.004 * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
        sev["noise_level"] = level
    if rng.random() < 1 / 3:  # one abrupt shift of the phase-encode lines after a start line
        start = rng.normal(0.5, 0.075 * 0.5)
        if abs(start - 0.5) > 0.05:
            dx, dy = rng.uniform(-3, 3, 2)
            f = np.fft.fftshift(np.fft.fftfreq(s))
            ramp = np.exp(-2j * np.pi * (dx * f[:, None] + dy * f[None, :]))
            rows = np.arange(s) >= int(np.clip(start, 0, 1) * s)
            k[rows] = k[rows] * ramp[rows]
            sev["motion_shift_px"] = float(np.hypot(dx, dy))
            sev["motion_start_fraction"] = float(start)
    if rng.random() < 0.5:  # 1D: drop phase-encode lines outside the central 30 %
        frac = rng.uniform(0.0, 0.3)
        outer = np.abs(np.linspace(-1, 1, s)) > 0.3
        k[outer & (rng.random(s) < frac)] = 0
        sev["undersample_1d_fraction"] = frac
    img = ifft2c(k)
    recon = RECONS[rng.integers(len(RECONS))]
    if recon.startswith("cs_"):  # crude stand-in for the piecewise-smooth CS texture
        w = 0.6 if recon == "cs_tv" else 0.3
        img = (1 - w) * img + w * (ndimage.uniform_filter(img.real, 3)
                                   + 1j * ndimage.uniform_filter(img.imag, 3))
    img = img / max(np.abs(img).max(), 1e-12)
    img = img * least_squares_scale(img[None], ref[None].astype(np.complex128))[0]
    return img.astype(np.complex64), sev, recon


def ssim(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """Gaussian-window (sigma 1.5) SSIM of two real images."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    f = lambda a: ndimage.gaussian_filter(a, 1.5)  # noqa: E731
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def write_synthetic_pairs(path: Path | str, n_pairs: int, size: int = 32, seed: int = 0,
                          n_sources: int | None = None,
                          max_ssim_gap: float | None = None) -> Path:
    """Write ``n_pairs`` synthetic pairs of ``size x size`` images to ``path`` (HDF5).

    Args:
        path: output file.
        n_pairs: number of pairs N.
        size: image side S in pixels.
        seed: everything is drawn from ``numpy.random.default_rng(seed)``.
        n_sources: distinct phantoms ("subjects"); default ``max(1, N // 4)``.
        max_ssim_gap: if given, redraw image 2 (up to 12 tries, as the reference did) until
            ``|SSIM1 - SSIM2| <= max_ssim_gap`` (the paper's pair constraint uses 0.09);
            the last try is kept if none fits.

    Returns:
        ``Path(path)``.
    """
    rng = np.random.default_rng(seed)
    n_sources = n_sources or max(1, n_pairs // 4)
    sources = [phantom(size, rng) for _ in range(n_sources)]
    src = rng.integers(0, n_sources, n_pairs)
    refs = np.stack([sources[i] for i in src])
    ims = np.zeros((2, n_pairs, size, size), np.complex64)
    sev = {n: np.zeros((n_pairs, 2), np.float32) for n in SEVERITY_NAMES}
    recon = np.empty((n_pairs, 2), object)
    params = np.empty((n_pairs, 2), object)
    mse = np.zeros((n_pairs, 2), np.float32)
    ss = np.zeros((n_pairs, 2), np.float32)
    for p in range(n_pairs):
        ref_mag = np.abs(refs[p])
        for j in range(2):
            for _ in range(12 if j == 1 and max_ssim_gap is not None else 1):
                img, s, rc = corrupt(refs[p], rng)
                sim = ssim(np.abs(img), ref_mag, float(ref_mag.max()))
                if j == 0 or max_ssim_gap is None or abs(sim - ss[p, 0]) <= max_ssim_gap:
                    break
            ims[j, p] = img
            for n in SEVERITY_NAMES:
                sev[n][p, j] = s[n]
            recon[p, j] = rc
            params[p, j] = json.dumps({"recon": rc, **{n: round(v, 6) for n, v in s.items()}})
            mse[p, j] = np.mean((np.abs(img) - ref_mag) ** 2)
            ss[p, j] = sim
    str_dt = h5py.string_dtype()
    path = Path(path)
    with h5py.File(path, "w") as f:
        f.attrs.update(format="rankiq-pairs", format_version=1, seed=seed, size=size,
                       n_pairs=n_pairs)
        f["reference"] = refs
        f["image1"], f["image2"] = ims[0], ims[1]
        f["pair_id"] = np.arange(n_pairs, dtype=np.int64)
        f.create_dataset("source_id", data=[f"phantom-{i:03d}" for i in src], dtype=str_dt)
        f["slice_index"] = np.zeros(n_pairs, np.int32)
        f.create_dataset("contrast", data=[CONTRASTS[i % 4] for i in src], dtype=str_dt)
        f.create_dataset("recon", data=recon, dtype=str_dt)
        f.create_dataset("params", data=params, dtype=str_dt)
        f["mse"], f["ssim"] = mse, ss
        for n in SEVERITY_NAMES:
            f[f"severity/{n}"] = sev[n]
    return path
