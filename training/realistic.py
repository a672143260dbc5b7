"""Realistic acquisitions for the no-reference model: anatomy, coils, thermal noise, matrices.

The paper's reference image is a fully sampled reconstruction *with its own noise*. This module
synthesises such acquisitions from anatomy that ships offline and is not used for evaluation:

* ``mni``: nilearn's MNI152 2009a template with tissue-derived T1/T1post/T2/FLAIR contrasts
  (:func:`rankiq.training.sources.brain_image`: skull, scalp, texture, bias, smooth phase);
* ``colin``: the Colin27 single-subject T1 scan (Debian package ``mricron-data``,
  ``/usr/share/mricron/templates/ch2better.nii.gz``), a real acquisition with its own noise and
  texture, resliced in axial, coronal or sagittal planes, as T1 or remapped to a T2-like
  contrast (CSF bright, white matter dark).

Every draw gets a random rigid-plus-scale transform and a smooth elastic deformation (up to a
few mm), a matrix of 64..512 and a field of view of 180..260 mm (pixel spacing ~0.35..4 mm);
a fifth of the draws image a region inside the head instead (partial field of view of
24..120 mm at 0.4..1.2 mm, Colin27 only, no air around the object, as small-FOV scans and crops),
1..12 receive coils (SigPy birdcage maps) with a smooth receive bias, and complex Gaussian
thermal noise at a peak SNR drawn log-uniformly over 12..100 (optionally a share read out as
EPI, with the Nyquist ghost of an odd/even echo phase mismatch: :data:`EPI_PHASE`). The *truth*
is the root-sum-of-squares reconstruction of the fully sampled noisy coils; corrupted copies
apply the simulator's corruptions (:mod:`rankiq.training.corruptions`, the paper's order and
ranges) to the coil k-space and are reconstructed the same way (zero-filled RSS: milliseconds,
where the iterative reconstructions of the simulator take seconds).

Real scans that ship inside Python packages (pydicom's, matplotlib's, nibabel's) are never
used here: they are kept for evaluation (``rankiq evaluate real``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from rankiq.service.fft import fft2c, ifft2c
from rankiq.training.corruptions import CorruptionConfig, apply_plan, draw_plan
from scipy.ndimage import gaussian_filter, map_coordinates

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

COLIN27 = Path("/usr/share/mricron/templates/ch2better.nii.gz")
COLIN27_VOXEL_MM = 0.5
MATRIX = (64, 512)
FOV_MM = (180.0, 260.0)
SNR = (12.0, 100.0)
COILS = (1, 12)
ANATOMIES = ("mni", "colin")
#: share of acquisitions with a partial field of view (a zoomed-in region of the head, no air
#: around it, as small-FOV and cropped scans are), their FOV range (mm), pixel spacing range
#: (mm) and how far from the head's centre (mm, per axis) the region may sit
PARTIAL_FOV = 0.2
PARTIAL_FOV_MM = (24.0, 120.0)
PARTIAL_SPACING_MM = (0.4, 1.2)
PARTIAL_OFFSET_MM = 35.0
#: phase mismatch between odd and even echoes of an EPI readout (radians, uniform): a Nyquist
#: (N/2) ghost of sin(phi / 2) of the object, 2.5-15 %, half the field of view away along the
#: phase-encode axis, as real EPI (fMRI, diffusion, ASL) carries in its clean images. Drawn for
#: a share ``epi`` of the acquisitions (:func:`acquire`; 0 for the shipped model: see
#: docs/noref.md for the measured alternative)
EPI_PHASE = (0.05, 0.3)


@dataclass(frozen=True)
class Acquisition:
    """One simulated acquisition and a corrupted copy.

    Attributes:
        truth: float32 ``(S, S)`` RSS magnitude of the fully sampled noisy coils.
        image: float32 ``(S, S)`` RSS magnitude after the corruptions in ``plan``.
        spacing_mm: pixel spacing (isotropic in plane).
        info: anatomy, contrast, plane, coils, snr, matrix, corruption plan.
    """

    truth: np.ndarray
    image: np.ndarray
    spacing_mm: float
    info: dict = field(default_factory=dict)


@lru_cache(maxsize=1)
def colin27() -> np.ndarray | None:
    """Colin27 T1 (float32 ``(x, y, z)`` in [0, 1], 1 mm), or None when not installed."""
    if not COLIN27.exists():
        return None
    import nibabel as nib

    v = np.asarray(cast("SpatialImage", nib.load(str(COLIN27))).dataobj, dtype=np.float32)
    return v / float(np.percentile(v, 99.9))


def _t2_like(v: np.ndarray) -> np.ndarray:
    """Remap a T1 intensity (background 0, CSF ~0.2, GM ~0.5, WM ~0.75, fat ~1) to a T2-like
    contrast (CSF bright, WM dark, fat medium), keeping the background dark."""
    xp = [0.0, 0.08, 0.25, 0.5, 0.75, 1.0, 2.0]
    fp = [0.0, 0.05, 1.0, 0.6, 0.35, 0.65, 0.8]
    return np.interp(v, xp, fp).astype(np.float32)


def _elastic(s: int, rng: np.random.Generator, amp_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random displacement fields ``(s, s)`` x2 with RMS ~``amp_px`` pixels."""
    out = []
    for _ in range(2):
        d = gaussian_filter(rng.standard_normal((s, s)).astype(np.float32), s / 12)
        out.append(d * (amp_px / (float(d.std()) or 1.0)))
    return out[0], out[1]


def colin_image(s: int, fov_mm: float, rng: np.random.Generator,
                offset_mm: float = 6.0) -> tuple[np.ndarray, dict]:
    """A resliced, deformed Colin27 slice ``(s, s)`` float32 (magnitude, max ~1) whose centre
    lies up to ``offset_mm`` from the volume's centre along each axis."""
    vol = colin27()
    assert vol is not None
    vox = COLIN27_VOXEL_MM
    plane = str(rng.choice(["axial", "coronal", "sagittal"], p=[0.6, 0.25, 0.15]))
    mm = fov_mm / s
    i = (np.arange(s) - s / 2 + 0.5) * mm
    rows, cols = np.meshgrid(i, i, indexing="ij")
    th = math.radians(rng.uniform(-15, 15))
    zoom = rng.uniform(0.85, 1.15)
    r = (math.cos(th) * rows - math.sin(th) * cols) / zoom
    c = (math.sin(th) * rows + math.cos(th) * cols) / zoom
    dx, dy = _elastic(s, rng, rng.uniform(0, 3.0) / mm)
    r, c = (r + dy * mm) / vox, (c + dx * mm) / vox  # mm -> voxels
    centre = (np.asarray(vol.shape) - 1) / 2 + rng.uniform(-offset_mm, offset_mm, 3) / vox
    depth = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    lo, hi = int(vol.shape[depth] * 0.3), int(vol.shape[depth] * 0.75)
    z = float(rng.uniform(lo, hi))
    if plane == "axial":
        coords = [centre[0] + c, centre[1] - r, np.full_like(r, z)]
    elif plane == "coronal":
        coords = [centre[0] + c, np.full_like(r, z), centre[2] - r]
    else:
        coords = [np.full_like(r, z), centre[1] + c, centre[2] - r]
    img = map_coordinates(vol, np.stack(coords), order=1, mode="constant", cval=0.0)
    contrast = "T1" if rng.random() < 0.5 else "T2"
    if contrast == "T2":
        img = _t2_like(img)
    return np.clip(img, 0, None).astype(np.float32), {"plane": plane, "contrast": contrast}


def mni_image(s: int, fov_mm: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """An MNI152-derived slice ``(s, s)`` float32 in one of the four contrasts."""
    from rankiq.training.sources import SourceConfig, _brain_slices, _subject, brain_image

    cfg = SourceConfig(fov_mm=fov_mm, rotation_deg=15.0, scale=(0.85, 1.15))
    subj = _subject(int(rng.integers(1 << 30)), int(rng.integers(1 << 20)), cfg)
    z = int(rng.choice(_brain_slices()))
    img = np.abs(brain_image(subj, z, s, rng, cfg)).astype(np.float32)
    dx, dy = _elastic(s, rng, rng.uniform(0, 3.0) * s / fov_mm)
    g = np.arange(s, dtype=np.float32)
    rr, cc = np.meshgrid(g, g, indexing="ij")
    img = map_coordinates(img, np.stack([rr + dy, cc + dx]), order=1, mode="constant")
    return img.astype(np.float32), {"plane": "axial", "contrast": subj["contrast"]}


def coil_maps(nc: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """``(nc, s, s)`` complex64 receive sensitivities (birdcage; one uniform coil for nc=1)."""
    if nc == 1:
        return np.ones((1, s, s), np.complex64)
    import sigpy.mri

    maps = sigpy.mri.birdcage_maps((nc, s, s), r=float(rng.uniform(1.2, 1.8)))
    return (maps / np.sqrt((np.abs(maps) ** 2).sum(0)).max()).astype(np.complex64)


def acquire(rng: np.random.Generator, *, corrupt: bool = True,
            cfg: CorruptionConfig | None = None, epi: float = 0.0) -> Acquisition:
    """Draw one realistic acquisition (see the module docstring) and a corrupted copy;
    a share ``epi`` of the draws are EPI readouts with a Nyquist ghost (:data:`EPI_PHASE`;
    with ``epi`` 0 nothing is drawn for it, so the other draws stay as they were)."""
    s = int(rng.integers(MATRIX[0] // 16, MATRIX[1] // 16 + 1)) * 16
    fov = float(rng.uniform(*FOV_MM))
    partial = colin27() is not None and rng.random() < PARTIAL_FOV
    if partial:  # a region inside the head: Colin27's 0.5 mm voxels resolve it
        fov = float(rng.uniform(*PARTIAL_FOV_MM))
        s = int(np.clip(round(fov / rng.uniform(*PARTIAL_SPACING_MM) / 16), 4, 16)) * 16
        anatomy = "colin"
        obj, info = colin_image(s, fov, rng, offset_mm=PARTIAL_OFFSET_MM)
    else:
        anatomy = "colin" if (colin27() is not None and rng.random() < 0.5) else "mni"
        obj, info = (colin_image if anatomy == "colin" else mni_image)(s, fov, rng)
    u = np.linspace(-1, 1, s, dtype=np.float32)
    uu, vv = np.meshgrid(u, u, indexing="ij")
    b = rng.normal(0, 0.15, 5)
    obj = obj * np.exp(b[0] * uu + b[1] * vv + b[2] * uu * uu + b[3] * vv * vv + b[4] * uu * vv)
    phase = 1.5 * (rng.uniform(-1, 1) * uu + rng.uniform(-1, 1) * vv + rng.uniform(-1, 1))
    x = (obj * np.exp(1j * phase)).astype(np.complex64)
    nc = int(rng.choice([1, 4, 8, 12], p=[0.15, 0.25, 0.35, 0.25]))
    coils = coil_maps(nc, s, rng) * x[None]
    snr = float(math.exp(rng.uniform(math.log(SNR[0]), math.log(SNR[1]))))
    peak = float(np.percentile(np.sqrt((np.abs(coils) ** 2).sum(0)), 99)) or 1.0
    sigma = peak / snr
    k = fft2c(coils)
    noise = rng.standard_normal(k.shape, np.float32) + 1j * rng.standard_normal(k.shape, np.float32)
    # ortho FFT: white noise of std sigma in the image is white noise of std sigma in k-space
    k = (k + noise * np.float32(sigma / math.sqrt(2))).astype(np.complex64)
    epi_phase = 0.0
    if epi > 0 and rng.random() < epi:  # odd phase-encode lines (last axis) at another phase
        epi_phase = float(rng.uniform(*EPI_PHASE))
        k[..., 1::2] *= np.complex64(np.exp(1j * epi_phase))
    post = draw_postprocessing(rng)
    if post["apodization"] > 0:  # the scanner's k-space filter, applied to every image
        k = (k * apodization(s, post["apodization"])[None]).astype(np.complex64)
    truth = postprocess(rss(k), post)
    plan: dict = {}
    image = truth
    if corrupt:
        cfg = cfg or CorruptionConfig()
        plan = draw_plan(rng, s, cfg)
        if plan:
            kc, _, _ = apply_plan(k, plan, np.full(nc, sigma), rng)
            image = postprocess(rss(kc), post)
    info.update({"anatomy": anatomy, "matrix": s, "fov_mm": fov, "partial_fov": partial,
                 "coils": nc, "snr": snr, "epi_phase": epi_phase, "plan": plan, "post": post})
    return Acquisition(truth=truth, image=image, spacing_mm=fov / s, info=info)


def draw_postprocessing(rng: np.random.Generator) -> dict:
    """What a scanner does to a magnitude image before DICOM: a k-space apodization (strength
    0 = none), background masking (threshold as a fraction of the smoothed maximum, 0 = none)
    and zero-filled interpolation to twice the matrix (ZIP x2)."""
    return {"apodization": float(rng.uniform(0.1, 0.6)) if rng.random() < 0.3 else 0.0,
            "mask": float(rng.uniform(0.03, 0.12)) if rng.random() < 0.2 else 0.0,
            "zip2": bool(rng.random() < 0.15)}


def apodization(s: int, strength: float) -> np.ndarray:
    """``(s, s)`` k-space window ``1 - strength * sin^2(pi r / 2)`` (r = radius / Nyquist,
    capped at 1): a Hann-like taper whose edge gain is ``1 - strength``."""
    f = (np.arange(s) - s // 2) / (s / 2)
    r = np.minimum(np.hypot(f[:, None], f[None, :]), 1.0)
    return (1.0 - strength * np.sin(np.pi * r / 2) ** 2).astype(np.float32)


def postprocess(image: np.ndarray, post: dict) -> np.ndarray:
    """Apply :func:`draw_postprocessing`'s masking and interpolation to a magnitude image."""
    x = image
    if post.get("mask", 0.0) > 0:
        sm = gaussian_filter(x, 2.0)
        x = np.where(sm > post["mask"] * float(sm.max()), x, 0.0).astype(np.float32)
    if post.get("zip2"):
        from rankiq.service.preprocess import to_grid

        n = x.shape[-1]
        x = np.maximum(to_grid(x, (2 * n, 2 * n)), 0.0)
    return x.astype(np.float32, copy=False)


def rss(kspace: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares magnitude ``(S, S)`` float32 of centred coil k-space ``(C, S, S)``."""
    return np.sqrt((np.abs(ifft2c(kspace)) ** 2).sum(0)).astype(np.float32)
