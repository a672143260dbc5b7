"""rankiq.service.io on raw k-space: fastMRI and ISMRMRD HDF5 from a Shepp-Logan phantom."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from helpers_io import (
    PATIENT_ID,
    assert_no_phi,
    dicom_bytes,
    ismrmrd_header_xml,
    mr_dataset,
    oversampled_kspace,
    phantom,
    write,
    write_fastmri,
    write_ismrmrd,
    write_zip,
)
from rankiq.service.errors import (
    GeometryMismatch,
    InputTooLarge,
    InvalidImage,
    UnreadableInput,
    UnsupportedInput,
)
from rankiq.service.fft import fft2c
from rankiq.service.io import (
    ReadLimits,
    load_series,
    read_kspace,
    read_series,
    read_upload,
    scan_instances,
)

pytest.importorskip("sigpy")

N, SLICES, COILS = 32, 2, 4


@pytest.fixture(scope="module")
def data():
    image, maps = phantom(N, SLICES, COILS)
    return image, maps, oversampled_kspace(image, maps)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_fastmri_rss_removes_readout_oversampling(tmp_path, data):
    image, _, kspace = data
    assert kspace.shape == (SLICES, COILS, 2 * N, N)
    series = read_kspace(write_fastmri(tmp_path / "f.h5", kspace))
    assert series.kind == "fastmri" and series.shape == (SLICES, N, N)
    assert series.pixels.dtype == np.float32 and series.complex_pixels.dtype == np.complex64
    # maps have sum |S|^2 = 1, so RSS of the coil images is |image|
    assert _rel(series.pixels, np.abs(image)) < 1e-5
    np.testing.assert_allclose(np.abs(series.complex_pixels), series.pixels, rtol=1e-5)
    assert series.attributes["combination"] == "rss"
    assert series.attributes["oversampling_removed"] is True
    assert series.attributes["max"] == pytest.approx(0.000412)  # string attribute parsed
    assert series.attributes["norm"] == pytest.approx(0.0123)
    assert series.description == "AXT2" and series.contrast == "T2"
    assert series.pixel_spacing == (220 / N, 220 / N)
    assert len(series.series_key) == 16
    assert_no_phi(repr({k: v for k, v in vars(series).items()
                        if k not in ("pixels", "complex_pixels")}))


def test_rss_phase_is_smooth_and_tracks_the_object(tmp_path, data):
    image, _, kspace = data
    series = read_kspace(write_fastmri(tmp_path / "f.h5", kspace))
    inside = np.abs(image[0]) > 0.2 * np.abs(image[0]).max()
    # the phantom has a linear phase; the RSS phase estimate follows it up to a constant
    diff = np.angle(series.complex_pixels[0][inside] * np.conj(image[0][inside]))
    assert np.std(diff) < 0.2


@pytest.mark.parametrize("at", ["kspace", "image"])
def test_sensitivity_weighted_combination(tmp_path, data, at):
    image, maps, kspace = data
    if at == "kspace":  # maps given on the oversampled grid: cropped with the images
        from rankiq.service.fft import center_pad
        maps = center_pad(maps, (2 * N, N))
        maps[:, : N // 2] = maps[:, N // 2 : N // 2 + 1]  # anything outside the FOV
    series = read_kspace(write_fastmri(tmp_path / "f.h5", kspace), maps=maps)
    assert series.attributes["combination"] == "sensitivity"
    assert _rel(series.complex_pixels, image) < 1e-5


def test_maps_of_wrong_geometry_are_refused(tmp_path, data):
    _, maps, kspace = data
    path = write_fastmri(tmp_path / "f.h5", kspace)
    with pytest.raises(GeometryMismatch, match="file-"):
        read_kspace(path, maps=maps[:2])
    with pytest.raises(GeometryMismatch, match="file-"):
        read_kspace(path, maps=maps[:, :10, :10])


def test_single_coil_and_oversampling_without_header(tmp_path, data):
    image, _, _ = data
    from rankiq.service.fft import center_pad
    k = fft2c(center_pad(image, (2 * N, N))).astype(np.complex64)  # (slices, kx, ky)
    path = write_fastmri(tmp_path / "sc.h5", k, header=False)
    full = read_kspace(path)
    assert full.shape == (SLICES, 2 * N, N)  # no header: nothing cropped
    series = read_kspace(path, readout_oversampling=2)
    assert series.shape == (SLICES, N, N) and series.attributes["combination"] == "single-coil"
    assert _rel(series.complex_pixels, image) < 1e-5


def test_undersampled_kspace_is_tolerated(tmp_path, data):
    image, _, kspace = data
    k = kspace.copy()
    keep = np.zeros(N, bool)
    keep[::2] = True
    keep[N // 2 - 4 : N // 2 + 4] = True  # fully sampled centre
    k[..., ~keep] = 0
    series = read_kspace(write_fastmri(tmp_path / "u.h5", k, extra_attrs={}))
    assert series.shape == (SLICES, N, N) and np.isfinite(series.pixels).all()
    assert series.attributes["sampled_fraction"] == pytest.approx(keep.mean())
    corr = np.corrcoef(series.pixels[0].ravel(), np.abs(image[0]).ravel())[0, 1]
    assert 0.8 < corr < 0.9999  # aliased, but the same object


def test_ismrmrd_cartesian_file(tmp_path, data):
    image, maps, kspace = data
    path = write_ismrmrd(tmp_path / "raw.h5", kspace)  # a noise scan comes first
    series = read_kspace(path)
    assert series.kind == "ismrmrd" and series.shape == (SLICES, N, N)
    assert _rel(series.pixels, np.abs(image)) < 1e-5  # the noise scan was skipped
    assert series.description == "AX FLAIR" and series.contrast == "FLAIR"
    assert series.attributes["acquisitions"] == SLICES * N
    assert _rel(read_kspace(path, maps=maps).complex_pixels, image) < 1e-5


def test_header_is_parsed_by_the_ismrmrd_schema():
    from rankiq.service.io.kspace import _parse_with_ismrmrd

    hdr = _parse_with_ismrmrd(ismrmrd_header_xml(64, 32, rx=32, ry=32, slices=2).encode())
    assert hdr.encoded == (64, 32, 1) and hdr.recon == (32, 32, 1)
    assert (hdr.te, hdr.tr, hdr.ti) == (120.0, 9000.0, 2500.0)
    assert hdr.step1_center == 16 and hdr.trajectory == "cartesian"
    assert_no_phi(repr(hdr))


def test_kspace_in_directories_zips_uploads_and_scans(tmp_path, data):
    _, _, kspace = data
    (tmp_path / "d").mkdir()
    h5 = write_fastmri(tmp_path / "d" / "k.dat", kspace)  # extension ignored: content sniffed
    write(mr_dataset(np.ones((16, 16))), tmp_path / "d" / "x.dcm")
    result = read_series(tmp_path / "d")
    assert sorted(s.kind for s in result) == ["dicom", "fastmri"]
    zipped = write_zip(tmp_path / "z.zip", {"a/k.h5": h5.read_bytes(),
                                            "a/x.dcm": dicom_bytes(mr_dataset(np.ones((8, 8))))})
    assert sorted(s.kind for s in read_series(zipped)) == ["dicom", "fastmri"]
    (up,) = read_upload(h5.read_bytes(), "upload.dcm")
    assert up.kind == "fastmri"
    assert up.series_key == next(s for s in result if s.kind == "fastmri").series_key
    refs = [r for r in scan_instances(zipped) if r.kind == "hdf5"]
    assert len(refs) == 1
    np.testing.assert_array_equal(load_series(refs).pixels, up.pixels)


def test_nan_in_kspace_is_invalid(tmp_path, data):
    _, _, kspace = data
    k = kspace.copy()
    k[1, 2, 3, 4] = np.nan
    with pytest.raises(InvalidImage, match="file-.*NaN"):
        read_kspace(write_fastmri(tmp_path / "nan.h5", k))


def test_all_zero_kspace_is_invalid(tmp_path):
    with pytest.raises(InvalidImage, match="file-.*all zeros"):
        read_kspace(write_fastmri(tmp_path / "zero.h5", np.zeros((1, 2, 32, 16), np.complex64)))


def test_absurd_kspace_dimensions_are_refused_before_reading(tmp_path):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:  # declared, never written: the file stays tiny
        f.create_dataset("kspace", shape=(2, 4, 40000, 320), dtype=np.complex64,
                         chunks=(1, 1, 64, 64))
        f.attrs["patient_id"] = PATIENT_ID
    assert path.stat().st_size < 100_000
    with pytest.raises(InputTooLarge) as exc:
        read_kspace(path)
    assert "huge.h5" not in str(exc.value) and "file-" in str(exc.value)
    assert_no_phi(str(exc.value))
    with pytest.raises(InputTooLarge):
        read_kspace(path, limits=ReadLimits(max_matrix=8))


def test_real_valued_kspace_is_invalid(tmp_path):
    path = tmp_path / "real.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=np.ones((1, 32, 32), np.float32))
    with pytest.raises(InvalidImage, match="complex"):
        read_kspace(path)


def test_truncated_hdf5_is_unreadable(tmp_path, data):
    _, _, kspace = data
    raw = write_fastmri(tmp_path / "whole.h5", kspace).read_bytes()
    (tmp_path / "cut.h5").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(UnreadableInput, match="file-"):
        read_kspace(tmp_path / "cut.h5")
    (failure,) = read_series(tmp_path / "cut.h5").failures
    assert failure.reason == UnreadableInput.reason


def test_other_hdf5_is_unsupported(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.ones((4, 4)))
    with pytest.raises(UnsupportedInput, match="file-"):
        read_kspace(path)


@pytest.mark.parametrize("shape, target", [((3, 64, 32), (32, 32)), ((2, 33, 21), (15, 20)),
                                           ((1, 40, 40), (40, 40))])
def test_axis_by_axis_reconstruction_equals_ifft2c_then_crop(shape, target):
    from rankiq.service.fft import center_crop, ifft2c
    from rankiq.service.io.kspace import coil_images

    rng = np.random.default_rng(3)
    k = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    np.testing.assert_allclose(coil_images(k, target), center_crop(ifft2c(k), target),
                               atol=1e-5)
