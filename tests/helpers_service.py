"""Inputs and a live-server fixture helper for the HTTP service and CLI tests.

Images are built from pydicom's bundled MR slice (a real 64x64 MR image) with added Gaussian
noise; DICOM files carry the io tests' sentinel patient identifiers (``helpers_io.PHI``) so tests
can check nothing identifying leaks into answers or logs.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
from helpers_io import (
    dicom_bytes,
    mr_dataset,
    oversampled_kspace,
    uid,
    write_fastmri,
)
from helpers_io import phantom as kspace_phantom
from rankiq.service.liveserver import LiveServer

TOKEN = "test-token-6f1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def mr_small() -> np.ndarray:
    """pydicom's MR_small.dcm pixels, float64 ``(64, 64)``."""
    path = pydicom.data.get_testdata_file("MR_small.dcm")
    return pydicom.dcmread(path).pixel_array.astype(np.float64)


def brain_slice(size: int = 256) -> np.ndarray:
    """A clean synthetic axial brain slice ``(size, size)``, max 2000: the simulator's truth image
    (`rankiq simulate --source brain`), i.e. the anatomy the shipped models were trained on.
    MR_small's 64x64 crop and the smooth MNI template itself are out of that distribution."""
    from rankiq.training.simulate import SimConfig, prepare_slice
    from rankiq.training.sources import BrainSource

    cfg = SimConfig()
    truth = np.abs(prepare_slice(BrainSource(cfg.source), 0, 0, size, cfg).truth)
    return (truth / truth.max() * 2000).astype(np.float64)


def noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """``|image + N(0, (sigma * max)^2)|`` (magnitude images stay non-negative)."""
    rng = np.random.default_rng(seed)
    return np.abs(image + sigma * image.max() * rng.standard_normal(image.shape))


def slice_dicom(image: np.ndarray, *, series: str = "series", instance: int = 1,
                z: float = 0.0) -> bytes:
    """One MR DICOM file (int16) of ``image`` ``(rows, cols)``."""
    stored = np.clip(np.rint(image), -32768, 32767).astype(np.int16)
    return dicom_bytes(mr_dataset(stored, series_uid=uid(series), instance=instance,
                                  position=(0.0, 0.0, z)))


def series_zip(volume: np.ndarray, *, series: str = "zip-series") -> bytes:
    """A zip of one DICOM series, a file per slice of ``volume`` ``(S, rows, cols)``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, sl in enumerate(volume):
            zf.writestr(f"IM{i + 1:04d}.dcm",
                        slice_dicom(sl, series=series, instance=i + 1, z=3.0 * i))
    return buf.getvalue()


def volume_with_bad_slice(slices: int = 5, bad: int = 3) -> np.ndarray:
    """A ``(slices, 64, 64)`` stack of lightly noisy MR_small copies, slice ``bad`` much noisier."""
    base = mr_small()
    return np.stack([noisy(base, 0.3 if i == bad else 0.01, seed=i) for i in range(slices)])


def fastmri_file(path: Path, slices: int = 2, n: int = 32) -> Path:
    """A small fastMRI-style multi-coil HDF5 k-space file."""
    image, maps = kspace_phantom(n=n, slices=slices, coils=4)
    return write_fastmri(path, oversampled_kspace(image, maps))


def start_server(**kwargs: object) -> LiveServer:
    """Start a :class:`LiveServer` (caller stops it)."""
    return LiveServer(**kwargs).start()  # type: ignore[arg-type]
