"""Small uploads that would decode to GiBs ("bombs"), one per kind, built in memory.

Used by ``rankiq bench serve`` (peak worker memory per input class) and by the hostile-input
corpus of ``make fuzz``; the read budgets (:class:`rankiq.service.io.limits.ReadLimits`) must
refuse each from its headers, before decoding:

- ``deflate``: a 2048x2048 slice in Deflated Explicit VR Little Endian (a few kB on the wire);
- ``rle_frames``: an RLE Lossless file declaring 8 frames of 4096x4096;
- ``zip_ratio``: a zip of 20 members of 1 MiB of zeros each (ratio about 1000:1);
- ``zip_tiny_series``: a zip of 600 one-pixel series (CPU and bookkeeping, not bytes);
- ``hdf5_fill``: an HDF5 k-space dataset ``(2, 16, 2048, 2048)`` complex64 that is nothing but
  its fill value (about 1 kB on the wire, 1 GiB declared).
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np

#: DICOM MR Image Storage
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _uid(label: str) -> str:
    """A deterministic UID for ``label``."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["rankiq-bomb", label]))


def mr_slice(stored: np.ndarray, *, series: str, patient: str = "BOMB^TEST") -> Any:
    """A classic MR Image Storage data set (pydicom ``FileDataset``) holding int16 ``stored``
    values ``(rows, cols)``, in Explicit VR Little Endian; ``series`` labels its series UID."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    stored = np.asarray(stored, dtype=np.int16)
    sop = _uid(f"{series}-sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MR_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop
    ds.PatientName = patient
    ds.PatientID = patient
    ds.StudyInstanceUID = _uid("study")
    ds.SeriesInstanceUID = _uid(series)
    ds.Modality = "MR"
    ds.SeriesDescription = "AX T2 FSE"
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.9, 0.8]
    ds.SliceThickness = 3.0
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = stored.tobytes()
    return ds


def dicom_bytes(ds: Any) -> bytes:
    """A pydicom data set serialised as a DICOM file (deflated if its transfer syntax says so)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A deflated zip of ``members`` (name -> bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def bombs(marker: str = "BOMB") -> dict[str, bytes]:
    """One small file per bomb kind (see the module docstring), keyed by kind; ``marker`` is
    written into the patient name of the DICOM bombs and the zip member folder names (so a test
    can grep for it in outputs)."""
    import h5py
    from pydicom.encaps import encapsulate
    from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

    out = {}
    ds = mr_slice(np.zeros((2048, 2048)), series="deflate", patient=f"{marker}^Deflate")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out["deflate"] = dicom_bytes(ds)
    ds = mr_slice(np.ones((16, 16)), series="rle", patient=f"{marker}^Rle")
    ds.Rows = ds.Columns = 4096
    ds.NumberOfFrames = 8
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\0" * 64] * 8)
    out["rle_frames"] = dicom_bytes(ds)
    out["zip_ratio"] = zip_bytes({f"{marker}/m{i}.dcm": bytes(1024 * 1024) for i in range(20)})
    out["zip_tiny_series"] = zip_bytes({
        f"{marker}/s{i}.dcm": dicom_bytes(mr_slice(np.ones((1, 1)), series=f"tiny-{i}"))
        for i in range(600)})
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("kspace", shape=(2, 16, 2048, 2048), dtype=np.complex64,
                         chunks=(1, 1, 256, 256), fillvalue=1 + 1j)
    out["hdf5_fill"] = buf.getvalue()
    return out
