"""Builders of small DICOM, zip and k-space test files for the service.io tests.

Every DICOM written here carries sentinel patient identifiers (``PHI``) so tests can assert that
no message, log line or output ever repeats them.
"""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from rankiq.service.fft import center_pad, fft2c

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-98765"
BIRTH_DATE = "19700101"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4.1"


def uid(label: str) -> str:
    """A deterministic UID for ``label``."""
    return generate_uid(entropy_srcs=[label])


#: identifiers that must never appear in output (the UIDs used by :func:`mr_dataset` defaults)
PHI = (PATIENT_NAME, "Doe", "Jane", PATIENT_ID, BIRTH_DATE, uid("study"), uid("series"))


def assert_no_phi(text: str, extra: Sequence[str] = ()) -> None:
    """Fail if ``text`` contains a patient identifier."""
    for token in (*PHI, *extra):
        assert token not in text, f"patient identifier {token!r} leaked into: {text!r}"


def _base(sop_class: str, series_uid: str, rows: int, cols: int) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    sop_instance = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "MR"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def mr_dataset(
    stored: np.ndarray,
    *,
    series_uid: str | None = None,
    instance: int | None = 1,
    position: Sequence[float] | None = (0.0, 0.0, 0.0),
    orientation: Sequence[float] | None = (1, 0, 0, 0, 1, 0),
    slope: float | None = None,
    intercept: float | None = None,
    description: str = "AX T2 FSE",
    echo_time: float = 100.0,
    repetition_time: float = 4000.0,
) -> FileDataset:
    """A classic MR Image Storage data set holding int16 ``stored`` values ``(rows, cols)``."""
    stored = np.asarray(stored, dtype=np.int16)
    ds = _base(MR_IMAGE, series_uid or uid("series"), *stored.shape)
    ds.SeriesDescription = description
    ds.EchoTime = echo_time
    ds.RepetitionTime = repetition_time
    ds.ScanningSequence = "SE"
    ds.PixelSpacing = [0.9, 0.8]
    ds.SliceThickness = 3.0
    if instance is not None:
        ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.PixelData = stored.tobytes()
    return ds


def enhanced_mr_dataset(
    stored: np.ndarray,
    positions: Sequence[Sequence[float]],
    *,
    slopes: Sequence[float] | None = None,
    intercepts: Sequence[float] | None = None,
    series_uid: str | None = None,
    description: str = "AX FLAIR",
) -> FileDataset:
    """An Enhanced MR (multi-frame) data set: int16 ``stored`` ``(frames, rows, cols)``.

    Positions (and rescale, when given) go in the per-frame functional groups; orientation and
    pixel measures in the shared functional groups.
    """
    stored = np.asarray(stored, dtype=np.int16)
    n, rows, cols = stored.shape
    ds = _base(ENHANCED_MR_IMAGE, series_uid or uid("series-mf"), rows, cols)
    ds.SeriesDescription = description
    ds.NumberOfFrames = n
    ds.InstanceNumber = 1
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PlaneOrientationSequence = DicomSequence([orient])
    measures = Dataset()
    measures.PixelSpacing = [1.0, 1.0]
    measures.SliceThickness = 4.0
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for i in range(n):
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [float(v) for v in positions[i]]
        item.PlanePositionSequence = DicomSequence([pos])
        if slopes is not None or intercepts is not None:
            pvt = Dataset()
            pvt.RescaleSlope = slopes[i] if slopes is not None else 1.0
            pvt.RescaleIntercept = intercepts[i] if intercepts is not None else 0.0
            pvt.RescaleType = "US"
            item.PixelValueTransformationSequence = DicomSequence([pvt])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = stored.tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Save a data set as a DICOM file (with preamble and file meta)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_zip(path: Path, members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED
              ) -> Path:
    """A zip with the given member names and contents."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def dciodvfy_errors(ds: Dataset, path: Path) -> list[str]:
    """The ``Error`` lines of dciodvfy (Debian's dicom3tools) on ``ds``, saved to ``path``
    (none where dciodvfy is not installed)."""
    if not shutil.which("dciodvfy"):
        return []
    ds.save_as(path)
    check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [ln for ln in (check.stdout + check.stderr).splitlines() if ln.startswith("Error")]


def dicom_bytes(ds: Dataset) -> bytes:
    """A data set serialised as a DICOM file."""
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def bundled(name: str) -> Path:
    """A file bundled with pydicom."""
    return Path(pydicom.data.get_testdata_file(name))


# ---- k-space -------------------------------------------------------------------------------

def phantom(n: int = 32, slices: int = 2, coils: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A complex Shepp-Logan stack and normalised birdcage maps.

    Returns:
        image complex64 ``(slices, n, n)`` (slice s scaled by 1 + s, smooth phase) and maps
        complex64 ``(coils, n, n)`` with ``sum_c |S_c|^2 = 1`` everywhere.
    """
    import sigpy
    import sigpy.mri

    base = np.abs(sigpy.shepp_logan((n, n))).astype(np.float32)
    yy, xx = np.mgrid[0:n, 0:n] / n
    phase = np.exp(1j * 0.8 * (xx + 0.5 * yy)).astype(np.complex64)
    image = np.stack([base * phase * (1 + s) for s in range(slices)]).astype(np.complex64)
    maps = sigpy.mri.birdcage_maps((coils, n, n)).astype(np.complex64)
    maps /= np.sqrt((np.abs(maps) ** 2).sum(axis=0, keepdims=True))
    return image, maps


def oversampled_kspace(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Multi-coil k-space ``(slices, coils, 2n, n)`` with a 2x oversampled readout (axis -2)."""
    coil_images = image[:, None] * maps[None]
    n = image.shape[-1]
    padded = center_pad(coil_images, (2 * image.shape[-2], n))
    return fft2c(padded).astype(np.complex64)


def ismrmrd_header_xml(nx: int, ny: int, *, rx: int, ry: int, slices: int,
                       protocol: str = "AX FLAIR") -> str:
    """A minimal ISMRMRD header (with sentinel identifiers in subjectInformation)."""
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <subjectInformation><patientName>{PATIENT_NAME}</patientName>
    <patientID>{PATIENT_ID}</patientID></subjectInformation>
  <measurementInformation><patientPosition>HFS</patientPosition>
    <protocolName>{protocol}</protocolName></measurementInformation>
  <experimentalConditions><H1resonanceFrequency_Hz>63500000</H1resonanceFrequency_Hz>
  </experimentalConditions>
  <encoding>
    <encodedSpace><matrixSize><x>{nx}</x><y>{ny}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{2 * 220.0 * nx / (2 * rx)}</x><y>220</y><z>5</z></fieldOfView_mm>
    </encodedSpace>
    <reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>220</x><y>220</y><z>5</z></fieldOfView_mm></reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{ny - 1}</maximum>
        <center>{ny // 2}</center></kspace_encoding_step_1>
      <slice><minimum>0</minimum><maximum>{slices - 1}</maximum><center>0</center></slice>
    </encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
  <sequenceParameters><TR>9000</TR><TE>120</TE><TI>2500</TI></sequenceParameters>
</ismrmrdHeader>"""


def write_fastmri(path: Path, kspace: np.ndarray, *, acquisition: str = "AXT2",
                  header: bool = True, extra_attrs: dict | None = None) -> Path:
    """A fastMRI-format HDF5 file (``kspace`` plus the usual attributes, one of them a string).

    ``patient_id`` is set to the sentinel identifier: readers must never surface it.
    """
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.attrs["acquisition"] = acquisition
        f.attrs["max"] = "0.000412"  # fastMRI files hold numbers; some tools write strings
        f.attrs["norm"] = np.float64(0.0123)
        f.attrs["patient_id"] = PATIENT_ID
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = v
        if header:
            s, nx, ny = kspace.shape[0], kspace.shape[-2], kspace.shape[-1]
            xml = ismrmrd_header_xml(nx, ny, rx=nx // 2, ry=ny, slices=s, protocol=acquisition)
            f.create_dataset("ismrmrd_header", data=np.bytes_(xml.encode()))
    return path


def write_ismrmrd(path: Path, kspace: np.ndarray, *, noise_scan: bool = True) -> Path:
    """An ISMRMRD HDF5 file: one acquisition per (slice, phase-encode line), readout = kx.

    A noise-measurement acquisition is written first (readers must skip it).
    """
    import ismrmrd

    s, c, nx, ny = kspace.shape
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=True) as dset:
        dset.write_xml_header(ismrmrd_header_xml(nx, ny, rx=nx // 2, ry=ny, slices=s))
        if noise_scan:
            noise = ismrmrd.Acquisition.from_array(
                (np.random.default_rng(0).standard_normal((c, nx)) * 100).astype(np.complex64))
            noise.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
            dset.append_acquisition(noise)
        for sl in range(s):
            for y in range(ny):
                acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(kspace[sl, :, :, y]))
                acq.idx.slice = sl
                acq.idx.kspace_encode_step_1 = y
                dset.append_acquisition(acq)
    return path
