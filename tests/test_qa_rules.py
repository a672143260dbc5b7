"""QA flag rules end to end: every series through the one scorer, typed results, the rule that
fired in qa.csv, the archive-relative outlier rule, not-assessable series, and site
calibration with `rankiq calibrate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_qa import MODEL_DIR, rankiq, read_csv, read_json

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "metadata.json").exists(),
                                reason="models/iqnet-noref not exported yet")

DESCRIPTIONS = {"T2": "AX T2 TSE", "FLAIR": "AX T2 FLAIR", "T1": "AX T1 SE"}


def _write(root: Path, name: str, family: str, corruption: str = "clean", *, seed: int,
           slices: int = 4, size: int = 64) -> str:
    """One synthetic DICOM series under ``root/name``; returns its series key."""
    from rankiq.service.qa.synth import corrupt, phantom, series_key_of, write_series

    rng = np.random.default_rng(seed)
    img = corrupt(phantom(slices, size, family, rng), corruption, 1.0, rng)
    files = write_series(root / name, img, description=DESCRIPTIONS[family], rng=rng)
    return series_key_of(files[0])


def _qa(paths, out: Path, **kw):
    from rankiq.service.qa.runner import QAOptions, run_qa

    return run_qa(paths, out, QAOptions(model_dir=MODEL_DIR, progress=False, threads=1, **kw))


def _lenient(tmp_path: Path) -> Path:
    """A site file no series reaches, so only the archive rule can flag."""
    f = tmp_path / "lenient.json"
    f.write_text(json.dumps({"thresholds": {"other": 1e9, "T2": 1e9}}))
    return f


def test_archive_outlier_flags_the_corrupted_series_of_a_protocol_group(tmp_path):
    archive = tmp_path / "archive"
    clean = [_write(archive, f"t2_{i}", "T2", seed=i) for i in range(7)]
    bad = _write(archive, "t2_bad", "T2", "blur", seed=99)
    out = tmp_path / "out"
    res = _qa([archive], out, thresholds_file=_lenient(tmp_path))
    rows = {r["series_key"]: r for r in read_csv(out / "qa.csv")}
    assert set(rows) == {*clean, bad}
    assert len({r["protocol"] for r in rows.values()}) == 1  # one protocol group of 8
    assert rows[bad]["rule"] == "archive_outlier" and rows[bad]["status"] == "flagged"
    assert float(rows[bad]["robust_z"]) > 3.5 and rows[bad]["protocol_series"] == "8"
    # the threshold used is the one the archive rule implies, and the statistic is above it
    assert float(rows[bad]["median"]) > float(rows[bad]["threshold"])
    for key in clean:
        assert (rows[key]["status"], rows[key]["rule"], rows[key]["flagged"]) == (
            "passed", "", "false")
        assert float(rows[key]["robust_z"]) <= 3.5
    assert res.doc["summary"]["flagged"] == 1
    assert res.doc["summary"]["rules"] == {"archive_outlier": 1}
    # the outlier's worst slices are in the report like any flagged series'
    page = (out / "report.html").read_text()
    assert f"id='s-{bad}'" in page and page.count("data:image/png;base64,") == 2 * 3
    # computed from the journal when reports are written: a resume with the rule off rescored
    # nothing and flags nothing
    again = _qa([archive], out, thresholds_file=_lenient(tmp_path), resume=True, outlier_z=0.0)
    assert again.scored_now == 0
    assert not any(r["flagged"] == "true" for r in read_csv(out / "qa.csv"))
    assert read_json(out / "qa.json")["archive_rule"]["z"] == 0.0


def test_model_threshold_rule_is_named_and_batch_scores_match_the_one_scorer(tmp_path):
    from rankiq.service.io import read_series
    from rankiq.service.models import ScoringModel
    from rankiq.service.scoring import score_series

    archive = tmp_path / "archive"
    key = _write(archive, "t2", "T2", seed=1)
    out = tmp_path / "out"
    doc = _qa([archive], out).doc
    row = doc["series"][0]
    th = json.loads((MODEL_DIR / "metadata.json").read_text())["qa_thresholds"]["T2"]
    assert row["series_key"] == key and row["threshold"] == th
    assert row["rule"] == ("model_threshold" if row["median"] > th else "")
    assert row["status"] == ("flagged" if row["median"] > th else "passed")
    assert row["in_range"] is True and row["range_reasons"] == []
    # the same numbers as `rankiq score`: one scorer for both
    direct = score_series(ScoringModel.load(MODEL_DIR), read_series(archive)[0])
    assert row["median"] == pytest.approx(direct.median, rel=1e-5)


def test_not_assessable_series_are_neither_flagged_nor_passed(tmp_path):
    """A score the scorer labels out of range is reported as not assessable with its reasons,
    whatever the thresholds, and stays out of the archive groups."""
    from rankiq.service.qa.aggregate import load_thresholds
    from rankiq.service.qa.report import qa_row, write_reports
    from rankiq.service.qa.runner import finish_rows, judge
    from rankiq.service.scoring import SeriesScore

    meta = json.loads((MODEL_DIR / "metadata.json").read_text())
    th = load_thresholds(meta)

    def score(median: float, in_range: bool = True, reasons: tuple[str, ...] = ()):
        s = np.full(4, median, np.float32)
        return SeriesScore(model={"name": "iqnet-noref", "version": "1", "sha256": "x",
                                  "mode": "no-reference", "input_kind": "magnitude"},
                           contrast="T2", scores=s, blank=np.zeros(4, bool), median=median,
                           worst=median, worst_slice=0, timings={}, shape=(4, 64, 64),
                           in_range=in_range, range_reasons=reasons)

    far = judge(score(1e6, False, ("matrix_too_small", "features_out_of_range")), th)
    assert (far.status, far.flagged, far.rule) == ("not_assessable", False, "")
    assert far.range_reasons == ("matrix_too_small", "features_out_of_range")
    assert judge(score(1e6), th).rule == "model_threshold"
    info = {"description": "AX T2 TSE", "contrast": "T2", "rows": 64, "cols": 64,
            "pixel_spacing": [1.0, 1.0]}
    rows = [qa_row({"series_key": f"s{i}", "info": info,
                    "result": judge(score(10.0 + 0.1 * i), th).to_json()}) for i in range(6)]
    rows.append(qa_row({"series_key": "far", "info": info, "result": far.to_json()}))
    finish_rows(rows, outlier_z=3.5)
    by_key = {r["series_key"]: r for r in rows}
    assert by_key["far"]["robust_z"] is None and by_key["far"]["status"] == "not_assessable"
    assert all(r["protocol_series"] == 6 for k, r in by_key.items() if k != "far")
    doc = {"model": {"name": "iqnet-noref", "version": "1", "mode": "no-reference"},
           "thresholds": th.to_dict(), "summary": {"series": 7, "flagged": 0, "skipped": 0,
                                                   "not_assessable": 1, "failed_inputs": 0,
                                                   "slices": 28},
           "series": rows, "skipped": [], "failed": []}
    write_reports(tmp_path, doc, {})
    csv_far = next(r for r in read_csv(tmp_path / "qa.csv") if r["series_key"] == "far")
    assert (csv_far["status"], csv_far["flagged"], csv_far["rule"]) == (
        "not_assessable", "false", "")
    assert csv_far["in_range"] == "false"
    assert csv_far["range_reasons"] == "matrix_too_small features_out_of_range"
    page = (tmp_path / "report.html").read_text()
    assert "not assessable" in page and "matrix_too_small" in page


@pytest.mark.slow
def test_calibrate_then_qa_flags_no_clean_series_and_the_corrupted_copies(tmp_path):
    clean = tmp_path / "clean"
    keys = [_write(clean, f"{fam}_{i}", fam, seed=10 * i + j)
            for j, fam in enumerate(("T2", "FLAIR")) for i in range(3)]
    _write(tmp_path / "t1", "t1_0", "T1", seed=50)  # one T1 series: too few to calibrate
    site = tmp_path / "site.json"
    proc = rankiq("calibrate", str(clean), str(tmp_path / "t1"), "--out", str(site))
    assert proc.returncode == 0, proc.stderr
    doc = read_json(site)
    meta = json.loads((MODEL_DIR / "metadata.json").read_text())
    assert doc["statistic"] == "median" and set(doc["thresholds"]) == {"T2", "FLAIR"}
    prov = doc["provenance"]
    assert prov["model"]["name"] == "iqnet-noref"
    assert prov["model"]["sha256"] == meta["files"]["score.onnx"]
    assert prov["quantile"] == 0.99 and prov["margin"] == 1.1 and "quantile" in prov["rule"]
    assert prov["families"]["T2"]["n"] == 3 and prov["families"]["T2"]["source"] == "site"
    t1 = prov["families"]["T1"]
    assert t1 == {"n": 1, "source": "model", "threshold": meta["qa_thresholds"]["T1"]}
    assert "T1" in proc.stdout and "model" in proc.stdout  # the fallback is reported
    # QA with the site file: none of the clean series flagged
    out = tmp_path / "out"
    res = rankiq("qa", str(clean), "--out", str(out), "--thresholds", str(site),
                 "--no-progress")
    assert res.returncode == 0, res.stderr
    rows = read_csv(out / "qa.csv")
    assert sorted(r["series_key"] for r in rows) == sorted(keys)
    assert not any(r["flagged"] == "true" for r in rows)
    # clearly corrupted copies of the same protocols: flagged by the site rule
    bad = tmp_path / "bad"
    for j, fam in enumerate(("T2", "FLAIR")):
        _write(bad, f"{fam}_blur", fam, "blur", seed=200 + j)
    out2 = tmp_path / "out2"
    res = rankiq("qa", str(bad), "--out", str(out2), "--thresholds", str(site), "--no-progress")
    assert res.returncode == 0, res.stderr
    rows = read_csv(out2 / "qa.csv")
    assert len(rows) == 2 and all(r["rule"] == "site_threshold" for r in rows)
    for r in rows:
        assert float(r["threshold"]) == pytest.approx(doc["thresholds"][r["contrast"]])


def test_calibrate_threshold_is_the_stated_quantile_rule(tmp_path):
    clean = tmp_path / "clean"
    for i in range(4):
        _write(clean, f"t2_{i}", "T2", seed=300 + i)
    site = tmp_path / "site.json"
    proc = rankiq("calibrate", str(clean), "--out", str(site), "--quantile", "0.5",
                  "--margin", "1.25", "--json")
    assert proc.returncode == 0, proc.stderr
    medians = json.loads(proc.stdout)["families"]["T2"]["values"]
    assert len(medians) == 4
    assert read_json(site)["thresholds"]["T2"] == pytest.approx(
        float(np.quantile(medians, 0.5)) * 1.25, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--quantile", "1.5"], "--quantile"),
    (["--margin", "0"], "--margin"),
    ([], "no scorable series"),
])
def test_calibrate_bad_input_is_one_line_exit_2(tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = rankiq("calibrate", str(empty), "--out", str(tmp_path / "site.json"), *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "site.json").exists()


def test_pydicom_mr_files_are_scored_by_batch_qa(tmp_path):
    """Real MR files marked DERIVED\\SECONDARY (a slice, an MPR) are scored, not skipped."""
    import shutil

    from pydicom.data import get_testdata_file

    (tmp_path / "in").mkdir()
    for name in ("MR_small.dcm", "examples_overlay.dcm"):
        shutil.copy(get_testdata_file(name), tmp_path / "in" / name)
    doc = _qa([tmp_path / "in"], tmp_path / "out").doc
    assert doc["summary"]["series"] == 2 and doc["skipped"] == [] and doc["failed"] == []
    assert sorted((r["slices"], r["status"] != "") for r in doc["series"]) == [(1, True)] * 2
