"""POST /qa on a live service (BentoML task: submit, status, get), a job surviving the SIGKILL of
its worker, and a real Prometheus (Debian package) evaluating every PromQL expression of the
Grafana dashboard and of the recording/alert rules against that service."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from helpers_qa import MODEL_DIR, REPO, build

requests = pytest.importorskip("requests")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODEL_DIR / "metadata.json").exists(),
                       reason="models/iqnet-noref not exported yet"),
]
RULES = REPO / "deploy" / "prometheus" / "rules" / "rankiq.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "rankiq.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _get(url: str, **kw):
    try:
        return requests.get(url, timeout=5, **kw)
    except requests.RequestException:
        return None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("qa_service")


@pytest.fixture(scope="module")
def server(work):
    """`bentoml serve service.app:RankIQ` on 127.0.0.1 with its own BentoML home and jobs dir;
    site thresholds flag every series (so the flag-rate alert has something to fire on)."""
    site = work / "site_thresholds.json"
    low = 1e-3  # far below any score of either shipped model
    site.write_text(json.dumps({"other": low, "T1": low, "T1post": low, "T2": low,
                                "FLAIR": low}))
    port = _free_port()
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "RANKIQ_JOBS_DIR":
           str(work / "jobs"), "RANKIQ_QA_THRESHOLDS": str(site), "OMP_NUM_THREADS": "1",
           "RANKIQ_FFT_WORKERS": "1", "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("RANKIQ_API_TOKEN", None)
    log = (work / "server.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve",
                             "rankiq.service.app:RankIQ", "--host", "127.0.0.1", "--port",
                             str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: proc.poll() is not None or (r := _get(url + "/readyz")) is not None
              and r.status_code == 200, 180, "the service to be ready")
        assert proc.poll() is None, (work / "server.log").read_text()[-3000:]
        yield {"url": url, "port": port, "jobs": work / "jobs"}
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="module")
def prometheus(work, server):
    """A real Prometheus scraping the service every second with the repo's rules, plus a dead
    target (a stopped replica) for the RankIQDown alert."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("the Debian prometheus package is not installed (make test-deps)")
    port, dead = _free_port(), _free_port()
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
           "rule_files": [str(RULES)],
           "scrape_configs": [{"job_name": "rankiq", "static_configs": [
               {"targets": [f"127.0.0.1:{server['port']}", f"127.0.0.1:{dead}"]}]}]}
    (work / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log = (work / "prometheus.log").open("w")
    proc = subprocess.Popen([exe, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: (r := _get(url + "/-/ready")) is not None and r.status_code == 200, 60,
              "Prometheus to be ready")
        # first scrape of the service done before any traffic (counters start from a sample)
        _wait(lambda: _query(url, 'up{job="rankiq"} == 1'), 30, "the first scrape")
        yield url
    finally:
        _stop(proc)
        log.close()


def _query(url: str, expr: str) -> list:
    r = _get(url + "/api/v1/query", params={"query": expr})
    assert r is not None and r.status_code == 200, f"{expr}: {r and r.text}"
    return r.json()["data"]["result"]


def _zip(src: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(src))
    return dest


def _task_state(url: str, task_id: str) -> str:
    r = _get(url + "/qa/status", params={"task_id": task_id})
    return r.json()["status"] if r is not None and r.status_code == 200 else ""


def test_qa_job_survives_a_killed_worker(work, server, prometheus):
    url = server["url"]
    truth = build(work / "big", 12, seed=21, slices=(12, 14))
    upload = _zip(work / "big" / "archive", work / "big.zip")
    with upload.open("rb") as f:
        r = requests.post(url + "/qa/submit", files=[("files", ("big.zip", f))], timeout=30)
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    job = server["jobs"] / task_id
    journal = job / "out" / "journal.sqlite"

    def done() -> int:
        if not journal.exists():
            return 0
        try:
            with sqlite3.connect(journal, timeout=1) as db:
                return db.execute("SELECT COUNT(*) FROM series WHERE status = 'done'"
                                  ).fetchone()[0]
        except sqlite3.OperationalError:
            return 0

    _wait(lambda: done() >= 2, 180, "the job to score 2 series", every=0.05)
    pid = json.loads((job / "state.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)  # the worker running the job dies mid-job
    with sqlite3.connect(journal) as db:
        before = dict(db.execute("SELECT series_key, result FROM series WHERE status = 'done'"))
    assert 2 <= len(before) < 12, f"kill came too late ({len(before)} of 12 done)"

    state = _wait(lambda: _task_state(url, task_id) in ("completed", "failed")
                  and _task_state(url, task_id), 240, "the job to finish after the restart")
    assert state == "completed"
    result = requests.get(url + "/qa/get", params={"task_id": task_id}, timeout=30).json()
    assert result["status"] == "completed" and result["recovered"] is True
    keys = [row["series_key"] for row in result["series"]]
    assert len(keys) == len(set(keys)) == 12 and set(keys) == {t["key"] for t in truth}
    with sqlite3.connect(journal) as db:
        kept = dict(db.execute("SELECT series_key, result FROM series WHERE run = 1"))
        runs = dict(db.execute("SELECT run, COUNT(*) FROM series GROUP BY run"))
    assert kept == before and runs == {1: len(before), 2: 12 - len(before)}  # nothing rescored


@pytest.fixture(scope="module")
def small_job(work, server, prometheus):
    """A small QA job run to completion (once per module, whichever test asks first):
    ``(truth, answer)``; its series and metrics are also what the dashboard test reads."""
    url = server["url"]
    truth = build(work / "small", 2, seed=22, extras=True)
    upload = _zip(work / "small" / "archive", work / "small.zip")
    extra = work / "notes.txt"
    extra.write_text("not an image")
    with upload.open("rb") as f, extra.open("rb") as g:
        r = requests.post(url + "/qa/submit", files=[("files", ("a.zip", f)),
                                                     ("files", ("b.txt", g))], timeout=30)
    task_id = r.json()["task_id"]
    _wait(lambda: _task_state(url, task_id) == "completed", 120, "the small job")
    return truth, requests.get(url + "/qa/get", params={"task_id": task_id}, timeout=30).json()


def test_qa_job_table_and_failures(small_job):
    truth, doc = small_job
    mr = {t["key"] for t in truth if t["corruption"] not in ("localizer", "derived")}
    assert {r["series_key"] for r in doc["series"]} == mr
    assert all(r["flagged"] for r in doc["series"])  # the site thresholds flag everything
    assert {s["reason"] for s in doc["skipped"]} == {"localizer", "derived", "non_image"}
    assert sorted(f["reason"] for f in doc["failed"]) == ["unreadable", "unsupported"]
    assert doc["summary"]["series"] == 2 and doc["thresholds"]["source"].endswith(".json")


def _expressions() -> list[tuple[str, str]]:
    """Every PromQL expression of the dashboard (its variables set as Grafana sets them for
    "All": ``$instance`` -> ``.*``) and of the rules."""
    exprs = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        exprs += [(f"panel {panel['title']!r}", t["expr"].replace("$instance", ".*"))
                  for t in panel["targets"]]
    for var in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if var["type"] == "query":  # label_values(SELECTOR, label): the selector has data
            selector = var["query"]["query"].removeprefix("label_values(").rsplit(",", 1)[0]
            exprs.append((f"variable {var['name']}", selector))
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            exprs.append((rule.get("record") or rule.get("alert"), rule["expr"]))
    return exprs


def test_every_dashboard_and_rule_expression_returns_data(work, server, prometheus, small_job):
    url = server["url"]
    # its own batch of five flagged series: the flag-rate alert needs >= 5 series in the hour
    build(work / "five", 5, seed=23, slices=(3, 4))
    with _zip(work / "five" / "archive", work / "five.zip").open("rb") as f:
        task_id = requests.post(url + "/qa/submit", files=[("files", ("five.zip", f))],
                                timeout=30).json()["task_id"]
    _wait(lambda: _task_state(url, task_id) == "completed", 120, "the five-series job")
    dcm = next((work / "small" / "archive").rglob("IM0001.dcm"))
    for _ in range(3):  # scored slices (rankiq_score, slices scored)
        with dcm.open("rb") as f:
            assert requests.post(url + "/score", files={"image": f}, timeout=60).status_code == 200
    for _ in range(15):  # a burst of refused inputs (rejection-rate spike)
        r = requests.post(url + "/score", files={"image": ("x.bin", b"not an image")},
                          timeout=30)
        assert r.status_code == 415
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "rankiq-overview"
    exprs = _expressions()
    assert len(exprs) >= 25 and any(n == "RankIQFlagRateSpike" for n, _ in exprs)
    missing = []
    for name, expr in exprs:
        try:
            _wait(lambda e=expr: _query(prometheus, e), 45, name, every=1)
        except AssertionError:
            missing.append(f"{name}: {expr}")
    assert not missing, "expressions without data:\n" + "\n".join(missing)


def test_promtool_accepts_the_shipped_config_and_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    cfg = REPO / "deploy" / "prometheus" / "prometheus.yml"
    for args in (["check", "config", str(cfg)], ["check", "rules", str(RULES)]):
        out = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_qa_submit_goes_through_the_request_guard(server):
    url = server["url"]
    # a text value where a file belongs, and a truncated multipart body: 400 with a JSON reason
    r = requests.post(url + "/qa/submit", files={"files": (None, "not a file")}, timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert "must be a file upload" in r.json()["detail"]
    r = requests.post(url + "/qa/submit", data=b"--xyz\r\nContent-Disposition: form-data; "
                      b"name=\"files\"; filename=\"a.zip\"\r\n\r\nPK",
                      headers={"Content-Type": "multipart/form-data; boundary=xyz"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
