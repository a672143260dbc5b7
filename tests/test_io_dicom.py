"""rankiq.service.io on DICOM: decoding, rescale, grouping, slice order, multi-frame, bad input."""

from __future__ import annotations

import dataclasses
import io
import shutil

import numpy as np
import pydicom
import pytest
from helpers_io import (
    assert_no_phi,
    bundled,
    dicom_bytes,
    enhanced_mr_dataset,
    mr_dataset,
    uid,
    write,
)
from rankiq.service.errors import InputTooLarge, InvalidImage, NonImageInput, UnreadableInput
from rankiq.service.io import (
    ReadFailure,
    display_name,
    group_instances,
    load_series,
    read_series,
    read_upload,
    scan_instances,
)
from rankiq.service.io import dicom as dicom_module

MR_SMALL_VARIANTS = (
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",
)
DICOMDIR_MR = bundled("dicomdirtests").joinpath("98892003")


def _only(result):
    assert len(result) == 1, (len(result), [str(f) for f in result.failures])
    return result[0]


# ---- decoding ------------------------------------------------------------------------------

def test_mr_small_encodings_decode_to_identical_pixels():
    expected = pydicom.dcmread(bundled("MR_small.dcm")).pixel_array.astype(np.float32)
    syntaxes = set()
    for name in MR_SMALL_VARIANTS:
        series = _only(read_series(bundled(name)))
        assert series.pixels.dtype == np.float32 and series.shape == (1, 64, 64), name
        np.testing.assert_array_equal(series.pixels[0], expected, err_msg=name)
        syntaxes.add(series.transfer_syntax)
    # RLE, JPEG-LS, JPEG 2000, big endian, implicit, explicit little endian
    assert len(syntaxes) == 6, syntaxes


def test_series_metadata_is_read_and_holds_no_identifier(tmp_path):
    path = write(mr_dataset(np.arange(256).reshape(16, 16)), tmp_path / "a.dcm")
    series = _only(read_series(path))
    assert series.kind == "dicom" and series.modality == "MR"
    assert series.description == "AX T2 FSE" and series.contrast == "T2"
    assert series.pixel_spacing == (0.9, 0.8) and series.slice_thickness == 3.0
    assert series.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert series.source_files == [display_name(str(path))]
    assert series.attributes["echo_time_ms"] == 100.0
    assert len(series.series_key) == 16 and series.series_key != uid("series")
    fields = dataclasses.asdict(series)
    fields.pop("pixels")
    assert_no_phi(repr(fields))


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    stored = np.arange(-50, 206, dtype=np.int16).reshape(16, 16)
    path = write(mr_dataset(stored, slope=2.5, intercept=-100.0), tmp_path / "r.dcm")
    series = _only(read_series(path))
    np.testing.assert_allclose(series.pixels[0], stored * 2.5 - 100.0)


def test_dicom_without_preamble_is_sniffed_and_read(tmp_path):
    ds = mr_dataset(np.full((16, 16), 7))
    path = tmp_path / "bare"
    ds.preamble = None
    del ds.file_meta
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    series = _only(read_series(path))
    assert np.all(series.pixels == 7)


# ---- grouping and order ---------------------------------------------------------------------

def test_slices_are_ordered_along_the_normal_not_by_file_or_instance(tmp_path):
    # oblique stack: normal = row x col cosines; instance numbers deliberately scrambled
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(0.3), np.sin(0.3)])
    normal = np.cross(row, col)
    distances = [12.0, -6.0, 0.0, 30.0, 6.0]
    instances = [1, 5, 2, 3, 4]
    for i, (dist, inst) in enumerate(zip(distances, instances, strict=True)):
        pos = np.array([-10.0, 5.0, 2.0]) + dist * normal
        ds = mr_dataset(np.full((16, 16), int(dist) + 100), instance=inst, position=pos,
                        orientation=[*row, *col])
        write(ds, tmp_path / f"z{i}.dcm")
    series = _only(read_series(tmp_path))
    assert series.attributes["slice_order"] == "position"
    np.testing.assert_array_equal(series.pixels[:, 0, 0], np.array(sorted(distances)) + 100)
    assert series.attributes["slice_spacing_mm"] == pytest.approx(6.0)


def test_nonparallel_dicomdir_mr_series_fall_back_to_instance_number():
    # MR700: 7 radial projections (orientations differ); MR2: two tri-plane localisers of 3
    # and a single localiser
    result = read_series([DICOMDIR_MR / "MR700", DICOMDIR_MR / "MR2"])
    assert not result.failures
    real = {display_name(str(p)): p for p in DICOMDIR_MR.rglob("*")}
    assert sorted(s.shape[0] for s in result) == [1, 3, 3, 7]
    for series in (s for s in result if s.shape[0] > 1):
        assert series.attributes["slice_order"] == "instance_number"
        numbers = [int(pydicom.dcmread(real[f], stop_before_pixels=True).InstanceNumber)
                   for f in series.source_files]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
        for i, f in enumerate(series.source_files):  # pixels follow their files
            expected = pydicom.dcmread(real[f]).pixel_array.astype(np.float32)
            np.testing.assert_array_equal(series.pixels[i], expected)


def test_parallel_dicomdir_series_is_ordered_by_position_against_instance_order():
    # CT5N: InstanceNumber rises while z falls; position order must reverse it
    folder = bundled("dicomdirtests") / "98892001" / "CT5N"
    series = _only(read_series(folder))
    assert series.attributes["slice_order"] == "position"
    real = {display_name(str(p)): p for p in folder.rglob("*")}
    z = [float(pydicom.dcmread(real[f], stop_before_pixels=True).ImagePositionPatient[2])
         for f in series.source_files]
    assert z == sorted(z)
    numbers = [int(pydicom.dcmread(real[f], stop_before_pixels=True).InstanceNumber)
               for f in series.source_files]
    assert numbers == sorted(numbers, reverse=True)


def test_instances_are_grouped_by_series_uid(tmp_path):
    for i in range(3):
        write(mr_dataset(np.full((16, 16), i), series_uid=uid("A"), instance=i + 1,
                         position=(0, 0, i)), tmp_path / f"f{2 * i}.dcm")
        write(mr_dataset(np.full((16, 16), 10 + i), series_uid=uid("B"), instance=i + 1,
                         position=(0, 0, i)), tmp_path / f"f{2 * i + 1}.dcm")
    result = read_series(tmp_path)
    assert len(result) == 2 and not result.failures
    values = sorted(tuple(s.pixels[:, 0, 0]) for s in result)
    assert values == [(0, 1, 2), (10, 11, 12)]
    assert len({s.series_key for s in result}) == 2


def test_series_mixing_matrix_sizes_is_split(tmp_path):
    write(mr_dataset(np.ones((16, 16)), instance=1), tmp_path / "a.dcm")
    write(mr_dataset(np.ones((16, 16)), instance=2, position=(0, 0, 1)), tmp_path / "b.dcm")
    write(mr_dataset(np.ones((32, 16)), instance=3), tmp_path / "c.dcm")
    result = read_series(tmp_path)
    assert sorted(s.shape for s in result) == [(1, 32, 16), (2, 16, 16)]
    refs = [r for r in scan_instances(tmp_path)]
    groups = group_instances(refs)
    assert set(groups) == {s.series_key for s in result}
    for key, group in groups.items():
        loaded = load_series(group, key=key)
        match = next(s for s in result if s.series_key == key)
        np.testing.assert_array_equal(loaded.pixels, match.pixels)


# ---- multi-frame ------------------------------------------------------------------------------

def test_enhanced_multiframe_is_split_ordered_and_rescaled_per_frame(tmp_path):
    stored = np.stack([np.full((16, 16), v) for v in (10, 20, 30, 40)])
    z = [8.0, -4.0, 0.0, 4.0]
    slopes = [1.0, 2.0, 0.5, 3.0]
    intercepts = [0.0, 5.0, -1.0, 0.0]
    ds = enhanced_mr_dataset(stored, [(0, 0, v) for v in z], slopes=slopes,
                             intercepts=intercepts)
    series = _only(read_series(write(ds, tmp_path / "mf.dcm")))
    assert series.shape == (4, 16, 16)
    physical = [v * s + b for v, s, b in zip((10, 20, 30, 40), slopes, intercepts, strict=True)]
    expected = [p for _, p in sorted(zip(z, physical, strict=True))]
    np.testing.assert_allclose(series.pixels[:, 5, 5], expected)
    assert series.attributes["slice_order"] == "position"
    assert series.pixel_spacing == (1.0, 1.0) and series.slice_thickness == 4.0
    assert series.contrast == "FLAIR"
    assert series.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def test_multiframe_frames_from_two_instances_merge_into_one_series(tmp_path):
    a = enhanced_mr_dataset(np.stack([np.full((8, 16), 1), np.full((8, 16), 3)]),
                            [(0, 0, 1), (0, 0, 3)], series_uid=uid("mf2"))
    b = enhanced_mr_dataset(np.stack([np.full((8, 16), 2), np.full((8, 16), 0)]),
                            [(0, 0, 2), (0, 0, 0)], series_uid=uid("mf2"))
    write(a, tmp_path / "a.dcm")
    write(b, tmp_path / "b.dcm")
    series = _only(read_series(tmp_path))
    np.testing.assert_array_equal(series.pixels[:, 0, 0], [0, 1, 2, 3])
    assert series.shape == (4, 8, 16)


# ---- streaming scan ---------------------------------------------------------------------------

def test_scan_then_load_matches_read_series(tmp_path):
    for i in (2, 0, 1):
        write(mr_dataset(np.full((16, 16), i), instance=i + 1, position=(0, 0, 2 * i)),
              tmp_path / "sub" / f"{i}.dcm")
    refs = list(scan_instances(tmp_path))
    assert all(r.kind == "dicom" and r.rows == 16 and r.frames == 1 for r in refs)
    assert {r.series_key for r in refs} == {read_series(tmp_path)[0].series_key}
    loaded = load_series(refs)
    np.testing.assert_array_equal(loaded.pixels, read_series(tmp_path)[0].pixels)
    assert_no_phi(repr(refs))


def test_scan_reads_headers_only(tmp_path):
    # MR_truncated's header is intact but its pixel data is short: a header-only scan accepts
    # it, loading the pixels refuses it
    shutil.copy(bundled("MR_truncated.dcm"), tmp_path / "t.dcm")
    refs = list(scan_instances(tmp_path))
    assert len(refs) == 1 and refs[0].rows == 64
    with pytest.raises(UnreadableInput, match=display_name(str(tmp_path / "t.dcm"))):
        load_series(refs)


# ---- bad input ------------------------------------------------------------------------------

def test_truncated_pixel_data_is_a_failure_and_the_rest_is_read(tmp_path):
    shutil.copy(bundled("MR_truncated.dcm"), tmp_path / "trunc.dcm")
    shutil.copy(bundled("MR_small.dcm"), tmp_path / "ok.dcm")
    result = read_series(tmp_path)
    assert len(result) == 1
    (failure,) = result.failures
    assert failure.reason == UnreadableInput.reason
    assert failure.source == display_name(str(tmp_path / "trunc.dcm"))
    assert "less than expected" in failure.message
    with pytest.raises(UnreadableInput) as exc:
        read_upload((tmp_path / "trunc.dcm").read_bytes(), "upload.dcm")
    assert display_name("upload.dcm") in str(exc.value) and "upload.dcm" not in str(exc.value)


def test_file_truncated_inside_the_header_is_unreadable(tmp_path):
    raw = dicom_bytes(mr_dataset(np.ones((16, 16))))
    (tmp_path / "cut.dcm").write_bytes(raw[:400])
    result = read_series(tmp_path / "cut.dcm")
    assert not result
    (failure,) = result.failures
    assert failure.reason == UnreadableInput.reason
    assert failure.source == display_name(str(tmp_path / "cut.dcm"))
    assert_no_phi(str(failure))


@pytest.mark.parametrize("name, label", [
    ("test-SR.dcm", "SR"), ("rtplan.dcm", "RT"), ("rtstruct.dcm", "RT"), ("rtdose.dcm", "RT"),
])
def test_non_image_dicom_is_rejected_with_a_reason(name, label):
    result = read_series(bundled(name))
    assert not result
    (failure,) = result.failures
    assert failure.reason == NonImageInput.reason and label in failure.message
    with pytest.raises(NonImageInput) as exc:
        read_upload(bundled(name).read_bytes(), name)
    assert display_name(name) in str(exc.value) and label in str(exc.value)


def test_presentation_state_is_rejected_without_identifiers(tmp_path):
    ds = mr_dataset(np.ones((4, 4)))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.Modality = "PR"
    del ds.PixelData, ds.Rows, ds.Columns
    with pytest.raises(NonImageInput) as exc:
        read_upload(dicom_bytes(ds), "state.dcm")
    assert "presentation state" in str(exc.value) and display_name("state.dcm") in str(exc.value)
    assert_no_phi(str(exc.value))


def _float_dataset(values: np.ndarray):
    ds = mr_dataset(np.zeros(values.shape))
    del ds.PixelData, ds.PixelRepresentation
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit = 31
    ds.FloatPixelData = values.astype(np.float32).tobytes()
    return ds


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_pixels_are_invalid(tmp_path, bad):
    values = np.ones((16, 16), np.float32)
    values[3, 4] = bad
    path = write(_float_dataset(values), tmp_path / "bad.dcm")
    (failure,) = read_series(path).failures
    assert failure.reason == InvalidImage.reason and "NaN or Inf" in failure.message
    with pytest.raises(InvalidImage) as exc:
        read_upload(path.read_bytes(), "bad.dcm")
    assert display_name("bad.dcm") in str(exc.value)
    assert_no_phi(str(exc.value))


def test_float_pixel_data_reads(tmp_path):
    values = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    series = _only(read_series(write(_float_dataset(values), tmp_path / "f.dcm")))
    np.testing.assert_array_equal(series.pixels[0], values)


@pytest.mark.parametrize("rows, cols, error", [
    (0, 16, InvalidImage), (60000, 60000, InputTooLarge), (16, 65535, InputTooLarge),
])
def test_absurd_dimensions_are_refused_before_decoding(tmp_path, rows, cols, error):
    ds = mr_dataset(np.ones((16, 16)))
    ds.Rows, ds.Columns = rows, cols
    with pytest.raises(error) as exc:
        read_upload(dicom_bytes(ds), "huge.dcm")
    assert display_name("huge.dcm") in str(exc.value) and "dimensions" in str(exc.value)
    assert_no_phi(str(exc.value))
    path = write(ds, tmp_path / "huge.dcm")
    (failure,) = read_series(path).failures
    assert failure.reason == error.reason


def test_pixel_data_shorter_than_declared_is_unreadable():
    ds = mr_dataset(np.ones((16, 16)))
    ds.Rows = 64  # declares 64x16 but holds 16x16
    with pytest.raises(UnreadableInput, match=display_name("short.dcm")):
        read_upload(dicom_bytes(ds), "short.dcm")


def test_too_many_frames_is_refused(tmp_path):
    from rankiq.service.io import ReadLimits

    ds = enhanced_mr_dataset(np.ones((3, 8, 8)), [(0, 0, i) for i in range(3)])
    path = write(ds, tmp_path / "mf.dcm")
    (failure,) = read_series(path, limits=ReadLimits(max_slices=2)).failures
    assert failure.reason == InputTooLarge.reason and "frames" in failure.message


def test_malformed_identifiers_are_never_echoed_by_warnings_or_logs(tmp_path, recwarn, caplog):
    # pydicom's value validation quotes bad values; a UID holding a name must not leak
    leaky_uid = "1.2.3.Doe^Jane"
    with pydicom.config.disable_value_validation():
        write(mr_dataset(np.ones((16, 16)), series_uid=leaky_uid), tmp_path / "a.dcm")
    recwarn.clear()
    caplog.clear()
    result = read_series(tmp_path)
    refs = list(scan_instances(tmp_path))
    assert len(result) == 1 and len(refs) == 1
    assert result[0].series_key == refs[0].series_key
    emitted = " ".join(str(w.message) for w in recwarn) + caplog.text
    assert_no_phi(emitted, extra=[leaky_uid])


def test_copies_of_one_instance_are_read_once(tmp_path):
    """The same instance twice (a copied file, another encoding of it) adds no slice."""
    for i, name in enumerate(("MR_small.dcm", "MR_small_RLE.dcm", "MR_small.dcm")):
        shutil.copy(bundled(name), tmp_path / f"copy{i}.dcm")
    (series,) = read_series(tmp_path)
    assert series.shape[0] == 1 and not read_series(tmp_path).failures
    refs = [r for r in scan_instances(tmp_path) if not isinstance(r, ReadFailure)]
    assert len(refs) == 3 and len({r.instance_key for r in refs}) == 1
    (group,) = group_instances(refs).values()
    assert len(group) == 1


def test_acquired_matrix_is_read_from_classic_and_enhanced_headers(tmp_path):
    from pydicom.dataset import Dataset

    stored = np.full((32, 32), 100)
    ds = mr_dataset(stored)
    ds.AcquisitionMatrix = [16, 0, 0, 12]  # frequency rows 16, phase columns 12
    assert _only(read_series(write(ds, tmp_path / "classic.dcm"))).attributes[
        "acquired_matrix"] == 16.0
    ds = mr_dataset(stored, series_uid=uid("series"))
    assert _only(read_series(write(ds, tmp_path / "none.dcm"))).attributes[
        "acquired_matrix"] is None
    ds = mr_dataset(stored, series_uid=uid("series"))
    ds.AcquisitionMatrix = [0, 0, 0, 0]  # present but empty: not believed
    assert _only(read_series(write(ds, tmp_path / "zeros.dcm"))).attributes[
        "acquired_matrix"] is None
    mf = enhanced_mr_dataset(np.stack([stored, stored]), [(0, 0, 0), (0, 0, 4)])
    geometry = Dataset()
    geometry.MRAcquisitionFrequencyEncodingSteps = 24
    mf.SharedFunctionalGroupsSequence[0].MRFOVGeometrySequence = [geometry]
    assert _only(read_series(write(mf, tmp_path / "mf.dcm"))).attributes[
        "acquired_matrix"] == 24.0


@pytest.mark.parametrize(("bits", "stored", "signed"),
                         [(16, 12, 0), (16, 12, 1), (16, 16, 1), (8, 6, 0), (8, 7, 1),
                          (32, 20, 1)])
def test_uncompressed_pixels_read_as_pydicom_decodes_them(bits, stored, signed):
    """The fast read of uncompressed little-endian pixels gives pydicom's values, dtype and
    shape, also when the bits above Bits Stored hold garbage (cleared or sign-extended)."""
    rng = np.random.default_rng(bits + stored + signed)
    raw = rng.integers(0, 1 << bits, size=(2, 6, 5), dtype=np.uint64).astype(f"<u{bits // 8}")
    ds = mr_dataset(np.zeros((6, 5)))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation = signed
    ds.NumberOfFrames = 2
    ds.PixelData = raw.tobytes()
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(ds)))
    expected = ds.pixel_array
    series = _only(read_upload(dicom_bytes(ds), "bits.dcm"))
    np.testing.assert_array_equal(series.pixels, expected.astype(np.float32))
    fast = dicom_module._native_pixels(ds, 2)
    assert fast is not None and fast.dtype == expected.dtype
    np.testing.assert_array_equal(fast, expected)
