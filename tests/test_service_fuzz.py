"""The short hostile corpus (``helpers_hostile``) against a live server with a token: no 5xx,
no answer slower than the request timeout, and the marker string in no answer, QA result, server
log line or ``/metrics`` (``make fuzz`` runs thousands of cases plus schemathesis)."""

from __future__ import annotations

import time

import pytest
import requests
from helpers_hostile import MARKER, hostile_cases, send
from helpers_service import AUTH, TOKEN, start_server

pytestmark = pytest.mark.slow

TIMEOUT_S = 60
SERVER_ENV = {"RANKIQ_API_TOKEN": TOKEN, "RANKIQ_MAX_UPLOAD_BYTES": str(4 * 1024 * 1024),
              "RANKIQ_MAX_SERIES_BYTES": str(8 * 1024 * 1024), "RANKIQ_MAX_SLICES": "64",
              "RANKIQ_REQUEST_TIMEOUT": str(TIMEOUT_S)}


def check_server(url: str, log: str, tasks: list[str], deadline_s: float = 300) -> list[str]:
    """Wait for the QA ``tasks`` to end; returns problems found (5xx, marker strings)."""
    problems = []
    deadline = time.monotonic() + deadline_s
    for task in tasks:
        while time.monotonic() < deadline:
            st = requests.get(url + "/qa/status", params={"task_id": task}, headers=AUTH,
                              timeout=30)
            if st.status_code >= 500 or st.json().get("status") != "in_progress":
                break
            time.sleep(0.3)
        got = requests.get(url + "/qa/get", params={"task_id": task}, headers=AUTH, timeout=30)
        if got.status_code >= 500 or MARKER in got.text:
            problems.append(f"qa task: {got.status_code} {got.text[:300]}")
    metrics = requests.get(url + "/metrics", headers=AUTH, timeout=30).text
    if MARKER in metrics:
        problems.append("marker in /metrics")
    if MARKER in log:
        problems.append("marker in the server log")
    return problems


@pytest.fixture(scope="module")
def server():
    srv = start_server(workers=1, env=SERVER_ENV)
    yield srv
    srv.close()


def test_short_hostile_corpus(server):
    problems, tasks = [], []
    cases = hostile_cases(seed=12, mutated=40)
    for case in cases:
        status, took, text = send(server.url, case, AUTH)
        if status >= 500 or took > TIMEOUT_S or MARKER in text:
            problems.append(f"{case.name}: {status} in {took:.1f} s: {text[:300]}")
        if case.route == "/qa/submit" and status == 200:
            tasks.append(requests.models.complexjson.loads(text)["task_id"])
    problems += check_server(server.url, server.log(tail=50_000_000), tasks)
    assert not problems, "\n".join(problems)
    assert len(cases) >= 80
