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


@pytest.mark.parametrize("image_type, reason", [
    # ordinary images, also when a scanner or PACS marked them derived/secondary
    (["DERIVED", "SECONDARY", "OTHER"], ""),
    (["DERIVED", "PRIMARY", "MPR", "M", "ND"], ""),  # a reformat is still anatomy
    (["DERIVED", "PRIMARY", "MOCO"], ""),
    (["DERIVED", "PRIMARY", "DIXON", "WATER"], ""),
    (["DERIVED", "SECONDARY", "MPR", "CSA MPR", "", "CSAPARALLEL", "M", "ND", "NORM"], ""),
    (["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"], ""),  # a diffusion-weighted image
    # maps and projections that are not images of anatomy
    (["DERIVED", "SECONDARY", "ADC"], "derived"),
    (["DERIVED", "PRIMARY", "DIFFUSION", "ADC"], "derived"),
    (["DERIVED", "PRIMARY", "DIFFUSION", "FA"], "derived"),
    (["DERIVED", "PRIMARY", "DIFFUSION", "TRACEW"], "derived"),
    (["DERIVED", "PRIMARY", "DIFFUSION", "EADC"], "derived"),
    (["DERIVED", "SECONDARY", "MIP"], "derived"),
    (["DERIVED", "PRIMARY", "SUB"], "derived"),
    (["DERIVED", "PRIMARY", "SUBTRACTION"], "derived"),
    (["DERIVED", "PRIMARY", "T1 MAP"], "derived"),
    (["DERIVED", "PRIMARY", "T2_MAP"], "derived"),
    (["DERIVED", "PRIMARY", "PERFUSION", "CBF"], "derived"),
    (["ORIGINAL", "PRIMARY", "P", "ND"], "phase"),  # a phase image: not a magnitude image
])
def test_derived_series_are_skipped_only_when_they_are_not_anatomy(image_type, reason):
    decision = load_selector().decide({**MR, "ImageType": image_type})
    assert (decision.selected, decision.reason) == (reason == "", reason)


@pytest.mark.parametrize("description", ["AX ADC", "dwi_tra_ADC", "T1 SUB", "COR MIP",
                                         "ep2d_diff FA"])
def test_derived_descriptions_are_skipped_when_the_series_is_derived(description):
    derived = {**MR, "ImageType": ["DERIVED", "PRIMARY", "OTHER"],
               "SeriesDescription": description}
    assert load_selector().decide(derived).reason == "derived"
    # an original series named like that is an acquisition: scored
    assert load_selector().decide({**MR, "SeriesDescription": description}).selected


def test_pydicom_mr_files_are_selected_from_their_headers():
    """pydicom's MR files (DERIVED\\SECONDARY\\OTHER slices, an MPR with an overlay) are ordinary
    MR images: the built-in rules select every one from the header-only scan."""
    from pydicom.data import get_testdata_file
    from rankiq.service.io import ReadFailure, scan_instances
    from rankiq.service.qa.runner import series_attributes

    names = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm",
             "MR_small_implicit.dcm", "MR_small_expb.dcm", "MR_small_padded.dcm",
             "examples_overlay.dcm"]
    selector = load_selector()
    for name in names:
        refs = [r for r in scan_instances(get_testdata_file(name))
                if not isinstance(r, ReadFailure)]
        assert len(refs) == 1, name
        decision = selector.decide({**series_attributes(refs[0]), "_slices": 1})
        assert decision.selected, (name, decision.reason)


@pytest.mark.parametrize(("value", "selected"), [(2, True), (3, False), (4, False), (5, False),
                                                 (6, True), (2.999, True), (5.001, True)])
def test_numeric_range_bounds_are_inclusive(value, selected):
    sel = selector_from_dict({"exclude": [{"reason": "mid", "all": {"_slices": {"min": 3,
                                                                                 "max": 5}}}]})
    assert sel.decide({**MR, "_slices": value}).selected is selected
    only_min = selector_from_dict({"require": [{"reason": "few", "all": {"Rows": {"min": 64}}}]})
    assert only_min.decide({**MR, "Rows": 64}).selected
    assert only_min.decide({**MR, "Rows": 63}).reason == "few"
    only_max = selector_from_dict({"require": [{"reason": "big", "all": {"Rows": {"max": 512}}}]})
    assert only_max.decide({**MR, "Rows": 512}).selected
    assert only_max.decide({**MR, "Rows": 513}).reason == "big"


# -- attribute values, rule modes and order, messages ---------------------------------------------

def test_attribute_values_bytes_blanks_lists_and_numbers():
    sel = selector_from_dict({"exclude": [{"reason": "absent", "all": {"SeriesDescription": None}},
                                          {"reason": "t2", "any": {"SeriesDescription": "T2"}}]})
    for empty in (None, "", "   ", b" ", [], ["", " "]):
        assert sel.decide({**MR, "SeriesDescription": empty}).reason == "absent"
    assert sel.decide({k: v for k, v in MR.items() if k != "SeriesDescription"}).reason == (
        "absent")
    assert sel.decide({**MR, "SeriesDescription": b"AX T2"}).reason == "t2"  # bytes decoded
    assert sel.decide({**MR, "SeriesDescription": ["", "T2 TSE"]}).reason == "t2"
    assert sel.decide({**MR, "SeriesDescription": "T1"}).selected
    rows = selector_from_dict({"exclude": [{"reason": "r256", "all": {"Rows": "^256$"}}]})
    assert rows.decide(MR).reason == "r256"  # a number is matched as its text


def test_ranges_read_the_first_value_and_never_match_text_or_absence():
    sel = selector_from_dict({"require": [{"reason": "few", "all": {"_slices": {"min": 3}}}]})
    assert sel.decide({**MR, "_slices": ["4", "1"]}).selected
    assert sel.decide({**MR, "_slices": ["1", "4"]}).reason == "few"
    for value in ("many", None, [], "  "):
        assert sel.decide({**MR, "_slices": value}).reason == "few"
    both = selector_from_dict({"require": [{"reason": "r", "all": {"Rows": {}}}]})
    assert both.decide(MR).selected  # no bound: any number
    assert both.decide({**MR, "Rows": "x"}).reason == "r"


def test_all_needs_every_condition_and_any_one():
    conds = {"Modality": "^MR$", "Rows": "^512$"}
    every = selector_from_dict({"exclude": [{"reason": "both", "all": conds}]})
    one = selector_from_dict({"exclude": [{"reason": "either", "any": conds}]})
    assert every.decide(MR).selected and one.decide(MR).reason == "either"
    assert every.decide({**MR, "Rows": 512}).reason == "both"
    assert one.decide({**MR, "Modality": "CT"}).selected


def test_require_comes_first_and_the_first_matching_exclude_names_the_skip():
    doc = {"require": [{"reason": "need_mr", "all": {"Modality": "^MR$"}},
                       {"reason": "need_rows", "all": {"Rows": {"min": 300}}}],
           "exclude": [{"reason": "first", "all": {"Modality": "MR"}},
                       {"reason": "second", "all": {"Modality": "MR"}}]}
    sel = selector_from_dict(doc, "site.yaml")
    assert sel.decide({**MR, "Modality": "CT", "Rows": 1}).reason == "need_mr"
    assert sel.decide(MR).reason == "need_rows"
    assert sel.decide({**MR, "Rows": 300}) == type(sel.decide(MR))(False, "first")
    assert sel.source == "site.yaml" and sel.document == doc
    assert [r.reason for r in sel.require] == ["need_mr", "need_rows"]
    assert [r.mode for r in sel.exclude] == ["all", "all"]
    assert selector_from_dict({}).decide({}).selected  # no rules: everything is selected
    assert selector_from_dict({"require": None, "exclude": None}).source == "built-in"


@pytest.mark.parametrize(("doc", "message"), [
    ([], "rules must be a mapping with 'require' and/or 'exclude'"),
    ({"exclude": ["x"]}, r"exclude\[0\]: each rule needs a 'reason' string"),
    ({"require": [{"reason": 3, "all": {"A": "a"}}]}, r"require\[0\]: each rule needs a 'reason'"),
    ({"exclude": [{"reason": "x"}]}, "exactly one non-empty 'all' or 'any' mapping"),
    ({"exclude": [{"reason": "x", "any": ["A"]}]}, "exactly one non-empty 'all' or 'any'"),
    ({"exclude": [{"reason": "x", "all": {"A": "("}}]}, r"exclude\[0\].A: bad regular expression"),
    ({"exclude": [{"reason": "x", "all": {"A": ["a", "("]}}]}, "bad regular expression"),
    ({"exclude": [{"reason": "x", "all": {"A": ["a", 1]}}]}, "a condition must be a regex"),
    ({"exclude": [{"reason": "x", "all": {"A": {"min": 1, "low": 0}}}]}, "must be a regex"),
    ({"exclude": [{"reason": "x", "all": {"A": 3}}]}, "must be a regex"),
    ({"exclude": [{"reason": "a" * 41, "all": {"A": "a"}}]}, "short snake_case label"),
    ({"exclude": [{"reason": "", "all": {"A": "a"}}]}, "short snake_case label"),
])
def test_malformed_rules_name_where_and_what(doc, message):
    with pytest.raises(RulesError, match=message) as err:
        selector_from_dict(doc, "site.yaml")
    assert str(err.value).startswith("site.yaml")


def test_reason_labels_up_to_forty_characters():
    sel = selector_from_dict({"exclude": [{"reason": "a_1" + "b" * 37, "all": {"A": "a"}}]})
    assert sel.exclude[0].reason == "a_1" + "b" * 37


def test_a_file_is_read_as_json_first_then_yaml(tmp_path):
    from rankiq.service.qa.selection import load_document

    f = tmp_path / "rules"
    f.write_text('{"a": [1, 2]}')
    assert load_document(f) == {"a": [1, 2]}
    f.write_text("a: yes\nb: '1'\n")  # YAML, not JSON
    assert load_document(f) == {"a": True, "b": "1"}
    f.write_text("a: [1, 2\n")
    with pytest.raises(RulesError, match="neither JSON nor YAML") as err:
        load_document(f)
    assert err.value.source == str(f)


@pytest.mark.parametrize(("attrs", "reason"), [
    ({"SOPClass": "Legacy Converted Enhanced MR Image Storage"}, ""),
    ({"SOPClass": "MR Spectroscopy Storage"}, "non_image"),
    ({"SOPClass": "Enhanced MR Image Storage Extra"}, "non_image"),
    ({"Modality": "MRI"}, "not_mr"),
    ({"SeriesDescription": "AX_SCOUT"}, "localizer"),
    ({"SeriesDescription": "Survey"}, "localizer"),
    ({"SeriesDescription": "tri-pilot"}, "localizer"),
    ({"SeriesDescription": "3 plane loc"}, "localizer"),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALISER"]}, "localizer"),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "VELOCITY"]}, "phase"),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "PHASE MAP"]}, "derived"),  # a map first
    ({"ImageType": ["DERIVED", "PRIMARY", "MPR"]}, ""),
])
def test_builtin_rule_details(attrs, reason):
    decision = load_selector().decide({**MR, **attrs})
    assert (decision.selected, decision.reason) == (reason == "", reason)


def test_a_selector_and_its_rules_are_immutable():
    """One selector is shared by every worker of a QA run: none can change it for the others."""
    import dataclasses

    sel = load_selector()
    for obj, name in ((sel, "source"), (sel.require[0], "reason"),
                      (sel.require[0].conditions[0], "keyword"), (sel.decide(MR), "reason")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, "x")
