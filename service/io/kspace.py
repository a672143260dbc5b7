"""Raw k-space (fastMRI HDF5, ISMRMRD HDF5 Cartesian) to image series.

Reconstruction, per slice, with the centred orthonormal FFTs of :mod:`rankiq.service.fft`:

1. coil images ``ifft2c(kspace)``; undersampled k-space (zero lines) is simply zero-filled;
2. the field of view is cropped to the header's reconstruction matrix (``reconSpace``), which
   removes the 2x readout oversampling (fastMRI: 640 readout samples -> 320 rows) exactly as
   fastMRI's own ``reconstruction_rss`` does; without a header nothing is cropped unless
   ``readout_oversampling`` is given;
3. coils combined: root-sum-of-squares by default, sensitivity-weighted (Roemer) when ``maps``
   are given. ``pixels`` is the magnitude; ``complex_pixels`` keeps a phase: the
   sensitivity-weighted image, the single-coil image, or for RSS the RSS magnitude with the
   phase of a combination weighted by low-resolution coil images (smooth, noise-free phase).

fastMRI layout: ``kspace`` complex ``(slices, coils, kx, ky)`` or single-coil
``(slices, kx, ky)`` with ``kx`` the readout; attributes ``acquisition``, ``max``, ``norm`` (numbers
or strings); optional ``mask``, ``reconstruction_rss``, ``ismrmrd_header``. Identifying attributes
(``patient_id``) are never read.
"""

from __future__ import annotations

import hashlib
import io
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
import scipy.fft
from rankiq.service.errors import (
    GeometryMismatch,
    InputTooLarge,
    InvalidImage,
    UnreadableInput,
    UnsupportedInput,
)
from rankiq.service.fft import center_crop, coil_combine, fft_workers, rss
from rankiq.service.io.contrast import guess_contrast
from rankiq.service.io.limits import DEFAULT_LIMITS, ReadLimits
from rankiq.service.io.privacy import display_name, quiet_reads
from rankiq.service.io.types import ImageSeries, SourceKind


@dataclass(frozen=True)
class KspaceHeader:
    """The few ISMRMRD header fields reconstruction and contrast need (no identifiers).

    Matrices are ``(x, y, z)`` in samples, fields of view in mm, times in ms.
    """

    encoded: tuple[int, int, int] | None = None
    recon: tuple[int, int, int] | None = None
    encoded_fov: tuple[float, float, float] | None = None
    recon_fov: tuple[float, float, float] | None = None
    te: float | None = None
    tr: float | None = None
    ti: float | None = None
    description: str = ""
    trajectory: str = "cartesian"
    step1_center: int | None = None


def _parse_with_ismrmrd(xml: bytes) -> KspaceHeader:
    import ismrmrd.xsd

    hdr = ismrmrd.xsd.CreateFromDocument(xml)
    enc = hdr.encoding[0]

    def mat(space: Any) -> tuple[int, int, int]:
        m = space.matrixSize
        return (int(m.x), int(m.y), int(m.z))

    def fov(space: Any) -> tuple[float, float, float]:
        f = space.fieldOfView_mm
        return (float(f.x), float(f.y), float(f.z))

    seq = hdr.sequenceParameters
    meas = hdr.measurementInformation
    lim = enc.encodingLimits.kspace_encoding_step_1 if enc.encodingLimits else None
    desc = " ".join(x for x in ((meas.protocolName or "", meas.seriesDescription or "",
                                 meas.sequenceName or "") if meas else ()) if x)
    traj = enc.trajectory.value if hasattr(enc.trajectory, "value") else str(enc.trajectory)
    return KspaceHeader(
        encoded=mat(enc.encodedSpace), recon=mat(enc.reconSpace),
        encoded_fov=fov(enc.encodedSpace), recon_fov=fov(enc.reconSpace),
        te=float(seq.TE[0]) if seq and seq.TE else None,
        tr=float(seq.TR[0]) if seq and seq.TR else None,
        ti=float(seq.TI[0]) if seq and seq.TI else None,
        description=desc, trajectory=traj,
        step1_center=int(lim.center) if lim is not None and lim.center is not None else None,
    )


def _parse_with_etree(xml: bytes) -> KspaceHeader:
    """Tolerant fallback for headers the strict schema parser rejects."""
    root = ET.fromstring(xml)

    def find(path: str) -> ET.Element | None:
        node: ET.Element | None = root
        for part in path.split("/"):
            node = next((c for c in node if c.tag.split("}")[-1] == part), None) if node else None
        return node

    def num(path: str) -> float | None:
        node = find(path)
        try:
            return float(node.text) if node is not None and node.text else None
        except ValueError:
            return None

    def triple(path: str) -> tuple[float, float, float] | None:
        x, y, z = (num(f"{path}/{a}") for a in "xyz")
        return None if x is None or y is None or z is None else (x, y, z)

    def itriple(path: str) -> tuple[int, int, int] | None:
        t = triple(path)
        return None if t is None else (int(t[0]), int(t[1]), int(t[2]))

    traj = find("encoding/trajectory")
    center = num("encoding/encodingLimits/kspace_encoding_step_1/center")
    desc = " ".join(n.text for n in (find("measurementInformation/protocolName"),
                                     find("measurementInformation/seriesDescription"))
                    if n is not None and n.text)
    return KspaceHeader(
        encoded=itriple("encoding/encodedSpace/matrixSize"),
        recon=itriple("encoding/reconSpace/matrixSize"),
        encoded_fov=triple("encoding/encodedSpace/fieldOfView_mm"),
        recon_fov=triple("encoding/reconSpace/fieldOfView_mm"),
        te=num("sequenceParameters/TE"), tr=num("sequenceParameters/TR"),
        ti=num("sequenceParameters/TI"), description=desc,
        trajectory=(traj.text or "cartesian").strip() if traj is not None else "cartesian",
        step1_center=None if center is None else int(center),
    )


def parse_header(xml: bytes | str | None) -> KspaceHeader | None:
    """Parse an ISMRMRD XML header (``None`` when absent or unparseable)."""
    if xml is None:
        return None
    if isinstance(xml, str):
        xml = xml.encode()
    xml = bytes(xml).rstrip(b"\x00")
    try:
        return _parse_with_ismrmrd(xml)
    except Exception:  # noqa: BLE001 - strict schema parser; fall back to a tolerant one
        try:
            return _parse_with_etree(xml)
        except ET.ParseError:
            return None


def _attr_float(value: Any) -> float | None:
    """An HDF5 attribute that may be a number, a numpy scalar or a (byte) string."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    try:
        return float(np.asarray(value).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None


def _attr_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace").strip()
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
        return _attr_str(value)
    return "" if value is None else str(value).strip()


def crop_shape(nx: int, ny: int, header: KspaceHeader | None,
               readout_oversampling: int | None) -> tuple[int, int]:
    """Image size after removing oversampling: ``(rows, cols)`` = (readout, phase) axes."""
    if readout_oversampling is not None:
        if readout_oversampling < 1:
            raise ValueError("readout_oversampling must be >= 1")
        return nx // readout_oversampling, ny
    if header is not None and header.recon is not None and header.recon[0] > 0:
        rx, ry = header.recon[0], header.recon[1]
        return min(nx, rx), (min(ny, ry) if ry > 0 else ny)
    return nx, ny


def _ifft1c(x: np.ndarray, axis: int) -> np.ndarray:
    """Centred orthonormal inverse FFT along one axis (``ifft2c`` is two of these)."""
    x = scipy.fft.ifftshift(x, axes=axis)
    x = scipy.fft.ifft(x, axis=axis, norm="ortho", workers=fft_workers())
    return scipy.fft.fftshift(x, axes=axis)


def _crop_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    n = x.shape[axis]
    start = (n - size) // 2  # the centre center_crop uses
    return np.take(x, np.arange(start, start + size), axis=axis)


def coil_images(k: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """``center_crop(ifft2c(k), target)`` computed axis by axis, cropping the readout first.

    Cropping between the two 1D transforms skips the oversampled half of the second one.
    """
    x = _crop_axis(_ifft1c(k, -2), target[0], -2)
    return _crop_axis(_ifft1c(x, -1), target[1], -1)


def _lowres_phase(coils: np.ndarray, k: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Phase reference for RSS: coil images weighted by their low-resolution versions.

    The low-resolution images come from the central ~10 % of k-space; only those phase-encode
    columns are transformed along the readout (a pruned FFT), so this costs about half a
    reconstruction rather than a whole one.
    """
    nx, ny = k.shape[-2:]
    hx, hy = max(4, nx // 20), max(4, ny // 20)
    cols = slice(max(ny // 2 - hy, 0), min(ny // 2 + hy, ny))
    rows = slice(max(nx // 2 - hx, 0), min(nx // 2 + hx, nx))
    block = np.zeros(k.shape[:-2] + (nx, cols.stop - cols.start), dtype=k.dtype)
    block[..., rows, :] = k[..., rows, cols]
    a = _crop_axis(_ifft1c(block, -2), target[0], -2)
    full = np.zeros(a.shape[:-1] + (ny,), dtype=a.dtype)
    full[..., cols] = a
    low = _crop_axis(_ifft1c(full, -1), target[1], -1)
    return (np.conj(low) * coils).sum(axis=0)


def reconstruct(
    slices: Iterator[np.ndarray],
    n_slices: int,
    target: tuple[int, int],
    source: str,
    maps: np.ndarray | None = None,
) -> tuple[np.ndarray, str, float]:
    """Coil-combined complex images of multi-coil k-space slices.

    Args:
        slices: each complex ``(coils, kx, ky)``.
        n_slices: number of slices ``slices`` yields.
        target: image size ``(rows, cols)`` after centre-cropping (oversampling removal).
        source: file name for messages.
        maps: complex sensitivity maps ``(coils, h, w)`` or ``(slices, coils, h, w)`` with
            ``(h, w)`` the k-space size or ``target``; ``None`` for root-sum-of-squares.

    Returns:
        complex64 ``(slices, rows, cols)``, the method (``"rss"``, ``"sensitivity"``,
        ``"single-coil"``) and the fraction of phase-encode lines sampled in the first slice.
    """
    out = np.zeros((n_slices,) + tuple(target), dtype=np.complex64)
    method = "rss"
    sampled = 1.0
    any_signal = False
    for s, k in enumerate(slices):
        k = np.asarray(k).astype(np.complex64, copy=False)
        if not np.isfinite(k).all():
            raise InvalidImage(f"k-space slice {s} holds NaN or Inf values", source=source)
        if s == 0 or not any_signal:
            lines = np.any(k != 0, axis=(0, 1))  # phase-encode lines holding data
            sampled = float(lines.mean()) if s == 0 else sampled
            any_signal = bool(lines.any())
        coils = coil_images(k, target)
        if k.shape[0] == 1 and maps is None:
            out[s] = coils[0]
            method = "single-coil"
            continue
        if maps is None:
            phase = _lowres_phase(coils, k, target)
            out[s] = rss(coils, coil_axis=0) * np.exp(1j * np.angle(phase))
            continue
        m = maps[s] if maps.ndim == 4 else maps
        if m.shape[0] != k.shape[0]:
            raise GeometryMismatch(f"maps have {m.shape[0]} coils, k-space {k.shape[0]}",
                                   source=source)
        if m.shape[-2:] == k.shape[-2:]:
            m = center_crop(m, target)
        elif m.shape[-2:] != tuple(target):
            raise GeometryMismatch(
                f"maps of size {m.shape[-2:]} match neither the k-space {k.shape[-2:]} nor the "
                f"image {tuple(target)}", source=source)
        out[s] = coil_combine(coils, m, coil_axis=0)
        method = "sensitivity"
    if not any_signal:
        raise InvalidImage("k-space is all zeros", source=source)
    return out, method, sampled


def _check_dims(slices: int, coils: int, nx: int, ny: int, source: str,
                limits: ReadLimits, *, whole: bool = False) -> None:
    """Refuse k-space by its declared shape (HDF5 dataset shape or ISMRMRD header), before any
    sample is read: an HDF5 dataset that was never written (fill value) costs nothing on disk
    but its full size in memory once read.

    Budgets (``limits.max_series_bytes``): one slice's k-space (complex64) times 4 (the
    reconstruction's working copies), and with ``whole`` the whole k-space (ISMRMRD is
    assembled in memory; fastMRI is streamed slice by slice).
    """
    if min(slices, coils, nx, ny) < 1:
        raise InvalidImage(f"absurd k-space dimensions {(slices, coils, nx, ny)}", source=source)
    if max(nx, ny) > 2 * limits.max_matrix or slices > limits.max_slices \
            or coils > limits.max_coils:
        raise InputTooLarge(
            f"k-space of {slices} slices x {coils} coils x {nx} x {ny} is above the limits "
            f"({limits.max_slices} slices, {limits.max_coils} coils, {2 * limits.max_matrix} "
            "samples per axis)", source=source)
    total = slices * coils * nx * ny * 8
    if total > limits.max_bytes:
        raise InputTooLarge(f"k-space of {total} bytes is above the "
                            f"{limits.max_bytes} byte limit", source=source)
    per_slice = coils * nx * ny * 8 * 4
    if per_slice > limits.max_series_bytes or (whole and total > limits.max_series_bytes):
        raise InputTooLarge(f"k-space of {slices} slices x {coils} coils x {nx} x {ny} "
                            f"(complex64) is above the {limits.max_series_bytes} byte budget "
                            "of one series", source=source)


def _check_output(slices: int, target: tuple[int, int], source: str,
                  limits: ReadLimits) -> None:
    """Refuse a reconstruction whose images (complex64 + float32 magnitude) break the budget."""
    size = slices * int(target[0]) * int(target[1]) * 12
    if size > limits.max_series_bytes:
        raise InputTooLarge(f"reconstructed series of {size} bytes is above the "
                            f"{limits.max_series_bytes} byte budget of one series",
                            source=source)


def _prepare_maps(maps: np.ndarray | None, n_slices: int, source: str) -> np.ndarray | None:
    if maps is None:
        return None
    maps = np.asarray(maps)
    if maps.ndim not in (3, 4) or (maps.ndim == 4 and maps.shape[0] != n_slices):
        raise GeometryMismatch(
            f"maps must be (coils, h, w) or ({n_slices}, coils, h, w), got {maps.shape}",
            source=source)
    return maps.astype(np.complex64, copy=False)


def _series(images: np.ndarray, kind: SourceKind, key: str, source: str, header: KspaceHeader
            | None, description: str, attributes: dict[str, object]) -> ImageSeries:
    te = header.te if header else None
    tr = header.tr if header else None
    ti = header.ti if header else None
    spacing = None
    if header and header.recon_fov and header.recon and min(header.recon[:2]) > 0:
        spacing = (header.recon_fov[0] / header.recon[0], header.recon_fov[1] / header.recon[1])
    attributes.update({"echo_time_ms": te, "repetition_time_ms": tr, "inversion_time_ms": ti})
    return ImageSeries(
        pixels=np.abs(images).astype(np.float32),
        kind=kind, series_key=key, modality="MR", description=description,
        contrast=guess_contrast(description, echo_time_ms=te, repetition_time_ms=tr,
                                inversion_time_ms=ti),
        pixel_spacing=spacing,
        slice_thickness=header.encoded_fov[2] if header and header.encoded_fov else None,
        source_files=[source], complex_pixels=images, attributes=attributes,
    )


def _read_fastmri(f: h5py.File, source: str, key: str, maps: np.ndarray | None,
                  limits: ReadLimits, readout_oversampling: int | None) -> ImageSeries:
    ds = f["kspace"]
    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind != "c":
        raise InvalidImage("fastMRI 'kspace' must be a complex dataset", source=source)
    shape = ds.shape
    if len(shape) == 4:
        n, c, nx, ny = shape
    elif len(shape) == 3:
        (n, nx, ny), c = shape, 1
    elif len(shape) == 2:
        (nx, ny), n, c = shape, 1, 1
    else:
        raise InvalidImage(f"fastMRI 'kspace' has shape {shape}; expected (slices, coils, kx, "
                           "ky), (slices, kx, ky) or (kx, ky)", source=source)
    _check_dims(n, c, nx, ny, source, limits)
    header = parse_header(f["ismrmrd_header"][()] if "ismrmrd_header" in f else None)
    target = crop_shape(nx, ny, header, readout_oversampling)
    _check_output(n, target, source, limits)
    maps = _prepare_maps(maps, n, source)

    def slices() -> Iterator[np.ndarray]:
        for s in range(n):
            k = ds[s] if len(shape) >= 3 else ds[()]
            yield k if len(shape) == 4 else k[None]

    images, method, sampled = reconstruct(slices(), n, target, source, maps)
    acquisition = _attr_str(f.attrs.get("acquisition"))
    attributes: dict[str, object] = {
        "acquisition": acquisition, "max": _attr_float(f.attrs.get("max")),
        "norm": _attr_float(f.attrs.get("norm")), "coils": c, "kspace_shape": tuple(shape),
        "combination": method, "sampled_fraction": sampled, "has_mask": "mask" in f,
        "oversampling_removed": (nx, ny) != tuple(target),
    }
    description = acquisition or (header.description if header else "")
    return _series(images, "fastmri", key, source, header, description, attributes)


def _read_ismrmrd(file: Any, source: str, key: str, maps: np.ndarray | None,
                  limits: ReadLimits, readout_oversampling: int | None) -> ImageSeries:
    import ismrmrd
    from ismrmrd import constants as C

    skip_flags = (C.ACQ_IS_NOISE_MEASUREMENT, C.ACQ_IS_PARALLEL_CALIBRATION,
                  C.ACQ_IS_NAVIGATION_DATA, C.ACQ_IS_PHASECORR_DATA, C.ACQ_IS_HPFEEDBACK_DATA,
                  C.ACQ_IS_DUMMYSCAN_DATA, C.ACQ_IS_RTFEEDBACK_DATA,
                  C.ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA)
    with ismrmrd.Dataset(file, "dataset", mode="r") as dset:
        try:
            header = parse_header(dset.read_xml_header())
        except LookupError:
            header = None
        if header is None or header.encoded is None:
            raise UnreadableInput("ISMRMRD file without a readable XML header", source=source)
        if header.trajectory.lower() != "cartesian":
            raise UnsupportedInput(f"ISMRMRD trajectory '{header.trajectory}' is not Cartesian",
                                   source=source)
        if header.encoded[2] > 1:
            raise UnsupportedInput("3D ISMRMRD k-space (encoded z > 1) is not supported",
                                   source=source)
        n_acq = dset.number_of_acquisitions()
        lines: list[tuple[int, int, np.ndarray]] = []
        held = 0
        for i in range(n_acq):
            acq = dset.read_acquisition(i)
            held += acq.data.nbytes
            if held > limits.max_series_bytes:
                raise InputTooLarge(f"ISMRMRD acquisitions above the {limits.max_series_bytes} "
                                    "byte budget of one series", source=source)
            if any(acq.is_flag_set(fl) for fl in skip_flags):
                continue
            idx = acq.idx
            if idx.contrast or idx.repetition or idx.phase or idx.set:
                continue  # first contrast/repetition/phase/set only
            lines.append((int(idx.slice), int(idx.kspace_encode_step_1), acq.data.copy()))
    if not lines:
        raise InvalidImage("ISMRMRD file holds no imaging acquisitions", source=source)
    shapes = {d.shape for _, _, d in lines}
    if len(shapes) != 1:
        raise UnreadableInput(f"acquisitions differ in (coils, samples): {sorted(shapes)}",
                              source=source)
    c, nx = shapes.pop()
    ny = max(header.encoded[1], max(step for _, step, _ in lines) + 1)
    n = max(s for s, _, _ in lines) + 1
    _check_dims(n, c, nx, ny, source, limits, whole=True)
    _check_output(n, crop_shape(nx, ny, header, readout_oversampling), source, limits)
    offset = 0 if header.step1_center is None else header.encoded[1] // 2 - header.step1_center
    k = np.zeros((n, c, nx, ny), dtype=np.complex64)
    counts = np.zeros((n, ny), dtype=np.int32)
    for s, step, data in lines:
        y = step + offset
        if 0 <= y < ny:
            k[s, :, :, y] += data  # averages are summed then divided
            counts[s, y] += 1
    k /= np.maximum(counts, 1)[:, None, None, :]
    target = crop_shape(nx, ny, header, readout_oversampling)
    images, method, sampled = reconstruct(iter(k), n, target, source,
                                          _prepare_maps(maps, n, source))
    attributes: dict[str, object] = {
        "coils": c, "kspace_shape": (n, c, nx, ny), "combination": method,
        "sampled_fraction": sampled, "acquisitions": len(lines),
        "oversampling_removed": (nx, ny) != tuple(target),
    }
    return _series(images, "ismrmrd", key, source, header, header.description, attributes)


def _open_h5(file: Any, source: str) -> h5py.File:
    try:
        return h5py.File(file, "r")
    except (OSError, ValueError) as exc:
        raise UnreadableInput(f"HDF5 file cannot be opened (truncated or corrupt: "
                              f"{type(exc).__name__})", source=source) from exc


def kspace_from_file(file: Any, source: str, key: str, *, maps: np.ndarray | None = None,
                     limits: ReadLimits = DEFAULT_LIMITS,
                     readout_oversampling: int | None = None) -> ImageSeries:
    """Read an open-able HDF5 (path or binary file object) as fastMRI or ISMRMRD k-space.

    Library warnings are reduced to reason codes (never their text: see
    :func:`rankiq.service.io.privacy.quiet_reads`)."""
    with quiet_reads(source):
        return _kspace_from_file(file, source, key, maps=maps, limits=limits,
                                 readout_oversampling=readout_oversampling)


def _kspace_from_file(file: Any, source: str, key: str, *, maps: np.ndarray | None,
                      limits: ReadLimits, readout_oversampling: int | None) -> ImageSeries:
    with _open_h5(file, source) as f:
        if "kspace" in f:
            return _read_fastmri(f, source, key, maps, limits, readout_oversampling)
        is_ismrmrd = "dataset" in f and isinstance(f["dataset"], h5py.Group) \
            and "data" in f["dataset"]
    if not is_ismrmrd:
        raise UnsupportedInput("HDF5 file is neither fastMRI ('kspace') nor ISMRMRD "
                               "('/dataset/data') k-space", source=source)
    if hasattr(file, "seek"):
        file.seek(0)
    try:
        return _read_ismrmrd(file, source, key, maps, limits, readout_oversampling)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UnreadableInput(f"ISMRMRD data cannot be read ({type(exc).__name__})",
                              source=source) from exc


def content_key(file: str | bytes) -> str:
    """Series key of a k-space file: first 16 hex digits of SHA-256 of its bytes (streamed)."""
    h = hashlib.sha256()
    if isinstance(file, bytes):
        h.update(file)
    else:
        with open(file, "rb") as fp:
            for chunk in iter(lambda: fp.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def read_kspace(path: str | os.PathLike[str], *, maps: np.ndarray | None = None,
                limits: ReadLimits = DEFAULT_LIMITS,
                readout_oversampling: int | None = None) -> ImageSeries:
    """Reconstruct a fastMRI or ISMRMRD HDF5 k-space file into an image series.

    Args:
        path: the HDF5 file.
        maps: complex coil sensitivity maps ``(coils, h, w)`` or ``(slices, coils, h, w)``
            (``(h, w)`` = k-space size or reconstructed size) for sensitivity-weighted
            combination; ``None`` for root-sum-of-squares.
        limits: size limits.
        readout_oversampling: crop the readout (``kx``) axis by this factor instead of using the
            header's reconstruction matrix (``1`` keeps everything).

    Returns:
        :class:`ImageSeries` with float32 magnitude ``pixels`` and complex64 ``complex_pixels``,
        both ``(slices, rows, cols)``, rows along the readout.

    Raises:
        UnreadableInput, UnsupportedInput, InvalidImage, InputTooLarge, GeometryMismatch.
    """
    real = os.fspath(path)
    source = display_name(real)
    try:
        size = os.path.getsize(real)
    except OSError as exc:
        raise UnreadableInput(f"cannot be read ({exc.strerror or type(exc).__name__})",
                              source=source) from exc
    if size > limits.max_bytes:
        raise InputTooLarge(f"{size} bytes, above the limit of {limits.max_bytes}",
                            source=source)
    return kspace_from_file(real, source, content_key(real), maps=maps, limits=limits,
                            readout_oversampling=readout_oversampling)


def kspace_from_bytes(data: bytes, source: str, *, limits: ReadLimits = DEFAULT_LIMITS,
                      ) -> ImageSeries:
    """:func:`read_kspace` for content held in memory (uploads, zip members)."""
    return kspace_from_file(io.BytesIO(data), source, content_key(data), limits=limits)
