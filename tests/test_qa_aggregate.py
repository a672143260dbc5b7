"""Per-series aggregation, flagging against contrast-family thresholds, threshold files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rankiq.service.qa.aggregate import aggregate, flag, load_thresholds
from rankiq.service.qa.selection import RulesError

META = {"qa_thresholds": {"T1": 1.0, "T1post": 1.2, "T2": 2.0, "FLAIR": 1.5, "other": 2.5}}


def test_aggregate_statistics_and_worst_slices():
    scores = np.array([1.0, 5.0, 2.0, 4.0, 3.0, 9.0])
    blank = np.array([False, False, False, False, False, True])  # the 9.0 is a blank slice
    agg = aggregate(scores, blank, k=2)
    assert agg.median == pytest.approx(3.0)
    assert agg.p90 == pytest.approx(np.percentile([1, 5, 2, 4, 3], 90))
    assert agg.worst == 5.0 and agg.worst_slices == [1, 3]
    assert agg.slices == 6 and agg.blank == 1


def test_flag_uses_the_family_threshold_and_states_the_numbers():
    th = load_thresholds(META)
    agg = aggregate(np.full(10, 1.8))
    assert flag(agg, "T2", th) == (False, "")
    flagged, reason = flag(agg, "T1", th)
    assert flagged and "1.800" in reason and "T1" in reason and "1.000" in reason
    # an unknown family falls back to "other"
    assert not flag(aggregate(np.full(3, 2.4)), "DWI", th)[0]
    assert flag(aggregate(np.full(3, 2.6)), "DWI", th)[0]


def test_median_versus_p90(tmp_path):
    scores = np.array([0.5] * 8 + [3.0] * 2)  # two bad slices of ten
    agg = aggregate(scores)
    assert not flag(agg, "T1", load_thresholds(META))[0]
    f = tmp_path / "site.json"
    f.write_text(json.dumps({"statistic": "p90", "thresholds": {"T1": 1.0}}))
    th = load_thresholds(META, f)
    assert th.statistic == "p90" and flag(agg, "T1", th)[0]


def test_all_blank_series_is_flagged():
    agg = aggregate(np.zeros(4), np.ones(4, bool))
    flagged, reason = flag(agg, "T2", load_thresholds(META))
    assert flagged and "blank" in reason


def test_override_file_merges_with_metadata(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text("T2: 0.7\nFLAIR: 3\n")
    th = load_thresholds(META, f)
    assert th.values["T2"] == 0.7 and th.values["FLAIR"] == 3.0 and th.values["T1"] == 1.0
    assert th.overridden == ("FLAIR", "T2") and str(f) in th.source
    assert th.fingerprint() != load_thresholds(META).fingerprint()


def test_thresholds_without_metadata_need_a_file(tmp_path):
    with pytest.raises(RulesError, match="--thresholds"):
        load_thresholds({})
    f = tmp_path / "t.json"
    f.write_text('{"T1": 1.0}')
    th = load_thresholds({}, f)
    assert th.for_family("FLAIR") == 1.0  # "other" defaults to the most lenient given value


@pytest.mark.parametrize("content", ['{"T3": 1}', '{"T1": "high"}', '{"T1": true}',
                                     '{"statistic": "mean", "thresholds": {"T1": 1}}',
                                     '{"statistic": "p90"}', '[]'])
def test_bad_override_files(tmp_path, content):
    f = tmp_path / "t.json"
    f.write_text(content)
    with pytest.raises(RulesError):
        load_thresholds(META, f)
