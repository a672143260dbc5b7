"""Simulated slices for the denoising and reconstruction experiments.

Anatomy: :func:`rankiq.training.realistic.mni_image` (the MNI152-derived brains of the
simulator in the four contrasts, with a random subject, slice, rotation, zoom and elastic
deformation per draw), given a smooth random background phase (a complex MR image). Every slice
is drawn from its own generator ``SeedSequence(seed, spawn_key=(SPLIT_KEY[split], index))``, so
the train, validation and test slices are disjoint draws from disjoint seed streams, and none
of them is a slice the ranking networks saw: those were simulated with the brain source's own
streams (``rankiq simulate --seed 2025``, spawn keys 0..2), which these keys (14, 15, 16) never
meet. The anatomical template itself is shared (it is the only brain that ships offline).

Each reference is scaled so that its largest magnitude is 1 (SSIM's data range).

* Denoising (:func:`denoise_split`): the fully sampled single-coil k-space of the reference
  gets complex Gaussian noise of standard deviation ``sigma`` (orthonormal FFT, so also
  ``sigma`` per image pixel), ``sigma`` drawn uniformly from ``noise`` (fractions of the
  reference maximum); the network input is the noisy image.
* Reconstruction (:func:`recon_split`): ``coils`` SigPy birdcage receive maps, fully sampled
  multi-coil k-space with a thermal noise floor (``snr``), Poisson-disc undersampling
  (``sigpy.mri.poisson``, ``calib`` x ``calib`` fully sampled centre, acceleration within 5 %)
  at each acceleration, and ESPIRiT maps (``sigpy.mri.app.EspiritCalib`` via
  :func:`rankiq.training.reconstruct.espirit_maps`, kernel 6 or ``calib - 2``) calibrated from
  the *undersampled* data. The reference is the fully sampled coil combination with those
  maps, ``sum_c conj(S_c) F^H k_c`` (what the network can reach).

Arrays (complex64 unless said): denoise ``noisy, reference (n, S, S)``, ``sigma (n,)``
float32; recon ``kspace (n, C, S, S)`` (masked), ``maps (n, C, S, S)``, ``mask (n, S, S)``
float32, ``reference (n, S, S)``.
"""

from __future__ import annotations

import math

import numpy as np
from rankiq.service.fft import fft2c, ifft2c

#: SeedSequence spawn keys of the three splits (the brain source uses 0..2)
SPLIT_KEY = {"train": 14, "val": 15, "test": 16}
FOV_MM = 220.0


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_KEY[split],
                                                                         index)))


def reference_slice(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A complex ``(size, size)`` brain slice with a smooth phase, max magnitude 1."""
    from rankiq.training.realistic import mni_image

    mag, info = mni_image(size, FOV_MM, rng)
    u = np.linspace(-1, 1, size, dtype=np.float32)
    uu, vv = np.meshgrid(u, u, indexing="ij")
    phase = 1.5 * (rng.uniform(-1, 1) * uu + rng.uniform(-1, 1) * vv + rng.uniform(-1, 1))
    x = mag * np.exp(1j * phase)
    return (x / (np.abs(x).max() or 1.0)).astype(np.complex64), str(info["contrast"])


def denoise_split(split: str, n: int, *, size: int, seed: int,
                  noise: tuple[float, float]) -> dict[str, np.ndarray]:
    """``n`` (noisy, reference) slices of a split (see the module doc)."""
    noisy, refs, sigmas, contrasts = [], [], [], []
    for i in range(n):
        rng = _rng(seed, split, i)
        ref, contrast = reference_slice(rng, size)
        sigma = float(rng.uniform(*noise))
        k = fft2c(ref)
        w = rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)
        noisy.append(ifft2c((k + w * (sigma / math.sqrt(2))).astype(np.complex64)))
        refs.append(ref)
        sigmas.append(sigma)
        contrasts.append(contrast)
    return {"input": np.asarray(noisy, np.complex64), "reference": np.asarray(refs, np.complex64),
            "sigma": np.asarray(sigmas, np.float32), "contrast": np.asarray(contrasts)}


#: Poisson-disc draws tried per slice before giving up (SigPy's generator can miss the
#: acceleration tolerance for an unlucky seed; about 1 in 500 at 8x on 128x128)
MASK_TRIES = 20


def poisson_mask(size: int, accel: float, calib: int, seed: int) -> np.ndarray:
    """A ``(size, size)`` float32 Poisson-disc sampling mask with a ``calib`` x ``calib`` fully
    sampled centre and an acceleration within 5 % of ``accel``.

    Draws with ``seed``, then ``seed + 1``, ... (deterministic) when SigPy cannot meet the
    tolerance for a seed; the first draw that can is the one every earlier run used.
    """
    import sigpy.mri

    for k in range(MASK_TRIES):
        try:
            return sigpy.mri.poisson((size, size), accel, calib=(calib, calib), dtype=np.float32,
                                     seed=(seed + k) % (1 << 31),
                                     tol=0.05 * accel).real.astype(np.float32)
        except ValueError:  # "Cannot generate mask to satisfy accel": try the next seed
            continue
    raise ValueError(f"no Poisson-disc mask meets acceleration {accel:g} within 5 % in "
                     f"{MASK_TRIES} draws (size {size}, calibration {calib})")


def recon_split(split: str, n: int, *, size: int, seed: int, accel: float, coils: int,
                calib: int, snr: float) -> dict[str, np.ndarray]:
    """``n`` undersampled multi-coil slices of a split at one acceleration."""
    import sigpy.mri
    from rankiq.training.reconstruct import ReconConfig, espirit_maps
    from rankiq.training.simulate import single_threaded

    cfg = ReconConfig(espirit_calib=calib, espirit_grid=min(64, size),
                      espirit_kernel=max(3, min(6, calib - 2)))
    out: dict[str, list] = {"kspace": [], "maps": [], "mask": [], "reference": [],
                            "contrast": []}
    for i in range(n):
        rng = _rng(seed, split, i)  # the same slice at every acceleration (paired test)
        x, contrast = reference_slice(rng, size)
        true_maps = sigpy.mri.birdcage_maps((coils, size, size), r=float(rng.uniform(1.2, 1.8)))
        true_maps = true_maps / np.sqrt((np.abs(true_maps) ** 2).sum(0)).max()
        k = fft2c((true_maps * x[None]).astype(np.complex64))
        w = rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)
        k = (k + w * (1.0 / snr / math.sqrt(2))).astype(np.complex64)
        mask_seed = int(rng.integers(1 << 31))
        with single_threaded():
            mask = poisson_mask(size, accel, calib, mask_seed)
            maps = espirit_maps(k * mask[None], cfg)
        ref = (maps.conj() * ifft2c(k)).sum(0)
        scale = float(np.abs(ref).max()) or 1.0
        out["kspace"].append(k * mask[None] / scale)
        out["maps"].append(maps)
        out["mask"].append(mask)
        out["reference"].append(ref / scale)
        out["contrast"].append(contrast)
    return {"kspace": np.asarray(out["kspace"], np.complex64),
            "maps": np.asarray(out["maps"], np.complex64),
            "mask": np.asarray(out["mask"], np.float32),
            "reference": np.asarray(out["reference"], np.complex64),
            "contrast": np.asarray(out["contrast"])}
