"""Hardening of the HTTP service against a hostile client, on real live servers.

* A DICOM whose identifying elements and file names (zip member paths included) carry a marker
  string goes through every route (score, compare, qa submit/status/get, POST /qa, models,
  metrics), valid and truncated; the marker must appear in no response, server log line,
  ``/metrics`` text or QA job file (the uploads themselves excepted).
* Request-level checks: POST /qa is guarded like /qa/submit, duplicate Authorization headers,
  lowercase ``bearer``, long file names, random paths and the metrics labels, CT refused.
* Safe defaults: ``rankiq serve`` refuses a non-loopback bind without a token, retention 0
  purges QA jobs, two servers keep separate state.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers_io import dicom_bytes, mr_dataset, uid
from helpers_service import AUTH, TOKEN, brain_slice, start_server

MARKER = "QQPHIMARK7"
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
               "InstitutionName", "ReferringPhysicianName", "StudyDescription",
               "SeriesDescription", "OperatorsName", "PerformingPhysicianName", "StudyID",
               "InstitutionAddress", "PatientAddress", "OtherPatientIDs")
MAX_BYTES = 2 * 1024 * 1024


def marked_slice(i: int = 0, *, series: str = "phi-series") -> bytes:
    """A 64x64 MR slice whose every identifying element carries ``MARKER``."""
    image = brain_slice(64)
    ds = mr_dataset(np.clip(np.rint(image), 0, 32767).astype(np.int16),
                    series_uid=uid(series), instance=i + 1, position=(0.0, 0.0, 3.0 * i))
    for keyword in IDENTIFYING:
        value = "19700101" if keyword == "PatientBirthDate" else f"{MARKER}^{keyword[:6]}"
        setattr(ds, keyword, value)
    data = dicom_bytes(ds)
    return data.replace(b"19700101", MARKER[:8].encode())  # a malformed DA quoting the marker


def marked_zip(n: int = 3, *, truncated: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n):
            data = marked_slice(i)
            zf.writestr(f"DOE_{MARKER}/PHI-{MARKER}/slice{i}.dcm",
                        data[: len(data) // 2] if truncated and i == n - 1 else data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server():
    srv = start_server(workers=1, env={"RANKIQ_API_TOKEN": TOKEN,
                                       "RANKIQ_MAX_UPLOAD_BYTES": str(MAX_BYTES),
                                       "RANKIQ_MAX_SLICES": "16"})
    yield srv
    srv.close()


def _post(server, route: str, files, headers=AUTH, data=None) -> requests.Response:
    return requests.post(server.url + route, files=files, data=data or {}, headers=headers,
                         timeout=120)


def _wait_task(server, task_id: str, *, check: bool = True) -> dict:
    for _ in range(300):
        st = requests.get(server.url + "/qa/status", params={"task_id": task_id},
                          headers=AUTH, timeout=30)
        assert st.status_code == 200 and not (check and MARKER in st.text)
        if st.json()["status"] not in ("in_progress", "pending"):
            break
        time.sleep(0.5)
    got = requests.get(server.url + "/qa/get", params={"task_id": task_id}, headers=AUTH,
                       timeout=30)
    assert not (check and MARKER in got.text), got.text
    return got.json()


@pytest.mark.slow
def test_marker_leaks_nowhere(server):
    name = f"{MARKER}_DOE_JANE.dcm"
    single, truncated = marked_slice(), marked_slice()[:700]
    texts = []
    for files in ({"image": (name, single)}, {"image": (name, truncated)},
                  {"image": (f"{MARKER}.zip", marked_zip())},
                  {"image": (f"{MARKER}.zip", marked_zip(truncated=True))},
                  {"image": (name, single), "reference": (name + "2", single)}):
        r = _post(server, "/score", files)
        assert r.status_code in (200, 413, 422), r.text
        texts.append(r.text)
    r = _post(server, "/compare", {"image_a": (name, single), "image_b": (name, truncated)})
    assert r.status_code == 422
    texts.append(r.text)
    r = _post(server, "/compare", {"image_a": (name, single), "image_b": (name, single)})
    assert r.status_code == 200, r.text
    texts.append(r.text)
    # batch QA: a good series, a truncated member and a truncated single file
    r = _post(server, "/qa/submit", [("files", (f"{MARKER}.zip", marked_zip(4, truncated=True))),
                                     ("files", (name, truncated))])
    assert r.status_code == 200, r.text
    doc = _wait_task(server, r.json()["task_id"])
    assert doc["status"] == "completed", doc
    assert len(doc["failed"]) >= 2 and all(f["source"].startswith("upload_") or
                                           f["source"].startswith("file-")
                                           for f in doc["failed"])
    texts.append(str(doc))
    for path in ("/models", "/metrics", "/readyz"):
        texts.append(requests.get(server.url + path, headers=AUTH, timeout=30).text)
    for text in texts:
        assert MARKER not in text and "DOE" not in text, text[:2000]
    assert MARKER not in server.log(tail=10_000_000)
    jobs = Path(server.env["RANKIQ_JOBS_DIR"])
    for f in jobs.rglob("*"):
        if f.is_file() and "inputs" not in f.parts and f.name != "journal.sqlite":
            assert MARKER.encode() not in f.read_bytes(), f.name


@pytest.mark.slow
def test_post_qa_is_guarded_like_submit(server):
    big = b"\0" * (MAX_BYTES + 1)
    for route in ("/qa", "/qa/submit"):
        r = _post(server, route, [("files", ("a.dcm", big))])
        assert r.status_code == 413 and r.json()["error"] == "too_large"
        r = _post(server, route, [("files", (None, "not a file"))])
        assert r.status_code == 400 and r.json()["error"] == "bad_request"


@pytest.mark.slow
def test_auth_header_edge_cases(server):
    one = marked_slice()
    r = _post(server, "/score", {"image": ("a", one)},
              headers={"Authorization": f"bearer {TOKEN}"})
    assert r.status_code == 200  # RFC 7235: the scheme is case-insensitive
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("GET", "/models")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Authorization", "Bearer wrong")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 400 and json.loads(resp.read())["error"] == "bad_request"
    conn.close()


@pytest.mark.slow
def test_long_file_name_is_400_not_500(server):
    r = _post(server, "/score", {"image": ("x" * 300 + ".dcm", marked_slice())})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert "x" * 50 not in r.text


@pytest.mark.slow
def test_ct_is_refused_with_a_reason(server):
    ds = mr_dataset(np.ones((32, 32)) * 100)
    ds.Modality = "CT"
    r = _post(server, "/score", {"image": ("ct", dicom_bytes(ds))})
    assert r.status_code == 422 and r.json()["error"] == "unsupported_modality"


@pytest.mark.slow
def test_random_paths_do_not_grow_metrics(server):
    # its own token, not MARKER: the access log records request paths, and the marker test of
    # this module reads that log whatever order the tests run in
    token = "QQPATHTOKEN"

    def burst(tag: str) -> list[str]:
        for i in range(20):
            requests.get(server.url + f"/random-{token}-{tag}{i}", headers=AUTH, timeout=10)
            requests.get(server.url + f"/unauth-{tag}{i}", timeout=10)
        text = requests.get(server.url + "/metrics", headers=AUTH, timeout=10).text
        assert token not in text and "random-" not in text and "unauth-" not in text
        return sorted(line.split(" ")[0] for line in text.splitlines()
                      if line.startswith("bentoml_service_request"))

    first = burst("a")
    assert any('endpoint="/other"' in line for line in first)
    assert burst("b") == first  # the same label sets: bounded


def test_serve_refuses_a_public_bind_without_token(monkeypatch, capsys):
    from rankiq.service.commands.serve_cmd import is_loopback, run_serve

    monkeypatch.delenv("RANKIQ_API_TOKEN", raising=False)
    args = argparse.Namespace(host="0.0.0.0", port=0, workers=None, models=None,
                              insecure=False)
    assert run_serve(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RANKIQ_API_TOKEN" in err and "--insecure" in err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_state_dir_is_locked_per_instance(tmp_path):
    from rankiq.service.commands.serve_cmd import serve_env

    env = serve_env({"RANKIQ_STATE_DIR": str(tmp_path / "s")})
    assert env["BENTOML_HOME"].startswith(str(tmp_path / "s"))
    with pytest.raises(RuntimeError, match="another running server"):
        serve_env({"RANKIQ_STATE_DIR": str(tmp_path / "s")})
    fresh = serve_env({})
    assert fresh["RANKIQ_STATE_DIR"] != env["RANKIQ_STATE_DIR"]


@pytest.mark.slow
def test_retention_zero_purges_and_two_servers_keep_separate_state():
    a = start_server(workers=1, env={"RANKIQ_RETENTION": "0"})
    b = start_server(workers=1)
    try:
        assert a.env["RANKIQ_JOBS_DIR"] != b.env["RANKIQ_JOBS_DIR"]
        r = requests.post(a.url + "/qa/submit", files=[("files", ("x", marked_zip(3)))],
                          timeout=60)
        assert r.status_code == 200
        doc = _wait_task(a, r.json()["task_id"], check=False)
        assert doc["status"] == "completed" and doc["summary"]["series"] == 1
        assert not any(Path(a.env["RANKIQ_JOBS_DIR"]).iterdir())  # nothing left on disk
        r = requests.post(b.url + "/qa/submit", files=[("files", ("x", marked_zip(3)))],
                          timeout=60)
        doc = _wait_task(b, r.json()["task_id"], check=False)
        assert doc["status"] == "completed"
        assert any(Path(b.env["RANKIQ_JOBS_DIR"]).iterdir())  # default retention keeps it
        for srv in (a, b):
            m = requests.get(srv.url + "/metrics", timeout=10)
            assert m.status_code == 200 and "rankiq_inputs_rejected_total" in m.text
            assert requests.get(srv.url + "/qa/status", params={"task_id": "nope"},
                                timeout=10).status_code < 500
    finally:
        a.close()
        b.close()
