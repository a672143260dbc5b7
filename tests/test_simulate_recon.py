"""Reconstructions: the fast SENSE operator is the centred one, methods recover the truth."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sigpy")

from helpers_simulate import prepared_phantom  # noqa: E402
from rankiq.service.fft import center_pad, fft2c, ifft2c  # noqa: E402
from rankiq.training import corruptions as C  # noqa: E402
from rankiq.training import reconstruct as R  # noqa: E402
from rankiq.training.ssim import mse  # noqa: E402


@pytest.mark.parametrize("shape", [(32, 32), (64, 32), (30, 34)])
def test_checkerboard_fft_equals_centred_fft(shape):
    import scipy.fft

    x = np.random.default_rng(0).standard_normal(shape) + 1j
    cb = R._checkerboard(shape)
    fast = R._sign(shape) * cb * scipy.fft.fft2(cb * x, norm="ortho")
    assert np.allclose(fast, fft2c(x), atol=1e-10)


def test_sense_linop_adjoint_and_model():
    ps = prepared_phantom()
    rng = np.random.default_rng(1)
    mask = rng.random(ps.kspace.shape[-2:]) > 0.3
    shape = ps.kspace.shape[-2:]
    cb = R._checkerboard(shape)
    A = R._sense_linop(ps.maps * cb, mask)
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    y = (rng.standard_normal(ps.kspace.shape) + 1j * rng.standard_normal(ps.kspace.shape)
         ).astype(np.complex64)
    lhs = np.vdot(A(x), y)
    rhs = np.vdot(x, A.H(y))
    assert abs(lhs - rhs) / abs(lhs) < 1e-4
    # the forward model equals mask * centred FFT of maps * x, up to the fixed sign/checkerboard
    ref = mask * fft2c(ps.maps * x)
    assert np.allclose(R._sign(shape) * cb * A(x), ref, atol=1e-4)


def test_maps_are_normalised():
    ps = prepared_phantom()
    norm = (np.abs(ps.maps) ** 2).sum(0)
    inside = norm > 0
    assert inside.mean() > 0.2
    assert np.allclose(norm[inside], 1.0, atol=1e-4)


@pytest.mark.parametrize("method", R.RECON_METHODS)
def test_every_method_returns_a_faithful_image_of_clean_data(method):
    from rankiq.training.simulate import fit_to_truth

    ps = prepared_phantom()
    mask = np.ones(ps.kspace.shape[-2:], bool)
    params = {"method": method}
    if method in ("sense", "cs_l1", "cs_tv"):
        params.update(lamda=1e-3, iters=20)
    img, _ = R.reconstruct(ps.kspace, mask, ps.maps, params)
    assert img.shape == ps.truth.shape and img.dtype == np.complex64
    assert np.isfinite(img).all()
    fitted, _ = fit_to_truth(img, ps.truth, method)
    # magnitude error well below the truth's energy (rss carries its noise floor everywhere)
    assert mse(fitted, ps.truth) < 0.02 * np.mean(np.abs(ps.truth) ** 2) + 1e-3


def test_sense_and_cs_beat_zero_filling_on_undersampled_data():
    ps = prepared_phantom()
    # noise-free data consistent with the maps: what is left is aliasing, which SENSE and CS
    # must remove (with noise, the SENSE g-factor could outweigh it at this tiny size)
    clean = fft2c(ps.maps * ps.truth).astype(np.complex64)
    k, _, mask = C.undersample_1d(clean, 0.6, 0.2, np.random.default_rng(3))
    from rankiq.training.simulate import fit_to_truth

    def err(method, **kw):
        img, _ = R.reconstruct(k, mask, ps.maps, {"method": method, **kw})
        return float(mse(fit_to_truth(img, ps.truth, method)[0], ps.truth))

    zf = err("combine")
    assert err("sense", lamda=0.01, iters=30) < 0.5 * zf
    assert err("cs_l1", lamda=1e-3, iters=30) < 0.5 * zf


def test_readout_oversampling_removal_is_exact_for_objects_in_the_field_of_view():
    ps = prepared_phantom()
    s = ps.kspace.shape[-1]
    img = ifft2c(ps.kspace)
    over = fft2c(center_pad(img, (2 * s, s)))
    back = R.remove_readout_oversampling(over.astype(np.complex64), s)
    assert np.allclose(back, ps.kspace, atol=1e-5)
    # an iterative recon on the oversampled grid (2D mask) matches the truth as well
    mask = np.random.default_rng(0).random((2 * s, s)) > 0.1
    out, info = R.iterative("sense", (over * mask).astype(np.complex64), mask, ps.maps, 0.01, 30)
    assert info["grid"] == [2 * s, s]
    assert mse(out, ps.truth) < 1e-3


def test_truth_is_normalised_to_unit_max():
    ps = prepared_phantom()
    assert np.abs(ps.truth).max() == pytest.approx(1.0, abs=1e-6)
