"""service.scoring: the series summary (median, worst, worst slice) over non-blank slices, and
blank slices found end to end through the shipped models."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_service import mr_small, noisy
from rankiq.service.errors import InvalidImage
from rankiq.service.scoring import summarise


def test_summary_skips_blank_slices_and_indexes_the_series():
    # blank slices first: the worst slice's index is its place in the series, not among the
    # non-blank ones, and blank scores (here the highest) never enter the summary
    scores = np.array([9.0, 8.0, 1.0, 5.0, 2.0])
    blank = np.array([True, True, False, False, False])
    median, worst, worst_slice = summarise(scores, blank)
    assert (median, worst, worst_slice) == (2.0, 5.0, 3)


def test_summary_without_blank_slices_and_ties():
    assert summarise(np.array([3.0, 1.0, 3.0, 2.0]), np.zeros(4, bool)) == (2.5, 3.0, 0)


def test_every_slice_blank_is_refused():
    with pytest.raises(InvalidImage, match="blank"):
        summarise(np.zeros(3), np.ones(3, bool))


@pytest.mark.parametrize("reference", [False, True])
def test_blank_slices_are_marked_and_left_out_end_to_end(reference):
    import rankiq

    base = mr_small()
    vol = np.stack([np.zeros_like(base), noisy(base, 0.3, seed=1), noisy(base, 0.01, seed=2),
                    np.zeros_like(base)]).astype(np.float32)
    ref = np.stack([np.zeros_like(base), base, base, np.zeros_like(base)]).astype(np.float32)
    r = rankiq.score(vol, reference=ref if reference else None)
    assert r.blank.tolist() == [True, False, False, True]
    kept = r.scores[1:3]
    assert r.median == pytest.approx(float(np.median(kept)))
    assert r.worst == pytest.approx(float(kept.max()))
    assert r.worst_slice == 1 + int(np.argmax(kept))


def test_a_median_equal_to_the_threshold_is_not_flagged(repo_root):
    from rankiq.service.io.types import ImageSeries
    from rankiq.service.models import ScoringModel
    from rankiq.service.scoring import score_series

    model = ScoringModel.load(repo_root / "models" / "iqnet-noref")  # own copy: edited below
    series = ImageSeries.from_array(np.stack([noisy(mr_small(), s, seed=i)
                                              for i, s in enumerate((0.02, 0.05, 0.1))]))
    median = score_series(model, series).median
    model.metadata["qa_thresholds"] = {"other": median, series.contrast: median}
    at = score_series(model, series)
    assert at.median == median and at.threshold == median
    assert at.in_range  # (outside the model's range a series is never flagged either way)
    assert at.flagged is False
    below = float(np.nextafter(median, -np.inf))
    model.metadata["qa_thresholds"] = {"other": below, series.contrast: below}
    assert score_series(model, series).flagged is True


# -- model choice, limits, modes and the JSON views ------------------------------------------------

def _models(repo_root):
    from rankiq.service.models import load_models

    return load_models(repo_root / "models")


def test_select_model_by_mode_and_preference(repo_root):
    from rankiq.service.scoring import ModeUnavailable, select_model

    models = _models(repo_root)
    assert select_model(models, reference=True).name == "iqnet-ref"
    assert select_model(models, reference=False).name == "iqnet-noref"
    # without the preferred name, any model of the mode (by name)
    other = {"zz-ref": models["iqnet-ref"], "aa-noref": models["iqnet-noref"]}
    assert select_model(other, reference=True) is models["iqnet-ref"]
    assert select_model(other, reference=False) is models["iqnet-noref"]
    with pytest.raises(ModeUnavailable, match="no reference model is loaded"):
        select_model({"iqnet-noref": models["iqnet-noref"]}, reference=True)
    with pytest.raises(ModeUnavailable, match="none"):
        select_model({}, reference=False)


def test_slice_limit_is_inclusive_and_modes_must_match(repo_root):
    from rankiq.service.errors import InputTooLarge
    from rankiq.service.io.types import ImageSeries
    from rankiq.service.scoring import score_series

    models = _models(repo_root)
    vol = ImageSeries.from_array(np.stack([noisy(mr_small(), 0.05, seed=i) for i in range(3)]))
    assert len(score_series(models["iqnet-noref"], vol, max_slices=3).scores) == 3
    with pytest.raises(InputTooLarge, match="3 slices"):
        score_series(models["iqnet-noref"], vol, max_slices=2)
    with pytest.raises(InvalidImage):
        score_series(models["iqnet-noref"], vol, vol)  # a reference for a no-reference model
    with pytest.raises(InvalidImage):
        score_series(models["iqnet-ref"], vol)  # no reference for a reference model


def test_json_views_carry_every_field(repo_root):
    from rankiq.service.io.types import ImageSeries
    from rankiq.service.scoring import compare_series, comparison_json, score_series, series_json

    models = _models(repo_root)
    base = mr_small()
    ref = ImageSeries.from_array(np.stack([base, base]))
    a = ImageSeries.from_array(np.stack([noisy(base, 0.01, seed=1), noisy(base, 0.02, seed=2)]))
    b = ImageSeries.from_array(np.stack([noisy(base, 0.2, seed=3), noisy(base, 0.3, seed=4)]))
    r = score_series(models["iqnet-ref"], a, ref)
    d = series_json(r)
    assert [s["index"] for s in d["slices"]] == [0, 1]
    assert [s["score"] for s in d["slices"]] == pytest.approx(r.scores.tolist())
    assert d["summary"]["slices"] == 2 and d["summary"]["blank_slices"] == 0
    assert d["summary"]["worst_slice"] == r.worst_slice
    assert all(v >= 0 for v in d["timings_ms"].values())
    assert d["timings_ms"]["total"] >= d["timings_ms"]["inference"]
    assert d["timings_ms"]["total"] == pytest.approx(1000.0 * r.timings["total"], abs=1e-3)
    cmp = compare_series(models["iqnet-ref"], a, b, ref)
    assert cmp.per_slice is not None and cmp.per_slice.shape == (2, 3)
    c = comparison_json(cmp)
    assert [p["index"] for p in c["per_slice"]] == [0, 1]
    assert set(c["per_slice"][0]) == {"index", "a_better", "similar", "b_better"}
    assert c["probabilities"]["a_better"] > c["probabilities"]["b_better"]
    one = ImageSeries.from_array(base[None])
    # different slice counts: no per-slice verdicts
    uneven = compare_series(models["iqnet-noref"], one, b)
    assert uneven.per_slice is None and comparison_json(uneven)["per_slice"] is None


# -- the documented defaults and signatures --------------------------------------------------------

def test_default_slice_limit_and_keyword_only_options(repo_root):
    """The default slice limit is the documented ``RANKIQ_MAX_SLICES`` default; options are
    keyword-only (a positional ``True`` must never be read as a reference or a limit)."""
    import inspect

    from rankiq.service import scoring

    assert scoring.DEFAULT_MAX_SLICES == 512
    assert "| `RANKIQ_MAX_SLICES` | most slices in one image (or reference) | 512 |" in (
        repo_root / "docs" / "operations.md").read_text()
    for fn, keywords in ((scoring.score_series, ["saliency", "max_slices"]),
                         (scoring.compare_series, ["max_slices"]),
                         (scoring.select_model, ["reference"]),
                         (scoring.saliency_to_input, ["features", "interpolation"])):
        params = inspect.signature(fn).parameters.values()
        assert [p.name for p in params if p.kind is p.KEYWORD_ONLY] == keywords, fn.__name__
        assert all(p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


# -- saliency: shapes, the display image, and the map brought back onto the scan -------------------

def test_reference_model_saliency_comes_with_the_prepared_image_as_display(repo_root):
    from rankiq.service.io.types import ImageSeries
    from rankiq.service.preprocess import prepare
    from rankiq.service.scoring import score_series

    model = _models(repo_root)["iqnet-ref"]
    base = mr_small()
    ref = np.stack([base, base])
    img = np.stack([noisy(base, 0.05, seed=1), noisy(base, 0.2, seed=2)])
    r = score_series(model, ImageSeries.from_array(img), ImageSeries.from_array(ref),
                     saliency=True)
    assert r.saliency is not None and r.saliency.shape == (2, 1, *model.grid)
    prepared = prepare(img.astype(np.float32), ref.astype(np.float32), grid=model.grid,
                       input_kind="magnitude",
                       percentile=float(model.metadata.get("percentile", 99.5)))
    assert r.display is not None and r.display.dtype == np.float32
    np.testing.assert_allclose(r.display, np.abs(prepared.image[:, 0]), rtol=1e-6, atol=1e-7)
    # the saliency run scores like the plain run
    plain = score_series(model, ImageSeries.from_array(img), ImageSeries.from_array(ref))
    np.testing.assert_allclose(r.scores, plain.scores, rtol=1e-5)
    assert plain.saliency is None and plain.display is None


def test_timings_are_parts_of_the_total(repo_root):
    from rankiq.service.io.types import ImageSeries
    from rankiq.service.scoring import score_series

    r = score_series(_models(repo_root)["iqnet-noref"],
                     ImageSeries.from_array(noisy(mr_small(), 0.05, seed=0)[None]))
    t = r.timings
    assert set(t) == {"prepare", "inference", "total"}
    assert t["prepare"] >= 0 and t["inference"] >= 0
    assert t["prepare"] + t["inference"] <= t["total"]


def test_features_model_saliency_is_one_map_per_slice_on_its_analysis_grid(repo_root):
    from rankiq.service.io.types import ImageSeries
    from rankiq.service.noref import analysis_grid
    from rankiq.service.scoring import score_series

    model = _models(repo_root)["iqnet-noref"]
    base = np.pad(mr_small(), ((3, 5), (0, 0)))  # a zero border: the analysis grid crops it
    vol = np.stack([noisy(base, 0.05, seed=1), np.zeros_like(base), noisy(base, 0.1, seed=2)])
    vol[:, :3], vol[:, -5:] = 0, 0
    r = score_series(model, ImageSeries.from_array(vol), saliency=True)
    side = max(analysis_grid(v).shape[0] for v in vol)  # grids padded to the largest
    assert r.saliency is not None and r.saliency.shape == (3, 1, side, side)
    assert not r.saliency[1].any()  # the blank slice has no evidence
    # each map sums to its slice's score (module docs of feature_saliency)
    for i in (0, 2):
        assert float(r.saliency[i].sum()) == pytest.approx(float(r.scores[i]), rel=1e-4)
    assert r.display is not None and r.display.shape == (3, side, side)
    assert r.display[0].max() == pytest.approx(1.0)


def test_deferred_features_saliency_gives_the_same_map_in_another_process(repo_root):
    """``saliency="deferred"`` keeps what the map is computed from instead of computing it;
    computed later, after a pickle round trip and with another copy of the model (what the
    DICOMweb write-back's build process does), it is the map ``saliency=True`` gives."""
    import pickle

    from rankiq.service.io.types import ImageSeries
    from rankiq.service.models import ScoringModel
    from rankiq.service.results_dicom import PendingSaliency, saliency_on_matrix
    from rankiq.service.scoring import score_series

    model = _models(repo_root)["iqnet-noref"]
    base = np.pad(mr_small(), ((3, 5), (0, 0)))
    vol = np.stack([noisy(base, 0.05, seed=1), np.zeros_like(base), noisy(base, 0.2, seed=2)])
    series = ImageSeries.from_array(vol)
    now = score_series(model, series, saliency=True)
    later = score_series(model, series, saliency="deferred")
    assert later.saliency is None and later.display is None
    assert later.saliency_input is not None and now.saliency_input is None
    np.testing.assert_array_equal(later.scores, now.scores)
    pending = pickle.loads(pickle.dumps(PendingSaliency(later.saliency_input, series.pixels)))
    other = ScoringModel.load(repo_root / "models" / "iqnet-noref", threads=1)
    got = pending.on_matrix(other)
    want = saliency_on_matrix(now.saliency, series.pixels, features=True)
    assert got.shape == vol.shape and got[0].any() and not got[1].any()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    # a network model has nothing to defer: its saliency comes with the forward pass
    ref = _models(repo_root)["iqnet-ref"]
    net = score_series(ref, series, series, saliency="deferred")
    assert net.saliency is not None and net.saliency_input is None


@pytest.mark.parametrize(("rows", "cols", "box"), [
    (12, 9, (1, 8, 2, 7)),   # taller than wide: padded left and right (odd difference)
    (9, 12, (2, 7, 1, 8)),   # wider than tall: padded above and below
    (10, 10, (0, 10, 0, 10)),  # no border at all
])
def test_features_saliency_maps_back_onto_the_scan_exactly(rows, cols, box):
    """The analysis grid of a scan, taken as a map, comes back as the scan itself: the crop of
    the zero border and the padding to a square are undone pixel for pixel."""
    from rankiq.service.noref import analysis_grid
    from rankiq.service.scoring import saliency_to_input

    r0, r1, c0, c1 = box
    rng = np.random.default_rng(rows * cols)
    px = np.zeros((2, rows, cols), np.float32)
    px[0, r0:r1, c0:c1] = rng.uniform(1, 2, (r1 - r0, c1 - c0))
    grid = np.stack([analysis_grid(px[0]), analysis_grid(px[0])])[:, None]  # (2, 1, G, G)
    out = saliency_to_input(grid, px, features=True)
    assert out.shape == (2, 1, rows, cols) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0], px[0])
    assert not out[1].any()  # a blank slice has no analysed region


@pytest.mark.parametrize(("rows", "cols", "g"), [(6, 4, 12), (8, 8, 4), (5, 7, 7)])
def test_network_saliency_is_resampled_with_its_total_kept(rows, cols, g):
    """A uniform map on the network grid becomes a uniform map on the scan's square with the
    same total per square (a derivative per pixel), cropped to the scan."""
    from rankiq.service.scoring import saliency_to_input

    px = np.ones((1, rows, cols), np.float32)
    out = saliency_to_input(np.full((1, 2, g, g), 3.0), px, features=False)
    side = max(rows, cols)
    assert out.shape == (1, 2, rows, cols)
    np.testing.assert_allclose(out, 3.0 * g * g / (side * side), rtol=1e-6)


def test_network_saliency_on_the_scans_own_square_is_the_crop_of_the_padding():
    from rankiq.service.fft import center_pad
    from rankiq.service.scoring import saliency_to_input

    px = np.ones((1, 5, 8), np.float32)
    sal = np.arange(64, dtype=np.float64).reshape(1, 1, 8, 8)
    out = saliency_to_input(sal, px, features=False)
    # the scan sat at rows (8 - 5) // 2 = 1 .. 6 of the padded square
    np.testing.assert_array_equal(out[0, 0], sal[0, 0, 1:6])
    assert np.array_equal(center_pad(px, (8, 8))[0, 1:6], px[0])


def test_features_saliency_weights_each_evidence_map_by_the_score_gradient(repo_root):
    """The documented definition, with the gradient taken independently (a 10x larger central
    step): the evidence maps weighted by |d score / d feature| (the air features' times the
    slice's air weight: the air's pixels enter the score through the air gate), scaled to sum
    to the score."""
    from rankiq.service.noref import (
        AIR_FEATURES,
        FEATURES,
        air_weight,
        evidence_components,
        prepare_features,
    )
    from rankiq.service.scoring import feature_saliency

    model = _models(repo_root)["iqnet-noref"]
    fi = prepare_features(np.stack([noisy(mr_small(), 0.05, seed=1),
                                    noisy(mr_small(), 0.2, seed=2)]))
    got = feature_saliency(model, fi)
    f = fi.features.astype(np.float64)
    n, k = f.shape
    h = 1e-2
    steps = np.concatenate([f[:, None] + h * np.eye(k)[None], f[:, None] - h * np.eye(k)[None]],
                           axis=1).reshape(-1, k)
    s = model.score(steps.astype(np.float32)).astype(np.float64).reshape(n, 2, k)
    grad = np.abs(s[:, 0] - s[:, 1]) / (2 * h)
    base = model.score(fi.features).astype(np.float64)
    air = [FEATURES.index(a) for a in AIR_FEATURES]
    for i in range(n):
        gate = air_weight(float(f[i, FEATURES.index("border")]))
        assert gate < 1  # MR_small is a window inside the head: the gate is at work here
        grad[i, air] *= gate
        maps, which = evidence_components(fi.grids[i])
        want = np.tensordot(np.bincount(which, weights=grad[i], minlength=len(maps)), maps, 1)
        want *= base[i] / want.sum()
        assert np.abs(got[i, 0] - want).max() <= 1e-3 * np.abs(want).max()


def test_results_are_immutable_and_model_choice_checks_the_mode(repo_root):
    import dataclasses

    from rankiq.service.io.types import ImageSeries
    from rankiq.service.scoring import score_series, select_model

    models = _models(repo_root)
    r = score_series(models["iqnet-noref"], ImageSeries.from_array(mr_small()[None]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.median = 0.0  # type: ignore[misc]
    from rankiq.service.scoring import compare_series

    one = ImageSeries.from_array(mr_small()[None])
    cmp = compare_series(models["iqnet-noref"], one, one)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cmp.per_slice = None  # type: ignore[misc]
    # a model under the preferred name but of the other mode is not taken for that mode
    swapped = {"iqnet-noref": models["iqnet-ref"], "zz": models["iqnet-noref"]}
    assert select_model(swapped, reference=False) is models["iqnet-noref"]
    assert select_model(swapped, reference=True) is models["iqnet-ref"]


def test_a_mode_mismatch_says_which_way(repo_root):
    from rankiq.service.io.types import ImageSeries
    from rankiq.service.scoring import score_series

    models = _models(repo_root)
    vol = ImageSeries.from_array(mr_small()[None])
    with pytest.raises(InvalidImage, match="iqnet-ref is a reference model: it needs a reference"):
        score_series(models["iqnet-ref"], vol)
    with pytest.raises(InvalidImage,
                       match="iqnet-noref is a no-reference model: it takes no reference"):
        score_series(models["iqnet-noref"], vol, vol)


def test_series_json_includes_the_overlay_png_and_raw_map_by_default(repo_root):
    import inspect

    from rankiq.service.io.types import ImageSeries
    from rankiq.service.scoring import score_series, series_json

    assert [p.name for p in inspect.signature(series_json).parameters.values()
            if p.kind is p.KEYWORD_ONLY] == ["png", "raw"]
    base = mr_small()
    r = score_series(_models(repo_root)["iqnet-ref"],
                     ImageSeries.from_array(noisy(base, 0.1, 1)[None]),
                     ImageSeries.from_array(base[None]), saliency=True)
    sal = series_json(r)["slices"][0]["saliency"]
    assert set(sal) == {"overlay_png", "map"}
    assert set(series_json(r, png=False)["slices"][0]["saliency"]) == {"map"}
    assert set(series_json(r, raw=False)["slices"][0]["saliency"]) == {"overlay_png"}


def test_raw_saliency_map_keeps_every_pixel_of_a_no_reference_density(repo_root):
    """A no-reference map is a density (~1e-5 a pixel on a 256x256 slice, below float16's
    normal range): the raw map in the answer is the computed one, bit for bit."""
    from rankiq.service.io.types import ImageSeries
    from rankiq.service.overlay import decode_array
    from rankiq.service.scoring import score_series, series_json

    base = np.kron(mr_small(), np.ones((4, 4), np.float32))  # 256x256
    r = score_series(_models(repo_root)["iqnet-noref"],
                     ImageSeries.from_array(noisy(base, 0.05, 2)[None]), saliency=True)
    assert r.saliency is not None and 0 < float(np.median(np.abs(r.saliency))) < 6.1e-5
    raw = decode_array(series_json(r)["slices"][0]["saliency"]["map"])
    assert raw.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(raw, r.saliency[0])


def test_slices_without_foreground_are_blank_for_the_features_model():
    """A single bright pixel or a thin stripe leaves the no-reference model no foreground to
    measure: blank, left out of the summary, and a series of only such slices is refused with a
    message that does not claim the pixels were zero."""
    import rankiq

    dot = np.pad(np.ones((1, 1)), 40)
    stripe = np.pad(np.ones((64, 2)), ((0, 0), (31, 31)))
    for x in (dot, stripe):
        with pytest.raises(InvalidImage, match="without any foreground"):
            rankiq.score(x)
    head = mr_small()
    r = rankiq.score(np.stack([stripe, head]))
    assert list(r.blank) == [True, False]
    assert r.median == pytest.approx(rankiq.score(head).median, rel=1e-6)
