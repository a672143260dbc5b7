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
