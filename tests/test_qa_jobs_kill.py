"""QA jobs survive the SIGKILL of a worker: 20 jobs queued on a live 2-worker server, the worker
owning most of the unfinished ones killed; every task must end ``completed`` exactly once (no
"resubmit", no ``/qa/get`` 5xx, no status leaving ``completed``/``failed`` once reached)."""

from __future__ import annotations

import collections
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers_qa import MODEL_DIR
from helpers_service import brain_slice, series_zip, start_server

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (MODEL_DIR / "metadata.json").exists(),
                                reason="models/iqnet-noref not exported yet")]
JOBS = 20


def _states(jobs: Path) -> dict[str, dict]:
    out = {}
    for d in jobs.iterdir():
        try:
            out[d.name] = json.loads((d / "state.json").read_text())
        except (OSError, ValueError):
            continue
    return out


def test_queued_jobs_survive_a_killed_worker():
    server = start_server(workers=2, env={"RANKIQ_ORT_THREADS": "1"})
    try:
        upload = series_zip(np.stack([brain_slice(64)] * 4))
        ids = []
        for _ in range(JOBS):
            r = requests.post(server.url + "/qa/submit", files=[("files", ("s.zip", upload))],
                              timeout=60)
            assert r.status_code == 200, r.text
            ids.append(r.json()["task_id"])
        jobs = Path(server.env["RANKIQ_JOBS_DIR"])
        states = _states(jobs)
        assert set(ids) <= set(states)  # saved before their ids were answered
        owners = collections.Counter(st["pid"] for st in states.values()
                                     if st["status"] in ("queued", "running"))
        assert owners, "every job ended before the kill"
        victim, owned = owners.most_common(1)[0]
        os.kill(victim, signal.SIGKILL)

        history: dict[str, list[str]] = {t: [] for t in ids}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            for t in ids:
                st = requests.get(server.url + "/qa/status", params={"task_id": t}, timeout=30)
                assert st.status_code == 200, st.text
                status = st.json()["status"]
                if not history[t] or history[t][-1] != status:
                    history[t].append(status)
                if status in ("completed", "failed"):
                    got = requests.get(server.url + "/qa/get", params={"task_id": t},
                                       timeout=30)
                    assert got.status_code < 500 and "resubmit" not in got.text, got.text
            if all(h[-1] in ("completed", "failed") for h in history.values()):
                break
            time.sleep(0.5)
        ended = {t: h for t, h in history.items() if h[-1] in ("completed", "failed")}
        assert len(ended) == JOBS, {t: h for t, h in history.items() if t not in ended}
        for t, h in history.items():  # one end, never left
            assert [s for s in h if s in ("completed", "failed")] == [h[-1]], (t, h)
            assert h[-1] == "completed", (t, h)
            doc = requests.get(server.url + "/qa/get", params={"task_id": t}, timeout=30).json()
            assert doc["status"] == "completed" and doc["summary"]["series"] == 1, doc
        recovered = [t for t, st in _states(jobs).items() if st.get("recovered")]
        assert len(recovered) >= 1 and len(recovered) <= owned
        assert all(st["status"] == "completed" for st in _states(jobs).values())
    finally:
        server.close()
