"""`rankiq qa` end to end on small synthetic DICOM archives: outputs, selection, failures,
flag rates of corrupted vs clean series, thresholds files, and resuming a killed run."""

from __future__ import annotations

import html.parser
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_qa import MODEL_DIR, build, rankiq, read_csv, read_json
from rankiq.service.io import description_label, display_name

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "metadata.json").exists(),
                                reason="models/iqnet-noref not exported yet")


class _Checker(html.parser.HTMLParser):
    """Collects tags, images and unclosed non-void elements of an HTML page."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        for k in ("src", "href"):
            if a.get(k, "").startswith(("http:", "https:", "//")):
                self.external.append(a[k])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def _run_inprocess(archive: Path, out: Path, **kw):
    from rankiq.service.qa.runner import QAOptions, run_qa

    return run_qa([archive], out, QAOptions(model_dir=MODEL_DIR, progress=False, threads=1, **kw))


@pytest.mark.slow
def test_outputs_selection_and_failures(tmp_path):
    truth = build(tmp_path, 3, extras=True, seed=3)
    out = tmp_path / "out"
    proc = rankiq("qa", str(tmp_path / "archive"), "--out", str(out), "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    mr = [t for t in truth if t["corruption"] not in ("localizer", "derived")]
    rows = read_csv(out / "qa.csv")
    assert sorted(r["series_key"] for r in rows) == sorted(t["key"] for t in mr)
    for r in rows:
        assert r["flagged"] in ("true", "false")
        assert (r["flagged"] == "true") == bool(r["reason"])
        assert float(r["p90"]) >= float(r["median"]) > 0
        assert r["model"] == "iqnet-noref" and r["model_version"]
        t = next(t for t in mr if t["key"] == r["series_key"])
        assert int(r["slices"]) == t["slices"]
        assert r["description"] == description_label(t["description"])  # a hash, no free text
        assert r["contrast"] == t["contrast"]
    doc = read_json(out / "qa.json")
    assert [r["series_key"] for r in doc["series"]] == [r["series_key"] for r in rows]
    assert doc["summary"]["series"] == 3 == summary["series"]
    assert doc["summary"]["flagged"] == sum(r["flagged"] == "true" for r in rows)
    # skipped: localiser and derived series by rule, the SR object as non-image
    skipped = {r["reason"]: r for r in read_csv(out / "skipped.csv")}
    loc = next(t for t in truth if t["corruption"] == "localizer")
    der = next(t for t in truth if t["corruption"] == "derived")
    assert skipped["localizer"]["series_key"] == loc["key"]
    assert skipped["derived"]["series_key"] == der["key"]
    names = {display_name(str(p)): p.name for p in (tmp_path / "archive").rglob("*")}
    assert names[skipped["non_image"]["source"]] == "report.dcm"  # sources are hashed names
    # failed: the unreadable file, with a reason
    failed = read_csv(out / "failed.csv")
    assert [names.get(f["source"]) for f in failed] == ["broken.dcm"]
    assert failed[0]["reason"] == "unreadable" and failed[0]["message"]
    # report.html: well-formed, offline, worst slices (image + saliency) of every flagged series
    page = (out / "report.html").read_text()
    chk = _Checker()
    chk.feed(page)
    assert not chk.errors and chk.stack == [], chk.errors
    assert not chk.external
    assert all(src.startswith("data:image/png;base64,") for src in chk.images)
    n_flagged = doc["summary"]["flagged"]
    assert len(chk.images) == sum(2 * min(3, r["slices"]) for r in doc["series"] if r["flagged"])
    for r in doc["series"]:
        assert (f"id='s-{r['series_key']}'" in page) == r["flagged"]
    # Prometheus textfile
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families((out / "rankiq_qa.prom").read_text())}
    series = [s for s in fams["rankiq_qa_series"].samples if s.name.endswith("_total")]
    assert sum(s.value for s in series) == 3
    assert sum(s.value for s in series if s.labels["flagged"] == "true") == n_flagged
    assert {s.labels["reason"] for s in fams["rankiq_qa_skipped_series"].samples
            if s.name.endswith("_total")} == {"localizer", "derived", "non_image"}
    counts = [s for s in fams["rankiq_qa_series_score"].samples if s.name.endswith("_count")]
    assert sum(s.value for s in counts) == 3
    # no patient identifier anywhere in the outputs
    for f in out.iterdir():
        if f.suffix in (".csv", ".json", ".html", ".prom"):
            text = f.read_text()
            assert "SYNTH" not in text and "2.25." not in text, f.name


@pytest.mark.slow
def test_corrupted_series_are_flagged_more_often_than_clean(tmp_path, capsys):
    # Site calibration as the README describes: thresholds from known-good (clean) series
    calib = build(tmp_path / "calib", 6, seed=11, clean_fraction=1.0)
    res = _run_inprocess(tmp_path / "calib" / "archive", tmp_path / "calib_out")
    assert len(calib) == res.doc["summary"]["series"] == 6
    top = max(r["median"] for r in res.doc["series"])
    site = tmp_path / "site.json"
    site.write_text(json.dumps({"thresholds": {"other": top * 1.01, "T1": top * 1.01,
                                               "T1post": top * 1.01, "T2": top * 1.01,
                                               "FLAIR": top * 1.01}}))
    truth = build(tmp_path / "test", 16, seed=12, clean_fraction=0.35)
    by_key = {t["key"]: t for t in truth}
    rates = {}
    for name, thresholds in (("model", None), ("site", site)):
        out = tmp_path / f"out_{name}"
        doc = _run_inprocess(tmp_path / "test" / "archive", out, thresholds_file=thresholds).doc
        flagged = {"clean": [], "corrupted": []}
        for r in doc["series"]:
            kind = "clean" if by_key[r["series_key"]]["corruption"] == "clean" else "corrupted"
            flagged[kind].append(r["flagged"])
        rates[name] = {k: sum(v) / len(v) for k, v in flagged.items()}
    with capsys.disabled():
        print(f"\nQA flag rates (16 series, 64x64): {json.dumps(rates)}")
    assert min(len(v) for v in flagged.values()) >= 3
    assert rates["site"]["corrupted"] > rates["site"]["clean"]


@pytest.mark.slow
def test_resume_after_sigkill_rescores_nothing_and_loses_nothing(tmp_path):
    truth = build(tmp_path, 10, seed=5, slices=(10, 12))
    out = tmp_path / "out"
    exe = Path(sys.executable).parent / "rankiq"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANKIQ_FFT_WORKERS": "1"}
    proc = subprocess.Popen([str(exe), "qa", str(tmp_path / "archive"), "--out", str(out),
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    journal = out / "journal.sqlite"
    done_before = 0
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists():
                try:
                    with sqlite3.connect(journal, timeout=1) as db:
                        done_before = db.execute("SELECT COUNT(*) FROM series WHERE "
                                                 "status = 'done'").fetchone()[0]
                except sqlite3.OperationalError:
                    done_before = 0
                if done_before >= 2:
                    break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and anything it started
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    with sqlite3.connect(journal) as db:
        before = dict(db.execute("SELECT series_key, result FROM series WHERE status = 'done'"))
    assert 2 <= len(before) < 10, f"kill came too late: {len(before)} of 10 done"
    assert not (out / "qa.csv").exists()

    # without --resume the directory is refused (results are never mixed silently)
    again = rankiq("qa", str(tmp_path / "archive"), "--out", str(out), "--no-progress")
    assert again.returncode == 2 and "--resume" in again.stderr
    # different thresholds: refused too
    site = tmp_path / "t.json"
    site.write_text('{"T2": 1.0}')
    other = rankiq("qa", str(tmp_path / "archive"), "--out", str(out), "--resume",
                   "--thresholds", str(site), "--no-progress")
    assert other.returncode == 2 and "thresholds" in other.stderr

    resumed = rankiq("qa", str(tmp_path / "archive"), "--out", str(out), "--resume",
                     "--no-progress", "--json")
    assert resumed.returncode == 0, resumed.stderr
    s = json.loads(resumed.stdout)
    assert s["scored_before"] == len(before)
    assert s["scored_now"] == 10 - len(before)  # nothing rescored
    rows = read_csv(out / "qa.csv")
    keys = [r["series_key"] for r in rows]
    assert len(keys) == len(set(keys)) == 10  # nothing duplicated
    assert set(keys) == {t["key"] for t in truth}  # nothing lost
    with sqlite3.connect(journal) as db:
        after = dict(db.execute("SELECT series_key, result FROM series WHERE run = 1"))
        runs = dict(db.execute("SELECT run, COUNT(*) FROM series GROUP BY run"))
    assert after == before  # the first run's results are untouched
    assert runs == {1: len(before), 2: 10 - len(before)}


def test_bench_qa_reports_rates_and_flag_counts(capsys):
    """`rankiq bench qa` in its own temporary archive: throughput, stage split, flag counts."""
    from rankiq.service.cli import main

    assert main(["bench", "qa", "--series", "3", "--size", "64", "--slices", "3", "4",
                 "--workers", "1", "--threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["series"] == 3 and out["slices"] >= 9 and out["slices_per_s"] > 0
    assert set(out["stage_s"]) == {"decode", "preprocess", "score", "report"}
    assert sum(v["series"] for v in out["flag_rate"].values()) == 3


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])  # the process pool gets the references too
def test_mapped_reference_series_use_the_reference_model(tmp_path, workers):
    """`--references`: a series mapped to a reference is scored against it by iqnet-ref (itself
    as reference: score 0, not flagged); unmapped series keep the no-reference model; a
    reference of another geometry fails that series with a reason, never the run."""
    truth = build(tmp_path, 3, seed=5, slices=(4, 6), clean_fraction=1.0)
    dirs = [Path(t["files"][0]).parent for t in truth]
    assert len(truth[0]["files"]) != len(truth[1]["files"])  # seed 5: 4 and 6 slices
    # series 0 by its folder, to itself; series 1 by its key, to series 0 (other geometry)
    refs = {str(dirs[0]): str(dirs[0]), truth[1]["key"]: str(dirs[0])}
    mapping = tmp_path / "refs.json"
    mapping.write_text(json.dumps({"references": refs}))
    res = rankiq("qa", str(tmp_path / "archive"), "--out", str(tmp_path / "out"),
                 "--references", str(mapping), "--no-progress", "--threads", "1",
                 "--workers", workers)
    assert res.returncode == 0, res.stderr
    rows = {r["series_key"]: r for r in read_json(tmp_path / "out" / "qa.json")["series"]}
    mapped = rows[truth[0]["key"]]
    assert mapped["model"] == "iqnet-ref" and mapped["mode"] == "reference"
    # identical to its reference: ~0 (the norms' 1e-6 offset), far below the threshold
    assert 0 <= mapped["median"] < 0.05 * mapped["threshold"] and mapped["flagged"] is False
    assert rows[truth[2]["key"]]["model"] == "iqnet-noref"
    failed = read_json(tmp_path / "out" / "qa.json")["failed"]
    assert [f["reason"] for f in failed] == ["geometry_mismatch"]
    csv_rows = {r["series_key"]: r for r in read_csv(tmp_path / "out" / "qa.csv")}
    assert csv_rows[truth[0]["key"]]["mode"] == "reference"


@pytest.mark.slow
def test_reference_map_errors_are_one_line(tmp_path):
    build(tmp_path, 1, seed=6, slices=(3, 4))
    bad = tmp_path / "refs.json"
    bad.write_text(json.dumps({"/somewhere": str(tmp_path / "does-not-exist")}))
    res = rankiq("qa", str(tmp_path / "archive"), "--out", str(tmp_path / "out"),
                 "--references", str(bad), "--no-progress")
    assert res.returncode == 2 and "does not exist" in res.stderr
    assert res.stderr.strip().count("\n") == 0
