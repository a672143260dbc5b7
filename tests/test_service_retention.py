"""Where patient data rests: BentoML's task result store keeps no upload.

BentoML stores each ``/qa/submit`` request (multipart body and headers, base64 in JSON) in its
SQLite result store for 24 h. The service scrubs it as soon as the job is saved and deletes the
answers ``RANKIQ_RETENTION`` seconds after they were stored; these tests look for the marker's
bytes (raw and base64, every alignment) in every file of the state directory.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sqlite3
import time
from pathlib import Path

import pytest
import requests
from helpers_service import AUTH, TOKEN, start_server
from rankiq.service.qa.jobs import forget_results, scrub_request
from test_service_hardening import MARKER, marked_slice, marked_zip


def needles(text: str) -> list[bytes]:
    """``text`` as raw bytes and as it shows inside base64 at each of the 3 alignments."""
    raw = text.encode()
    out = [raw]
    for j in range(3):
        whole = raw[j:][: 3 * (len(raw[j:]) // 3)]
        out.append(base64.b64encode(whole))
    return out


def files_holding(root: Path, text: str) -> list[str]:
    """The files under ``root`` that contain ``text`` (raw or base64)."""
    hits = []
    for f in root.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            if any(n in data for n in needles(text)):
                hits.append(f.name)
    return hits


def _store(path: Path) -> str:
    from _bentoml_impl.tasks.result import Sqlite3Store

    Sqlite3Store.init_db(str(path))
    return str(path)


def _request_blob(body: bytes) -> bytes:
    """A request as BentoML's JSONSerde stores it (scope with headers, base64 body)."""
    return json.dumps({"scope": {"type": "http", "method": "POST", "path": "/qa/submit",
                                 "headers": [["authorization", f"Bearer {TOKEN}"]]},
                       "content": base64.b64encode(body).decode()}).encode()


def test_scrub_and_forget_overwrite_the_stored_rows(tmp_path):
    store = _store(tmp_path / "result.db")
    now = dt.datetime.now(dt.UTC)
    with sqlite3.connect(store) as db:
        for task, done in (("old", now - dt.timedelta(hours=2)), ("new", now), ("open", None)):
            db.execute("INSERT INTO result (task_id, name, input, status, result, completed_at)"
                       " VALUES (?, 'qa', ?, 'completed', ?, ?)",
                       (task, _request_blob(marked_slice()), b'{"x": 1}', done))
    assert files_holding(tmp_path, MARKER) and files_holding(tmp_path, TOKEN)
    for task in ("old", "new", "open"):
        assert scrub_request(task, store)
    assert not scrub_request("missing", store)
    assert files_holding(tmp_path, MARKER) == []
    assert files_holding(tmp_path, TOKEN) == []
    assert forget_results(0, store) == 0  # 0: the answers stay readable
    assert forget_results(3600, store) == 1  # only the answer stored 2 h ago
    with sqlite3.connect(store) as db:
        left = sorted(r[0] for r in db.execute("SELECT task_id FROM result"))
        inputs = {r[0] for r in db.execute("SELECT input FROM result")}
    assert left == ["new", "open"]
    assert len(inputs) == 1 and b"content" in inputs.pop()


@pytest.mark.slow
def test_retention_zero_leaves_no_upload_in_the_state_dir():
    server = start_server(workers=1, env={"RANKIQ_RETENTION": "0",
                                          "RANKIQ_API_TOKEN": TOKEN})
    try:
        state = Path(server.env["RANKIQ_STATE_DIR"])
        assert Path(server.env["BENTOML_HOME"]).is_relative_to(state)
        r = requests.post(server.url + "/qa/submit", headers=AUTH, timeout=60,
                          files=[("files", (f"{MARKER}.dcm", marked_slice(5, series="other"))),
                                 ("files", (f"{MARKER}.zip", marked_zip(3)))])
        assert r.status_code == 200
        task = r.json()["task_id"]
        for _ in range(600):
            st = requests.get(server.url + "/qa/status", params={"task_id": task},
                              headers=AUTH, timeout=30).json()
            if st["status"] not in ("in_progress", "pending"):
                break
            time.sleep(0.2)
        got = requests.get(server.url + "/qa/get", params={"task_id": task}, headers=AUTH,
                           timeout=30)
        assert got.status_code == 200 and got.json()["status"] == "completed"
        assert got.json()["summary"]["series"] >= 1 and MARKER not in got.text
        assert not any(Path(server.env["RANKIQ_JOBS_DIR"]).iterdir())
        assert files_holding(state, MARKER) == []
        assert files_holding(state, TOKEN) == []
        # the answer is still there to read again (retention 0 purges uploads, not answers)
        assert requests.get(server.url + "/qa/get", params={"task_id": task}, headers=AUTH,
                            timeout=30).status_code == 200
    finally:
        server.close()
