"""Durable QA jobs for the service's ``POST /qa`` background task (``@bentoml.task``).

BentoML runs a task in the worker that accepted it and keeps only the request and, at the end,
the response in its result store: a worker killed mid-job would leave the task ``in_progress``
for ever (a silent loss). So each job persists itself under ``JOBS_DIR/<task_id>/``:

    inputs/           the uploaded files, ``upload_000``... in upload order
    state.json        {"status": "queued"|"running"|"completed"|"failed", "created", ...}
    lock              flock()ed by the worker that owns the job, from the moment it is accepted
                      until it ends (the kernel releases it when that process dies)
    out/              the QA run: journal.sqlite (resumable), qa.json, qa.csv, report.html...
    response.json     the final answer (also written into BentoML's result store)

A job is saved *before* its task id is answered (:func:`accept_job`, called by
:class:`rankiq.service.qa.route.QAJobRecorder` on ``POST /qa/submit``): a client never holds the
id of a job that is not on disk. Every worker runs :func:`recover_jobs` in a background loop: a
job ``queued`` or ``running`` whose lock is free lost its worker; the first worker to take the
lock resumes it from its journal (nothing rescored, lost or duplicated) and writes the outcome
into BentoML's result store, so ``GET /qa/status`` and ``GET /qa/get`` answer as if nothing
happened. A finished job whose worker died before BentoML stored its answer gets its
``response.json`` stored. Each task ends ``completed`` or ``failed`` exactly once: the store is
only written where it has no answer yet, and only for jobs whose owner is dead.
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

from rankiq.service.atomic import write_json
from rankiq.service.errors import RankIQError

log = logging.getLogger("rankiq.qa.jobs")
ORPHAN_GRACE_S = 60.0  # a task row without a job directory this old was never answered
STORE_GRACE_S = 10.0  # a finished job's answer not in the store after this lost its worker
RECOVERY_INTERVAL_S = 2.0
TASK_NAME = "qa"
FAILED_HTTP_STATUS = 422  # a failed job's /qa/get answer (the task's status is "failed")
# job id -> lock fd of the jobs this process owns (accepted, not yet ended)
_OWNED: dict[str, int] = {}
_OWNED_GUARD = threading.Lock()


def jobs_dir() -> Path:
    """``$RANKIQ_JOBS_DIR``, else ``$RANKIQ_STATE_DIR/jobs``, else ``~/.rankiq/jobs``
    (created, mode 0700: it holds uploads)."""
    from rankiq.service.settings import ServiceSettings

    d = ServiceSettings.from_env().jobs_dir
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
        write_json(self.dir / "state.json", st, indent=None, allow_nan=True)

    # -- lock ------------------------------------------------------------------------------
    def try_lock(self) -> bool:
        """Take the job's lock (non-blocking); ``False`` if a live process holds it (this one
        included: a job this process owns is adopted with :meth:`adopt`, not locked twice)."""
        try:
            fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # purged meanwhile
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        with _OWNED_GUARD:
            _OWNED[self.id] = fd
        return True

    def adopt(self) -> bool:
        """Take over the lock this process already holds for the job (accepted by
        :func:`accept_job` in this worker); ``False`` when it holds none."""
        with _OWNED_GUARD:
            fd = _OWNED.get(self.id)
        if fd is None:
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        """Release the lock."""
        if self._lock_fd is not None:
            with _OWNED_GUARD:
                if _OWNED.get(self.id) == self._lock_fd:
                    del _OWNED[self.id]
            os.close(self._lock_fd)
            self._lock_fd = None

    def finished(self) -> bool:
        """Whether the job ended (``completed`` or ``failed``)."""
        return self.state().get("status") in ("completed", "failed")

    def response(self) -> dict[str, Any] | None:
        """``response.json`` of a finished job (``None`` when absent)."""
        try:
            return json.loads((self.dir / "response.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None


def accept_job(root: Path, job_id: str, write_inputs: Callable[[Path], int]) -> Job:
    """Save a just-submitted job as ``queued``, owned (locked) by this process until it ends.

    ``write_inputs(inputs_dir)`` writes the uploads as ``upload_000``... and returns how many.
    The lock is taken before ``state.json`` exists, so no other worker can see the job as
    ownerless.
    """
    job = Job(root, job_id)
    job.inputs.mkdir(parents=True, exist_ok=True)
    if not job.try_lock():
        raise RankIQError(f"job {job.id} already exists")
    try:
        n = write_inputs(job.inputs)
        job.set_state(status="queued", created=_now(), pid=os.getpid(), uploads=n)
    except BaseException:
        job.unlock()
        purge_job(job.dir)
        raise
    return job


def create_job(root: Path, uploads: Sequence[Path], job_id: str | None = None) -> Job:
    """The job to run for a task: the one :func:`accept_job` saved in this process, else a new
    one (``POST /qa``, or a submit the recorder did not see) with the uploads copied into
    ``inputs/``.

    Upload names are not trusted (content is sniffed by :mod:`rankiq.service.io`): files are stored
    as ``upload_000`` ... in upload order.
    """
    job = Job(root, job_id or uuid.uuid4().hex)
    if job.adopt():
        return job
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

    Returns the response dict (also saved as ``response.json``); a job that already ended
    (taken over and finished by another worker) is not run again: its saved response is
    returned.
    """
    try:
        if job.finished() and (done := job.response()) is not None:
            return done
        resume = (job.out / "journal.sqlite").exists()
        job.set_state(status="running", pid=os.getpid())
        try:
            response = run(job.inputs, job.out, resume)
        except RankIQError as exc:
            response = failed_response(job.id, exc.reason, str(exc))
        except Exception as exc:  # noqa: BLE001 - recorded, never a silent loss
            log.error("QA job %s failed: %s", job.id, type(exc).__name__)
            response = failed_response(job.id, "internal", f"internal error: "
                                       f"{type(exc).__name__}")
        # the answer first, then the state: a finished state always has its answer on disk
        write_json(job.dir / "response.json", response, indent=None, allow_nan=True)
        if response.get("status") == "failed":
            job.set_state(status="failed", error=response["error"])
        else:
            job.set_state(status="completed")
        return response
    finally:
        job.unlock()


def failed_response(job_id: str, reason: str, detail: str) -> dict[str, Any]:
    """A failed job's answer: the service's error shape plus ``job_id`` and ``status``."""
    return {"job_id": job_id, "status": "failed", "error": reason, "detail": detail}


# -- BentoML result store --------------------------------------------------------------------
def _store_path() -> str | None:
    from rankiq.service.bentoml_adapter import result_store_file

    return result_store_file()


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
        "status": FAILED_HTTP_STATUS if failed else 200,
        "headers": [["content-type", "application/json"], ["content-length", str(len(body))]],
        "content": base64.b64encode(body).decode("ascii"),
    })
    status = "failed" if failed else "completed"
    with sqlite3.connect(path, timeout=30) as db:
        cur = db.execute("UPDATE result SET status = ?, result = ?, completed_at = ? "
                         "WHERE task_id = ? AND completed_at IS NULL",
                         (status, serialized, dt.datetime.now(dt.UTC), task_id))
        return cur.rowcount == 1


#: what a task's stored request becomes (BentoML's JSON request serialisation, no body, no headers)
EMPTY_REQUEST = json.dumps({"scope": {"type": "http", "method": "POST", "path": "/qa/submit",
                                      "headers": []}, "content": ""})


def _open_store(path: str) -> sqlite3.Connection:
    """A connection to the result store that overwrites what it deletes (``secure_delete``:
    freed pages and cells are zeroed, so old bodies do not linger in the file's free space)."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA secure_delete = ON")
    return db


def _truncate_wal(db: sqlite3.Connection) -> bool:
    """Copy the write-ahead log into the database and empty it (its old frames hold the rows
    as first written); False when a reader kept it from completing (retried by the purger)."""
    try:
        busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error:
        return False
    return bool(busy) and busy[0] == 0


def scrub_request(task_id: str, store: str | None = None) -> bool:
    """Replace the request BentoML stored with task ``task_id`` (the whole multipart body, i.e.
    the uploads, and the request headers, i.e. the token) by an empty one, overwriting the old
    bytes. The job's own copy of the uploads (``inputs/``, purged with the job) is what recovery
    uses; BentoML only reads the stored request for ``/qa/retry``, which then has nothing to
    run and fails. Returns whether a row was scrubbed."""
    path = store or _store_path()
    if not path or path == ":memory:" or not Path(path).exists():
        return False
    db = _open_store(path)
    try:
        n = db.execute("UPDATE result SET input = ? WHERE task_id = ? AND name = ?",
                       (EMPTY_REQUEST.encode(), task_id, TASK_NAME)).rowcount
        _truncate_wal(db)
    finally:
        db.close()
    return n == 1


def forget_results(retention_s: float, store: str | None = None, *,
                   now: dt.datetime | None = None) -> int:
    """Delete the ``qa`` tasks whose answer was stored more than ``retention_s`` seconds ago
    from BentoML's result store (it keeps them 24 h otherwise), overwriting them, and empty
    its write-ahead log. ``retention_s`` 0 deletes nothing: the answer stays readable (it
    holds scores and hashes, no upload; see ``docs/operations.md``). Returns rows deleted."""
    path = store or _store_path()
    if not path or path == ":memory:" or not Path(path).exists():
        return 0
    db = _open_store(path)
    try:
        n = 0
        if retention_s > 0:
            cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=retention_s)
            try:
                n = db.execute("DELETE FROM result WHERE name = ? AND completed_at IS NOT NULL "
                               "AND completed_at < ?", (TASK_NAME, cutoff)).rowcount
            except sqlite3.OperationalError:  # no table yet
                n = 0
        _truncate_wal(db)
    finally:
        db.close()
    return n


def _open_tasks(store: str) -> dict[str, dt.datetime]:
    """``qa`` tasks of the result store without an answer yet: task id -> created (UTC)."""
    with sqlite3.connect(store, timeout=30) as db:
        try:
            rows = db.execute("SELECT task_id, created_at FROM result WHERE name = ? AND "
                              "completed_at IS NULL", (TASK_NAME,)).fetchall()
        except sqlite3.OperationalError:  # no table yet
            return {}
    out = {}
    for task_id, created in rows:
        try:
            when = dt.datetime.fromisoformat(str(created))
        except ValueError:
            continue
        out[str(task_id)] = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return out


def _take_over(job: Job) -> bool:
    """Lock an ownerless unfinished job (its worker died); ``False`` when a live process owns
    it or it has ended."""
    if job.state().get("status") not in ("queued", "running") or not job.try_lock():
        return False
    if job.finished():  # it ended between the look and the lock
        job.unlock()
        return False
    return True


def recover_jobs(root: Path, run: Callable[[Path, Path, bool], dict[str, Any]], *,
                 store: str | None = None, grace_s: float = ORPHAN_GRACE_S,
                 store_grace_s: float = STORE_GRACE_S) -> list[str]:
    """One pass: resume every ``queued``/``running`` job whose worker died, store the answer of
    finished jobs whose worker died before BentoML stored it, and fail store rows that never got
    a job directory (their id was never answered). Returns the job ids resumed.

    Safe to run from several workers at once: each job's flock admits one of them, and the
    store is only written where it has no answer yet.
    """
    recovered = []
    path = store or _store_path()
    has_store = path is not None and path != ":memory:" and Path(path).exists()
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        try:
            job = Job(root, d.name)
        except RankIQError:
            continue
        if not _take_over(job):
            continue
        log.warning("resuming QA job %s after its worker stopped", job.id)
        job.set_state(recovered=job.state().get("recovered", 0) + 1)
        response = run_job(job, run)
        store_result(job.id, response, failed=response.get("status") == "failed", store=path)
        recovered.append(job.id)
    if not has_store or path is None:
        return recovered
    now = dt.datetime.now(dt.UTC)
    for task_id, created in _open_tasks(path).items():
        try:
            job = Job(root, task_id)
        except RankIQError:
            continue
        if job.dir.exists():
            if not job.finished():
                continue  # queued/running with a live owner (or just resumed above)
            try:
                age = time.time() - (job.dir / "state.json").stat().st_mtime
            except OSError:
                continue
            answer = job.response()
            if age >= store_grace_s and answer is not None and job.try_lock():
                job.unlock()  # no live owner: its worker died before BentoML stored the answer
                store_result(task_id, answer, failed=answer.get("status") == "failed",
                             store=path)
        elif (now - created).total_seconds() >= grace_s:
            store_result(task_id, failed_response(
                task_id, "lost", "the worker stopped before this QA job was accepted; "
                "its id was never answered"), failed=True, store=path)
    return recovered


def recovery_loop(root: Path, run: Callable[[Path, Path, bool], dict[str, Any]], *,
                  interval_s: float = RECOVERY_INTERVAL_S) -> None:
    """:func:`recover_jobs` every ``interval_s`` seconds, for ever (a worker's daemon thread)."""
    while True:
        try:
            recover_jobs(root, run)
        except (OSError, sqlite3.Error) as exc:
            log.error("QA job recovery pass failed: %s", type(exc).__name__)
        time.sleep(interval_s)


def start_recovery(root: Path, run: Callable[[Path, Path, bool], dict[str, Any]]
                   ) -> threading.Thread:
    """:func:`recovery_loop` in a daemon thread (called when a service worker starts)."""
    t = threading.Thread(target=recovery_loop, args=(root, run), name="rankiq-qa-recovery",
                         daemon=True)
    t.start()
    return t
