"""``POST /qa`` for the service: the logic behind the thin ``@bentoml.task`` method in
``service/app.py``.

Routes (BentoML task API): ``POST /qa/submit`` (multipart, one or more ``files``: zips or DICOM
files) answers ``{"task_id", "status"}``; ``GET /qa/status?task_id=`` and ``GET /qa/get?task_id=``
give the state and, once completed, the result: the same per-series table as ``qa.json``
(``series``, ``skipped``, ``failed``, ``summary``, ``model``, ``thresholds``) plus ``job_id``.

Settings (environment): ``RANKIQ_JOBS_DIR`` (job directories, default
``$RANKIQ_STATE_DIR/jobs``), ``RANKIQ_RETENTION`` (seconds a finished job's files and its
answer in BentoML's result store stay, 0 = files deleted as soon as the job ends, the answer
kept readable; the request body BentoML stores with each task, i.e. the uploads, is scrubbed as
soon as the job is saved),
``RANKIQ_QA_THRESHOLDS`` and ``RANKIQ_QA_RULES`` (site files, as ``rankiq qa --thresholds`` /
``--rules``), ``RANKIQ_QA_MODEL`` (model name, default ``iqnet-noref``) and the service's
``RANKIQ_MODELS_DIR`` / ``RANKIQ_ORT_THREADS``. Jobs survive a worker restart: see
:mod:`rankiq.service.qa.jobs`.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rankiq.service.guard import replay_body
from rankiq.service.qa.jobs import (
    accept_job,
    create_job,
    forget_results,
    jobs_dir,
    purge_expired,
    purge_job,
    run_job,
    scrub_request,
    start_recovery,
)
from rankiq.service.qa.metrics import QAMetrics, make_qa_metrics
from rankiq.service.qa.runner import QAOptions, run_qa

log = logging.getLogger("rankiq.qa.route")


@functools.cache
def service_qa_metrics() -> QAMetrics:
    """The QA metrics on prometheus_client's default registry (once per process, lazily, like
    :func:`rankiq.service.metrics.service_metrics`, so multiprocess mode is already set up)."""
    return make_qa_metrics(None)


def _options() -> QAOptions:
    """A job's settings: the service's read limits (zip entries, decoded bytes, slices...) and
    a header-walk budget of ``RANKIQ_REQUEST_TIMEOUT`` seconds, as for ``/score``."""
    from rankiq.service.settings import ServiceSettings, read_limits

    st = ServiceSettings.from_env()
    return QAOptions(
        model_dir=st.models_dir / st.qa_model,
        thresholds_file=st.qa_thresholds,
        rules_file=st.qa_rules,
        workers=1, threads=st.ort_threads, progress=False, textfile=False,
        limits=read_limits(st), max_slices=st.max_slices,
        max_scan_seconds=float(st.request_timeout))


def _on_series(row: dict[str, Any], result: dict[str, Any]) -> None:
    """Service metrics for one scored series: QA counters and the per-slice score histogram."""
    from rankiq.service.metrics import service_metrics

    service_qa_metrics().observe_series(row, result["statistic"])
    blank = set(result.get("blank", []))
    service_metrics().observe_scores(model=row["model"], mode=result["mode"],
                                     contrast=row["contrast"], input_kind=result["input_kind"],
                                     scores=[s for i, s in enumerate(result["scores"])
                                             if i not in blank])


def _run(inputs: Path, out: Path, resume: bool) -> dict[str, Any]:
    """One QA run over a job's inputs; the response is the qa.json document."""
    from rankiq.service.metrics import service_metrics

    opts = _options()
    opts.resume = resume
    res = run_qa([inputs], out, opts, on_series=_on_series)
    m = service_qa_metrics()
    if res.scored_before == 0:  # count skips and unreadable inputs once per job
        for row in res.doc["skipped"]:
            m.skipped.labels(reason=row["reason"]).inc()
        for row in res.doc["failed"]:
            m.failed.labels(reason=row["reason"]).inc()
            service_metrics().reject(row["reason"])
    m.jobs.labels(status="completed").inc()
    return {"status": "completed", **res.doc}


def run_task(files: Sequence[Path], task_id: str | None) -> dict[str, Any]:
    """Body of the ``qa`` task: run the job (saved at submit time by :class:`QAJobRecorder`,
    or now from ``files``), return the table (a failed job: ``status: failed``, ``error``,
    ``detail``)."""
    from rankiq.service.settings import ServiceSettings

    retention = ServiceSettings.from_env().retention_s
    job = create_job(jobs_dir(), list(files), task_id)
    response = run_job(job, _run)
    if response.get("status") == "failed":
        service_qa_metrics().jobs.labels(status="failed").inc()
    if retention == 0:  # the response goes to BentoML's result store; nothing stays on disk
        purge_job(job.dir)
    else:
        purge_expired(jobs_dir(), retention)
    return {"job_id": job.id, **response}


def save_uploads(body: bytes, content_type: str, dest: Path, field: str = "files") -> int:
    """Write the file parts named ``field`` of a multipart body as ``dest/upload_000``... (in
    upload order; client file names are never used). Returns how many were written."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    count = 0
    state: dict[str, Any] = {"header": bytearray(), "value": bytearray(), "out": None}

    def on_part_begin() -> None:
        state["out"] = None

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        nonlocal count
        if bytes(state["header"]).strip().lower() == b"content-disposition":
            _, opts = parse_options_header(bytes(state["value"]))
            if opts.get(b"name") == field.encode() and (b"filename" in opts
                                                        or b"filename*" in opts):
                state["out"] = (dest / f"upload_{count:03d}").open("wb")
                count += 1
        state["header"], state["value"] = bytearray(), bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["out"] is not None:
            state["out"].write(data[start:end])

    def on_part_end() -> None:
        if state["out"] is not None:
            state["out"].close()
            state["out"] = None

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        parser.write(body)
        parser.finalize()
    finally:
        on_part_end()
    return count


class QAJobRecorder:
    """ASGI middleware for ``POST /qa/submit``: saves the job (its uploads, ``queued``, locked by
    this worker) when BentoML answers its task id, *before* that answer leaves, so a task whose
    worker dies while it waits in the queue is resumed by another worker (see
    :mod:`rankiq.service.qa.jobs`). Runs behind :class:`rankiq.service.guard.RequestGuard`, which
    has checked and buffered the body (at most ``RANKIQ_MAX_UPLOAD_BYTES``).
    """

    def __init__(self, app: Any, path: str = "/qa/submit") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope.get("path") != self.path
                or scope.get("method") != "POST"):
            await self.app(scope, receive, send)
            return
        import json

        from anyio import to_thread

        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        ctype = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                      if k.lower() == b"content-type"), "")
        replay = replay_body(body, receive)

        status = 0

        async def record(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status == 200:
                try:
                    task_id = str(json.loads(message.get("body", b"{}"))["task_id"])
                except (ValueError, KeyError, TypeError):
                    task_id = ""
                if task_id:
                    try:
                        await to_thread.run_sync(lambda: accept_job(
                            jobs_dir(), task_id, lambda d: save_uploads(body, ctype, d)))
                    except Exception as exc:  # noqa: BLE001 - the task still runs from its files
                        log.error("QA job %s not saved at submit: %s", task_id,
                                  type(exc).__name__)
                    try:  # the uploads rest in the job (purged by retention), not in the store
                        await to_thread.run_sync(lambda: scrub_request(task_id))
                    except (OSError, sqlite3.Error) as exc:
                        log.error("QA job %s request not scrubbed: %s", task_id,
                                  type(exc).__name__)
            await send(message)

        await self.app(scope, replay, record)


def start_purger(interval_s: float = 60.0) -> None:
    """Delete finished jobs older than ``RANKIQ_RETENTION`` every ``interval_s`` seconds (a
    daemon thread per worker; deleting twice is harmless)."""
    import threading
    import time

    from rankiq.service.settings import ServiceSettings

    retention = ServiceSettings.from_env().retention_s

    def loop() -> None:
        while True:
            try:
                purge_expired(jobs_dir(), retention)
                forget_results(retention)
            except (OSError, sqlite3.Error) as exc:
                log.error("QA job purge failed: %s", type(exc).__name__)
            time.sleep(max(1.0, min(interval_s, retention or interval_s)))

    threading.Thread(target=loop, name="rankiq-qa-purge", daemon=True).start()


def init_label_sets() -> None:
    """Create the QA series of every known label set at 0, so Prometheus sees each first
    increment (a counter series that appears at 1 loses it for ``rate``/``increase``)."""
    from rankiq.service.io.types import CONTRAST_FAMILIES

    m = service_qa_metrics()
    from rankiq.service.settings import ServiceSettings

    model = ServiceSettings.from_env().qa_model
    for family in CONTRAST_FAMILIES:
        for flagged in ("true", "false"):
            m.series.labels(flagged=flagged, contrast=family, model=model)
    for status in ("completed", "failed"):
        m.jobs.labels(status=status)


def start_job_recovery() -> None:
    """Resume jobs whose worker died, now and every few seconds (call once when a service
    worker starts)."""
    init_label_sets()
    def run(inputs: Path, out: Path, resume: bool) -> dict[str, Any]:
        response = _run(inputs, out, resume)
        return {"job_id": inputs.parent.name, "recovered": True, **response}

    try:
        start_recovery(jobs_dir(), run)
        start_purger()
    except OSError as exc:  # an unwritable jobs dir must not stop the service
        log.error("QA job recovery unavailable: %s", type(exc).__name__)
