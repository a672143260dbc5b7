"""``POST /qa`` for the service: the logic behind the thin ``@bentoml.task`` method in
``service/app.py``.

Routes (BentoML task API): ``POST /qa/submit`` (multipart, one or more ``files``: zips or DICOM
files) answers ``{"task_id", "status"}``; ``GET /qa/status?task_id=`` and ``GET /qa/get?task_id=``
give the state and, once completed, the result: the same per-series table as ``qa.json``
(``series``, ``skipped``, ``failed``, ``summary``, ``model``, ``thresholds``) plus ``job_id``.

Settings (environment): ``RANKIQ_JOBS_DIR`` (job directories, default
``$RANKIQ_STATE_DIR/jobs``), ``RANKIQ_RETENTION`` (seconds a finished job's files stay, 0 =
deleted as soon as the job ends; its result stays in BentoML's result store),
``RANKIQ_QA_THRESHOLDS`` and ``RANKIQ_QA_RULES`` (site files, as ``rankiq qa --thresholds`` /
``--rules``), ``RANKIQ_QA_MODEL`` (model name, default ``iqnet-noref``) and the service's
``RANKIQ_MODELS_DIR`` / ``RANKIQ_ORT_THREADS``. Jobs survive a worker restart: see
:mod:`rankiq.service.qa.jobs`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rankiq.service.qa.jobs import (
    create_job,
    jobs_dir,
    purge_expired,
    purge_job,
    run_job,
    start_recovery,
)
from rankiq.service.qa.metrics import QAMetrics, make_qa_metrics
from rankiq.service.qa.runner import DEFAULT_MODEL, QAOptions, run_qa

log = logging.getLogger("rankiq.qa.route")


@functools.cache
def service_qa_metrics() -> QAMetrics:
    """The QA metrics on prometheus_client's default registry (once per process, lazily, like
    :func:`rankiq.service.metrics.service_metrics`, so multiprocess mode is already set up)."""
    return make_qa_metrics(None)


def _options() -> QAOptions:
    from rankiq.service.settings import ServiceSettings

    st = ServiceSettings.from_env()
    env = os.environ.get
    return QAOptions(
        model_dir=st.models_dir / (env("RANKIQ_QA_MODEL") or DEFAULT_MODEL),
        thresholds_file=Path(env("RANKIQ_QA_THRESHOLDS")) if env("RANKIQ_QA_THRESHOLDS") else None,
        rules_file=Path(env("RANKIQ_QA_RULES")) if env("RANKIQ_QA_RULES") else None,
        workers=1, threads=st.ort_threads, progress=False, textfile=False)


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
    """Body of the ``qa`` task: persist the uploads as a job, run it, return the table."""
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
            except OSError as exc:
                log.error("QA job purge failed: %s", type(exc).__name__)
            time.sleep(max(1.0, min(interval_s, retention or interval_s)))

    threading.Thread(target=loop, name="rankiq-qa-purge", daemon=True).start()


def init_label_sets() -> None:
    """Create the QA series of every known label set at 0, so Prometheus sees each first
    increment (a counter series that appears at 1 loses it for ``rate``/``increase``)."""
    from rankiq.service.qa.aggregate import FAMILIES

    m = service_qa_metrics()
    model = os.environ.get("RANKIQ_QA_MODEL") or DEFAULT_MODEL
    for family in FAMILIES:
        for flagged in ("true", "false"):
            m.series.labels(flagged=flagged, contrast=family, model=model)
    for status in ("completed", "failed"):
        m.jobs.labels(status=status)


def start_job_recovery() -> None:
    """Resume jobs whose worker died (call once when a service worker starts)."""
    init_label_sets()
    def run(inputs: Path, out: Path, resume: bool) -> dict[str, Any]:
        response = _run(inputs, out, resume)
        return {"job_id": inputs.parent.name, "recovered": True, **response}

    try:
        start_recovery(jobs_dir(), run)
        start_purger()
    except OSError as exc:  # an unwritable jobs dir must not stop the service
        log.error("QA job recovery unavailable: %s", type(exc).__name__)
