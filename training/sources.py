"""Sources of clean multi-coil k-space for the simulator.

A *source* turns a work-unit number into a :class:`CleanSlice`: fully sampled multi-coil
k-space of one axial slice with its source id (subject/volume, so cross-validation can group by
it), slice index and contrast. Sources (:func:`open_source` parses the ``--source`` spec):

* ``brain``: axial slices synthesised from nilearn's bundled MNI152 2009a T1 template and its
  grey/white-matter probability maps (offline), in the paper's four contrasts (T1, T1post, T2,
  FLAIR) with per-subject tissue intensities, bias field, rotation, scaling, shift, skull/scalp
  thicknesses, texture and smooth background phase. Ids ``brain-s0007``; ``slice_index`` is the
  template's axial index (1 mm).
* ``phantom``: a Shepp-Logan phantom with per-subject geometry and intensity changes, for
  fast tests. Ids ``phantom-3``.
* ``nifti:PATH``: a 3D magnitude volume (``.nii``/``.nii.gz``) or a directory of them; axial
  slices (third axis after reorientation to RAS) holding signal. Ids ``nifti-<stem>``.
* ``fastmri:DIR``: fastMRI multicoil brain HDF5 files (``kspace`` dataset
  ``(slices, coils, readout, phase)``, ``acquisition`` attribute giving the contrast). Their
  k-space is cropped/zero-padded to ``(2S, S)`` (the paper zero-padded to 768x396) and used as
  acquired (its own noise floor). Ids ``fastmri-<file stem>``.

Image-based sources (brain, phantom, nifti) share :func:`simulate_coils`: birdcage sensitivity
maps (SigPy) for 8-20 coils at a random relative radius, readout zero-padded 2x (the oversampled
field of view, as in raw fastMRI data), a complex Gaussian noise floor at a random SNR. All
sources then compress the coils to ``virtual_coils`` (6) by SVD (standard coil compression,
keeping >= 99.5 % of the signal energy of 8-20 birdcage coils; the iterative reconstructions
cost time in proportion to the coil count). A brain/phantom subject keeps one coil setup
(count, radius, SNR) for all its slices, like a real examination.

Array conventions: k-space complex64 ``(coils, 2S, S)``, axis -2 the (oversampled) readout,
axis -1 phase encoding, centred. Images ``(S, S)`` with rows anterior -> posterior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from rankiq.service.errors import RankIQError, UnreadableInput, UnsupportedInput
from rankiq.service.fft import center_crop, center_pad, fft2c
from rankiq.service.io.types import CONTRAST_FAMILIES
from rankiq.training.config import JsonConfig
from scipy.ndimage import distance_transform_edt, gaussian_filter, map_coordinates, rotate

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

#: the simulated contrasts: every family but "other"
CONTRASTS: tuple[str, ...] = tuple(f for f in CONTRAST_FAMILIES if f != "other")
#: relative intensities (wm, gm, csf, csf ring / dura, skull, scalp) per contrast
TISSUE_INTENSITY: dict[str, tuple[float, ...]] = {
    "T1": (0.85, 0.55, 0.15, 0.15, 0.04, 1.0),
    "T1post": (0.85, 0.60, 0.18, 0.75, 0.04, 1.0),
    "T2": (0.35, 0.55, 1.00, 1.00, 0.04, 0.70),
    "FLAIR": (0.45, 0.65, 0.06, 0.06, 0.04, 0.60),
}

# spawn-key namespaces of numpy SeedSequence (unit rngs use 0, pair rngs 1: see simulate)
_SUBJECT_KEY = 2


class SourceError(RankIQError):
    """A ``--source`` that cannot be used (unknown kind, missing path, no usable data)."""

    reason = "bad_source"


@dataclass(frozen=True)
class SourceConfig(JsonConfig):
    """Multi-coil simulation and subject variation.

    Attributes:
        coils: physical coil count ``U{lo..hi}`` per subject (image-based sources).
        virtual_coils: coils kept after SVD compression (0 keeps all).
        coil_radius: birdcage radius relative to the half field of view, ``U(lo, hi)``.
        snr: peak signal / noise standard deviation of the simulated noise floor, ``U(lo, hi)``.
        slices_per_subject: brain/phantom slices drawn per synthetic subject.
        contrast_weights: probability of T1, T1post, T2, FLAIR per brain subject (the paper's
            counts 378, 428, 1894, 216).
        fov_mm: field of view of the brain images in mm (template at 1 mm).
        rotation_deg, scale, shift: per-subject in-plane rotation ``U(-r, r)``, zoom
            ``U(lo, hi)`` and shift ``U(-s, s)`` (fraction of the field of view).
        bias: std of the log bias-field polynomial coefficients.
        phase: max amplitude (rad) of the smooth background phase terms.
    """

    coils: tuple[int, int] = (8, 20)
    virtual_coils: int = 6
    coil_radius: tuple[float, float] = (1.2, 1.6)
    snr: tuple[float, float] = (30.0, 80.0)
    slices_per_subject: int = 12
    contrast_weights: tuple[float, ...] = (378, 428, 1894, 216)
    fov_mm: float = 240.0
    rotation_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.03
    bias: float = 0.15
    phase: float = 1.5


@dataclass
class CleanSlice:
    """Fully sampled multi-coil k-space of one slice.

    Attributes:
        kspace: complex64 ``(coils, 2S, S)``.
        source_id: subject/volume id (``brain-s0007``...).
        slice_index: slice within the subject/volume.
        contrast: one of T1, T1post, T2, FLAIR, other.
        info: JSON-ready facts (physical coils, SNR, subject parameters...).
    """

    kspace: np.ndarray
    source_id: str
    slice_index: int
    contrast: str
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- coils


def _unit_grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] of an ``s x s`` grid (rows, cols)."""
    c = (np.arange(s) + 0.5) / s * 2 - 1
    return np.meshgrid(c, c, indexing="ij")


def smooth_phase(s: int, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth background phase (rad): constant + linear + quadratic terms, ``(s, s)``."""
    u, v = _unit_grid(s)
    a = rng.uniform(-1, 1, size=5) * amplitude
    return rng.uniform(-math.pi, math.pi) + a[0] * u + a[1] * v + a[2] * u * u + a[3] * v * v \
        + a[4] * u * v


def compress_coils(kspace: np.ndarray, n: int) -> np.ndarray:
    """SVD coil compression to the ``n`` strongest virtual coils (``n <= 0`` keeps all).

    Args:
        kspace: complex ``(coils, kx, ky)``.

    Returns:
        complex64 ``(min(n, coils), kx, ky)``; a unitary mix of the coils truncated to the
        dominant components (white noise stays white).
    """
    c = kspace.shape[0]
    if n <= 0 or n >= c:
        return kspace.astype(np.complex64, copy=False)
    flat = kspace.reshape(c, -1).astype(np.complex64)
    cov = flat @ flat.conj().T
    w, v = np.linalg.eigh(cov.astype(np.complex128))
    u = v[:, ::-1][:, :n].conj().T.astype(np.complex64)  # (n, c)
    return (u @ flat).reshape((n,) + kspace.shape[1:])


def draw_coil_setup(rng: np.random.Generator, cfg: SourceConfig) -> dict:
    """Coil count, birdcage radius and SNR (per subject for brain/phantom, per slice else)."""
    return {"coils": int(rng.integers(cfg.coils[0], cfg.coils[1] + 1)),
            "coil_radius": float(rng.uniform(*cfg.coil_radius)),
            "snr": float(rng.uniform(*cfg.snr))}


@lru_cache(maxsize=4)
def _birdcage(nc: int, s: int, radius: float) -> np.ndarray:
    """SigPy birdcage maps ``(nc, s, s)`` complex64 (cached: a subject's slices share them)."""
    import sigpy.mri as mr

    maps = mr.birdcage_maps((nc, s, s), r=radius, dtype=np.complex64).astype(np.complex64)
    maps.setflags(write=False)
    return maps


def simulate_coils(
    image: np.ndarray, rng: np.random.Generator, cfg: SourceConfig, setup: dict | None = None
) -> tuple[np.ndarray, dict]:
    """Multi-coil k-space of a complex image.

    Args:
        image: complex ``(S, S)`` object (S even).
        rng: generator (noise; and the coil setup when ``setup`` is None).
        cfg: coil/noise settings.
        setup: :func:`draw_coil_setup` output, or None to draw one.

    Returns:
        ``(kspace, info)``: complex64 ``(virtual_coils, 2S, S)`` with a 2x oversampled
        readout, and ``{"coils", "virtual_coils", "coil_radius", "snr", "noise_sigma"}``.
    """
    s = image.shape[-1]
    setup = setup or draw_coil_setup(rng, cfg)
    nc, radius, snr = setup["coils"], setup["coil_radius"], setup["snr"]
    maps = _birdcage(nc, s, radius)
    coil = maps * image[None].astype(np.complex64)
    peak = float(np.sqrt((np.abs(coil) ** 2).sum(0)).max()) or 1.0
    sigma = peak / snr
    # compress first, then add the noise to the virtual coils: SVD compression is a unitary
    # mix plus truncation, so white noise of sigma per coil stays white with the same sigma
    # (statistically the same as compressing noisy physical coils, at a fraction of the cost)
    coil = compress_coils(coil, cfg.virtual_coils)
    k = fft2c(center_pad(coil, (2 * s, s)), workers=1).astype(np.complex64)
    noise = rng.standard_normal(k.shape, dtype=np.float32) + 1j * rng.standard_normal(
        k.shape, dtype=np.float32
    )
    k += noise * np.float32(sigma / math.sqrt(2))
    return k, {"coils": nc, "virtual_coils": int(k.shape[0]), "coil_radius": radius,
               "snr": snr, "noise_sigma": sigma}


# ----------------------------------------------------------------------------- brain


@lru_cache(maxsize=1)
def _mni() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MNI152 2009a T1, GM and WM volumes (float32 in [0, 1], ``(x, y, z)`` RAS, 1 mm)."""
    import nibabel as nib
    from nilearn import datasets

    base = Path(datasets.__file__).parent / "data"
    names = ("t1", "gm", "wm")
    vols = []
    for n in names:
        path = base / f"mni_icbm152_{n}_tal_nlin_sym_09a_converted.nii.gz"
        if not path.exists():
            raise SourceError(f"{path}: nilearn's bundled MNI152 template is missing")
        img = cast("SpatialImage", nib.load(str(path)))
        vols.append(np.asarray(img.dataobj, dtype=np.float32) / 255.0)
    return vols[0], vols[1], vols[2]


@lru_cache(maxsize=1)
def _brain_slices() -> np.ndarray:
    """Axial indices whose brain area is at least 40 % of the largest."""
    t1, _, _ = _mni()
    area = (t1 > 0).sum(axis=(0, 1))
    return np.flatnonzero(area >= 0.4 * area.max())


def _subject(seed: int, subject: int, cfg: SourceConfig) -> dict:
    """Per-subject parameters, drawn from ``(seed, subject)`` only."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SUBJECT_KEY, subject)))
    p = np.asarray(cfg.contrast_weights, dtype=np.float64)
    contrast = CONTRASTS[int(rng.choice(len(CONTRASTS), p=p / p.sum()))]
    valid = _brain_slices()
    n = min(cfg.slices_per_subject, valid.size)
    return {
        "contrast": contrast,
        "intensity": (np.asarray(TISSUE_INTENSITY[contrast])
                      * rng.uniform(0.9, 1.1, size=6)).tolist(),
        "rotation_deg": float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)),
        "scale": float(rng.uniform(*cfg.scale)),
        "shift": rng.uniform(-cfg.shift, cfg.shift, size=2).tolist(),
        "skull_mm": float(rng.uniform(4, 7)),
        "scalp_mm": float(rng.uniform(4, 8)),
        "bias": rng.normal(0, cfg.bias, size=5).tolist(),
        "slices": sorted(rng.choice(valid, size=n, replace=False).tolist()),
        "coil_setup": draw_coil_setup(rng, cfg),
    }


def brain_image(subj: dict, z: int, s: int, rng: np.random.Generator,
                cfg: SourceConfig) -> np.ndarray:
    """Synthesise one axial slice of a subject (complex ``(s, s)``, magnitude max ~1)."""
    t1, gm, wm = _mni()
    mm_per_px = cfg.fov_mm / s / subj["scale"]
    i = (np.arange(s) - s / 2 + 0.5) * mm_per_px
    rows, cols = np.meshgrid(i, i, indexing="ij")
    th = math.radians(subj["rotation_deg"])
    r = math.cos(th) * rows - math.sin(th) * cols
    c = math.sin(th) * rows + math.cos(th) * cols
    # template voxel coordinates: columns -> +x, rows -> -y (anterior at the top)
    cx, cy = (t1.shape[0] - 1) / 2, (t1.shape[1] - 1) / 2
    sx, sy = subj["shift"]
    x = cx + c + sx * cfg.fov_mm
    y = cy - r + sy * cfg.fov_mm
    coords = np.stack([x, y, np.full_like(x, z)])

    def sample(vol: np.ndarray) -> np.ndarray:
        return map_coordinates(vol, coords, order=1, mode="constant", cval=0.0)

    g, w, inside = sample(gm), sample(wm), sample((t1 > 0).astype(np.float32))
    brain = np.clip(np.maximum(inside, g + w), 0, 1)
    csf = np.clip(brain - g - w, 0, 1)
    # rings outside the brain: CSF/dura (2 mm), skull, scalp (fat), in mm
    dist = distance_transform_edt(brain < 0.5) * mm_per_px
    ring = np.clip(1 - np.abs(dist - 1.0) / 1.5, 0, 1) * (brain < 0.5)
    skull_end = 2.0 + subj["skull_mm"]
    scalp = np.clip(dist - skull_end, 0, 1) * np.clip(skull_end + subj["scalp_mm"] - dist, 0, 1)
    skull = ((dist > 2.0) & (dist <= skull_end)).astype(np.float32)
    iw, ig, ic, iring, iskull, iscalp = subj["intensity"]
    # binary rings would alias: soften them to ~1 mm
    outer = gaussian_filter(iring * ring + iskull * skull + iscalp * scalp, 0.6 / mm_per_px)
    img = iw * w + ig * g + ic * csf + outer
    # texture: the template is an average; add fine (+-5 %) structure within tissue
    tex = gaussian_filter(rng.standard_normal((s, s)).astype(np.float32), 1.0)
    img = img * (1 + 0.05 * tex / (tex.std() or 1.0))
    u, v = _unit_grid(s)
    b = subj["bias"]
    img = img * np.exp(b[0] * u + b[1] * v + b[2] * u * u + b[3] * v * v + b[4] * u * v)
    img = np.clip(img, 0, None)
    return (img * np.exp(1j * smooth_phase(s, rng, cfg.phase))).astype(np.complex64)


# ----------------------------------------------------------------------------- sources


class Source:
    """Base class: ``slice(unit, seed, size, rng)`` returns the clean slice of a work unit."""

    name = "source"

    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg

    def slice(self, unit: int, seed: int, size: int, rng: np.random.Generator) -> CleanSlice:
        raise NotImplementedError


class BrainSource(Source):
    """Synthetic brains from the MNI152 template (see module docstring)."""

    name = "brain"

    def __init__(self, cfg: SourceConfig) -> None:
        super().__init__(cfg)
        _mni()  # fail early if the template is missing

    def slice(self, unit: int, seed: int, size: int, rng: np.random.Generator) -> CleanSlice:
        per = max(1, min(self.cfg.slices_per_subject, _brain_slices().size))
        subject, slot = divmod(unit, per)
        subj = _subject(seed, subject, self.cfg)
        z = int(subj["slices"][slot])
        img = brain_image(subj, z, size, rng, self.cfg)
        k, info = simulate_coils(img, rng, self.cfg, subj["coil_setup"])
        info.update({k2: subj[k2] for k2 in ("rotation_deg", "scale", "shift")})
        return CleanSlice(k, f"brain-s{subject:04d}", z, subj["contrast"], info)


class PhantomSource(Source):
    """Shepp-Logan phantoms with per-subject rotation, zoom and intensity; tiny and fast."""

    name = "phantom"

    def slice(self, unit: int, seed: int, size: int, rng: np.random.Generator) -> CleanSlice:
        import sigpy

        per = max(1, self.cfg.slices_per_subject)
        subject, slot = divmod(unit, per)
        srng = np.random.default_rng(
            np.random.SeedSequence(seed, spawn_key=(_SUBJECT_KEY, subject)))
        zoom = srng.uniform(0.75, 0.95)
        angle = srng.uniform(-15, 15) + 3.0 * slot
        inner = max(8, int(round(size * zoom)) // 2 * 2)
        ph = np.abs(sigpy.shepp_logan((inner, inner), dtype=np.complex64)).astype(np.float32)
        ph = rotate(ph, angle, reshape=False, order=1)
        img = center_pad(np.clip(ph, 0, None), (size, size))
        u, v = _unit_grid(size)
        b = srng.normal(0, self.cfg.bias, size=2)
        img = img * np.exp(b[0] * u + b[1] * v)
        img = (img * np.exp(1j * smooth_phase(size, rng, self.cfg.phase))).astype(np.complex64)
        k, info = simulate_coils(img, rng, self.cfg, draw_coil_setup(srng, self.cfg))
        return CleanSlice(k, f"phantom-{subject}", slot, "other", info)


def _perm(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SUBJECT_KEY, 10**9))
                                 ).permutation(n)


class NiftiSource(Source):
    """Axial slices of user NIfTI magnitude volumes (a file or a directory of them)."""

    name = "nifti"

    def __init__(self, path: str, cfg: SourceConfig) -> None:
        super().__init__(cfg)
        p = Path(path)
        if not p.exists():
            raise SourceError(f"{path}: no such NIfTI file or directory")
        files = sorted(p.glob("*.nii")) + sorted(p.glob("*.nii.gz")) if p.is_dir() else [p]
        files = sorted(files)
        if not files:
            raise SourceError(f"{path}: no .nii or .nii.gz files")
        self.entries: list[tuple[Path, int]] = []
        for f in files:
            vol = self._load(f)
            energy = vol.reshape(-1, vol.shape[-1]).sum(axis=0)
            keep: np.ndarray | list[int] = (
                np.flatnonzero(energy >= 0.2 * energy.max()) if energy.max() > 0 else [])
            self.entries += [(f, int(z)) for z in keep]
        if not self.entries:
            raise SourceError(f"{path}: the NIfTI volumes hold no non-zero slices")

    @staticmethod
    @lru_cache(maxsize=4)
    def _load(path: Path) -> np.ndarray:
        import nibabel as nib

        try:
            img = nib.as_closest_canonical(nib.load(str(path)))
            vol = np.abs(np.asarray(img.dataobj, dtype=np.float32))
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types
            raise UnreadableInput(f"cannot read NIfTI: {type(exc).__name__}",
                                  source=str(path)) from exc
        while vol.ndim > 3:
            vol = vol[..., 0]
        if vol.ndim == 2:
            vol = vol[..., None]
        if vol.ndim != 3 or min(vol.shape[:2]) < 8 or not np.isfinite(vol).all():
            raise UnsupportedInput(f"not a usable 3D magnitude volume (shape {vol.shape})",
                                   source=str(path))
        return vol

    def slice(self, unit: int, seed: int, size: int, rng: np.random.Generator) -> CleanSlice:
        f, z = self.entries[int(_perm(len(self.entries), seed)[unit % len(self.entries)])]
        vol = self._load(f)
        sl = np.flipud(vol[:, :, z].T)
        scale = np.percentile(vol, 99.5) or vol.max() or 1.0
        sl = sl / scale
        side = max(sl.shape)
        sl = center_pad(sl, (side, side))
        if side != size:  # resample to S x S by bilinear interpolation (field of view kept)
            c = (np.arange(size) + 0.5) * side / size - 0.5
            rr, cc = np.meshgrid(c, c, indexing="ij")
            sl = map_coordinates(sl, [rr, cc], order=1, mode="constant")
        img = (sl * np.exp(1j * smooth_phase(size, rng, self.cfg.phase))).astype(np.complex64)
        k, info = simulate_coils(img, rng, self.cfg)
        stem = f.name.removesuffix(".gz").removesuffix(".nii")
        return CleanSlice(k, f"nifti-{stem}", z, "other", info)


def contrast_of(acquisition: str) -> str:
    """fastMRI ``acquisition`` attribute (AXT1, AXT1PRE, AXT1POST, AXT2, AXFLAIR) -> family."""
    a = acquisition.upper()
    if "FLAIR" in a:
        return "FLAIR"
    if "POST" in a:
        return "T1post"
    if "T1" in a:
        return "T1"
    if "T2" in a:
        return "T2"
    return "other"


class FastMRISource(Source):
    """Slices of fastMRI multicoil HDF5 files (read lazily, one slice at a time)."""

    name = "fastmri"

    def __init__(self, path: str, cfg: SourceConfig) -> None:
        import h5py

        super().__init__(cfg)
        d = Path(path)
        if not d.is_dir():
            raise SourceError(f"{path}: not a directory of fastMRI .h5 files")
        files = sorted(d.glob("*.h5"))
        if not files:
            raise SourceError(f"{path}: no .h5 files")
        self.entries: list[tuple[Path, int]] = []
        self.contrast: dict[Path, str] = {}
        for f in files:
            try:
                with h5py.File(f, "r") as h:
                    if "kspace" not in h or h["kspace"].ndim != 4:
                        raise UnsupportedInput("no multicoil 'kspace' dataset "
                                               "(slices, coils, readout, phase)", source=str(f))
                    n = h["kspace"].shape[0]
                    self.contrast[f] = contrast_of(str(h.attrs.get("acquisition", "")))
            except OSError as exc:
                raise UnreadableInput("not a readable HDF5 file", source=str(f)) from exc
            self.entries += [(f, z) for z in range(n)]
        if not self.entries:
            raise SourceError(f"{path}: the .h5 files hold no slices")

    def slice(self, unit: int, seed: int, size: int, rng: np.random.Generator) -> CleanSlice:
        import h5py

        f, z = self.entries[int(_perm(len(self.entries), seed)[unit % len(self.entries)])]
        with h5py.File(f, "r") as h:
            k = np.asarray(h["kspace"][z], dtype=np.complex64)
        target = (2 * size, size)
        crop = (min(k.shape[-2], target[0]), min(k.shape[-1], target[1]))
        k = center_pad(center_crop(k, crop), target)
        # scale so intensities are O(1) like the synthetic sources (everything is normalised
        # to the truth later; this only keeps float32 well inside its range)
        k = k / np.float32(np.abs(k).max() or 1.0)
        nc = k.shape[0]
        k = compress_coils(k, self.cfg.virtual_coils)
        return CleanSlice(k, f"fastmri-{f.stem}", int(z), self.contrast[f],
                          {"coils": int(nc), "virtual_coils": int(k.shape[0])})


def open_source(spec: str, cfg: SourceConfig) -> Source:
    """Parse a ``--source`` spec: ``brain``, ``phantom``, ``nifti:PATH``, ``fastmri:DIR``.

    Raises:
        SourceError: unknown kind, missing path, no usable data.
    """
    kind, _, arg = spec.partition(":")
    if kind == "brain" and not arg:
        return BrainSource(cfg)
    if kind == "phantom" and not arg:
        return PhantomSource(cfg)
    if kind == "nifti" and arg:
        return NiftiSource(arg, cfg)
    if kind == "fastmri" and arg:
        return FastMRISource(arg, cfg)
    raise SourceError(
        f"unknown source {spec!r}: use brain, phantom, nifti:PATH or fastmri:DIR"
    )
