"""Durable QA jobs for the service's ``POST /qa`` background task (``@bentoml.task``).

BentoML runs a task in the worker that accepted it and keeps only the request and, at the end,
the response in its result store: a worker killed mid-job would leave the task ``in_progress``
for ever (a silent loss). So each job persists itself under ``JOBS_DIR/<task_id>/``:

    inputs/           the uploaded files (copied out of BentoML's temporary files first)
    state.json        {"status": "running"|"completed"|"failed", "created", "updated", ...}
    lock              flock()ed by the process running the job (released by the kernel on death)
    out/              the QA run: journal.sqlite (resumable), qa.json, qa.csv, report.html...

When a worker starts, :func:`recover_jobs` (in a background thread) takes over every job left
``running`` whose lock is free (its process died), resumes it from its journal (nothing
rescored, lost or duplicated) and writes the outcome into BentoML's result store, so
``GET /qa/status`` and ``GET /qa/get`` answer as if nothing happened. A job that cannot be
resumed is marked ``failed`` there with a clear message; a task whose worker died before its job
directory existed is marked failed ("resubmit") after a grace period.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rankiq.service.errors import RankIQError

log = logging.getLogger("rankiq.qa.jobs")
ORPHAN_GRACE_S = 60.0  # a task row without a job directory this old lost its worker
TASK_NAME = "qa"


def jobs_dir() -> Path:
    """``$RANKIQ_JOBS_DIR``, else ``$RANKIQ_STATE_DIR/jobs``, else ``~/.rankiq/jobs``
    (created, mode 0700: it holds uploads)."""
    state = os.environ.get("RANKIQ_STATE_DIR", "").strip()
    d = Path(os.environ.get("RANKIQ_JOBS_DIR") or (Path(state) / "jobs" if state else
                                                   Path.home() / ".rankiq" / "jobs"))
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def purge_job(job_dir: Path) -> None:
    """Delete a finished job's directory (uploads, journal, outputs)."""
    shutil.rmtree(job_dir, ignore_errors=True)


def purge_expired(root: Path, retention_s: float, *, now: float | None = None) -> list[str]:
    """Delete every finished job (``completed``/``failed``) that ended more than
    ``retention_s`` seconds ago; returns their ids. Running jobs are never touched."""
    now = time.time() if now is None else now
    purged = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        try:
            job = Job(root, d.name)
        except RankIQError:
            continue
        if job.state().get("status") not in ("completed", "failed"):
            continue
        try:
            ended = (d / "state.json").stat().st_mtime
        except OSError:
            continue
        if now - ended >= retention_s:
            purge_job(d)
            purged.append(job.id)
    return purged


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _safe_id(job_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", job_id):
        raise RankIQError(f"bad job id {job_id!r}")
    return job_id


class Job:
    """One job directory (see the module docstring)."""

    def __init__(self, root: Path, job_id: str) -> None:
        self.id = _safe_id(job_id)
        self.dir = root / self.id
        self.inputs = self.dir / "inputs"
        self.out = self.dir / "out"
        self._lock_fd: int | None = None

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """``state.json`` (``{}`` when missing or unreadable)."""
        try:
            return json.loads((self.dir / "state.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def set_state(self, **fields: Any) -> None:
        """Update ``state.json`` atomically."""
        st = {**self.state(), **fields, "updated": _now()}
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(st))
        os.replace(tmp, self.dir / "state.json")

    # -- lock ------------------------------------------------------------------------------
    def try_lock(self) -> bool:
        """Take the job's lock (non-blocking); ``False`` if a live process holds it."""
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        """Release the lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def create_job(root: Path, uploads: Sequence[Path], job_id: str | None = None) -> Job:
    """Persist a new job: copy the uploads into ``inputs/`` and write ``state.json``.

    Upload names are not trusted (content is sniffed by :mod:`rankiq.service.io`): files are stored
    as ``upload_000`` ... in upload order.
    """
    job = Job(root, job_id or uuid.uuid4().hex)
    job.inputs.mkdir(parents=True, exist_ok=True)
    if not job.try_lock():
        raise RankIQError(f"job {job.id} is already running")
    for i, src in enumerate(uploads):
        shutil.copyfile(src, job.inputs / f"upload_{i:03d}")
    job.set_state(status="running", created=_now(), pid=os.getpid(), uploads=len(uploads))
    return job


def run_job(job: Job, run: Callable[[Path, Path, bool], dict[str, Any]]) -> dict[str, Any]:
    """Run (or resume) ``job`` with ``run(inputs_dir, out_dir, resume) -> response`` while
    holding its lock; records ``completed`` or ``failed`` (with the message) in its state.

    Returns the response dict (also saved as ``response.json``).
    """
    try:
        resume = (job.out / "journal.sqlite").exists()
        job.set_state(status="running", pid=os.getpid())
        try:
            response = run(job.inputs, job.out, resume)
        except RankIQError as exc:
            response = {"job_id": job.id, "status": "failed", "reason": exc.reason,
                        "error": str(exc)}
            job.set_state(status="failed", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - recorded, never a silent loss
            log.exception("QA job %s failed", job.id)
            response = {"job_id": job.id, "status": "failed", "reason": "internal",
                        "error": f"internal error: {type(exc).__name__}"}
            job.set_state(status="failed", error=response["error"])
        else:
            job.set_state(status="completed")
        (job.dir / "response.json").write_text(json.dumps(response))
        return response
    finally:
        job.unlock()


# -- BentoML result store --------------------------------------------------------------------
def _store_path() -> str | None:
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        return BentoMLContainer.result_store_file.get()
    except Exception:  # noqa: BLE001 - no BentoML container: nothing to update
        return None


def store_result(task_id: str, response: dict[str, Any], *, failed: bool,
                 store: str | None = None) -> bool:
    """Write a task's final response into BentoML's result store (its ``result`` table and
    JSON serialisation, BentoML 1.4), for tasks whose original worker died.

    Returns whether a row was updated.
    """
    path = store or _store_path()
    if not path or path == ":memory:" or not Path(path).exists():
        return False
    body = json.dumps(response).encode()
    serialized = json.dumps({
        "status": 500 if failed else 200,
        "headers": [["content-type", "application/json"], ["content-length", str(len(body))]],
        "content": base64.b64encode(body).decode("ascii"),
    })
    status = "failed" if failed else "completed"
    with sqlite3.connect(path, timeout=30) as db:
        cur = db.execute("UPDATE result SET status = ?, result = ?, completed_at = ? "
                         "WHERE task_id = ? AND completed_at IS NULL",
                         (status, serialized, dt.datetime.now(dt.UTC), task_id))
        return cur.rowcount == 1


def _orphan_tasks(store: str, root: Path, older_than_s: float) -> list[str]:
    """In-progress ``qa`` tasks without a job directory, created more than ``older_than_s`` ago."""
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than_s)
    with sqlite3.connect(store, timeout=30) as db:
        try:
            rows = db.execute("SELECT task_id, created_at FROM result WHERE name = ? AND "
                              "status = 'in_progress' AND completed_at IS NULL",
                              (TASK_NAME,)).fetchall()
        except sqlite3.OperationalError:  # no table yet
            return []
    out = []
    for task_id, created in rows:
        try:
            when = dt.datetime.fromisoformat(str(created))
        except ValueError:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        if when < cutoff and not (root / str(task_id)).exists():
            out.append(str(task_id))
    return out


def recover_jobs(root: Path, run: Callable[[Path, Path, bool], dict[str, Any]], *,
                 store: str | None = None, grace_s: float = ORPHAN_GRACE_S) -> list[str]:
    """Resume every ``running`` job whose process died; returns the job ids recovered.

    Also fails (with a message) tasks whose worker died before their job directory existed.
    Safe to call from several workers at once: each job's flock admits one of them.
    """
    recovered = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        try:
            job = Job(root, d.name)
        except RankIQError:
            continue
        if job.state().get("status") != "running" or not job.try_lock():
            continue
        log.warning("resuming QA job %s after its worker stopped", job.id)
        job.set_state(recovered=job.state().get("recovered", 0) + 1)
        response = run_job(job, run)
        store_result(job.id, response, failed=response.get("status") == "failed", store=store)
        recovered.append(job.id)
    path = store or _store_path()
    if path and Path(path).exists():
        deadline = time.monotonic() + grace_s
        while True:
            for task_id in _orphan_tasks(path, root, grace_s):
                store_result(task_id, {"job_id": task_id, "status": "failed", "reason": "lost",
                                       "error": "the worker handling this QA job stopped before "
                                                "the job was saved; please resubmit"},
                             failed=True, store=path)
            if time.monotonic() >= deadline:
                break
            time.sleep(min(grace_s, 5.0))
    return recovered


def start_recovery(root: Path, run: Callable[[Path, Path, bool], dict[str, Any]]
                   ) -> threading.Thread:
    """:func:`recover_jobs` in a daemon thread (called when a service worker starts)."""
    t = threading.Thread(target=recover_jobs, args=(root, run), name="rankiq-qa-recovery",
                         daemon=True)
    t.start()
    return t
