"""The compiled kernels of the no-reference features against the SciPy/NumPy computations
they replace: exact for masks, distances and medians, round-off for filtered values."""

from __future__ import annotations

import numpy as np
import pytest
from rankiq.service import noref
from rankiq.service import noref_kernels as K
from scipy import ndimage


def _masks(rng: np.random.Generator) -> list[np.ndarray]:
    """Random blobs and speckle of odd, even, tiny and non-square shapes."""
    out = []
    for shape in ((1, 1), (2, 3), (5, 5), (7, 33), (33, 7), (64, 64), (97, 80)):
        for p in (0.02, 0.3, 0.6, 0.9):
            out.append(rng.random(shape) < p)
        sm = ndimage.gaussian_filter(rng.random(shape), 2.0)
        out.append(sm > np.median(sm))
    return out


def test_fill_holes_and_distances_are_exact() -> None:
    rng = np.random.default_rng(11)
    for m in _masks(rng):
        assert np.array_equal(K.fill_holes(m), ndimage.binary_fill_holes(m)), m.shape
        if not m.any():
            continue
        assert np.array_equal(K.taxicab(m), ndimage.distance_transform_cdt(~m, metric="taxicab"))
        want = ndimage.distance_transform_edt(~m)
        assert np.array_equal(np.sqrt(K.squared_distance(m)), want), m.shape


def test_smooth_and_laplacian_equal_scipy_to_round_off() -> None:
    rng = np.random.default_rng(12)
    taps = noref._gaussian_taps(noref.SMOOTH_PX)
    for shape in ((3, 3), (5, 9), (13, 13), (64, 47), (128, 128)):  # also sides < the taps
        x = rng.random(shape) * 1000
        np.testing.assert_allclose(K.smooth(x, taps), ndimage.gaussian_filter(x, noref.SMOOTH_PX),
                                   rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(K.laplacian(x),
                                   ndimage.convolve(x, noref.IMMERKAER, mode="nearest"),
                                   rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("kind", ["uniform", "few_integers", "integers", "outlier", "constant",
                                  "heavy_tails"])
def test_median_is_numpys(kind: str) -> None:
    """Exactly numpy.median, also where quickselect would struggle (many ties) and where one
    outlier squeezes every other value into one histogram bin."""
    rng = np.random.default_rng(13)
    make = {"uniform": lambda n: rng.random(n),
            "few_integers": lambda n: rng.integers(0, 5, n).astype(float),
            "integers": lambda n: rng.integers(0, 3000, n).astype(float),
            "outlier": lambda n: np.r_[rng.random(n - 1), 1e15],
            "constant": lambda n: np.full(n, 7.25),
            "heavy_tails": lambda n: rng.standard_normal(n) ** 5 * 1e-9}[kind]
    for n in (1, 2, 3, 64, 65, 1000, 30001):
        a = make(n)
        before = a.copy()
        assert K.median(a) == np.median(a)
        assert np.array_equal(a, before)  # the input is not reordered
        m = rng.random((1, n)) < 0.5
        if m.any():
            assert K.masked_median(a[None, :] - 0.5, m, True) == np.median(
                np.abs(a[None, :] - 0.5)[m])
    assert np.isnan(K.masked_median(np.ones((2, 2)), np.zeros((2, 2), bool), False))


def test_blur_efc_and_air_sums_equal_their_definitions() -> None:
    rng = np.random.default_rng(14)
    for shape in ((4, 4), (9, 12), (64, 64)):
        x = np.maximum(rng.standard_normal(shape) * 50 + 20, 0)
        fg = ndimage.gaussian_filter(x, 1.0) > np.percentile(x, 40)
        s0, v0, s1, v1 = K.blur_sums(x, fg)
        for axis, (s, v) in enumerate(((s0, v0), (s1, v1))):
            dx = np.abs(np.diff(x, axis=axis))
            db = np.abs(np.diff(ndimage.uniform_filter1d(x, 9, axis=axis), axis=axis))
            pair = (fg[1:] & fg[:-1]) if axis == 0 else (fg[:, 1:] & fg[:, :-1])
            assert s == pytest.approx(dx[pair].sum(), rel=1e-12, abs=1e-12)
            assert v == pytest.approx(np.maximum(0.0, dx - db)[pair].sum(), rel=1e-12, abs=1e-9)
        v = x[x > 0]
        p = v / np.sqrt((v ** 2).sum())
        assert K.efc_entropy(x) == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)
        air = ~fg
        dist = ndimage.distance_transform_cdt(~fg, metric="taxicab").astype(np.int32)
        a = x[air]
        far = x[air & (dist > 2)]
        live = a[a > 0]
        np.testing.assert_allclose(
            K.air_sums(x, air, dist, 2),
            [a.size, a.sum(), far.size, far.sum(), live.size, live.sum(), (live ** 2).sum()],
            rtol=1e-12)
        cols, rows = fg.any(axis=0)[None, :] & air, fg.any(axis=1)[:, None] & air
        np.testing.assert_allclose(K.ghost_sums(x, fg, air),
                                   [cols.sum(), x[cols].sum(), rows.sum(), x[rows].sum()],
                                   rtol=1e-12)
    assert K.efc_entropy(np.zeros((3, 3))) == 0.0
