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
