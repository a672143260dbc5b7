"""Synthetic MR series written as DICOM, for ``rankiq bench qa`` and the QA tests.

Pure NumPy + pydicom (no training dependencies): a smooth head-like phantom (nested ellipsoids
with per-subject geometry and contrast), optionally corrupted in k-space by noise, blur or motion
ghosts, written one file per slice as MR Image Storage. The archive can also hold the objects a
real archive holds and QA must skip or report: a localiser, a derived series, a non-image object
(Basic Text SR) and an unreadable file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

CORRUPTIONS: tuple[str, ...] = ("clean", "noise", "blur", "motion")
# contrast family -> (SeriesDescription, tissue intensities (scalp, csf, grey, white, lesion))
CONTRASTS: dict[str, tuple[str, tuple[float, ...]]] = {
    "T1": ("AX T1 SE", (0.9, 0.15, 0.55, 0.8, 0.5)),
    "T1post": ("AX T1 POST GAD", (0.9, 0.15, 0.55, 0.8, 1.0)),
    "T2": ("AX T2 TSE", (0.5, 1.0, 0.65, 0.45, 0.9)),
    "FLAIR": ("AX T2 FLAIR", (0.6, 0.05, 0.75, 0.55, 1.0)),
}
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


@dataclass(frozen=True)
class SyntheticSeries:
    """What was written for one series (ground truth for tests and the bench).

    ``corruption`` is one of :data:`CORRUPTIONS` (or ``"localizer"``/``"derived"``), ``severity``
    its strength in [0, 1], ``files`` the paths written (one per slice).
    """

    index: int
    contrast: str
    corruption: str
    severity: float
    slices: int
    description: str
    files: tuple[str, ...]


def phantom(slices: int, size: int, contrast: str, rng: np.random.Generator) -> np.ndarray:
    """Head-like phantom, float32 ``(slices, size, size)`` in [0, ~1] (arbitrary units).

    Nested ellipsoids (scalp, CSF, grey matter, white matter, a small lesion) whose in-plane
    radii follow the slice position, per-subject shifts and a smooth bias field, acquired like
    an MR image: tissue texture (+-5 %), a point-spread function of ~1 px and complex thermal
    noise at a peak SNR of 30-60 (a Rician noise floor in the air), so that the no-reference
    model sees it as an MR image (a noise-free cartoon is outside its training domain).
    """
    levels = CONTRASTS[contrast][1]
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j].astype(np.float32)
    z = np.linspace(-0.7, 0.7, slices, dtype=np.float32)
    ax, ay = rng.uniform(0.72, 0.85), rng.uniform(0.85, 0.95)
    cx, cy = rng.uniform(-0.05, 0.05, size=2)
    lx, ly = rng.uniform(-0.3, 0.3, size=2)
    bias = 1 + 0.15 * (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1))
    out = np.zeros((slices, size, size), np.float32)
    for s, zz in enumerate(z):
        shrink = np.sqrt(max(1 - zz**2, 0.05))
        r = ((x - cx) / (ax * shrink)) ** 2 + ((y - cy) / (ay * shrink)) ** 2
        img = np.where(r < 1, levels[0], 0.0)
        img = np.where(r < 0.85, levels[1], img)
        img = np.where(r < 0.75, levels[2], img)
        # white matter with a gyral-like wavy border
        theta = np.arctan2(y - cy, x - cx)
        img = np.where(r < 0.45 + 0.06 * np.sin(7 * theta + 3 * zz), levels[3], img)
        # ventricles
        v = ((x - cx) / 0.12) ** 2 + ((y - cy) / (0.3 * shrink)) ** 2
        img = np.where((v < 1) & (abs(zz) < 0.4), levels[1], img)
        lesion = ((x - lx) ** 2 + (y - ly) ** 2) < (0.06 * shrink) ** 2
        img = np.where(lesion & (r < 0.7), levels[4], img)
        out[s] = img * bias
    tex = gaussian_filter(rng.standard_normal(out.shape).astype(np.float32), (0, 1.5, 1.5))
    out *= 1 + 0.05 * tex / (float(tex.std()) or 1.0)
    out = gaussian_filter(out, (0, 0.8, 0.8))
    sigma = float(out.max()) / rng.uniform(30, 60)
    noise = rng.standard_normal((2, *out.shape)).astype(np.float32) * (sigma / np.sqrt(2))
    return np.abs(out + noise[0] + 1j * noise[1]).astype(np.float32)


def corrupt(image: np.ndarray, kind: str, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Apply one corruption in k-space, slice by slice.

    Args:
        image: float32 ``(S, H, W)`` magnitude image.
        kind: ``"clean"``, ``"noise"`` (complex Gaussian, std up to 6 % of the image maximum),
            ``"blur"`` (Gaussian PSF, std up to 2.5 px), ``"motion"`` (random phase on up to 30 %
            of the phase-encode lines from a shift of up to 8 px: ghosts along the PE axis).
        severity: strength in [0, 1].

    Returns:
        float32 ``(S, H, W)`` magnitude.
    """
    if kind == "clean":
        return image
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1))), axes=(-2, -1))
    h, w = image.shape[-2:]
    if kind == "noise":
        sigma = (0.015 + 0.05 * severity) * float(image.max()) * np.sqrt(h * w)
        white = rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)
        k = k + sigma / np.sqrt(2) * white
    elif kind == "blur":
        std = 0.8 + 1.7 * severity  # PSF std in pixels
        fy = np.fft.fftshift(np.fft.fftfreq(h))[:, None]
        fx = np.fft.fftshift(np.fft.fftfreq(w))[None, :]
        k = k * np.exp(-2 * np.pi**2 * std**2 * (fx**2 + fy**2))
    elif kind == "motion":
        frac = 0.1 + 0.2 * severity
        shift = 2 + 6 * severity  # px
        ky = np.fft.fftshift(np.fft.fftfreq(h))
        for s in range(k.shape[0]):
            lines = np.asarray(rng.random(h) < frac)
            lines[int(h * 0.45):int(h * 0.55)] = False  # the centre is acquired before moving
            phase = np.exp(-2j * np.pi * ky[lines] * shift * rng.uniform(0.5, 1.0))
            k[s, lines, :] *= phase[:, None]
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    out = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1))), axes=(-2, -1))
    return np.abs(out).astype(np.float32)


def _uid(rng: np.random.Generator) -> str:
    """A syntactically valid UID from the seeded generator (2.25 + a 96-bit integer)."""
    return "2.25." + str(int.from_bytes(rng.bytes(12), "big"))


def _base_dataset(sop_class: str, sop_uid: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def write_series(
    out_dir: Path,
    pixels: np.ndarray,
    *,
    description: str,
    rng: np.random.Generator,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    series_number: int = 1,
    patient: str = "SYNTH^SUBJECT",
) -> list[str]:
    """Write ``pixels`` (float ``(S, H, W)``, any scale) as one MR DICOM series, a file a slice.

    Stored as uint16 with a RescaleSlope so the full dynamic range survives; axial orientation,
    1 mm pixels, slice positions 3 mm apart. Returns the written paths.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = _uid(rng), _uid(rng), _uid(rng)
    peak = float(pixels.max()) or 1.0
    slope = peak / 4000.0
    stored = np.clip(np.rint(pixels / slope), 0, 65535).astype(np.uint16)
    paths = []
    for s in range(pixels.shape[0]):
        sop = _uid(rng)
        ds = _base_dataset(MR_IMAGE_STORAGE, sop)
        ds.Modality = "MR"
        ds.PatientName = patient
        ds.PatientID = "SYNTH0001"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = series_number
        ds.InstanceNumber = s + 1
        ds.SeriesDescription = description
        ds.ImageType = list(image_type)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 3.0 * s]
        ds.SliceThickness = 3.0
        ds.PixelSpacing = [1.0, 1.0]
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = f"{slope:.6g}"
        ds.RescaleIntercept = "0"
        ds.PixelData = stored[s].tobytes()
        path = out_dir / f"IM{s + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    return paths


def write_text_sr(path: Path, rng: np.random.Generator) -> str:
    """A Basic Text SR object (no pixels): a non-image object QA must skip or report."""
    ds = _base_dataset(BASIC_TEXT_SR, _uid(rng))
    ds.Modality = "SR"
    ds.StudyInstanceUID = _uid(rng)
    ds.SeriesInstanceUID = _uid(rng)
    ds.SeriesDescription = "report"
    ds.ValueType = "CONTAINER"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def build_archive(
    out_dir: str | Path,
    n_series: int,
    *,
    size: int = 256,
    slices: tuple[int, int] = (20, 40),
    clean_fraction: float = 0.5,
    seed: int = 0,
    extras: bool = False,
    truth_path: str | Path | None = None,
) -> list[SyntheticSeries]:
    """Write ``n_series`` MR series (a mix of clean and corrupted) under ``out_dir``.

    Args:
        out_dir: archive root; series go to ``series_NNN/``.
        n_series: number of MR image series.
        size: matrix (``size x size``).
        slices: inclusive range of slices per series.
        clean_fraction: probability a series is clean; others get noise, blur or motion
            (equally likely) with severity ~ U(0, 1).
        seed: seeds everything (phantoms, corruptions, UIDs).
        extras: also write a localiser, a derived series, a text SR and an unreadable file.
        truth_path: also save the ground truth there as JSON (outside the archive, or QA
            would report it as an unsupported input).

    Returns:
        The ground truth per written series.
    """
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    truth: list[SyntheticSeries] = []
    families = list(CONTRASTS)
    for i in range(n_series):
        contrast = families[i % len(families)]
        kind = "clean" if rng.random() < clean_fraction else str(rng.choice(CORRUPTIONS[1:]))
        severity = float(rng.uniform(0, 1)) if kind != "clean" else 0.0
        n = int(rng.integers(slices[0], slices[1] + 1))
        img = corrupt(phantom(n, size, contrast, rng), kind, severity, rng)
        desc = CONTRASTS[contrast][0]
        files = write_series(root / f"series_{i:03d}", img, description=desc, rng=rng,
                             series_number=i + 1)
        truth.append(SyntheticSeries(i, contrast, kind, severity, n, desc, tuple(files)))
    if extras:
        n = 3
        loc = phantom(n, size, "T1", rng)
        files = write_series(root / "localizer", loc, description="3-plane localizer", rng=rng,
                             image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_number=90)
        truth.append(SyntheticSeries(n_series, "T1", "localizer", 0.0, n, "3-plane localizer",
                                     tuple(files)))
        der = phantom(n, size, "T2", rng)
        files = write_series(root / "derived", der, description="AX T2 ADC", rng=rng,
                             image_type=("DERIVED", "SECONDARY", "ADC"), series_number=91)
        truth.append(SyntheticSeries(n_series + 1, "T2", "derived", 0.0, n, "AX T2 ADC",
                                     tuple(files)))
        write_text_sr(root / "other" / "report.dcm", rng)
        (root / "other" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    if truth_path is not None:
        Path(truth_path).write_text(json.dumps([asdict(t) for t in truth], indent=1))
    return truth


def series_key_of(path: str | Path) -> str:
    """The anonymised series key :mod:`rankiq.service.io` gives the series of the DICOM file
    ``path``."""
    import pydicom
    from rankiq.service.io.dicom import series_key_of as key_of

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return key_of(ds.get("SeriesInstanceUID"), str(path))
