"""The service describes itself honestly and answers every error in its own shape, on a live
server with a token: the OpenAPI document (``/docs.json``) lists ``/models``, the
401/413/415/422/503 answers, the bearer scheme, a version and the task statuses; the API page
loads nothing from elsewhere; BentoML's and Starlette's own errors (validation, unknown paths,
wrong methods, a missing task id) come back as ``{"error", "detail"}``; requests leave no
temporary directories behind."""

from __future__ import annotations

import os
import re
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import requests
from helpers_service import AUTH, TOKEN, brain_slice, slice_dicom, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server-tmp")
    srv = start_server(workers=1, env={"RANKIQ_API_TOKEN": TOKEN, "TMPDIR": str(tmp)})
    srv.tmp = tmp
    yield srv
    srv.close()


def _shape(r: requests.Response, status: int, reason: str) -> None:
    assert r.status_code == status, r.text
    doc = r.json()
    assert isinstance(doc, dict) and doc["error"] == reason and isinstance(doc["detail"], str)


def test_openapi_document_is_complete(server):
    r = requests.get(server.url + "/docs.json", headers=AUTH, timeout=30)
    assert r.status_code == 200
    doc = r.json()
    assert doc["info"]["version"] == version("rankiq")
    assert doc["components"]["securitySchemes"]["bearer"] == {
        **doc["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearer": []}]
    paths = doc["paths"]
    assert "/models" in paths and paths["/readyz"]["get"]["security"] == []
    for route in ("/score", "/compare", "/qa"):
        codes = set(paths[route]["post"]["responses"])
        assert {"200", "400", "401", "413", "415", "422", "503"} <= codes, (route, codes)
        assert "500" not in codes
    assert {"401", "413", "415"} <= set(paths["/qa/submit"]["post"]["responses"])
    statuses = doc["components"]["schemas"]["TaskStatusResponse"]["properties"]["status"]
    assert {"in_progress", "completed", "failed"} <= set(statuses["enum"])
    assert doc["components"]["schemas"]["Error"]["required"] == ["error", "detail"]
    assert requests.get(server.url + "/docs.json", timeout=30).status_code == 401


def test_api_page_loads_nothing_from_elsewhere(server):
    r = requests.get(server.url + "/", headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<script" not in r.text.lower() and "docs.json" in r.text
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", r.text, re.I)


def test_framework_errors_use_the_service_shape(server):
    _shape(requests.get(server.url + "/qa/status", headers=AUTH, timeout=30), 400,
           "bad_request")
    _shape(requests.get(server.url + "/qa/get", params={"task_id": "nope"}, headers=AUTH,
                        timeout=30), 404, "not_found")
    _shape(requests.get(server.url + "/no-such-route", headers=AUTH, timeout=30), 404,
           "not_found")
    _shape(requests.get(server.url + "/score", headers=AUTH, timeout=30), 405,
           "method_not_allowed")
    # a flag the guard accepts ("yes") but BentoML's pydantic model then validates
    image = slice_dicom(brain_slice(64))
    r = requests.post(server.url + "/score", files={"image": ("a", image)},
                      data={"saliency": '"yes"'}, headers=AUTH, timeout=60)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        _shape(r, 400, "bad_request")
    r = requests.post(server.url + "/score", files={"image": ("a", b"not an image")},
                      headers=AUTH, timeout=60)
    assert r.status_code in (415, 422) and set(r.json()) == {"error", "detail"}, r.text


def _directories(root: Path) -> set[Path]:
    """Every directory under ``root`` (not ``root`` itself). ``os.walk`` skips a directory the
    server removes while it is being listed, where ``Path.rglob`` raises FileNotFoundError."""
    return {Path(d) for d, _, _ in os.walk(root)} - {root}


def test_requests_leave_no_temporary_directories(server):
    tmp: Path = server.tmp
    before = _directories(tmp)
    image = slice_dicom(brain_slice(64))
    for files in ({"image": ("a.dcm", image)}, {"image": ("b.dcm", b"junk")},
                  {"image_a": ("a", image), "image_b": ("b", image)}):
        route = "/compare" if "image_a" in files else "/score"
        assert requests.post(server.url + route, files=files, headers=AUTH,
                             timeout=60).status_code < 500
    r = requests.post(server.url + "/qa", files=[("files", ("a", image))], headers=AUTH,
                      timeout=120)
    assert r.status_code == 200, r.text
    # the last request's directory is released just after its answer is sent: allow for that
    deadline = time.monotonic() + 30
    while True:
        left = _directories(tmp) - before
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not left, sorted(str(p.relative_to(tmp)) for p in left)
    assert not [p for p in tmp.iterdir() if p.name.startswith(("bentoml-request-",
                                                               "rankiq-request-"))]
