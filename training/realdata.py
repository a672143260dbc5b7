"""Real MR images that ship inside installed packages, for EVALUATION ONLY.

These are acquisitions of real people (not simulations, not templates). They measure how the
no-reference scores transfer to real data (``rankiq evaluate real``); nothing may train or
calibrate on them. Each is returned as one named 2D magnitude slice, float32, with its pixel
spacing in mm when the file states it. Missing packages or files are skipped.

========================  ============================================================  =======
name                      source                                                        matrix
========================  ============================================================  =======
pydicom-mr-small          pydicom ``MR_small.dcm`` (T2 SE, cropped inside the anatomy)  64x64
pydicom-mr-mpr            pydicom ``examples_overlay.dcm`` (abdomen, T1 post, MPR)      300x484
matplotlib-head-sagittal  matplotlib ``s1045.ima.gz`` (sagittal head, T1)               256x256
nibabel-epi-z10/-z18      nibabel ``example4d.nii.gz`` (axial EPI, zero background)     96x128
pydicom-data-shoulder     pydicom-data ``MR2_UNCR.dcm`` (shoulder, T1 SE, 1.5 T)        1024x1024
pydicom-data-emri-f4      pydicom-data ``emri_small.dcm`` frame 4 (3D T1, inside head)  64x64
dicom3tools-asl-s10       dicom3tools ``examples/0051.dcm`` slice 10 (PASL EPI mosaic)   72x72
========================  ============================================================  =======

By name only (``--images``): ``dicom3tools-asl-s0`` .. ``-s19``, the other slices of the ASL
mosaic; ``pydicom-data-emri-f0`` .. ``-f9``, the other frames of
``emri_small.dcm`` (windows inside the same head, the weakest case of the no-reference model
before its air gate: a set of its own, so that the default set does not count one scan ten
times).

The last two come from the ``pydicom-data`` package (pydicom's larger test files, installed
with the ``train`` extra and found through ``pydicom.data.get_testdata_file`` without
downloading). The shoulder is the only anatomy here with large tissue darker than 15 % of the
peak (muscle in T1), which the no-reference model labels out of range (``dark_tissue``). Its
other encodings in that package (``MR2_J2KR``/``_UNCI``/``_J2KI``) and ``MR-SIEMENS-DICOM-
WithOverlays.dcm`` (the abdomen above, unreformatted) are the same images.

Considered and left out: nibabel's ``nicom/tests/data/0.dcm``/``1.dcm`` (a synthetic ramp
pattern, not anatomy), the ``siemens_dwi_*``/``philips_mprage``/``decimal_rescale`` test files
(pixel data zeroed), ``slicethickness_empty_string.dcm`` (a TOF maximum-intensity projection,
mostly padding), ``anatomical.nii`` (33x41 crop), the Philips phantom PAR/RECs (a phantom with
strong EPI ghosts: its "clean" level is not clean), pydicom's 16x16 DICOMDIR thumbnails. Never
nilearn's MNI152 templates nor Colin27: those are training sources.
"""

from __future__ import annotations

import gzip
import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage


@dataclass(frozen=True)
class RealImage:
    """One real magnitude slice.

    Attributes:
        name: stable short name (used in tables and JSON).
        image: float32 ``(H, W)``, non-negative, in the file's own units.
        pixel_spacing: ``(row, col)`` spacing in mm, or ``None`` when the file does not say.
        source: package and file it came from (relative to the package).
        description: what it is.
        contrast: contrast family (``T1``, ``T1post``, ``T2``, ``other``) from the acquisition
            tags (TR/TE, sequence, contrast agent) or, without tags, from its appearance.
    """

    name: str
    image: np.ndarray
    pixel_spacing: tuple[float, float] | None
    source: str
    description: str
    contrast: str = "other"


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _dicom(package: str, rel: str) -> tuple[np.ndarray, tuple[float, float] | None] | None:
    root = _package_dir(package)
    if root is None or not (root / rel).is_file():
        return None
    return _dicom_file(root / rel)


def _dicom_file(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Rescaled float32 pixels (``(H, W)``, or ``(frames, H, W)``) and the top-level pixel
    spacing of one DICOM file."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        px = ds.pixel_array.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
    px = px * slope + inter
    sp = getattr(ds, "PixelSpacing", None)
    spacing = (float(sp[0]), float(sp[1])) if sp is not None else None
    return px, spacing


def _mr_small() -> RealImage | None:
    got = _dicom("pydicom", "data/test_files/MR_small.dcm")
    if got is None:
        return None
    return RealImage("pydicom-mr-small", got[0], got[1], "pydicom:data/test_files/MR_small.dcm",
                     "64x64 spin-echo slice (TR 4000 ms, TE 240 ms) cropped inside the anatomy "
                     "(no air around it)", "T2")


def _mr_mpr() -> RealImage | None:
    got = _dicom("pydicom", "data/test_files/examples_overlay.dcm")
    if got is None:
        return None
    return RealImage("pydicom-mr-mpr", got[0], got[1],
                     "pydicom:data/test_files/examples_overlay.dcm",
                     "axial abdominal T1 VIBE after gadolinium, a reformat (MPR), 300x484",
                     "T1post")


def _s1045() -> RealImage | None:
    root = _package_dir("matplotlib")
    path = None if root is None else root / "mpl-data/sample_data/s1045.ima.gz"
    if path is None or not path.is_file():
        return None
    raw = gzip.decompress(path.read_bytes())
    if len(raw) != 256 * 256 * 2:
        return None
    # big-endian uint16 (read little-endian, every value is a multiple of 256)
    img = np.frombuffer(raw, dtype=">u2").reshape(256, 256).astype(np.float32)
    return RealImage("matplotlib-head-sagittal", img, None,
                     "matplotlib:mpl-data/sample_data/s1045.ima.gz",
                     "sagittal T1-weighted head slice, 256x256, spacing not stated", "T1")


def _epi(z: int) -> Callable[[], RealImage | None]:
    def load() -> RealImage | None:
        root = _package_dir("nibabel")
        path = None if root is None else root / "tests/data/example4d.nii.gz"
        if path is None or not path.is_file():
            return None
        import nibabel as nib

        img = cast("SpatialImage", nib.load(path))
        zooms = img.header.get_zooms()
        vol = np.asarray(img.dataobj[:, :, z, 0], dtype=np.float32)
        # array axes (x, y) -> display (rows = anterior-posterior), spacing follows the axes
        sl = np.ascontiguousarray(np.rot90(np.clip(vol, 0, None)))
        return RealImage(f"nibabel-epi-z{z}", sl, (float(zooms[1]), float(zooms[0])),
                         "nibabel:tests/data/example4d.nii.gz",
                         f"axial EPI slice {z} of volume 0 (2 mm, background zeroed)")

    return load


def _testdata(name: str, frame: int | None = None
              ) -> tuple[np.ndarray, tuple[float, float] | None] | None:
    """A file of pydicom's external test data (the ``pydicom-data`` package), never
    downloaded: ``None`` when that package is not installed."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if not isinstance(path, str):
        return None
    px, spacing = _dicom_file(Path(path))
    return (px if frame is None else px[frame]), spacing


def _shoulder() -> RealImage | None:
    got = _testdata("MR2_UNCR.dcm")
    if got is None:
        return None
    return RealImage("pydicom-data-shoulder", got[0], got[1], "pydicom-data:MR2_UNCR.dcm",
                     "coronal shoulder, T1 spin echo (TR 350 ms, TE 27 ms, 1.5 T), 1024x1024 at "
                     "0.2 mm (interpolated), zero bands above and below", "T1")


def _emri(frame: int) -> Callable[[], RealImage | None]:
    def load() -> RealImage | None:
        got = _testdata("emri_small.dcm", frame=frame)
        if got is None:
            return None
        return RealImage(f"pydicom-data-emri-f{frame}", got[0], got[1],
                         "pydicom-data:emri_small.dcm",
                         f"frame {frame} of a 10-frame enhanced MR, 3D T1 of the head, a 64x64 "
                         "crop inside the anatomy (spacing not in the top-level tags)", "T1")

    return load


#: dicom3tools' example (Debian package ``dicom3tools``): a Siemens mosaic of 20 axial PASL EPI
#: slices, 72x72 tiles of 3 mm in a 5x5 grid
ASL_FILE = Path("/usr/share/doc/dicom3tools/examples/0051.dcm")
ASL_TILE, ASL_GRID, ASL_SLICES = 72, 5, 20


def _asl(index: int) -> Callable[[], RealImage | None]:
    def load() -> RealImage | None:
        if not ASL_FILE.is_file() or not 0 <= index < ASL_SLICES:
            return None
        px, spacing = _dicom_file(ASL_FILE)
        if px.shape != (ASL_TILE * ASL_GRID, ASL_TILE * ASL_GRID):
            return None
        r, c = divmod(index, ASL_GRID)
        tile = px[r * ASL_TILE:(r + 1) * ASL_TILE, c * ASL_TILE:(c + 1) * ASL_TILE]
        return RealImage(f"dicom3tools-asl-s{index}", np.ascontiguousarray(tile), spacing,
                         "dicom3tools:examples/0051.dcm",
                         f"slice {index} of 20 of a Siemens PASL EPI mosaic (whole head in "
                         "air, 72x72 at 3 mm, low SNR, EPI ghosting)")

    return load


LOADERS: tuple[Callable[[], RealImage | None], ...] = (
    _mr_small, _mr_mpr, _s1045, _epi(10), _epi(18), _shoulder, _emri(4), _asl(ASL_SLICES // 2))
#: the other nine frames of ``emri_small.dcm`` (windows inside the same head): by name only
#: (``rankiq evaluate real --images``), so that the default set does not count one scan ten
#: times
EXTRA_LOADERS: tuple[Callable[[], RealImage | None], ...] = (
    *(_emri(f) for f in range(10) if f != 4),
    *(_asl(i) for i in range(ASL_SLICES) if i != ASL_SLICES // 2))


def _load(load: Callable[[], RealImage | None]) -> RealImage | None:
    """One loader's image, ``None`` when its package or file is missing or broken."""
    try:
        return load()
    except (OSError, ValueError, ImportError):  # a broken optional file: skip it
        return None


def real_images(names: list[str] | None = None) -> list[RealImage]:
    """The available real MR slices (see the module table), in a fixed order.

    Args:
        names: keep only these names (unknown names are ignored; see :func:`available_names`);
            ``None``: the default set (:data:`LOADERS`; :data:`EXTRA_LOADERS` only by name).

    Returns:
        The images whose package and file are installed; missing ones are skipped.
    """
    loaders = LOADERS + (EXTRA_LOADERS if names is not None else ())
    return [im for im in map(_load, loaders)
            if im is not None and (names is None or im.name in names)]


def available_names() -> list[str]:
    """Names of the real images installed here: the default set, then those available by
    name only."""
    return [im.name for im in map(_load, LOADERS + EXTRA_LOADERS) if im is not None]
