"""Each k-space corruption does what it says, and severity grows with its parameter."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("sigpy")

from helpers_simulate import combine_fit, prepared_phantom  # noqa: E402
from rankiq.training import corruptions as C  # noqa: E402
from rankiq.training.ssim import mse, ssim, ssim_batch  # noqa: E402


def _hf_energy(k: np.ndarray) -> float:
    fx = C.frequencies(k.shape[-2])[:, None]
    fy = C.frequencies(k.shape[-1])[None, :]
    outer = np.hypot(fx, fy) > 0.25
    return float((np.abs(k) ** 2 * outer).sum())


def test_blur_lowers_high_frequency_energy_monotonically():
    ps = prepared_phantom()
    energies = [_hf_energy(C.blur(ps.kspace, s)[0]) for s in (0.0, 0.5, 1.0, 2.0)]
    assert energies[0] == pytest.approx(_hf_energy(ps.kspace), rel=1e-5)
    assert all(a > b for a, b in zip(energies, energies[1:], strict=False))
    # DC is untouched by a low-pass filter
    k, _ = C.blur(ps.kspace, 2.0)
    dc = (ps.kspace.shape[-2] // 2, ps.kspace.shape[-1] // 2)
    assert np.allclose(k[:, dc[0], dc[1]], ps.kspace[:, dc[0], dc[1]])


@pytest.mark.parametrize("drop,center", [(0.3, 0.2), (0.1, 0.4), (0.0, 0.3)])
def test_undersample_1d_drops_stated_fraction_outside_centre(drop, center):
    ps = prepared_phantom()
    rng = np.random.default_rng(1)
    k, p, mask = C.undersample_1d(ps.kspace, drop, center, rng)
    ny = k.shape[-1]
    centre = np.zeros(ny, bool)
    centre[C.center_slice(ny, center)] = True
    dropped = ~mask[0]
    assert (mask == mask[:1]).all()  # whole PE lines
    assert not dropped[centre].any()
    assert dropped.sum() == round(drop * (~centre).sum()) == p["lines_dropped"]
    assert p["dropped_fraction_total"] == pytest.approx(dropped.sum() / ny)
    assert np.all(k[..., dropped] == 0)
    assert np.array_equal(k[..., ~dropped], ps.kspace[..., ~dropped])


@pytest.mark.parametrize("drop,center", [(0.2, 0.2), (0.05, 0.4)])
def test_undersample_2d_drops_stated_fraction_outside_centre(drop, center):
    ps = prepared_phantom()
    k, p, mask = C.undersample_2d(ps.kspace, drop, center, np.random.default_rng(2))
    nx, ny = mask.shape
    centre = np.zeros_like(mask)
    centre[C.center_slice(nx, center), C.center_slice(ny, center)] = True
    assert mask[centre].all()
    assert (~mask).sum() == round(drop * (~centre).sum()) == p["points_dropped"]
    assert np.all(k[:, ~mask] == 0)
    assert np.array_equal(k[:, mask], ps.kspace[:, mask])


def test_noise_sigma_estimate_and_added_level_within_10_percent():
    rng = np.random.default_rng(3)
    shape = (4, 128, 64)
    sigma0 = np.array([0.5, 1.0, 2.0, 4.0])
    noise = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / math.sqrt(2)
    k0 = (noise * sigma0[:, None, None]).astype(np.complex64)
    est = C.estimate_noise_sigma(k0, 0.1)
    assert np.allclose(est, sigma0, rtol=0.1)
    ps = prepared_phantom()
    for level in (1.0, 5.0, 11.0):
        k, p = C.add_noise(ps.kspace, level, ps.sigma, np.random.default_rng(4))
        added = (k - ps.kspace).reshape(k.shape[0], -1)
        measured = np.sqrt(np.mean(np.abs(added) ** 2, axis=1))
        assert np.allclose(measured, level * ps.sigma, rtol=0.1)
        assert p["level"] == level


def test_motion_phase_only_after_start_line():
    ps = prepared_phantom()
    k0 = ps.kspace
    start = 30
    k, p = C.motion(k0, (3.0, -5.0), start)
    assert np.array_equal(k[..., :start], k0[..., :start])
    assert np.allclose(np.abs(k), np.abs(k0), rtol=1e-5, atol=1e-7)  # a pure phase
    fx = C.frequencies(k0.shape[-2])[:, None]
    fy = C.frequencies(k0.shape[-1])[None, start:]
    expect = k0[..., start:] * np.exp(-2j * np.pi * (fx * 3.0 + fy * -5.0))
    assert np.allclose(k[..., start:], expect, atol=1e-5)
    assert p["start_line"] == start and p["shift_euclidean_px"] == pytest.approx(math.hypot(3, 5))


def test_motion_start_in_central_exclusion_is_skipped():
    cfg = C.CorruptionConfig(max_corruptions=5, motion_start_std=1e-6)
    plan = None
    for s in range(50):
        plan = C.draw_plan(np.random.default_rng(s), 64, cfg)
        if "motion" in plan:
            break
    assert plan is not None and "motion" in plan and not plan["motion"]["applied"]
    ps = prepared_phantom()
    k, _, params = C.apply_plan(ps.kspace, {"motion": plan["motion"]}, ps.sigma,
                                np.random.default_rng(0))
    assert np.array_equal(k, ps.kspace)
    assert C.severity(params)["motion_shift_px"] == 0.0


def _mse_of(ps, fn, levels):
    out = []
    for lv in levels:
        k, mask = fn(lv)
        out.append(float(mse(combine_fit(ps, k, mask), ps.truth)))
    return out


@pytest.mark.parametrize("kind", ["blur", "noise", "motion", "undersample_1d",
                                  "undersample_2d"])
def test_severity_is_monotonic_in_the_parameter(kind):
    ps = prepared_phantom()
    full = None

    def fn(level):
        rng = np.random.default_rng(7)
        if kind == "blur":
            return C.blur(ps.kspace, level)[0], full
        if kind == "noise":
            return C.add_noise(ps.kspace, level, ps.sigma, rng)[0], full
        if kind == "motion":
            return C.motion(ps.kspace, (level, level / 2), 15)[0], full
        if kind == "undersample_1d":
            k, _, m = C.undersample_1d(ps.kspace, level, 0.2, rng)
            return k, m
        k, _, m = C.undersample_2d(ps.kspace, level, 0.2, rng)
        return k, m

    levels = {"blur": (0.3, 0.8, 1.5, 2.5), "noise": (1, 3, 6, 12),
              "motion": (1, 4, 10, 20), "undersample_1d": (0.05, 0.15, 0.3, 0.6),
              "undersample_2d": (0.05, 0.1, 0.2, 0.4)}[kind]
    errs = _mse_of(ps, fn, levels)
    assert all(a < b for a, b in zip(errs, errs[1:], strict=False)), errs


def test_draw_plan_respects_counts_and_ranges():
    cfg = C.CorruptionConfig()
    counts = set()
    for s in range(300):
        plan = C.draw_plan(np.random.default_rng(s), 100, cfg)
        counts.add(len(plan))
        assert set(plan) <= set(C.CORRUPTIONS)
        if "blur" in plan:
            assert cfg.blur_sigma_px[0] <= plan["blur"]["sigma_px"] <= cfg.blur_sigma_px[1]
        if "noise" in plan:
            assert 0 <= plan["noise"]["level"] <= 12
        if "undersample_1d" in plan:
            assert 0 <= plan["undersample_1d"]["drop_fraction"] <= 0.3
            assert 0.2 <= plan["undersample_1d"]["center_fraction"] <= 0.4
        if "undersample_2d" in plan:
            assert 0 <= plan["undersample_2d"]["drop_fraction"] <= 0.2
        if "motion" in plan:
            assert max(abs(x) for x in plan["motion"]["shift_px"]) <= 20
    assert counts == {0, 1, 2, 3, 4, 5}


def test_ssim_basic_properties():
    ps = prepared_phantom()
    a = ps.truth
    assert ssim(a, a) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    vals = [ssim(a + s * rng.standard_normal(a.shape), a) for s in (0.01, 0.05, 0.2)]
    assert vals[0] > vals[1] > vals[2]
    b = np.abs(a) * 0.9
    assert ssim(a, b) == pytest.approx(ssim(b, a))
    batch = ssim_batch(np.stack([a, b]), np.stack([a, a]))
    assert batch[0] == pytest.approx(1.0) and batch[1] == pytest.approx(ssim(b, a))
