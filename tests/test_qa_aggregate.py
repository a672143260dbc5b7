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


def test_a_statistic_equal_to_the_threshold_is_not_flagged():
    th = load_thresholds(META)
    assert not flag(aggregate(np.full(3, 1.0)), "T1", th)[0]  # equal: passes
    assert flag(aggregate(np.full(3, np.nextafter(1.0, 2.0))), "T1", th)[0]  # above: flagged


def test_each_flag_names_its_rule(tmp_path):
    from rankiq.service.qa.aggregate import threshold_rule

    th = load_thresholds(META)
    assert threshold_rule("T1", th) == "model_threshold"
    f = tmp_path / "site.json"
    f.write_text(json.dumps({"thresholds": {"T2": 0.7}}))
    site = load_thresholds(META, f)
    assert threshold_rule("T2", site) == "site_threshold"
    assert threshold_rule("T1", site) == "model_threshold"  # not in the site file
    assert threshold_rule("DWI", site) == "model_threshold"  # falls back to the model's other


def test_site_file_written_for_another_model_is_refused(tmp_path):
    meta = {**META, "name": "iqnet-noref", "files": {"score.onnx": "a" * 64}}
    f = tmp_path / "site.json"
    f.write_text(json.dumps({"thresholds": {"T2": 0.7},
                             "provenance": {"model": {"name": "iqnet-noref",
                                                      "sha256": "b" * 64}}}))
    with pytest.raises(RulesError, match="calibrated with another model"):
        load_thresholds(meta, f)
    f.write_text(json.dumps({"thresholds": {"T2": 0.7},
                             "provenance": {"model": {"name": "iqnet-noref",
                                                      "sha256": "a" * 64}}}))
    assert load_thresholds(meta, f).values["T2"] == 0.7


def test_protocol_key_is_documented_fields_without_the_description():
    from rankiq.service.qa.aggregate import protocol_key

    info = {"contrast": "T2", "rows": 256, "cols": 232, "pixel_spacing": [0.898, 0.902],
            "description": "AX T2 TSE"}
    key = protocol_key(info)
    assert key.startswith("T2|256x232|0.9mm|") and "AX" not in key
    assert protocol_key({**info, "pixel_spacing": [0.91, 0.89]}) == key  # rounded to 0.1 mm
    assert protocol_key({**info, "description": "ax t2 tse "}) == key  # case, spaces
    assert protocol_key({**info, "description": "COR T2 TSE"}) != key
    assert protocol_key({**info, "rows": 512}) != key
    assert protocol_key({**info, "pixel_spacing": None}).split("|")[2] == "?mm"


def _rows(medians, protocol="P"):
    return [{"series_key": f"s{i}", "protocol": protocol, "model": "m", "statistic_value": m}
            for i, m in enumerate(medians)]


def test_archive_outlier_robust_z():
    from rankiq.service.qa.aggregate import archive_outliers

    clean = [10.0, 11.0, 9.5, 10.5, 12.0, 9.0, 10.2]
    rows = _rows([*clean, 60.0])
    out = archive_outliers(rows, z_cut=3.5, min_group=5)
    logs = np.log([*clean, 60.0])
    med = np.median(logs)
    scale = 1.4826 * np.median(np.abs(logs - med))
    assert out["s7"].z == pytest.approx((np.log(60.0) - med) / scale)
    assert out["s7"].outlier and out["s7"].n == 8
    assert not any(out[f"s{i}"].outlier for i in range(7))
    # better than the group is never an outlier (one-sided: lower is better)
    assert not archive_outliers(_rows([*clean, 0.5]), z_cut=3.5, min_group=5)["s7"].outlier
    # too few series of the protocol: no z at all
    few = archive_outliers(_rows([10, 11, 60.0]), z_cut=3.5, min_group=5)
    assert all(r.z is None and not r.outlier for r in few.values())
    # 0 disables the rule
    assert not any(r.outlier for r in archive_outliers(rows, z_cut=0, min_group=5).values())
    # groups are per protocol and model: the same values spread over two protocols are no group
    split = _rows(clean[:4], "A") + _rows([*clean[4:], 60.0], "B")
    assert not any(r.outlier for r in archive_outliers(split, z_cut=3.5, min_group=5).values())


def test_archive_outlier_cut_is_strict_and_identical_series_have_a_floor():
    from rankiq.service.qa.aggregate import MIN_LOG_SCALE, archive_outliers

    same = _rows([10.0] * 6 + [10.0 * np.exp(3.5 * MIN_LOG_SCALE)])
    out = archive_outliers(same, z_cut=3.5, min_group=5)
    assert out["s6"].z == pytest.approx(3.5) and not out["s6"].outlier  # equal: not above
    more = _rows([10.0] * 6 + [10.0 * np.exp(3.6 * MIN_LOG_SCALE)])
    assert archive_outliers(more, z_cut=3.5, min_group=5)["s6"].outlier


def test_cli_help_defaults_match_the_runner():
    """`rankiq qa --help` states the runner's defaults (the parser cannot import them)."""
    from rankiq.service.qa.aggregate import DEFAULT_OUTLIER_Z, MIN_GROUP
    from rankiq.service.qa.runner import QAOptions
    from rankiq.service.scoring import DEFAULT_MAX_SLICES

    opts = QAOptions(model_dir=".")
    assert (opts.outlier_z, opts.outlier_min_group, opts.max_slices) == (
        DEFAULT_OUTLIER_Z, MIN_GROUP, DEFAULT_MAX_SLICES) == (3.5, 5, 512)


def test_worst_slices_are_series_indices_when_blank_slices_come_first():
    scores = np.array([7.0, 8.0, 1.0, 5.0, 2.0, 4.0])
    blank = np.array([True, True, False, False, False, False])
    agg = aggregate(scores, blank, k=2)
    assert agg.worst_slices == [3, 5] and agg.worst == 5.0
    assert agg.median == pytest.approx(3.0) and agg.mean == pytest.approx(3.0)
    assert agg.blank == 2 and agg.slices == 6
    # a non-finite score is left out like a blank slice
    assert aggregate(np.array([1.0, np.nan, 3.0])).worst_slices == [2, 0]


def test_archive_outlier_z_equal_to_the_cut_is_not_flagged():
    from rankiq.service.qa.aggregate import archive_outliers

    rows = _rows([10.0, 11.0, 9.5, 10.5, 12.0, 9.0, 30.0])
    z = archive_outliers(rows, z_cut=3.5, min_group=5)["s6"].z
    assert z > 0
    assert not archive_outliers(rows, z_cut=z, min_group=5)["s6"].outlier  # equal: not above
    assert archive_outliers(rows, z_cut=float(np.nextafter(z, 0.0)), min_group=5)["s6"].outlier


# -- the rest of the contract: defaults, empty series, reasons, provenance, outlier details --------

def test_documented_defaults():
    from rankiq.service.qa import aggregate as mod

    assert (mod.STATISTICS, mod.RULES) == (("median", "p90"),
                                           ("model_threshold", "site_threshold",
                                            "archive_outlier"))
    assert (mod.DEFAULT_OUTLIER_Z, mod.MIN_GROUP, mod.MIN_LOG_SCALE, mod.SPACING_STEP_MM) == (
        3.5, 5, 0.01, 0.1)


def test_a_series_without_scorable_slices_aggregates_to_nan_and_is_flagged():
    agg = aggregate(np.array([np.nan, 2.0, np.inf]), np.array([False, True, False]))
    assert np.isnan([agg.median, agg.p90, agg.mean, agg.worst]).all()
    assert (agg.worst_slices, agg.slices, agg.blank) == ([], 3, 1)
    assert np.isnan(agg.statistic("p90"))
    assert flag(agg, "T1", load_thresholds(META)) == (True, "no scorable slice (all blank)")
    empty = aggregate(np.zeros(0))
    assert (empty.slices, empty.blank, empty.worst_slices) == (0, 0, [])
    assert flag(empty, "T1", load_thresholds(META))[0]


def test_aggregate_defaults_to_three_worst_slices_ties_in_series_order():
    agg = aggregate(np.array([2.0, 5.0, 5.0, 1.0, 5.0, 3.0]))
    assert agg.worst_slices == [1, 2, 4] and agg.blank == 0 and agg.slices == 6
    assert agg.mean == pytest.approx(21.0 / 6) and agg.statistic("median") == 4.0
    assert aggregate(np.array([1.0, 2.0]), k=5).worst_slices == [1, 0]


def test_flag_reason_states_statistic_family_and_numbers():
    th = load_thresholds(META)
    assert flag(aggregate(np.full(3, 1.8)), "T1", th) == (
        True, "median 1.800 > T1 threshold 1.000")
    assert flag(aggregate(np.full(3, 2.6)), "DWI", th) == (
        True, "median 2.600 > other threshold 2.500")  # the fallback is named
    assert th.for_family("DWI") == 2.5 and th.for_family("T2") == 2.0


def test_thresholds_record_their_source_and_fingerprint(tmp_path):
    th = load_thresholds(META)
    assert (th.statistic, th.source, th.overridden) == ("median", "model metadata", ())
    assert th.to_dict() == {"values": META["qa_thresholds"], "statistic": "median",
                            "source": "model metadata", "overridden": ()}
    fp = th.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0 and fp == load_thresholds(META).fingerprint()
    f = tmp_path / "site.json"
    f.write_text(json.dumps({"statistic": "p90", "thresholds": META["qa_thresholds"]}))
    p90 = load_thresholds(META, f)
    assert p90.values == th.values and p90.fingerprint() != fp  # the statistic counts
    assert p90.source == f"model metadata + {f}"
    f.write_text(json.dumps({"thresholds": {"T1": 0.5}}))
    only_file = load_thresholds({}, f)
    assert only_file.source == str(f) and only_file.statistic == "median"
    assert only_file.values == {"T1": 0.5, "other": 0.5}
    assert threshold_rule_of(only_file, "DWI") == "model_threshold"  # "other" was derived


def threshold_rule_of(th, family):
    from rankiq.service.qa.aggregate import threshold_rule

    return threshold_rule(family, th)


def test_a_site_other_threshold_covers_unknown_families(tmp_path):
    f = tmp_path / "site.json"
    f.write_text(json.dumps({"other": 9.0, "T2": 1.0}))
    th = load_thresholds(META, f)
    assert th.overridden == ("T2", "other")
    assert threshold_rule_of(th, "DWI") == "site_threshold"
    assert threshold_rule_of(th, "T1") == "model_threshold"


def test_metadata_without_other_gets_the_most_lenient_value():
    th = load_thresholds({"qa_thresholds": {"T1": 1.0, "T2": 3.0, "FLAIR": 2}})
    assert th.values["other"] == 3.0 and th.values["FLAIR"] == 2.0
    assert isinstance(th.values["FLAIR"], float)


@pytest.mark.parametrize(("values", "message"), [
    ({}, "non-empty mapping"), ([1.0], "non-empty mapping"),
    ({"T1": float("inf")}, "finite number"), ({"T1": float("nan")}, "finite number"),
    ({"T1": None}, "finite number"), ({"T9": 1.0}, "unknown contrast family 'T9'")])
def test_bad_threshold_values_are_refused_with_the_reason(tmp_path, values, message):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"thresholds": values}).replace("Infinity", "1e999"))
    with pytest.raises(RulesError, match=message):
        load_thresholds(META, f)
    if values:  # the same checks hold for the model's own thresholds
        with pytest.raises(RulesError, match="model metadata qa_thresholds"):
            load_thresholds({"qa_thresholds": values})


def test_provenance_is_checked_field_by_field(tmp_path):
    meta = {**META, "name": "iqnet-noref", "files": {"score.onnx": "a" * 64}}
    f = tmp_path / "site.json"

    def load(prov):
        f.write_text(json.dumps({"thresholds": {"T2": 0.7}, "provenance": prov}))
        return load_thresholds(meta, f)

    assert load("not a mapping").values["T2"] == 0.7  # no usable provenance: not checked
    assert load({}).values["T2"] == 0.7
    assert load({"model": {"name": "iqnet-noref"}}).values["T2"] == 0.7
    assert load({"model": {"sha256": "a" * 64}}).values["T2"] == 0.7
    with pytest.raises(RulesError, match="provenance.model must be a mapping"):
        load({"model": "iqnet-noref"})
    with pytest.raises(RulesError) as err:
        load({"model": {"name": "other-model"}})
    assert str(err.value) == (
        f"{f}: thresholds calibrated with another model (other-model None), not iqnet-noref "
        f"{'a' * 12}: run rankiq calibrate again with this model")
    with pytest.raises(RulesError, match=f"another model \\(iqnet-noref {'b' * 12}\\)"):
        load({"model": {"name": "iqnet-noref", "sha256": "b" * 64}})
    # a model without a name or hash in its metadata cannot be told apart: accepted
    f.write_text(json.dumps({"thresholds": {"T2": 0.7},
                             "provenance": {"model": {"name": "x", "sha256": "b" * 64}}}))
    assert load_thresholds(META, f).values["T2"] == 0.7


def test_protocol_key_spacing_matrix_and_digest():
    import hashlib

    from rankiq.service.qa.aggregate import protocol_key

    info = {"contrast": "FLAIR", "rows": 320, "cols": 256, "pixel_spacing": [0.86, 1.24],
            "description": "  Sag  FLAIR "}
    digest = hashlib.sha256(b"sag flair").hexdigest()[:8]
    assert protocol_key(info) == f"FLAIR|320x256|0.9x1.2mm|{digest}"
    assert protocol_key({"pixel_spacing": [2.04, 2.16]}) == (
        f"other|?x?|2.0x2.2mm|{hashlib.sha256(b'').hexdigest()[:8]}")
    assert protocol_key({"pixel_spacing": [2.04, 1.96, 9.0]}).split("|")[2] == "2.0mm"
    assert protocol_key({"pixel_spacing": []}).split("|")[2] == "?mm"


def test_archive_outlier_details_median_limit_and_unusable_values():
    from rankiq.service.qa.aggregate import MIN_LOG_SCALE, Outlier, archive_outliers

    vals = [10.0, 20.0, 40.0, 80.0, 160.0]  # exactly min_group: gets a z
    rows = _rows(vals) + [
        {"series_key": k, "protocol": "P", "model": "m", "statistic_value": v}
        for k, v in (("none", None), ("nan", float("nan")), ("zero", 0.0), ("neg", -1.0),
                     ("inf", float("inf")))]
    out = archive_outliers(rows, z_cut=2.0, min_group=5)
    for k in ("none", "nan", "zero", "neg", "inf"):
        assert out[k] == Outlier(None, 0, None, False)
    logs = np.log(vals)
    scale = 1.4826 * np.log(2.0)  # MAD of the logs: one doubling
    assert out["s2"].n == 5 and out["s2"].median == pytest.approx(40.0)
    assert out["s4"].z == pytest.approx((logs[4] - logs[2]) / scale)
    assert out["s0"].z == pytest.approx(-2 * np.log(2.0) / scale)
    assert out["s4"].limit == pytest.approx(40.0 * np.exp(2.0 * scale))
    assert out["s4"].outlier is (out["s4"].z > 2.0)
    # one series fewer than min_group: the group median is still reported, no z, no limit
    few = archive_outliers(_rows(vals[:4]), z_cut=2.0, min_group=5)
    assert few["s0"] == Outlier(None, 4, pytest.approx(np.exp(np.median(logs[:4]))), False)
    # the rule off (0 or negative): z reported, never an outlier, no limit
    for off in (0.0, -1.0):
        res = archive_outliers(_rows([*vals, 1e6]), z_cut=off, min_group=5)["s5"]
        assert res.z is not None and res.z > 3.5 and not res.outlier and res.limit is None
    # the scale floor, not 0, for a group of identical series
    same = archive_outliers(_rows([5.0] * 5), z_cut=3.5, min_group=5)["s0"]
    assert same.z == 0.0 and same.limit == pytest.approx(5.0 * np.exp(3.5 * MIN_LOG_SCALE))
    # groups are also per model
    mixed = _rows(vals) + [{"series_key": "x", "protocol": "P", "model": "other",
                            "statistic_value": 1e6}]
    assert archive_outliers(mixed, z_cut=2.0, min_group=5)["x"].n == 1


def test_one_slice_series_and_immutable_aggregates(tmp_path):
    import dataclasses

    one = aggregate(np.array([0.5]))
    assert flag(one, "T1", load_thresholds(META)) == (False, "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.median = 9.0  # type: ignore[misc]
    meta = {**META, "name": "m", "files": {"score.onnx": "b" * 64}}
    f = tmp_path / "site.json"
    f.write_text(json.dumps({"thresholds": {"T2": 0.7},
                             "provenance": {"model": {"name": "m", "sha256": "0" * 64}}}))
    with pytest.raises(RulesError, match="calibrated with another model"):
        load_thresholds(meta, f)  # a hash that sorts lower is just as different
