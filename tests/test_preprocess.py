"""Invariances of service.preprocess.prepare (issue 2): scale, DICOM rescale encoding, k-space
zero-filling; plus its refusals."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_io import mr_dataset, uid, write
from rankiq.service.errors import GeometryMismatch, InvalidImage
from rankiq.service.fft import center_pad, fft2c, ifft2c
from rankiq.service.io import read_series
from rankiq.service.preprocess import prepare

GRID = (64, 64)
# prepare() documents round-off-level changes (~1e-6 relative); arrays are normalised to ~1
TOL = 1e-5


def _images(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A complex reference-like image and a corrupted (noisy, blurred) version, (2, n, n)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n] / n
    blob = np.exp(-((xx - 0.5) ** 2 / 0.08 + (yy - 0.45) ** 2 / 0.12))
    edges = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.12).astype(float) * 0.6
    ref = (blob + edges) * np.exp(1j * (0.7 * xx + 0.3 * yy))
    ref = np.stack([ref, 0.5 * ref[::-1]])
    img = ref + 0.05 * (rng.standard_normal(ref.shape) + 1j * rng.standard_normal(ref.shape))
    return img.astype(np.complex64), ref.astype(np.complex64)


def _smooth(n: int = 48) -> np.ndarray:
    """A band-limited positive magnitude image (its zero-filled version stays its magnitude)."""
    yy, xx = np.mgrid[0:n, 0:n] / n
    return (np.exp(-((xx - 0.5) ** 2 + (yy - 0.45) ** 2) * 15) + 0.1).astype(np.float32)[None]


def _zero_fill(x: np.ndarray, size: int) -> np.ndarray:
    """Image reconstructed from k-space zero-filled to ``size`` x ``size``."""
    return ifft2c(center_pad(fft2c(x.astype(np.complex64)), (size, size)))


def _close(a: np.ndarray, b: np.ndarray, tol: float = TOL) -> None:
    assert a.shape == b.shape
    err = float(np.abs(a - b).max())
    assert err <= tol * max(1.0, float(np.abs(a).max())), err


@pytest.mark.parametrize("kind", ["magnitude", "complex"])
@pytest.mark.parametrize("k", [1e-3, 0.37, 7.0, 2.5e4])
def test_scaling_image_and_reference_together_does_not_change_the_input(kind, k):
    img, ref = _images()
    base = prepare(img, ref, grid=GRID, input_kind=kind).network_input
    _close(prepare(img * k, ref * k, grid=GRID, input_kind=kind).network_input, base)
    base_noref = prepare(img, grid=GRID, input_kind=kind).network_input
    _close(prepare(img * k, grid=GRID, input_kind=kind).network_input, base_noref)


@pytest.mark.parametrize("kind", ["magnitude", "complex"])
def test_reference_mode_fits_the_image_scale_by_least_squares(kind):
    img, ref = _images()
    base = prepare(img, ref, grid=GRID, input_kind=kind).network_input
    _close(prepare(img * 13.0, ref, grid=GRID, input_kind=kind).network_input, base)
    assert np.abs(base).max() > 0.01  # the difference image is not trivially zero


def test_dicom_rescale_encodings_give_the_same_network_input(tmp_path):
    """The same physical image stored as raw values, with slope/intercept or a scaled slope."""
    yy, xx = np.mgrid[0:48, 0:48]
    raw_ref = 2 * (400 + 300 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.int16)  # even
    raw_img = (raw_ref + 2 * np.random.default_rng(1).integers(-20, 20, raw_ref.shape)
               ).astype(np.int16)
    encodings = {  # name: (stored from raw, slope, intercept); physical = k * raw, k > 0
        "plain": (lambda r: r, None, None),
        "intercept": (lambda r: r - 1000, 1.0, 1000.0),
        "halved": (lambda r: r // 2, 2.0, 0.0),
        "scaled": (lambda r: r, 0.37, 0.0),
        "both": (lambda r: r // 2 - 300, 5.0, 1500.0),
    }
    inputs = {}
    for name, (encode, slope, intercept) in encodings.items():
        pair = []
        for role, raw in (("img", raw_img), ("ref", raw_ref)):
            ds = mr_dataset(encode(raw), slope=slope, intercept=intercept,
                            series_uid=uid(f"{role}-{name}"))
            pair.append(read_series(write(ds, tmp_path / name / f"{role}.dcm"))[0].pixels)
        inputs[name] = (prepare(pair[0], pair[1], grid=GRID).network_input,
                        prepare(pair[0], grid=GRID).network_input)
    for name, (ref_mode, noref_mode) in inputs.items():
        _close(ref_mode, inputs["plain"][0])
        _close(noref_mode, inputs["plain"][1])
        assert name == "plain" or not np.array_equal(ref_mode, np.zeros_like(ref_mode))


@pytest.mark.parametrize("size", [64, 96, 200])
@pytest.mark.parametrize("grid", [(32, 32), (64, 64), (96, 96)])
def test_kspace_zero_filling_stays_within_tolerance_complex(size, grid):
    img, ref = _images()
    base = prepare(img, ref, grid=grid, input_kind="complex").network_input
    filled = prepare(_zero_fill(img, size), _zero_fill(ref, size), grid=grid,
                     input_kind="complex").network_input
    _close(filled, base)
    base = prepare(img, grid=grid, input_kind="complex").network_input
    _close(prepare(_zero_fill(img, size), grid=grid, input_kind="complex").network_input, base)


@pytest.mark.parametrize("size", [64, 128])
def test_kspace_zero_filling_stays_within_tolerance_band_limited_magnitude(size):
    img = _smooth()
    ref = 0.9 * img + 0.05
    base = prepare(img, ref, grid=GRID).network_input
    filled = prepare(np.abs(_zero_fill(img, size)), np.abs(_zero_fill(ref, size)),
                     grid=GRID).network_input
    _close(filled, base)


def test_non_square_matrices_land_on_the_grid_with_their_field_of_view():
    img = np.ones((1, 64, 32), np.float32)  # padded to 64x64: left/right quarters are empty
    x = prepare(img, grid=(96, 96)).network_input
    assert x.shape == (1, 1, 96, 96)
    centre, side = x[0, 0, 48, 40:56], x[0, 0, 48, :8]
    assert np.ptp(centre) < 0.05 * centre.mean()  # the object stays uniform in its middle
    assert np.abs(side).max() < 0.05 * centre.mean()  # the padded side stays (nearly) empty


def test_prepare_refuses_bad_input():
    img, ref = _images()
    with pytest.raises(GeometryMismatch):
        prepare(img, ref[:, :40], grid=GRID)
    bad = img.copy()
    bad[0, 1, 1] = np.nan
    with pytest.raises(InvalidImage, match="NaN"):
        prepare(bad, grid=GRID)
    with pytest.raises(InvalidImage, match="matrix"):
        prepare(np.ones((8, 8)), grid=GRID)


# -- reference mode: the network sees the fitted image minus the reference ------------------------

@pytest.mark.parametrize("kind", ["magnitude", "complex"])
def test_identical_inputs_give_a_zero_network_input(kind):
    img, _ = _images()
    p = prepare(img, img, grid=GRID, input_kind=kind)
    assert np.abs(p.reference).max() > 0.5  # normalised to its robust maximum ~1
    assert np.abs(p.network_input).max() < 1e-5


@pytest.mark.parametrize("kind", ["magnitude", "complex"])
def test_network_input_is_the_fitted_image_minus_the_reference(kind):
    img, ref = _images()
    p = prepare(img, ref, grid=GRID, input_kind=kind)
    np.testing.assert_allclose(p.network_input, p.image - p.reference, atol=1e-7)
    # the difference is the corruption alone: much smaller than either image
    assert np.abs(p.network_input).max() < 0.5 * np.abs(p.reference).max()
    assert np.abs(p.network_input).max() > 1e-3


def test_a_phase_rotated_scaled_reference_is_fitted_exactly():
    """The complex least-squares scale undoes a global phase and gain: a = <image, ref> / |image|^2
    with the image conjugated (a conjugated scale doubles the phase instead of removing it)."""
    _, ref = _images()
    for phase in (0.4, 1.3, -2.0):
        img = (3.0 * np.exp(1j * phase) * ref).astype(np.complex64)
        x = prepare(img, ref, grid=GRID, input_kind="complex").network_input
        assert np.abs(x).max() < 1e-5, (phase, float(np.abs(x).max()))


def test_least_squares_scale_matches_numpy_lstsq():
    from rankiq.service.preprocess import least_squares_scale

    img, ref = _images()
    a = least_squares_scale(img, ref)
    for s in range(img.shape[0]):
        want = np.linalg.lstsq(img[s].reshape(-1, 1).astype(np.complex128),
                               ref[s].reshape(-1).astype(np.complex128), rcond=None)[0][0]
        assert a[s] == pytest.approx(want, rel=1e-6)
    real = least_squares_scale(np.abs(img), np.abs(ref))
    assert not np.iscomplexobj(real)
    want = [np.linalg.lstsq(np.abs(img[s]).reshape(-1, 1).astype(np.float64),
                            np.abs(ref[s]).reshape(-1).astype(np.float64), rcond=None)[0][0]
            for s in range(img.shape[0])]
    np.testing.assert_allclose(real, want, rtol=1e-6)
    assert least_squares_scale(np.zeros((1, 16, 16)), np.ones((1, 16, 16)))[0] == 0


# -- blank slices ---------------------------------------------------------------------------------

@pytest.mark.parametrize("with_reference", [False, True])
def test_blank_slices_are_detected_and_passed_through_as_zeros(with_reference):
    img = np.abs(_images()[0]).astype(np.float32)
    img = np.concatenate([np.zeros_like(img[:1]), img, np.zeros_like(img[:1])])
    ref = img if with_reference else None
    p = prepare(img, ref, grid=GRID)
    assert p.empty.tolist() == [True, False, False, True]
    assert np.all(p.network_input[[0, 3]] == 0) and np.isfinite(p.network_input).all()


# -- geometry and layout details ------------------------------------------------------------------

def test_matrix_bounds_are_inclusive():
    from rankiq.service.preprocess import MAX_MATRIX, MIN_MATRIX

    assert (MIN_MATRIX, MAX_MATRIX) == (16, 4096)
    assert prepare(np.ones((16, 16)), grid=GRID).network_input.shape == (1, 1, *GRID)
    for bad in ((15, 16), (16, 15)):
        with pytest.raises(InvalidImage, match="matrix"):
            prepare(np.ones(bad), grid=GRID)


def _resample_reference(x: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """fftshift -> centred crop -> centred zero-pad -> ifftshift, intensity-preserving."""
    n = x.shape[-1]
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"),
                        axes=(-2, -1))
    out = np.zeros((*x.shape[:-2], *grid), np.complex128)
    src, dst = [], []
    for t in grid:
        m = min(n, t)
        src.append(slice((n - m) // 2, (n - m) // 2 + m))
        dst.append(slice((t - m) // 2, (t - m) // 2 + m))
    out[..., dst[0], dst[1]] = k[..., src[0], src[1]]
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(out, axes=(-2, -1)), norm="ortho"),
                           axes=(-2, -1)) * np.sqrt(grid[0] * grid[1] / (n * n))


@pytest.mark.parametrize(("n", "grid"), [(48, (33, 35)), (33, (48, 47)), (31, (31, 64))])
def test_fourier_resampling_matches_shift_crop_pad(n, grid):
    """to_grid's one-scatter spectrum map equals the plain fftshift -> centred crop -> centred
    zero-pad -> ifftshift recipe, odd sizes included."""
    from rankiq.service.preprocess import to_grid

    rng = np.random.default_rng(n)
    x = (rng.standard_normal((2, n, n)) + 1j * rng.standard_normal((2, n, n))).astype(np.complex64)
    np.testing.assert_allclose(to_grid(x, grid), _resample_reference(x, grid), atol=1e-5)
    np.testing.assert_allclose(to_grid(x.real, grid), _resample_reference(x.real, grid).real,
                               atol=1e-5)


def test_complex_input_gives_real_and_imaginary_channels():
    img, ref = _images()
    p = prepare(img, ref, grid=(48, 48), input_kind="complex")
    assert p.image.shape == p.reference.shape == (2, 2, 48, 48) and p.image.dtype == np.float32
    from rankiq.service.preprocess import robust_max

    ref_n = ref / robust_max(ref)[:, None, None]
    np.testing.assert_allclose(p.reference[:, 0], ref_n.real, atol=1e-6)
    np.testing.assert_allclose(p.reference[:, 1], ref_n.imag, atol=1e-6)
    mag = prepare(img, ref, grid=(48, 48))
    assert mag.image.shape == (2, 1, 48, 48)
    np.testing.assert_allclose(mag.reference[:, 0], np.abs(ref) / robust_max(np.abs(ref))[
        :, None, None], atol=1e-6)


@pytest.mark.parametrize("kind", ["amplitude", "phase", "Complex", ""])
def test_unknown_input_kind_is_refused(kind):
    with pytest.raises(ValueError, match="input_kind"):
        prepare(np.ones((32, 32)), grid=GRID, input_kind=kind)


def test_contract_constants_and_keyword_only_options():
    """The model grid and percentile of the preprocessing contract (a model exported for another
    version is refused), and prepare's options by keyword only (a positional grid would be
    silently read as something else)."""
    import inspect

    from rankiq.service import preprocess

    assert preprocess.DEFAULT_GRID == (396, 396)  # the paper's 396x396 grid
    assert preprocess.PREPROCESS_VERSION == "1" and preprocess.DEFAULT_PERCENTILE == 99.5
    params = inspect.signature(prepare).parameters
    assert [p for p, v in params.items() if v.kind is v.POSITIONAL_OR_KEYWORD] == [
        "image", "reference"]
    assert [p for p, v in params.items() if v.kind is v.KEYWORD_ONLY] == [
        "grid", "input_kind", "percentile"]
    img, _ = _images()
    with pytest.raises(TypeError):
        prepare(img, None, GRID)  # type: ignore[misc]


def test_matrix_limits_on_each_side_and_a_larger_reference():
    from rankiq.service.preprocess import MAX_MATRIX, MIN_MATRIX, as_slices

    assert (MIN_MATRIX, MAX_MATRIX) == (16, 4096)
    assert as_slices(np.ones((16, MAX_MATRIX), np.float32)).shape == (1, 16, MAX_MATRIX)
    with pytest.raises(InvalidImage, match="matrix"):
        as_slices(np.ones((16, MAX_MATRIX + 1), np.float32))
    img, ref = _images()
    big = np.pad(ref, ((0, 0), (0, 4), (0, 0)))
    with pytest.raises(GeometryMismatch, match="differs"):
        prepare(img, big, grid=GRID)
