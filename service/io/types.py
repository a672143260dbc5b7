"""Data types returned by :mod:`rankiq.service.io`.

Units and shapes are stated per field. Nothing here holds patient identifiers: ``series_key``
is a one-way hash of the SeriesInstanceUID, safe for logs, reports and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

SourceKind = Literal["dicom", "fastmri", "ismrmrd", "array"]
ContrastFamily = Literal["T1", "T1post", "T2", "FLAIR", "other"]
#: The contrast families, defined once: every other module imports this tuple.
CONTRAST_FAMILIES: tuple[str, ...] = get_args(ContrastFamily)


@dataclass
class ImageSeries:
    """One image series (DICOM series or one k-space file), slices ordered along the normal.

    Attributes:
        pixels: float32 ``(slices, rows, cols)``, rescale slope/intercept applied (DICOM), or
            the magnitude of the coil-combined reconstruction (k-space).
        kind: where it came from: ``"dicom"``, ``"fastmri"`` or ``"ismrmrd"``.
        series_key: anonymised key (first 16 hex digits of SHA-256 of the SeriesInstanceUID or
            of the file's content for k-space); never the UID itself.
        modality: DICOM Modality (``"MR"``...), ``"MR"`` for k-space.
        description: SeriesDescription (may be ``""``).
        contrast: contrast family guess, one of ``CONTRAST_FAMILIES``.
        pixel_spacing: ``(row, col)`` spacing in mm, or ``None`` when unknown.
        slice_thickness: mm, or ``None``.
        orientation: ImageOrientationPatient (6 direction cosines), or ``None``.
        transfer_syntax: TransferSyntaxUID name of the first instance (DICOM), else ``None``.
        source_files: the files (or ``zipfile.zip!member`` names) the slices came from.
        complex_pixels: complex64 ``(slices, rows, cols)`` coil-combined image for k-space
            sources (phase kept), ``None`` for DICOM magnitude images.
        attributes: further non-identifying metadata (echo time ms, repetition time ms, image
            type, sequence name, ...), for series selection rules.
    """

    pixels: np.ndarray
    kind: SourceKind
    series_key: str
    modality: str = "MR"
    description: str = ""
    contrast: str = "other"
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None
    orientation: tuple[float, ...] | None = None
    transfer_syntax: str | None = None
    source_files: list[str] = field(default_factory=list)
    complex_pixels: np.ndarray | None = None
    attributes: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_array(cls, image: np.ndarray, *, pixel_spacing: tuple[float, float] | None = None,
                   contrast: str = "other") -> ImageSeries:
        """A series from a numpy ``(H, W)`` or ``(S, H, W)`` image, magnitude or complex.

        ``series_key`` is a hash of the pixel bytes (no identifiers exist for arrays).
        """
        import hashlib

        x = np.asarray(image)
        if x.ndim == 2:
            x = x[None]
        key = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
        cplx = x.astype(np.complex64) if np.iscomplexobj(x) else None
        mag = np.abs(x).astype(np.float32) if cplx is not None else x.astype(np.float32)
        return cls(pixels=mag, kind="array", series_key=key, contrast=contrast,
                   pixel_spacing=pixel_spacing, complex_pixels=cplx)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, cols)``."""
        s, r, c = self.pixels.shape
        return int(s), int(r), int(c)


@dataclass(frozen=True)
class ReadFailure:
    """An input that could not be read: where (path or ``zip!member``) and why (one line).

    ``reason`` is a bounded category (``"unreadable"``, ``"non_image"``, ``"unsupported"``...,
    the ``reason`` of the :mod:`rankiq.service.errors` class) and ``message`` the human explanation.
    """

    source: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


class SeriesList(list):
    """``list[ImageSeries]`` that also carries the inputs that failed (``.failures``)."""

    def __init__(self, series: list[ImageSeries] | None = None,
                 failures: list[ReadFailure] | None = None) -> None:
        super().__init__(series or [])
        self.failures: list[ReadFailure] = failures or []


@dataclass(frozen=True)
class InstanceRef:
    """One readable input found by :func:`rankiq.service.io.scan_instances` from its header alone.

    A DICOM instance (``kind="dicom"``) or a k-space file (``kind="hdf5"``, one series per file).
    Hand the refs of one series to :func:`rankiq.service.io.load_series` for its pixels; group them
    with
    :func:`rankiq.service.io.group_instances` (the grouping :func:`rankiq.service.io.read_series`
    uses).

    Attributes:
        source: display name: the path, or ``archive.zip!member``.
        path: the file on disk (the zip for an archive member); ``None`` for in-memory uploads.
        member: the zip member name, or ``None``.
        kind: ``"dicom"`` or ``"hdf5"``.
        series_key: anonymised series key (see :class:`ImageSeries`).
        modality, description: DICOM Modality and SeriesDescription (``""`` when absent).
        sop_class: SOP class name (e.g. ``"MR Image Storage"``), never a UID.
        instance_number: InstanceNumber or ``None``.
        frames: number of frames (slices) the instance holds.
        rows, cols: matrix size in pixels (0 for k-space, known only once read).
        position: ImagePositionPatient in mm of the first frame, or ``None``.
        orientation: ImageOrientationPatient (6 cosines) of the first frame, or ``None``.
        transfer_syntax: transfer syntax name, or ``None``.
        size: bytes on disk (uncompressed size for archive members).
        instance_key: hash of the SOPInstanceUID (``""`` when absent): copies of one instance
            (the same file twice, or two encodings of it) share it and are read once.
        image_type: ImageType values (e.g. ``("DERIVED", "SECONDARY")``), ``()`` when absent,
            so selection rules can skip localisers and derived series from headers alone.
    """

    source: str
    path: str | None
    member: str | None
    kind: Literal["dicom", "hdf5"]
    series_key: str
    modality: str = ""
    description: str = ""
    sop_class: str = ""
    instance_number: int | None = None
    frames: int = 1
    rows: int = 0
    cols: int = 0
    position: tuple[float, ...] | None = None  # 3 values
    orientation: tuple[float, ...] | None = None
    transfer_syntax: str | None = None
    size: int = 0
    instance_key: str = ""
    image_type: tuple[str, ...] = ()
