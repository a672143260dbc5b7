"""No-reference features, the features model's plumbing, the ordinal classifier and in_range."""

from __future__ import annotations

import numpy as np
import pydicom.data
import pytest
from rankiq.service import noref, noref_kernels
from rankiq.service.domain import DARK_TISSUE_MAX, check_range, mahalanobis
from rankiq.service.models import OrdinalClassifier, load_classifier
from rankiq.service.noref import (
    ANALYSIS_MAX,
    FEATURES,
    _masks,
    analysis_grid,
    evidence_maps,
    features,
    prepare_features,
)
from scipy import ndimage

import rankiq


def _phantom(n: int = 128, seed: int = 0, noise: float = 0.01) -> np.ndarray:
    """A textured ellipse in noisy air (magnitude)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n] / n - 0.5
    obj = ((x / 0.35) ** 2 + (y / 0.42) ** 2 < 1).astype(np.float64)
    obj *= 1 + 0.3 * (((x / 0.12) ** 2 + (y / 0.2) ** 2) < 1)
    tex = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * (np.hypot(*np.meshgrid(
        np.fft.fftfreq(n), np.fft.fftfreq(n))) < 0.1)).real
    img = obj * (1 + 0.5 * tex / tex.std() * 0.1)
    z = img + noise * (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n)))
    return np.abs(z).astype(np.float32)


def test_analysis_grid_never_upsamples_and_crops_padding() -> None:
    small = _phantom(64)
    assert analysis_grid(small).shape == (64, 64)
    big = _phantom(512)
    assert analysis_grid(big).shape == (ANALYSIS_MAX, ANALYSIS_MAX)
    padded = np.pad(small, ((10, 30), (0, 50)))
    np.testing.assert_array_equal(analysis_grid(padded), analysis_grid(small))


def test_features_are_invariant_to_scale_flips_rotations_and_padding() -> None:
    img = _phantom(128)
    f = features(analysis_grid(img))
    assert f.shape == (len(FEATURES),) and np.isfinite(f).all()
    for variant in (img * 37.5, img[::-1], img[:, ::-1], np.rot90(img), np.rot90(img, 3),
                    np.pad(img, 40)):
        np.testing.assert_allclose(features(analysis_grid(variant)), f, rtol=1e-4, atol=1e-4)


def test_noise_and_blur_move_their_features_the_right_way() -> None:
    img = _phantom(128)
    rng = np.random.default_rng(1)
    noisy = np.abs(img + 0.05 * rng.standard_normal(img.shape)).astype(np.float32)
    k = np.fft.fftshift(np.fft.fft2(img))
    f = np.fft.fftshift(np.fft.fftfreq(128))
    blurred = np.abs(np.fft.ifft2(np.fft.ifftshift(
        k * np.exp(-2.0 * np.hypot(f[:, None], f[None, :]) * 2)))).astype(np.float32)
    base, fn, fb = (features(analysis_grid(x)) for x in (img, noisy, blurred))
    i = {n: j for j, n in enumerate(FEATURES)}
    assert fn[i["noise"]] > base[i["noise"]] + 0.5
    assert fn[i["air"]] > base[i["air"]]
    assert fb[i["blur"]] > base[i["blur"]]
    assert fb[i["band_0"]] > base[i["band_0"]]  # energy moves to the lowest band


def test_efc_rises_with_noise_inside_the_anatomy_and_ignores_padding() -> None:
    """A field of view inside the head (no air): added noise spreads the energy, so EFC
    rises. Normalised by the foreground's area (features version 1) it fell, because noise
    lifts dark tissue above the foreground cut and the area grows with it."""
    y, x = np.mgrid[:72, :72] / 72
    img = 0.5 + 0.5 * (np.sin(9 * x) * np.cos(7 * y) > -0.3)  # tissue to every edge ...
    img[(np.sin(5 * x + 4 * y) > 0.8)] = 0.08  # ... and dark stripes (sulci) that reach them
    e = FEATURES.index("efc")
    rng = np.random.default_rng(4)
    levels = []
    for sigma in (0.0, 0.05, 0.1, 0.2):
        z = rng.standard_normal(img.shape) + 1j * rng.standard_normal(img.shape)
        levels.append(features(analysis_grid(np.abs(img + sigma * z).astype(np.float32)))[e])
    assert all(b > a for a, b in zip(levels, levels[1:], strict=False)), levels
    np.testing.assert_allclose(features(analysis_grid(np.pad(img, ((9, 3), (0, 20)))))[e],
                               levels[0], rtol=1e-6)


def test_a_features_model_fitted_on_other_features_is_refused(tmp_path) -> None:
    """The features' definitions are part of the model: a model directory that says another
    features version (absent: "1") is not scored with these."""
    import json
    import shutil

    from rankiq.service.models import ModelIncompatible, ScoringModel

    d = tmp_path / "old"
    shutil.copytree(_shipped().path, d)
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["features_version"] == noref.FEATURES_VERSION
    del meta["features_version"]
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelIncompatible, match="features version '1'"):
        ScoringModel.load(d)


def test_border_tells_a_whole_head_in_air_from_a_region_inside_it() -> None:
    """The context feature: ~0 when air surrounds the object, ~1 for a field of view inside
    it; zero padding is not border."""
    img = _phantom(128)
    b = FEATURES.index("border")
    rng = np.random.default_rng(2)
    noisy = np.abs(img + 0.01 * rng.standard_normal(img.shape)).astype(np.float32)
    whole = features(analysis_grid(noisy))[b]
    inside = features(analysis_grid(noisy[40:88, 40:88]))[b]
    assert whole < 0.05 and inside > 0.95
    padded = np.pad(noisy[40:88, 40:88], 20)  # the same region, zero-padded by the file
    assert features(analysis_grid(padded))[b] == pytest.approx(inside)


def test_air_gate_drops_the_air_features_inside_the_anatomy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The air features count fully for a head in air, not at all for a field of view inside
    the anatomy (there, what lies below the foreground cut is dark tissue), and in between
    they are blended, so the features move continuously with ``border``."""
    assert noref.air_weight(0.0) == 1.0 and noref.air_weight(1.0) == 0.0
    lo, hi = noref.AIR_GATE
    assert noref.air_weight(lo) == 1.0 and noref.air_weight(hi) == 0.0
    assert noref.air_weight((lo + hi) / 2) == pytest.approx(0.5)
    idx = [FEATURES.index(a) for a in noref.AIR_FEATURES]
    rng = np.random.default_rng(3)
    img = np.abs(_phantom(128) + 0.02 * rng.standard_normal((128, 128))).astype(np.float32)
    whole = features(analysis_grid(img))
    assert whole[FEATURES.index("border")] < lo
    assert whole[idx[0]] > noref.AIR_FLOOR + 1  # a head in air: the air is measured
    # a window inside the object with a dark hole (CSF-like tissue) that the 15 % cut
    # leaves out of the foreground: its "air" features are those of a slice without air
    inside = img[30:98, 30:98].copy()
    inside[24:44, 24:44] *= 0.05
    f = features(analysis_grid(inside))
    assert f[FEATURES.index("border")] > hi
    np.testing.assert_allclose(f[idx], noref.NO_AIR, atol=1e-12)
    # a window whose ring is partly air: the measured values blended towards the no-air ones
    g = analysis_grid(img[10:118, 0:80])
    part = features(g)
    w = noref.air_weight(part[FEATURES.index("border")])
    assert 0 < w < 1, w
    monkeypatch.setattr(noref, "AIR_GATE", (2.0, 3.0))  # every slice counts as a head in air
    measured = features(g)
    np.testing.assert_allclose(part[idx], w * measured[idx] + (1 - w) * np.array(noref.NO_AIR),
                               rtol=1e-12, atol=1e-12)


def _limb(floor: float, seed: int = 5) -> np.ndarray:
    """A bright object with a large attached region of dark tissue (8 % of the bright level,
    muscle in a T1 shoulder) in air whose noise floor (Rayleigh mean) is ``floor``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:128, :128] / 128 - 0.5
    bright = (x / 0.2) ** 2 + (y / 0.35) ** 2 < 1
    dark = ((x - 0.2) / 0.2) ** 2 + (y / 0.3) ** 2 < 1
    obj = np.where(bright, 1.0, np.where(dark, 0.08, 0.0))
    s = floor / 1.2533
    return np.abs(obj + s * (rng.standard_normal(obj.shape)
                             + 1j * rng.standard_normal(obj.shape))).astype(np.float32)


def _dark(x: np.ndarray) -> float:
    g = analysis_grid(x).astype(np.float64)
    sm = noref_kernels.smooth(g, noref._SMOOTH_TAPS)
    _, fg, _, _, _ = _masks(g)
    return noref.dark_tissue(g, sm, float(sm.max()), fg)


def test_dark_tissue_tells_limb_anatomy_from_a_head_in_air() -> None:
    """Tissue at 8 % of the peak beside the bright object, over clean air, is measured (the
    features' 15 % cut misses it); a head-like phantom, a floor near that tissue, a field of
    view without air, its zero padding and air the scanner masked to zero give about 1."""
    limb = _limb(0.005)
    assert _dark(limb) > DARK_TISSUE_MAX
    assert prepare_features(limb[None]).dark_tissue[0] == pytest.approx(_dark(limb))
    assert _dark(_limb(0.07)) == 1.0  # the floor reaches the dark tissue: cut stays at 15 %
    inside = limb[40:88, 45:80]  # no air: the darkest pixels are tissue
    assert _dark(inside) == 1.0 and _dark(np.pad(inside, 30)) == 1.0
    head = _phantom(128)
    assert _dark(head) < 1.2
    masked = head.copy()
    masked[masked < 0.2] = 0
    assert _dark(masked) < 1.2
    assert prepare_features(np.zeros((1, 32, 32), np.float32)).dark_tissue[0] == 1.0


def test_fast_masks_equal_the_morphology_they_replace() -> None:
    """The distance-based dilations give exactly the masks of scipy's iterated morphology (the
    features, hence the shipped model's scores, are unchanged)."""
    for seed in range(3):
        x = _phantom(96, seed)
        x[:, :10] = 0  # the object may touch a masked border
        near, fg, _, _, dist = _masks(x)
        for k in (2, 5, 12):
            assert np.array_equal(dist <= k, ndimage.binary_dilation(fg, iterations=k))
        assert np.array_equal(near, ndimage.binary_dilation(fg, iterations=3))


def test_blank_slices_are_marked_not_scored() -> None:
    stack = np.stack([_phantom(64), np.zeros((64, 64), np.float32)])
    fi = prepare_features(stack)
    assert fi.empty.tolist() == [False, True]
    assert fi.features.shape == (2, len(FEATURES))
    with pytest.raises(ValueError):
        features(np.zeros((64, 64)))


def test_evidence_maps_are_normalised() -> None:
    maps = evidence_maps(analysis_grid(_phantom(96)))
    assert maps.shape == (len(FEATURES), 96, 96)
    assert (maps >= 0).all()
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-4)


def test_ordinal_classifier_agrees_with_scores_by_construction() -> None:
    clf = load_classifier({"kind": "ordinal", "beta": 3.0, "theta": 0.8})
    assert isinstance(clf, OrdinalClassifier)
    s1 = np.array([1.0, 1.0, 2.0, 5.0])
    s2 = np.array([1.0, 1.5, 1.0, 5.5])
    p = clf.probabilities(s1, s2)
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert p[0, 0] == pytest.approx(p[0, 2])  # a tie is symmetric
    assert p[0, 1] == p[:, 1].max()  # and the most "similar"
    assert p[1, 0] > p[1, 2] and p[2, 2] > p[2, 0]  # the lower score is the likelier winner
    np.testing.assert_allclose(clf.probabilities(s2, s1), p[:, ::-1])  # swap symmetry
    d = np.linspace(0.01, 3, 50)
    p_a = clf.probabilities(np.ones_like(d), np.exp(d))[:, 0]
    assert (np.diff(p_a) > 0).all()  # P(a better) rises with score(b) - score(a)
    for bad in ({"kind": "ordinal", "beta": 0, "theta": 1}, {"kind": "ordinal", "beta": 1,
                                                              "theta": -1}):
        with pytest.raises(ValueError):
            load_classifier(bad)


def test_mahalanobis_and_domain_reasons() -> None:
    dom = {"feature_mean": [0.0, 0.0], "feature_precision": [[1.0, 0.0], [0.0, 4.0]]}
    np.testing.assert_allclose(mahalanobis(np.array([[3.0, 0.0], [0.0, 1.0]]), dom), [3.0, 2.0])

    class _M:
        kind = "iqnet"
        metadata = {"domain": {"matrix": [128, 512], "spacing_mm": [0.4, 2.0]}}

    series = rankiq.read_series(pydicom.data.get_testdata_file("MR_small.dcm"))  # 64x64
    ok, reasons = check_range(_M(), series, np.zeros((1, 1)), np.zeros(1, bool))  # type: ignore[arg-type]
    assert not ok and "matrix_too_small" in reasons
    series.modality = "CT"
    assert "not_mr" in check_range(_M(), series, np.zeros((1, 1)), np.zeros(1, bool))[1]  # type: ignore[arg-type]


# -- the shipped no-reference model ------------------------------------------------------------

def _shipped() -> rankiq.service.models.ScoringModel:
    m = rankiq.load_model("iqnet-noref")
    if m.kind != "features":
        pytest.skip("the shipped no-reference model is not a features model")
    return m


def _realistic(seed: int, matrix: int) -> np.ndarray:
    from rankiq.training import realistic

    rng = np.random.default_rng(seed)
    while True:
        acq = realistic.acquire(rng, corrupt=False)
        post = acq.info["post"]
        if acq.info["matrix"] >= matrix and not post.get("zip2") and not post.get("mask"):
            break
    from rankiq.service.preprocess import to_grid

    return np.maximum(to_grid(acq.truth, (matrix, matrix)), 0)


@pytest.mark.torch
def test_shipped_score_is_invariant_within_5_percent() -> None:
    model = _shipped()
    img = _realistic(3, 256)
    base = rankiq.score(img, model=model).median
    variants = {"scale": img * 1234.5, "flip": img[::-1], "flop": img[:, ::-1],
                "rot90": np.rot90(img), "rot270": np.rot90(img, 3),
                "fov_padding": np.pad(img, ((20, 60), (40, 0)))}
    for name, v in variants.items():
        assert rankiq.score(np.ascontiguousarray(v), model=model).median == pytest.approx(
            base, rel=0.05), name


@pytest.mark.torch
def test_shipped_score_of_512_and_256_acquisitions_agree_within_10_percent() -> None:
    from rankiq.service.preprocess import to_grid

    model = _shipped()
    img512 = _realistic(5, 512)
    img256 = np.maximum(to_grid(img512, (256, 256)), 0)
    a = rankiq.score(img512, model=model).median
    b = rankiq.score(img256, model=model).median
    assert a == pytest.approx(b, rel=0.10)


def test_shipped_score_is_the_same_for_every_dicom_encoding() -> None:
    model = _shipped()
    names = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm",
             "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm"]
    scores = [rankiq.score(pydicom.data.get_testdata_file(n), model=model).median
              for n in names]
    np.testing.assert_allclose(scores, scores[0], rtol=1e-5)


@pytest.mark.torch
def test_shipped_noise_is_worse_than_clean_and_compare_agrees() -> None:
    model = _shipped()
    for seed in (11, 12, 13, 14):  # acquisitions with their own noise floor (SNR 12-100)
        x = _realistic(seed, 256).astype(np.float64)
        rng = np.random.default_rng(0)
        tissue = float(x[x > np.percentile(x, 50)].mean())
        scores = []
        for level in (0.0, 0.05, 0.10, 0.20):  # added noise std, fraction of the tissue level
            n = level * tissue * (rng.standard_normal(x.shape)
                                  + 1j * rng.standard_normal(x.shape))
            scores.append(rankiq.score(np.abs(x + n / np.sqrt(2)).astype(np.float32),
                                       model=model).median)
        assert all(b > a for a, b in zip(scores, scores[1:], strict=False)), (seed, scores)
    noisy = np.abs(x + 0.1 * tissue * rng.standard_normal(x.shape)).astype(np.float32)
    cmp = rankiq.compare(x.astype(np.float32), noisy, model=model)
    assert cmp.probabilities[0] > cmp.probabilities[2]  # a (clean) better, as its score says
    offset = rankiq.score((x + 0.2 * x.max()).astype(np.float32), model=model).median
    assert offset > 0 and np.isfinite(offset)


def _exp_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """``exp(-sigma r)`` k-space blur (r in cycles per field of view / 64) of a real slice."""
    f = np.fft.fftfreq(x.shape[0])
    r = np.hypot(f[:, None], f[None, :])
    return np.abs(np.fft.ifft2(np.fft.fft2(x) * np.exp(-2 * sigma * r))).astype(np.float32)


def test_shipped_model_orders_blur_and_noise_on_real_crops_inside_the_head() -> None:
    """pydicom's ``emri_small.dcm``: ten 64x64 windows inside a real T1 head, no air. Before
    the air gate (2.2.1) the dark tissue was read as air and mild blur *lowered* the score
    of most of them; now blur raises it step by step and noise raises it on most."""
    model = _shipped()
    path = pydicom.data.get_testdata_file("emri_small.dcm", download=False)
    assert path is not None, "pydicom-data (the train extra) is not installed"
    frames = pydicom.dcmread(path).pixel_array.astype(np.float32)
    noise_ordered = 0
    for i, x in enumerate(frames):
        blur = [rankiq.score(_exp_blur(x, s), model=model).median for s in (0, 0.6, 1, 1.6, 2.5)]
        steps = zip(blur[1:], blur[2:], strict=False)
        assert blur[2] > blur[0] and all(b > a for a, b in steps), (i, blur)
        rng = np.random.default_rng(i)
        z = (rng.standard_normal(x.shape) + 1j * rng.standard_normal(x.shape)) / np.sqrt(2)
        noisy = [rankiq.score(np.abs(x + lv * float(x.mean()) * z).astype(np.float32),
                              model=model).median for lv in (0, 0.2)]
        noise_ordered += noisy[1] > noisy[0]
    assert noise_ordered >= 9, noise_ordered


def test_shipped_model_labels_a_clean_real_shoulder_not_assessable_not_flagged() -> None:
    """A clean 1.5 T T1 shoulder (pydicom's test data): its muscle, darker than 15 % of the
    fat, reads as noisy air to the brain-trained features (score ~3, which 2.2.1 flagged). It
    is labelled out of range (``dark_tissue``), so neither flagged nor passed; with noise of 20 %
    of its tissue level (per 1024-px pixel: 5 % on the 256-px analysis grid) the floor hides
    the muscle's contrast, and the copy is in range and flagged. Evaluation only: no real scan
    trains or calibrates the model."""
    model = _shipped()
    path = pydicom.data.get_testdata_file("MR2_UNCR.dcm", download=False)
    assert path is not None, "pydicom-data (the train extra) is not installed"
    clean = rankiq.score(path, model=model)
    assert not clean.in_range and "dark_tissue" in clean.range_reasons
    assert clean.flagged is None
    px = pydicom.dcmread(path).pixel_array.astype(np.float64)
    tissue = float(np.median(px[px > np.percentile(px[px > 0], 50)]))
    rng = np.random.default_rng(0)
    noisy = np.abs(px + 0.2 * tissue * (rng.standard_normal(px.shape)
                                        + 1j * rng.standard_normal(px.shape)) / np.sqrt(2))
    worse = rankiq.score(noisy.astype(np.float32), model=model)
    assert worse.in_range and worse.flagged is True, (clean.median, worse.median)
    assert worse.median > clean.median


def test_shipped_answer_carries_threshold_flag_and_range() -> None:
    from rankiq.service.scoring import series_json

    model = _shipped()
    r = rankiq.score(pydicom.data.get_testdata_file("MR_small.dcm"), model=model, saliency=True)
    j = series_json(r, png=False, raw=False)
    assert isinstance(j["in_range"], bool) and isinstance(j["range_reasons"], list)
    assert j["threshold"] is not None and j["threshold"] > 0
    assert j["flagged"] in (True, False, None)
    assert (j["flagged"] is None) == (not j["in_range"])
    assert r.saliency is not None and r.saliency.shape[0] == 1
    assert float(r.saliency.sum()) == pytest.approx(r.median, rel=1e-3)


def _slices() -> list[np.ndarray]:
    """Analysis grids of a few kinds: phantoms in noisy air (odd and even sides), air the
    scanner masked to zero, a field of view inside the object, a real MR slice."""
    out = [analysis_grid(_phantom(n, seed)) for n, seed in ((96, 0), (75, 1), (128, 2))]
    masked = _phantom(96, 3)
    masked[masked < 0.2] = 0
    out += [analysis_grid(masked), analysis_grid(_phantom(128, 4)[30:98, 30:98])]
    out.append(analysis_grid(pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
                             .pixel_array.astype(np.float32)))
    return out


def test_fast_feature_steps_equal_their_definitions() -> None:
    """Each shortcut of :func:`features` against the plain computation it replaces: the
    erosion by shifted views is exact; air_reach and the blur measure (compiled kernels), the
    half spectrum's band shares agree to round-off, the autocorrelation from partial
    single-precision transforms to float32 round-off."""
    from rankiq.service.noref import (
        _band_shares,
        _blur_measure,
        _echo,
        _erode,
        _lag_ring,
        _reach,
    )

    rng = np.random.default_rng(4)
    for n in (5, 32, 47):
        m = rng.random((n, n)) < 0.7
        assert np.array_equal(_erode(m), ndimage.binary_erosion(m, iterations=1))
    for g in _slices():
        x = g.astype(np.float64)
        near, fg, air, _, _ = _masks(x)
        n = x.shape[0]
        if air.sum() >= 32:
            d = ndimage.distance_transform_edt(~fg)[air]
            a = x[air]
            e = np.maximum(a - np.median(a), 0.0)
            want = (max(float((e * d).sum() / e.sum()) / float(d.mean()), 1e-3)
                    if e.sum() > 0 else 1.0)
            assert _reach(x, fg, air) == pytest.approx(want, rel=1e-12)
        p = np.abs(np.fft.fftshift(np.fft.fft2(x))) ** 2
        p[n // 2, n // 2] = 0.0
        f = (np.arange(n) - n // 2) / n
        band = np.digitize(np.hypot(f[:, None], f[None, :]), (0.04, 0.08, 0.15, 0.25, 0.35, 0.5))
        want_b = np.bincount(band.ravel(), weights=p.ravel(), minlength=7) / p.sum()
        np.testing.assert_allclose(_band_shares(x), want_b, rtol=1e-10, atol=1e-15)
        lap = ndimage.convolve(x, np.outer([1, -2, 1], [1, -2, 1]).astype(float), mode="nearest")
        y = np.where(near, lap, 0.0)
        y = y - y[near].mean()
        top = max(4, n // 4)
        m = 2 * n  # any size >= n + top: the circular autocorrelation is the linear one
        ac = np.fft.irfft2(np.abs(np.fft.rfft2(y, s=(m, m))) ** 2, s=(m, m))
        want_e = np.arctanh(min(max(ac[_lag_ring(m, top)].max() / ac[0, 0], 0.0), 0.999))
        # single-precision transforms: equal to ~1e-7, below the float32 features are kept in
        assert _echo(lap, near) == pytest.approx(want_e, rel=1e-5, abs=1e-7)
        blur = []
        for axis in (0, 1):
            dx = np.abs(np.diff(x, axis=axis))
            db = np.abs(np.diff(ndimage.uniform_filter1d(x, 9, axis=axis), axis=axis))
            pair = (fg[1:] & fg[:-1]) if axis == 0 else (fg[:, 1:] & fg[:, :-1])
            s = dx[pair].sum()
            blur.append((s - np.maximum(0.0, dx - db)[pair].sum()) / s)
        assert _blur_measure(x, fg) == pytest.approx(max(blur), rel=1e-12)


def test_saliency_reuses_the_masks_of_the_features() -> None:
    """Masks kept by prepare_features are those masks() measures on the grid (so the evidence
    maps are identical with or without them); a slice whose grid was padded to the stack's
    side keeps none (its padded grid's masks differ); the weighted map smoothed once equals
    the weighted sum of the four smoothed components."""
    from rankiq.service.noref import EVIDENCE, evidence_components, evidence_map, masks

    big, small = _phantom(96, 5), _phantom(96, 6)
    small[:30] = small[:, :30] = 0  # a zero border: its own grid is 66 px, padded to 96
    fi = prepare_features(np.stack([big, small, np.zeros_like(big)]), keep_masks=True)
    assert fi.slice_masks(1) is None and fi.slice_masks(2) is None
    assert prepare_features(np.stack([big]), keep_masks=False).slice_masks(0) is None
    kept = fi.slice_masks(0)
    assert kept is not None
    for a, b in zip(kept, masks(fi.grids[0])[:3], strict=True):
        assert a.dtype == bool and np.array_equal(a, b)
    comps, which = evidence_components(fi.grids[0])
    assert which == EVIDENCE
    assert np.array_equal(evidence_components(fi.grids[0], kept)[0], comps)
    assert comps.shape[0] == len(set(which)) == 4
    assert which[FEATURES.index("efc")] != which[FEATURES.index("echo")]
    w = np.array([0.5, 2.0, 0.25, 1.0])
    np.testing.assert_allclose(evidence_map(fi.grids[0], w, kept),
                               np.tensordot(w, comps, axes=1), rtol=1e-4, atol=1e-9)


def test_interpolation_factor_believes_only_an_original_image_s_header() -> None:
    from rankiq.service.noref import interpolation_factor

    original = "ORIGINAL\\PRIMARY\\M\\ND"
    assert interpolation_factor((256, 256), 128, original) == 2.0
    assert interpolation_factor((192, 256), 128, original) == 2.0  # the larger side is read
    assert interpolation_factor((256, 256), 256, original) == 1.0  # as acquired
    assert interpolation_factor((256, 256), 250, original) == 1.0  # within 5 %: left alone
    assert interpolation_factor((256, 256), 128, "DERIVED\\SECONDARY\\MPR") == 1.0
    assert interpolation_factor((256, 256), 128, "") == 1.0  # unknown: not believed
    assert interpolation_factor((256, 256), None, original) == 1.0
    assert interpolation_factor((1024, 1024), 64, original) == 1.0  # 16x: a broken header
    assert interpolation_factor((256, 256), 8, original) == 1.0
    # the analysis grid of an interpolated slice is the acquired one
    x = _phantom(128)
    assert analysis_grid(x, 2.0).shape == (64, 64)
    assert analysis_grid(x, 1.0).shape == (128, 128)
    assert analysis_grid(_phantom(40), 4.0).shape == (32, 32)  # never below MIN_ANALYSIS


def test_shipped_score_of_a_scanner_interpolated_dicom_is_the_acquired_one_s(tmp_path) -> None:
    """A 128x128 acquisition that the scanner interpolated to 256x256 (zero-filled, the
    Acquisition Matrix saying 128) scores as the 128x128 image does; without the header it
    reads as blurred."""
    from rankiq.service.io.read import read_series
    from rankiq.service.preprocess import to_grid
    from rankiq.service.qa.synth import phantom, write_series
    from rankiq.service.scoring import saliency_to_input, score_series

    model = _shipped()
    rng = np.random.default_rng(0)
    worse_without = 0
    for seed in range(3):
        x = phantom(1, 128, "T2", np.random.default_rng(seed))[0]
        zipped = np.maximum(to_grid(x, (256, 256)), 0)

        def read(px: np.ndarray, acquired: list[int] | None, tag: str, seed: int = seed):
            files = write_series(tmp_path / f"{tag}{seed}", px[None].astype(np.float32),
                                 description="AX T2", rng=rng)
            if acquired is not None:
                for f in files:
                    ds = pydicom.dcmread(f)
                    ds.AcquisitionMatrix = acquired
                    ds.save_as(f, enforce_file_format=True)
            return read_series(files)[0]

        native, plain, told = read(x, None, "n"), read(zipped, None, "p"), read(zipped,
                                                                          [128, 0, 0, 128], "t")
        assert told.attributes["acquired_matrix"] == 128
        assert plain.attributes["acquired_matrix"] is None
        a = score_series(model, native).median
        b = score_series(model, plain).median
        c = score_series(model, told, saliency=True)
        assert c.median == pytest.approx(a, rel=0.03)
        worse_without += b > a * 1.03
        # the saliency still lands on the 256x256 scan, with the same total
        back = saliency_to_input(c.saliency, told.pixels, features=True)
        assert back.shape == (1, 1, 256, 256)
        assert back.sum() == pytest.approx(float(c.saliency.sum()), rel=0.02)
    assert worse_without >= 2  # read at its interpolated grid, it looks blurred


@pytest.mark.parametrize(("n", "step"), [(64, 2), (63, 2), (48, 3)])
def test_an_integer_interpolation_is_taken_back_to_its_acquired_samples(n: int, step: int
                                                                        ) -> None:
    """A masked acquisition, zero-filled by an integer factor (masked before or after, stored
    as float): the analysis grid is the acquisition's own, the air exactly zero again (a
    Fourier crop of the magnitude would leave the mask's ringing in the air, read as ghosts),
    and the analysed box on the interpolated matrix covers the acquisition's."""
    from rankiq.service.noref import acquired_lattice, analysis_box
    from rankiq.training.realeval import zero_filled

    x = _phantom(n, seed=n)
    x[ndimage.gaussian_filter(x, 2.0) < 0.2] = 0.0  # the scanner's background mask
    x = np.pad(x, 4)  # and some field-of-view padding
    side = n + 8
    want = analysis_grid(x)
    before = zero_filled(x, step)
    after = before * np.kron(x > 0, np.ones((step, step), bool))
    assert acquired_lattice(before.shape, step) is not None
    assert (before == 0).mean() < 0.05  # the ringing fills the masked air
    for y in (before, after):
        got = analysis_grid(y, float(step))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5 * float(x.max()))
        np.testing.assert_allclose(features(got), features(want), rtol=1e-4, atol=1e-4)
        r0, r1, c0, c1 = analysis_box(y, float(step))  # type: ignore[misc]
        q0, q1, d0, d1 = analysis_box(x)  # type: ignore[misc]
        assert (r1 - r0, c1 - c0) == (step * (q1 - q0), step * (d1 - d0))
        assert abs(r0 - step * q0) < step and abs(c0 - step * d0) < step
    # a non-integer factor (or a side it does not divide) keeps the Fourier crop
    assert acquired_lattice((3 * side, 3 * side), 1.5) is None
    assert acquired_lattice((2 * side + 1, 2 * side), 2.0) is None
    assert analysis_grid(before, 1.5).shape[0] == round(max(before.shape) / 1.5)
