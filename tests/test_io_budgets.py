"""Memory and time budgets of service.io: every bomb is refused from its headers, before its
pixels, k-space or inflated bytes exist in memory; library warnings never quote element values.

Each test builds the hostile input small (a few kB) and checks the refusal and its reason.
"""

from __future__ import annotations

import io
import logging
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers_io import assert_no_phi, dicom_bytes, mr_dataset, uid, write_zip
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless
from rankiq.service.errors import (
    HostileArchive,
    InputTooLarge,
    InvalidImage,
    UnsupportedModality,
    UnsupportedPhotometric,
)
from rankiq.service.io import (
    ReadBudget,
    ReadLimits,
    load_series,
    read_series,
    read_upload,
    scan_instances,
)
from rankiq.service.io.dicom import check_scorable

MARKER = "ZZMARKERQ"


def _dcm(rows: int = 16, cols: int = 16, **kw) -> object:
    return mr_dataset(np.ones((rows, cols)), **kw)


def test_number_of_frames_zero_is_refused_not_read_as_one():
    ds = _dcm()
    ds.NumberOfFrames = 0
    with pytest.raises(InvalidImage, match="frames"):
        read_upload(dicom_bytes(ds), "image")


def test_decoded_size_budget_is_checked_from_the_header_before_decoding():
    # an RLE file declaring 9 frames of 4096x4096 whose pixel data is a few bytes: refused
    # from Rows x Columns x NumberOfFrames x BitsAllocated alone (576 MiB as float32)
    ds = _dcm()
    ds.Rows = ds.Columns = 4096
    ds.NumberOfFrames = 9
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\0" * 64] * 9)  # not valid RLE: never reaches the decoder
    with pytest.raises(InputTooLarge, match="byte limit of one series"):
        read_upload(dicom_bytes(ds), "image")
    limits = ReadLimits(max_series_bytes=16 * 16 * 4 * 2)  # 2 slices of 16x16 float32
    ok = _dcm()
    assert read_upload(dicom_bytes(ok), "image", limits=limits)[0].shape == (1, 16, 16)
    ok.Rows = ok.Columns = 32
    with pytest.raises(InputTooLarge):
        read_upload(dicom_bytes(ok), "image", limits=limits)


def test_deflated_dataset_is_inflated_within_a_cap():
    ds = mr_dataset(np.zeros((512, 512)))  # 512 KiB of zeros deflate to ~1 kB
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = dicom_bytes(ds)
    assert len(data) < 8 * 1024
    with pytest.raises(InputTooLarge, match="deflate bomb"):
        read_upload(data, "image", limits=ReadLimits(max_inflated_bytes=256 * 1024))
    assert read_upload(data, "image")[0].shape == (1, 512, 512)  # within the default cap


def test_the_deflate_check_skips_only_data_sets_without_the_deflated_uid():
    # the fast path skips a data set in memory whose bytes lack the deflated UID
    ds = mr_dataset(np.zeros((512, 512)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    tight = ReadLimits(max_inflated_bytes=256 * 1024)
    data = dicom_bytes(ds)  # the UID in the meta, padded to an even length
    with pytest.raises(InputTooLarge, match="deflate bomb"):
        read_upload(data, "image", limits=tight)
    plain = mr_dataset(np.zeros((512, 512)))
    assert read_upload(dicom_bytes(plain), "image", limits=tight)[0].shape == (1, 512, 512)


def test_every_zip_member_is_ratio_checked_whatever_the_archive_size(tmp_path):
    # 20 members of 1 MiB zeros (each ~1000x): far below the old 8 MiB ratio floor
    members = {f"m{i}.dcm": bytes(1024 * 1024) for i in range(20)}
    path = write_zip(tmp_path / "many.zip", members)
    assert path.stat().st_size < 100_000
    with pytest.raises(HostileArchive, match="ratio"):
        read_series(path)
    with pytest.raises(HostileArchive, match="ratio"):
        read_upload(path.read_bytes(), "image")


def _many_series_zip(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n):
            zf.writestr(f"s{i}.dcm", dicom_bytes(mr_dataset(np.ones((1, 1)),
                                                            series_uid=uid(f"one-pixel-{i}"))))
    return buf.getvalue()


def test_request_limits_on_series_instances_and_time_refuse_a_zip_of_tiny_series():
    data = _many_series_zip(12)
    with pytest.raises(InputTooLarge, match="more than 4 series"):
        read_upload(data, "image", limits=ReadLimits(max_series=4))
    with pytest.raises(InputTooLarge, match="more than 5 files"):
        read_upload(data, "image", limits=ReadLimits(max_instances=5))
    with pytest.raises(InputTooLarge, match="longer than"):
        read_upload(data, "image", limits=ReadLimits(max_read_seconds=0.0))
    assert len(read_upload(data, "image")) == 12


def test_a_budget_shared_by_the_files_of_one_request():
    limits = ReadLimits(max_decoded_bytes=16 * 16 * 4 * 3)
    budget = ReadBudget(limits)
    one = dicom_bytes(_dcm())
    for _ in range(3):
        read_upload(one, "image", limits=limits, budget=budget)
    with pytest.raises(InputTooLarge, match="in one request"):
        read_upload(one, "reference", limits=limits, budget=budget)


def test_load_series_refuses_a_series_above_the_budget_from_its_refs(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.dcm").write_bytes(dicom_bytes(_dcm(instance=i + 1,
                                                             position=(0, 0, i))))
    refs = [r for r in scan_instances(tmp_path)]
    with pytest.raises(InputTooLarge, match="one series"):
        load_series(refs, limits=ReadLimits(max_series_bytes=16 * 16 * 4 * 2))
    assert load_series(refs).shape == (3, 16, 16)


def test_hdf5_fill_value_dataset_is_refused_from_its_declared_shape(tmp_path):
    path = tmp_path / "fill.h5"
    with h5py.File(path, "w") as f:  # never written: the file is tiny, reading it is not
        f.create_dataset("kspace", shape=(2, 16, 2048, 2048), dtype=np.complex64,
                         chunks=(1, 1, 256, 256), fillvalue=1 + 1j)
    assert path.stat().st_size < 64 * 1024
    with pytest.raises(InputTooLarge, match="budget of one series"):
        read_upload(path.read_bytes(), "image")
    (failure,) = read_series(path).failures
    assert failure.reason == InputTooLarge.reason


def test_palette_colour_is_refused_and_ct_is_not_scorable():
    ds = _dcm()
    ds.PhotometricInterpretation = "PALETTE COLOR"
    with pytest.raises(UnsupportedPhotometric) as exc:
        read_upload(dicom_bytes(ds), "image")
    assert exc.value.reason == "unsupported_photometric" and exc.value.http_status == 422
    ct = _dcm()
    ct.Modality = "CT"
    series = read_upload(dicom_bytes(ct), "image")[0]  # reading CT works (inspect)
    with pytest.raises(UnsupportedModality) as exc2:
        check_scorable(series, "image")
    assert exc2.value.reason == "unsupported_modality"


def test_library_warnings_are_reduced_to_reason_codes(tmp_path, caplog):
    ds = _dcm()
    ds.PatientName = MARKER
    ds.ProtocolName = MARKER
    ds.InstanceNumber = "1234567890"
    ds.ImagePositionPatient = ["1.2345678", "0", "0"]
    # malformed numbers: pydicom's warnings quote them when the values are read
    data = dicom_bytes(ds).replace(b"1234567890", f"{MARKER}1".encode())
    data = data.replace(b"1.2345678", f"{MARKER}"[:9].encode())
    (tmp_path / f"{MARKER}.dcm").write_bytes(data)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_series(tmp_path)
        list(scan_instances(tmp_path))
        read_upload(data, f"{MARKER}.dcm")
    text = caplog.text + "".join(str(w.message) for w in caught)
    assert MARKER not in text
    assert_no_phi(text)


def test_file_and_member_names_never_appear_in_failures(tmp_path):
    bad = dicom_bytes(_dcm())[:300]
    path = write_zip(tmp_path / f"{MARKER}.zip", {f"{MARKER}/PHI-1/a.dcm": bad,
                                                  f"{MARKER}/b.txt": b"text"})
    (tmp_path / f"{MARKER}-trunc.dcm").write_bytes(bad)
    result = read_series(tmp_path)
    assert len(result.failures) == 3
    for f in result.failures:
        assert MARKER not in str(f) and f.source.startswith("file-")
    assert Path(path).exists()


def test_default_limits_are_the_documented_values():
    """The defaults are part of the contract (the table in docs/inputs.md): a change
    must be deliberate."""
    from rankiq.service.io.limits import DEFAULT_LIMITS

    gib, mib = 1024**3, 1024**2
    assert (DEFAULT_LIMITS.max_bytes, DEFAULT_LIMITS.max_zip_entries,
            DEFAULT_LIMITS.max_total_uncompressed, DEFAULT_LIMITS.max_entry_uncompressed,
            DEFAULT_LIMITS.max_compression_ratio, DEFAULT_LIMITS.ratio_check_min_bytes) == (
        2 * gib, 100_000, 8 * gib, 2 * gib, 200.0, 65_536)
    assert (DEFAULT_LIMITS.max_slices, DEFAULT_LIMITS.max_matrix, DEFAULT_LIMITS.max_coils,
            DEFAULT_LIMITS.max_series_bytes, DEFAULT_LIMITS.max_decoded_bytes,
            DEFAULT_LIMITS.max_inflated_bytes, DEFAULT_LIMITS.max_series,
            DEFAULT_LIMITS.max_instances, DEFAULT_LIMITS.max_read_seconds) == (
        4096, 4096, 128, 512 * mib, 2 * gib, 512 * mib, 10_000, 100_000, None)


def test_limits_are_immutable_and_overridable_per_field():
    """The shared default limits cannot be changed by one caller for all; a caller gets its own
    limits by replacing fields."""
    import dataclasses

    from rankiq.service.io.limits import DEFAULT_LIMITS, GiB, MiB

    assert (GiB, MiB) == (1 << 30, 1 << 20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_bytes = 1  # type: ignore[misc]
    mine = dataclasses.replace(DEFAULT_LIMITS, max_slices=3)
    assert mine.max_slices == 3 and DEFAULT_LIMITS.max_slices == 4096
    assert ReadLimits() == DEFAULT_LIMITS
