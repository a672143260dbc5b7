"""Series selection rules for batch QA: built-in rules, reasons, rule files (JSON and YAML)."""

from __future__ import annotations

import json

import pytest
from rankiq.service.qa.selection import RulesError, load_selector, selector_from_dict

MR = {"Modality": "MR", "SOPClass": "MR Image Storage", "SeriesDescription": "AX T2 TSE",
      "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"], "Rows": 256, "Columns": 256,
      "_slices": 24}


@pytest.mark.parametrize("change, reason", [
    ({}, ""),
    ({"SOPClass": "Enhanced MR Image Storage"}, ""),
    ({"Modality": "CT"}, "not_mr"),
    ({"Modality": ""}, "not_mr"),
    ({"SOPClass": "Basic Text SR Storage"}, "non_image"),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "localizer"),
    ({"SeriesDescription": "3-plane localizer"}, "localizer"),
    ({"SeriesDescription": "Scout"}, "localizer"),
    ({"ImageType": ["DERIVED", "SECONDARY", "ADC"]}, "derived"),
])
def test_builtin_rules_select_mr_images_and_name_the_reason(change, reason):
    decision = load_selector().decide({**MR, **change})
    assert decision.selected == (reason == "")
    assert decision.reason == reason


def test_t2_description_is_not_mistaken_for_a_localiser():
    # localiser words count only as whole words
    assert load_selector().decide({**MR, "SeriesDescription": "t2_tse_tra_scoutless"}).selected


def test_rules_file_json_and_yaml(tmp_path):
    doc = {"require": [{"reason": "not_mr", "all": {"Modality": "^MR$"}}],
           "exclude": [{"reason": "thin", "all": {"_slices": {"max": 5}}},
                       {"reason": "research", "any": {"SeriesDescription": "(?i)research"}}]}
    jpath = tmp_path / "rules.json"
    jpath.write_text(json.dumps(doc))
    ypath = tmp_path / "rules.yaml"
    ypath.write_text(
        "require:\n  - reason: not_mr\n    all: {Modality: '^MR$'}\n"
        "exclude:\n  - reason: thin\n    all: {_slices: {max: 5}}\n"
        "  - reason: research\n    any: {SeriesDescription: '(?i)research'}\n")
    for path in (jpath, ypath):
        sel = load_selector(path)
        assert sel.source == str(path)
        assert sel.decide(MR).selected
        assert sel.decide({**MR, "_slices": 4}).reason == "thin"
        assert sel.decide({**MR, "SeriesDescription": "RESEARCH T1"}).reason == "research"
        # the file replaces the built-in rules: a localiser is now selected
        assert sel.decide({**MR, "ImageType": ["LOCALIZER"]}).selected


def test_condition_forms():
    sel = selector_from_dict({"exclude": [
        {"reason": "both", "all": {"ImageType": ["^ORIGINAL$", "^M$"]}},
    ]})
    assert sel.decide(MR).reason == "both"  # every listed regex matches some value
    assert sel.decide({**MR, "ImageType": ["ORIGINAL", "P"]}).selected
    absent = selector_from_dict({"require": [{"reason": "has_desc",
                                              "all": {"SeriesDescription": ".+"}}],
                                 "exclude": [{"reason": "no_type", "all": {"ImageType": None}}]})
    assert absent.decide({**MR, "SeriesDescription": ""}).reason == "has_desc"
    assert absent.decide({**MR, "ImageType": []}).reason == "no_type"
    assert absent.decide(MR).selected


@pytest.mark.parametrize("doc", [
    {"unknown": []},
    {"exclude": [{"all": {"Modality": "MR"}}]},  # no reason
    {"exclude": [{"reason": "x", "all": {"Modality": "("}}]},  # bad regex
    {"exclude": [{"reason": "x", "all": {}}]},  # empty
    {"exclude": [{"reason": "x", "all": {"A": "a"}, "any": {"B": "b"}}]},  # both modes
    {"exclude": [{"reason": "Has Spaces", "all": {"A": "a"}}]},  # unbounded label
    {"exclude": [{"reason": "x", "all": {"Rows": {"min": "a"}}}]},
])
def test_malformed_rules_are_refused(doc):
    with pytest.raises(RulesError):
        selector_from_dict(doc)


def test_unreadable_rules_file(tmp_path):
    with pytest.raises(RulesError, match="cannot read"):
        load_selector(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("require: [unclosed\n")
    with pytest.raises(RulesError):
        load_selector(bad)


def test_localiser_and_derived_series_are_skipped_from_headers(tmp_path):
    """ImageType travels in the header-only scan, so no pixels are decoded to skip them."""
    from rankiq.service.io import ReadFailure, group_instances, scan_instances
    from rankiq.service.qa.runner import series_attributes
    from rankiq.service.qa.synth import build_archive

    build_archive(tmp_path / "a", 1, size=32, slices=(2, 3), seed=1, extras=True)
    refs = [r for r in scan_instances(tmp_path / "a") if not isinstance(r, ReadFailure)]
    selector = load_selector()
    reasons = {group[0].image_type[-1]: selector.decide(series_attributes(group[0])).reason
               for group in group_instances(refs).values() if group[0].image_type}
    assert reasons.get("LOCALIZER") == "localizer"
    assert "derived" in reasons.values()
