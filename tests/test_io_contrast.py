"""Contrast family guess from descriptions, timings and contrast-agent tags."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_io import mr_dataset, write
from rankiq.service.io import CONTRAST_FAMILIES, read_series
from rankiq.service.io.contrast import guess_contrast


@pytest.mark.parametrize("description, expected", [
    ("AX T1 SE", "T1"), ("AXT1", "T1"), ("AXT1PRE", "T1"), ("AXT1POST", "T1post"),
    ("T1 MPRAGE +C", "T1post"), ("sag mprage", "T1"), ("T1_GAD", "T1post"),
    ("AXT2", "T2"), ("t2_tse_tra", "T2"), ("COR T2 FS", "T2"),
    ("AXFLAIR", "FLAIR"), ("T2 FLAIR", "FLAIR"), ("T1 FLAIR", "T1"), ("T1 FLAIR POST", "T1post"),
    ("T2* GRE", "other"), ("SWI", "other"), ("DWI b1000", "other"), ("LOCALIZER", "other"),
])
def test_description_rules(description, expected):
    assert guess_contrast(description) == expected


@pytest.mark.parametrize("te, tr, ti, seq, expected", [
    (120.0, 9000.0, 2500.0, "SE\\IR", "FLAIR"),
    (100.0, 4000.0, None, "SE", "T2"),
    (12.0, 500.0, None, "SE", "T1"),
    (3.0, 2000.0, 900.0, "IR\\GR", "T1"),  # MPRAGE
    (30.0, 2000.0, None, "SE", "other"),  # proton density
    (None, None, None, "", "other"),
])
def test_timing_rules(te, tr, ti, seq, expected):
    got = guess_contrast("", echo_time_ms=te, repetition_time_ms=tr, inversion_time_ms=ti,
                         scanning_sequence=seq)
    assert got == expected and got in CONTRAST_FAMILIES


def test_contrast_agent_tag_turns_t1_into_t1post_in_a_dicom(tmp_path):
    ds = mr_dataset(np.ones((16, 16)), description="AX SE", echo_time=10, repetition_time=450)
    assert read_series(write(ds, tmp_path / "pre.dcm"))[0].contrast == "T1"
    ds.ContrastBolusAgent = "Gadovist 10 ml"
    series = read_series(write(ds, tmp_path / "post.dcm"))[0]
    assert series.contrast == "T1post" and series.attributes["contrast_agent"] is True
