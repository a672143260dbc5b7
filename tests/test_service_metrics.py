"""Custom metrics with two workers (Prometheus multiprocess mode), scraped directly and by a real
Prometheus server (Debian package `prometheus`, started here on 127.0.0.1 with a temp config).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest
import requests
from helpers_service import AUTH, TOKEN, mr_small, noisy, series_zip, slice_dicom, start_server
from rankiq.service.liveserver import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    srv = start_server(workers=2, env={"RANKIQ_API_TOKEN": TOKEN})
    yield srv
    srv.close()


def _sample_sum(text: str, name: str) -> float:
    """Sum of every sample of metric ``name`` (all label sets) in exposition text."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.eE+-]+)$", line)
        if m:
            total += float(m.group(2))
    return total


def _fresh(server, method: str, path: str, **kw) -> requests.Response:
    """One request on a new connection (so the kernel may hand it to either worker)."""
    with requests.Session() as s:
        return s.request(method, server.url + path, headers=AUTH, timeout=60, **kw)


def test_two_workers_aggregate_custom_series(server):
    workers = {_fresh(server, "GET", "/models").json()["worker"]["pid"] for _ in range(40)}
    assert len(server.pids()) >= 2
    # counts since now: other tests of this module may already have used the server
    start = _fresh(server, "GET", "/metrics").text
    slices0, scores0, rejected0 = (_sample_sum(start, name) for name in (
        "rankiq_slices_scored_total", "rankiq_score_count", "rankiq_inputs_rejected_total"))
    base = mr_small()
    sent_slices = 0
    served_by: set[int] = set()
    for i in range(12):
        img = series_zip(noisy(base, 0.05, seed=i)[None].repeat(2, axis=0), series=f"s{i}")
        r = _fresh(server, "POST", "/score", files={"image": ("a", img)})
        assert r.status_code == 200, r.text
        sent_slices += 2
    for _ in range(3):
        r = _fresh(server, "POST", "/score", files={"image": ("a", b"junk" * 64)})
        assert r.status_code == 415
    for _ in range(30):  # learn which workers answer /models, then scrape from each
        served_by.add(_fresh(server, "GET", "/models").json()["worker"]["pid"])
    workers |= served_by
    # every scrape, whichever worker answers it, sees the sum over both workers
    for _ in range(6):
        text = _fresh(server, "GET", "/metrics").text
        assert _sample_sum(text, "rankiq_slices_scored_total") - slices0 == sent_slices
        assert _sample_sum(text, "rankiq_score_count") - scores0 == sent_slices
        assert _sample_sum(text, "rankiq_inputs_rejected_total") - rejected0 == 3
        info = [ln for ln in text.splitlines() if ln.startswith("rankiq_model_info{")]
        assert len(info) == 2  # one per model, merged over the workers (livemax)
        assert all('provider="' in ln and ln.endswith(" 1.0") for ln in info)
    assert len(workers) == 2, "both workers should have answered at least one request"
    assert set(workers) <= set(server.pids())


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="needs the Debian package prometheus (make test-deps)")
def test_real_prometheus_scrapes_custom_series(server, tmp_path):
    r = _fresh(server, "POST", "/score", files={"image": ("a", slice_dicom(mr_small()))})
    assert r.status_code == 200
    (tmp_path / "token").write_text(TOKEN)
    port = free_port()
    target = server.url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: rankiq
    authorization:
      type: Bearer
      credentials_file: {tmp_path / "token"}
    static_configs:
      - targets: ["{target}"]
""")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        api = f"http://127.0.0.1:{port}/api/v1/query"
        query = 'sum(rankiq_slices_scored_total{job="rankiq"})'
        result = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not result:
            time.sleep(1)
            try:
                body = requests.get(api, params={"query": query}, timeout=5).json()
            except (requests.ConnectionError, ValueError):
                continue
            assert body["status"] == "success"
            result = body["data"]["result"]
        assert result, "Prometheus never scraped rankiq_slices_scored_total"
        assert float(result[0]["value"][1]) >= 1
        up = requests.get(api, params={"query": 'up{job="rankiq"}'}, timeout=5).json()
        assert up["data"]["result"][0]["value"][1] == "1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
