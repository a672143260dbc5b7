"""MRIQC's no-reference IQMs (rankiq.service.iqm) on tiny hand-checkable arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rankiq.service import iqm

Y, X = np.mgrid[:64, :64]
DISC = (Y - 32) ** 2 + (X - 32) ** 2 < 15**2


def test_efc_constant_image_is_one_and_single_pixel_is_zero():
    assert iqm.efc(np.full((8, 8), 3.0)) == pytest.approx(1.0)
    spike = np.zeros((7, 7))
    spike[3, 3] = 5.0
    assert iqm.efc(spike) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(iqm.efc(np.zeros((4, 4))))


def test_efc_of_two_equal_pixels_matches_the_formula():
    # x/b = 1/sqrt(2) at 2 of N=16 pixels: E = -2 (1/sqrt2) ln(1/sqrt2); E_max = -sqrt(16) ln 4
    img = np.zeros((4, 4))
    img[0, 0] = img[2, 3] = 7.0
    e = 2 * (1 / math.sqrt(2)) * math.log(1 / math.sqrt(2))
    e_max = 16 * (1 / 4) * math.log(1 / 4)
    assert iqm.efc(img) == pytest.approx(e / e_max)


def test_fber_of_a_two_level_image():
    img = np.where(DISC, 10.0, 1.0)
    assert np.array_equal(iqm.head_mask(img), DISC)
    assert iqm.fber(img) == pytest.approx(100.0)  # 10^2 / 1^2
    assert iqm.fber(np.where(DISC, 10.0, 0.0)) == math.inf  # zero background
    inside = np.full((32, 32), 10.0)
    inside[12:20, 12:20] = 1.0  # a crop inside the anatomy: no air anywhere
    assert math.isnan(iqm.fber(inside))


def test_air_mask_keeps_a_margin_around_the_head():
    img = np.where(DISC, 10.0, 1.0)
    air = iqm.air_mask(img)
    assert not (air & DISC).any()
    dist2 = (Y - 32) ** 2 + (X - 32) ** 2
    assert not air[dist2 < 16**2].any()  # the rim just outside the head is not air
    assert air[0, 0] and air[63, 63]


def test_snr_region_is_mean_over_sample_std():
    # mean 2, population std sqrt(2/3), times sqrt(3/2) -> 1
    assert iqm.snr_region([1.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert math.isnan(iqm.snr_region([4.0]))


def test_cjv_and_classes_of_a_two_tissue_head():
    chk = (X + Y) % 2 == 0
    left, right = DISC & (X < 32), DISC & (X >= 32)
    img = np.zeros((64, 64))
    img[left] = np.where(chk[left], 9.0, 11.0)
    img[right] = np.where(chk[right], 19.0, 21.0)
    dark, bright = iqm.tissue_classes(img)
    assert np.array_equal(dark, left) and np.array_equal(bright, right)
    sd_l, sd_r = img[left].std(ddof=1), img[right].std(ddof=1)
    gap = img[right].mean() - img[left].mean()  # ~10
    assert iqm.cjv(img) == pytest.approx((sd_l + sd_r) / gap)
    assert iqm.cjv(img) == pytest.approx(0.2, abs=0.001)
    assert iqm.snr(img) == pytest.approx(
        np.mean([iqm.snr_region(img[left]), iqm.snr_region(img[right])]))


def test_noise_moves_every_iqm_the_worse_way():
    from rankiq.service.qa.synth import phantom

    clean = phantom(1, 64, "T1", np.random.default_rng(0))[0].astype(np.float64)
    rng = np.random.default_rng(1)
    sigma = 0.08 * clean[iqm.head_mask(clean)].mean()
    noisy = np.abs(clean + sigma * (rng.standard_normal(clean.shape)
                                    + 1j * rng.standard_normal(clean.shape)) / math.sqrt(2))
    for name, (fn, higher_is_worse) in iqm.IQMS.items():
        a, b = fn(clean + 0.01), fn(noisy)  # +0.01: a background with some energy for FBER
        worse = b > a if higher_is_worse else b < a
        assert worse, f"{name}: clean {a:.4g}, noisy {b:.4g}"
        assert iqm.badness(name, noisy) > iqm.badness(name, clean + 0.01)


def test_directions_and_stacks():
    assert {n: w for n, (_, w) in iqm.IQMS.items()} == {
        "efc": True, "fber": False, "snr": False, "cjv": True}
    img = np.where(DISC, 10.0, 1.0)
    stack = np.stack([img, img])
    assert iqm.head_mask(stack).shape == stack.shape
    assert iqm.fber(stack) == pytest.approx(100.0)
    assert iqm.efc(stack) == pytest.approx(iqm.efc(np.concatenate([img, img])))
    assert iqm.efc(img.astype(np.complex64)) == pytest.approx(iqm.efc(img))
    with pytest.raises(ValueError):
        iqm.efc(np.zeros(5))
