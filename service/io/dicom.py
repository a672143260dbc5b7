"""DICOM instances to frames, frames to ordered series.

* Header checks refuse non-image objects (SR, RT, presentation states, ...) with
  :class:`NonImageInput` and absurd matrices before any pixel is decoded.
* Pixels are decoded by pydicom (its pylibjpeg plugins handle RLE, JPEG baseline/lossless,
  JPEG-LS and JPEG 2000), converted to float32 and rescaled with RescaleSlope/Intercept, per frame
  for enhanced (multi-frame) objects (Pixel Value Transformation functional group).
* A multi-frame object is split into frames, each with its own position from the per-frame
  (or shared) functional groups.
* Slices are ordered by their position along the slice normal (ImagePositionPatient . normal)
  when every frame has a position and all orientations are parallel; otherwise by
  InstanceNumber (then frame number). Ties keep InstanceNumber order.

No identifier is read into anything returned: the series key is a hash of the
SeriesInstanceUID, messages name the file only.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from rankiq.service.errors import (
    InputTooLarge,
    InvalidImage,
    NonImageInput,
    UnreadableInput,
    UnsupportedModality,
    UnsupportedPhotometric,
)
from rankiq.service.io.contrast import guess_contrast
from rankiq.service.io.limits import DEFAULT_LIMITS, ReadLimits
from rankiq.service.io.privacy import quiet_reads
from rankiq.service.io.types import ImageSeries, InstanceRef

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Modalities and SOP class name fragments of objects that hold no image to score.
_NON_IMAGE_MODALITIES = {
    "SR": "a structured report (SR)",
    "RTPLAN": "a radiotherapy plan (RT)",
    "RTSTRUCT": "a radiotherapy structure set (RT)",
    "RTDOSE": "a radiotherapy dose grid (RT)",
    "RTRECORD": "a radiotherapy treatment record (RT)",
    "RTIMAGE": "a radiotherapy portal image (RT)",
    "PR": "a presentation state (PR)",
    "KO": "a key object selection (KO)",
    "DOC": "an encapsulated document (DOC)",
    "REG": "a registration object (REG)",
    "SEG": "a segmentation (SEG)",
    "ECG": "a waveform (ECG)",
}
_NON_IMAGE_SOP_FRAGMENTS = {
    "SR Storage": "a structured report (SR)",
    "Structured Report": "a structured report (SR)",
    "RT ": "a radiotherapy object (RT)",
    "Presentation State": "a presentation state (PR)",
    "Key Object Selection": "a key object selection (KO)",
    "Encapsulated": "an encapsulated document",
    "Waveform": "a waveform",
    "Raw Data": "raw data",
    "Media Storage Directory": "a DICOMDIR (media directory)",
    "Spectroscopy": "MR spectroscopy",
    "Segmentation": "a segmentation (SEG)",
    "Registration": "a registration object (REG)",
}


def series_key_of(uid: str | None, fallback: str) -> str:
    """Anonymised series key: first 16 hex digits of SHA-256 of the SeriesInstanceUID.

    ``fallback`` (e.g. the file name) is hashed instead when the UID is missing.
    """
    text = uid.strip() if uid else f"no-uid:{fallback}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def uid_of(ds: Dataset) -> str:
    """The SeriesInstanceUID, read raw (never validated, so never echoed by pydicom)."""
    return _text(ds, "SeriesInstanceUID")


def instance_key_of(ds: Dataset) -> str:
    """Anonymised instance key (16 hex digits of SHA-256 of the SOPInstanceUID), ``""`` when
    the UID is missing. Two files with one key are copies of one instance (read once)."""
    uid = _text(ds, "SOPInstanceUID").strip()
    return hashlib.sha256(uid.encode()).hexdigest()[:16] if uid else ""


def shape_key(series_key: str, rows: int, cols: int) -> str:
    """Key of the part of a series with one matrix size (when a series mixes sizes)."""
    return hashlib.sha256(f"{series_key}|{rows}x{cols}".encode()).hexdigest()[:16]


def _num(value: Any) -> float | None:
    """A DICOM number (DS/IS/FD, maybe multi-valued: first value) as float, or ``None``."""
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _vec(value: Any, n: int) -> tuple[float, ...] | None:
    """A multi-valued number of length ``n`` as a float tuple, or ``None`` if malformed."""
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _text(ds: Dataset, keyword: str) -> str:
    """A text element read raw, bypassing pydicom's value validation.

    pydicom's validation warnings quote the offending value (a malformed UID, a name) into
    warnings and logs; reading the raw bytes keeps identifiers out of them.
    """
    try:
        elem = ds.get_item(keyword)
    except (KeyError, ValueError):
        return ""
    value = None if elem is None else elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    elif isinstance(value, Sequence) and not isinstance(value, str):
        value = "\\".join(str(v) for v in value)
    return str(value).strip(" \0")


def _fg(ds: Dataset, frame: int, group: str, keyword: str) -> Any:
    """A functional-group attribute for ``frame``: per-frame, else shared, else top level."""
    for seq_name, index in (("PerFrameFunctionalGroupsSequence", frame),
                            ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(seq_name)
        if seq is None or len(seq) <= index:
            continue
        items = seq[index].get(group)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return ds.get(keyword)


def _acquired_matrix(ds: Dataset) -> float | None:
    """The larger in-plane dimension of the acquired k-space: the largest value of Acquisition
    Matrix (0018,1310: frequency rows, frequency columns, phase rows, phase columns) or, in
    enhanced MR, MR Acquisition Frequency Encoding Steps (0018,9058); ``None`` if absent or
    malformed. What it tells: whether the scanner interpolated the image to a larger matrix
    (:func:`rankiq.service.noref.interpolation_factor`)."""
    try:
        value = ds.get("AcquisitionMatrix")
        if value is None:
            value = _fg(ds, 0, "MRFOVGeometrySequence", "MRAcquisitionFrequencyEncodingSteps")
        if value is None or value == "":
            return None
        values = [float(v) for v in (value if isinstance(value, Sequence)
                                     and not isinstance(value, str | bytes) else [value])]
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    finite = [v for v in values if np.isfinite(v) and v > 0]
    return max(finite) if finite else None


def _sop_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    if uid is None:
        return ""
    name = getattr(uid, "name", "")
    return name if name and name != str(uid) else ""


def _transfer_syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return uid.name if uid is not None else None


def decoded_bytes(rows: int, cols: int, frames: int) -> int:
    """Bytes of ``frames`` decoded float32 slices of ``rows x cols`` pixels."""
    return rows * cols * frames * 4


def check_header(ds: Dataset, source: str, limits: ReadLimits) -> int:
    """Refuse what cannot be an image to score; return the number of frames.

    Raises:
        NonImageInput: SR, RT, presentation state, DICOMDIR and similar objects.
        InvalidImage: missing/zero matrix, colour, unsupported bit depth.
        InputTooLarge: matrix above ``max_matrix``, more frames than ``max_slices``, or pixels
            (stored or decoded to float32) above ``max_series_bytes``.
    """
    modality = _text(ds, "Modality").upper()
    what = _NON_IMAGE_MODALITIES.get(modality)
    sop = _sop_name(ds)
    if what is None:
        what = next((v for k, v in _NON_IMAGE_SOP_FRAGMENTS.items() if k in sop), None)
    if what is None and "DirectoryRecordSequence" in ds:
        what = "a DICOMDIR (media directory)"
    if what is not None:
        raise NonImageInput(f"not an image: {what} holds no image to score", source=source)
    rows, cols = _num(ds.get("Rows")), _num(ds.get("Columns"))
    if rows is None or cols is None:
        if "Image" in sop or not sop:
            raise UnreadableInput("image object without Rows/Columns (truncated or corrupt)",
                                  source=source)
        raise NonImageInput(f"not an image: {sop} has no Rows/Columns", source=source)
    rows_i, cols_i = int(rows), int(cols)
    if rows_i < 1 or cols_i < 1:
        raise InvalidImage(f"absurd dimensions: {rows_i}x{cols_i} pixels", source=source)
    if max(rows_i, cols_i) > limits.max_matrix:
        raise InputTooLarge(
            f"absurd dimensions: {rows_i}x{cols_i} pixels, above the {limits.max_matrix} "
            "pixel limit", source=source)
    declared = ds.get("NumberOfFrames")
    n_frames = _num(declared)
    if declared is not None and declared != "" and n_frames is None:
        raise InvalidImage("NumberOfFrames is not a number", source=source)
    frames = 1 if n_frames is None else int(n_frames)
    if frames < 1:  # 0 is not "one frame": the header is corrupt
        raise InvalidImage(f"absurd number of frames: {frames}", source=source)
    if frames > limits.max_slices:
        raise InputTooLarge(f"{frames} frames, above the limit of {limits.max_slices} slices",
                            source=source)
    spp = int(_num(ds.get("SamplesPerPixel")) or 1)
    bits = int(_num(ds.get("BitsAllocated")) or 16)
    stored = rows_i * cols_i * frames * max(spp, 1) * max(bits, 1) // 8
    if max(stored, decoded_bytes(rows_i, cols_i, frames)) > limits.max_series_bytes:
        raise InputTooLarge(
            f"{frames} frame(s) of {rows_i}x{cols_i} pixels decode to "
            f"{max(stored, decoded_bytes(rows_i, cols_i, frames))} bytes, above the "
            f"{limits.max_series_bytes} byte limit of one series", source=source)
    if spp != 1:
        raise InvalidImage(f"{spp} samples per pixel (colour): MR images are greyscale",
                           source=source)
    if bits not in (1, 8, 16, 32, 64):
        raise InvalidImage(f"unsupported BitsAllocated {bits}", source=source)
    return frames


def instance_ref(ds: Dataset, source: str, path: str | None, member: str | None, size: int,
                 limits: ReadLimits) -> InstanceRef:
    """Header-only description of an instance (``ds`` read with ``stop_before_pixels``)."""
    frames = check_header(ds, source, limits)
    inst = _num(ds.get("InstanceNumber"))
    return InstanceRef(
        source=source, path=path, member=member, kind="dicom",
        series_key=series_key_of(_text(ds, "SeriesInstanceUID"), source),
        modality=_text(ds, "Modality"), description=_text(ds, "SeriesDescription"),
        sop_class=_sop_name(ds), instance_number=None if inst is None else int(inst),
        frames=frames, rows=int(ds.Rows), cols=int(ds.Columns),
        position=_vec(_fg(ds, 0, "PlanePositionSequence", "ImagePositionPatient"), 3),
        orientation=_vec(_fg(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
        transfer_syntax=_transfer_syntax(ds), size=size, instance_key=instance_key_of(ds),
        image_type=_image_type(ds),
    )


def _image_type(ds: Dataset) -> tuple[str, ...]:
    """ImageType values (``("ORIGINAL", "PRIMARY", "LOCALIZER")``...), ``()`` when absent."""
    value = ds.get("ImageType")
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split("\\") if v)
    return tuple(str(v) for v in value)


@dataclass
class InstanceMeta:
    """Series-level metadata read from one instance (no identifiers)."""

    modality: str
    description: str
    contrast: str
    transfer_syntax: str | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    attributes: dict[str, object] = field(default_factory=dict)


@dataclass
class Frame:
    """One decoded slice.

    Attributes:
        pixels: float32 ``(rows, cols)``, rescaled.
        position: ImagePositionPatient (mm) or ``None``; orientation: 6 cosines or ``None``.
        instance_number, frame_index: for the fallback ordering.
        source: the file it came from; meta: its instance's metadata.
    """

    pixels: np.ndarray
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    instance_number: int | None
    frame_index: int
    source: str
    meta: InstanceMeta


def _instance_meta(ds: Dataset) -> InstanceMeta:
    te = _num(_fg(ds, 0, "MREchoSequence", "EffectiveEchoTime")) or _num(ds.get("EchoTime"))
    tr = _num(_fg(ds, 0, "MRTimingAndRelatedParametersSequence", "RepetitionTime"))
    ti = _num(_fg(ds, 0, "MRModifierSequence", "InversionTimes")) or _num(ds.get("InversionTime"))
    agent = _text(ds, "ContrastBolusAgent")
    has_agent = (bool(agent) and agent.upper() not in {"NONE", "NO", "N"}) or bool(
        ds.get("ContrastBolusAgentSequence"))
    description = _text(ds, "SeriesDescription")
    names = " ".join(x for x in (description, _text(ds, "ProtocolName"),
                                 _text(ds, "SequenceName")) if x)
    scanning = _text(ds, "ScanningSequence")
    spacing = _vec(_fg(ds, 0, "PixelMeasuresSequence", "PixelSpacing"), 2)
    thickness = _num(_fg(ds, 0, "PixelMeasuresSequence", "SliceThickness"))
    attributes: dict[str, object] = {
        "echo_time_ms": te, "repetition_time_ms": tr, "inversion_time_ms": ti,
        "flip_angle_deg": _num(ds.get("FlipAngle")),
        "scanning_sequence": scanning, "sequence_name": _text(ds, "SequenceName"),
        "image_type": _text(ds, "ImageType"), "contrast_agent": has_agent,
        "field_strength_t": _num(ds.get("MagneticFieldStrength")),
        "sop_class": _sop_name(ds), "series_number": _num(ds.get("SeriesNumber")),
        "acquired_matrix": _acquired_matrix(ds),
    }
    return InstanceMeta(
        modality=_text(ds, "Modality")[:16] or "OT",
        description=description,
        contrast=guess_contrast(names, echo_time_ms=te, repetition_time_ms=tr,
                                inversion_time_ms=ti, scanning_sequence=scanning,
                                contrast_agent=has_agent),
        transfer_syntax=_transfer_syntax(ds),
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slice_thickness=thickness,
        attributes=attributes,
    )


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Data sets without file meta: record the encoding pydicom detected, for the decoders."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    uid = (ImplicitVRLittleEndian if implicit else
           ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


def _decode(ds: Dataset, source: str, frames: int) -> np.ndarray:
    """Decoded stored values ``(frames, rows, cols)`` (not rescaled)."""
    if not any(t in ds for t in _PIXEL_TAGS):
        sop = _sop_name(ds)
        if "Image" in sop or not sop:
            raise UnreadableInput("image object without pixel data (truncated file?)",
                                  source=source)
        raise NonImageInput(f"not an image: {sop} holds no pixel data", source=source)
    _ensure_transfer_syntax(ds)
    try:
        arr = _native_pixels(ds, frames)
        if arr is None:
            arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder errors are many; all mean "unreadable"
        detail = str(exc).split(" - ")[0].split("\n")[0]
        name = str(getattr(ds, "filename", "") or "")
        if name:
            detail = detail.replace(name, "<file>")
        detail = detail.replace("'", "")[:160]
        ts = _transfer_syntax(ds) or "unknown transfer syntax"
        raise UnreadableInput(f"pixel data cannot be decoded ({ts}): {detail}",
                              source=source) from exc
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != frames:
        raise InvalidImage(f"decoded pixels have shape {arr.shape}, expected {frames} frame(s) "
                           f"of {int(ds.Rows)}x{int(ds.Columns)}", source=source)
    return arr


#: uncompressed little-endian transfer syntaxes (a deflated data set is inflated on reading)
_NATIVE_LE = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                        DeflatedExplicitVRLittleEndian})


def _native_pixels(ds: Dataset, frames: int) -> np.ndarray | None:
    """Stored values ``(frames, rows, cols)`` of uncompressed little-endian greyscale pixel
    data read straight from its bytes, as pydicom's native decoder gives them (bits above Bits
    Stored are cleared, or the sign extended); ``None`` for anything else (pydicom decodes it).

    pydicom's decoder framework costs about 0.35 ms per 256x256 slice before it copies a
    byte, a third of reading a slice in batch QA; this reads it in ~10 us.
    """
    meta = getattr(ds, "file_meta", None)
    elem = ds.get_item("PixelData")
    if meta is None or elem is None or meta.get("TransferSyntaxUID") not in _NATIVE_LE:
        return None
    bits = _num(ds.get("BitsAllocated"))
    stored = _num(ds.get("BitsStored"))
    signed = _num(ds.get("PixelRepresentation"))
    rows, cols = _num(ds.get("Rows")), _num(ds.get("Columns"))
    data = elem.value
    if (bits not in (8, 16, 32) or stored is None or not 1 <= stored <= bits
            or signed not in (0, 1) or rows is None or cols is None
            or _num(ds.get("SamplesPerPixel")) not in (None, 1)
            or not isinstance(data, bytes)):
        return None
    count = frames * int(rows) * int(cols)
    if len(data) < count * int(bits) // 8:
        return None  # truncated: pydicom's decoder says how
    dtype = np.dtype(f"<{'i' if signed else 'u'}{int(bits) // 8}")
    arr = np.frombuffer(data, dtype=dtype, count=count).reshape(frames, int(rows), int(cols))
    shift = int(bits) - int(stored)
    if shift:  # the unused high bits hold anything (PS3.5 8.1.1): clear or sign-extend
        arr = np.right_shift(np.left_shift(arr, shift), shift)
    return arr


SCORED_MODALITIES = frozenset({"MR", "OT", ""})
_GREYSCALE = {"MONOCHROME1", "MONOCHROME2", ""}


def check_photometric(ds: Dataset, source: str) -> None:
    """Refuse colour images (their stored values are palette indices or colour channels, not
    signal intensities).

    Raises:
        UnsupportedPhotometric: PALETTE COLOR, RGB, YBR_*...
    """
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if photometric not in _GREYSCALE:
        raise UnsupportedPhotometric(f"photometric interpretation {photometric[:16]!r} is not "
                                     "scored: MR images are greyscale (MONOCHROME1/2)",
                                     source=source)


def check_scorable(series: ImageSeries, source: str) -> None:
    """Refuse a series the models cannot score: another modality than MR (``OT`` and a missing
    Modality are accepted). Reading CT works (``rankiq inspect``); scoring it does not.

    Raises:
        UnsupportedModality: CT, CR, US, PT...
    """
    modality = (series.modality or "").upper()
    if series.kind == "dicom" and modality not in SCORED_MODALITIES:
        raise UnsupportedModality(f"modality {modality[:8]!r} is not scored: the models were "
                                  "trained on MR images only", source=source)


def decode_instance(ds: Dataset, source: str, limits: ReadLimits) -> list[Frame]:
    """All frames of an instance read with pixels, rescaled to float32.

    Raises:
        NonImageInput, InvalidImage, InputTooLarge: see :func:`check_header`.
        UnreadableInput: truncated or undecodable pixel data.
        InvalidImage: NaN/Inf after rescaling.
    """
    frames = check_header(ds, source, limits)
    check_photometric(ds, source)
    with quiet_reads(source):
        stored = _decode(ds, source, frames)
        meta = _instance_meta(ds)
    inst = _num(ds.get("InstanceNumber"))
    out = []
    for i in range(frames):
        slope = _num(_fg(ds, i, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _num(_fg(ds, i, "PixelValueTransformationSequence", "RescaleIntercept"))
        px = stored[i].astype(np.float32)
        if slope is not None and slope != 1.0:
            px *= np.float32(slope)
        if intercept:
            px += np.float32(intercept)
        if not np.isfinite(px).all():
            raise InvalidImage(f"frame {i + 1} holds NaN or Inf pixel values", source=source)
        out.append(Frame(
            pixels=px,
            position=_vec(_fg(ds, i, "PlanePositionSequence", "ImagePositionPatient"), 3),
            orientation=_vec(_fg(ds, i, "PlaneOrientationSequence", "ImageOrientationPatient"),
                             6),
            instance_number=None if inst is None else int(inst),
            frame_index=i, source=source, meta=meta,
        ))
    return out


def _normal(orientation: tuple[float, ...]) -> np.ndarray | None:
    n = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    norm = np.linalg.norm(n)
    return n / norm if norm > 1e-6 else None


def order_frames(frames: list[Frame]) -> tuple[list[Frame], str, list[float] | None]:
    """Slice order: along the normal when possible, else by InstanceNumber.

    Returns:
        the ordered frames, the method (``"position"`` or ``"instance_number"``) and, for the
        position method, each slice's distance along the normal in mm.
    """
    def fallback_key(f: Frame) -> tuple:
        inst = f.instance_number
        return (inst is None, inst if inst is not None else 0, f.source, f.frame_index)

    orientations = [f.orientation for f in frames]
    if all(f.position is not None for f in frames) and all(o is not None for o in orientations):
        normals = [_normal(o) for o in orientations if o is not None]
        n0 = normals[0]
        if n0 is not None and all(n is not None and abs(float(n @ n0)) > 0.999
                                  for n in normals):
            dist = [float(np.asarray(f.position) @ n0) for f in frames]
            order = sorted(range(len(frames)),
                           key=lambda i: (round(dist[i], 4), fallback_key(frames[i])))
            return [frames[i] for i in order], "position", [dist[i] for i in order]
    return sorted(frames, key=fallback_key), "instance_number", None


def assemble(frames: list[Frame], series_key: str) -> ImageSeries:
    """Stack frames of one matrix size into an :class:`ImageSeries` (slices ordered).

    Raises:
        InvalidImage: frames of different matrix sizes.
    """
    shapes = {f.pixels.shape for f in frames}
    if len(shapes) != 1:
        raise InvalidImage(
            f"series mixes matrix sizes {sorted(shapes)}; read each size separately",
            source=frames[0].source)
    ordered, method, dist = order_frames(frames)
    first = ordered[0]
    meta = first.meta
    attributes = dict(meta.attributes)
    attributes["slice_order"] = method
    if dist is not None and len(dist) > 1:
        attributes["slice_spacing_mm"] = float(np.median(np.diff(dist)))
    orientations = {f.orientation for f in ordered}
    if len(orientations) > 1:
        attributes["mixed_orientations"] = True
    sources = list(dict.fromkeys(f.source for f in ordered))
    return ImageSeries(
        pixels=np.stack([f.pixels for f in ordered]).astype(np.float32, copy=False),
        kind="dicom",
        series_key=series_key,
        modality=meta.modality,
        description=meta.description,
        contrast=meta.contrast,
        pixel_spacing=meta.pixel_spacing,
        slice_thickness=meta.slice_thickness,
        orientation=first.orientation,
        transfer_syntax=meta.transfer_syntax,
        source_files=sources,
        attributes=attributes,
    )


#: the Deflated Explicit VR Little Endian transfer syntax UID as a file meta holds it, as a
#: pattern: ``re`` searches a buffer in place, without copying the file
DEFLATED_UID = re.compile(re.escape(DeflatedExplicitVRLittleEndian.encode("ascii")))


def _check_deflated(fp: Any, source: str, limits: ReadLimits) -> None:
    """Refuse a Deflated Explicit VR Little Endian data set that inflates beyond
    ``limits.max_inflated_bytes`` (pydicom inflates it whole, unbounded, before parsing).

    Reads the file meta, then inflates the rest in 1 MiB steps, counting and discarding;
    the stream is rewound to where it was. A data set in memory whose bytes nowhere hold the
    deflated transfer syntax's UID cannot be deflated, and its meta is not parsed here (a
    byte search costs microseconds, the parse about 0.1 ms per instance).
    """
    from pydicom.filereader import _read_file_meta_info, read_preamble

    if isinstance(fp, io.BytesIO):
        with fp.getbuffer() as buf:
            if DEFLATED_UID.search(buf) is None:
                return
    start = fp.tell()
    try:
        read_preamble(fp, force=True)
        meta = _read_file_meta_info(fp)
        deflated = meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    except Exception:  # noqa: BLE001 - not parsable here: pydicom reports it below
        deflated = False
    if deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        try:
            while chunk := fp.read(1 << 20):
                while chunk:
                    total += len(inflater.decompress(chunk, 1 << 20))
                    if total > limits.max_inflated_bytes:
                        raise InputTooLarge(
                            f"deflated data set inflates beyond the {limits.max_inflated_bytes} "
                            "byte limit (deflate bomb?)", source=source)
                    chunk = inflater.unconsumed_tail
        except zlib.error as exc:
            raise UnreadableInput("deflated data set cannot be inflated (corrupt)",
                                  source=source) from exc
    fp.seek(start)


#: Files up to this size (bytes) are read whole before a header is parsed (a single-frame
#: 512x512 16-bit MR image is about 0.5 MiB), larger ones stream.
HEADER_IN_MEMORY = 1 << 20
#: Files up to this size (bytes) are read whole before they are decoded.
FILE_IN_MEMORY = 64 << 20


def read_dataset(fp: Any, source: str, *, header_only: bool,
                 limits: ReadLimits = DEFAULT_LIMITS) -> Dataset:
    """Parse a DICOM stream (preamble optional); parse errors become :class:`UnreadableInput`.

    ``fp`` is a path or a seekable binary stream. Library warnings are reduced to reason codes
    (:func:`rankiq.service.io.privacy.quiet_reads`); a deflated data set is size-checked first.
    """
    with quiet_reads(source):
        if isinstance(fp, str | bytes) or hasattr(fp, "__fspath__"):
            with open(fp, "rb") as f:
                return read_dataset(f, source, header_only=header_only, limits=limits)
        if isinstance(fp, io.BufferedReader):
            # a small file is parsed from memory: one read instead of pydicom's hundred or so
            # small ones (a third of a header walk's time); a header walk does not read the
            # pixels of larger files
            rest = os.fstat(fp.fileno()).st_size - fp.tell()
            if rest <= (HEADER_IN_MEMORY if header_only else FILE_IN_MEMORY):
                fp = io.BytesIO(fp.read())
        _check_deflated(fp, source, limits)
        try:
            return pydicom.dcmread(fp, force=True, stop_before_pixels=header_only)
        except Exception as exc:  # noqa: BLE001 - parser errors are many; never echo values
            raise UnreadableInput(f"DICOM cannot be parsed (truncated or corrupt: "
                                  f"{type(exc).__name__})", source=source) from exc
