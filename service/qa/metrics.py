"""QA metrics in Prometheus form: counters and score histograms.

The same metric names serve both paths:

* the CLI (``rankiq qa``) writes them to ``DIR/rankiq_qa.prom`` in the text exposition format,
  for node_exporter's textfile collector (``--collector.textfile.directory``), via
  :func:`write_textfile`;
* the service's ``POST /qa`` jobs update them on the service's registry (see
  :func:`service_qa_metrics`), so they appear on ``/metrics`` beside BentoML's request metrics.

Labels are bounded (flag, contrast family, model name, reason/status categories): never a series
key, file name or UID.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Series statistic (median/p90) of IQ-Net scores: non-negative, roughly log-distributed.
SCORE_BUCKETS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100,
                                    200, 500, 1000)


@dataclass(frozen=True)
class QAMetrics:
    """The QA metric objects registered on one registry."""

    series: Counter  # rankiq_qa_series_total{flagged, contrast, model}
    series_score: Histogram  # rankiq_qa_series_score{contrast, model}
    slices: Counter  # rankiq_qa_slices_total{model}
    skipped: Counter  # rankiq_qa_skipped_series_total{reason}
    failed: Counter  # rankiq_qa_failed_inputs_total{reason}
    jobs: Counter  # rankiq_qa_jobs_total{status}

    def observe_series(self, row: dict[str, Any], statistic: str) -> None:
        """Count one scored series (a qa.csv row) and observe its flag statistic."""
        model, contrast = str(row["model"]), str(row["contrast"])
        self.series.labels(flagged=str(bool(row["flagged"])).lower(), contrast=contrast,
                           model=model).inc()
        self.slices.labels(model=model).inc(int(row["slices"]))
        value = row.get(statistic)
        if value is not None:
            self.series_score.labels(contrast=contrast, model=model).observe(float(value))

    def observe_report(self, doc: dict[str, Any]) -> None:
        """Count everything in a qa.json document (series, skipped, failed)."""
        stat = doc["thresholds"]["statistic"]
        for row in doc["series"]:
            self.observe_series(row, stat)
        for row in doc["skipped"]:
            self.skipped.labels(reason=row["reason"]).inc()
        for row in doc["failed"]:
            self.failed.labels(reason=row["reason"]).inc()


def make_qa_metrics(registry: CollectorRegistry | None) -> QAMetrics:
    """Create the QA metrics on ``registry`` (``None``: prometheus_client's default)."""
    kw: dict[str, Any] = {} if registry is None else {"registry": registry}
    return QAMetrics(
        series=Counter("rankiq_qa_series", "Series checked by batch QA, by flag and contrast "
                       "family", ["flagged", "contrast", "model"], **kw),
        series_score=Histogram("rankiq_qa_series_score", "Per-series QA statistic (median or "
                               "p90 slice score, lower is better)", ["contrast", "model"],
                               buckets=SCORE_BUCKETS, **kw),
        slices=Counter("rankiq_qa_slices", "Slices scored by batch QA", ["model"], **kw),
        skipped=Counter("rankiq_qa_skipped_series", "Series skipped by the QA series selector",
                        ["reason"], **kw),
        failed=Counter("rankiq_qa_failed_inputs", "Unreadable inputs met by batch QA",
                       ["reason"], **kw),
        jobs=Counter("rankiq_qa_jobs", "QA jobs finished, by outcome", ["status"], **kw),
    )


def write_textfile(path: str | Path, doc: dict[str, Any], *, duration_s: float,
                   statuses: Sequence[str] = ("completed",)) -> None:
    """Write a QA run's counters and histograms for node_exporter's textfile collector.

    The values describe the whole run recorded in ``doc`` (a resumed run included), written
    atomically so a collector never reads half a file.
    """
    reg = CollectorRegistry()
    m = make_qa_metrics(reg)
    m.observe_report(doc)
    for status in statuses:
        m.jobs.labels(status=status).inc()
    Gauge("rankiq_qa_last_run_timestamp_seconds", "When the last QA run finished (Unix time)",
          registry=reg).set(time.time())
    Gauge("rankiq_qa_last_run_duration_seconds", "Wall time of the last QA run (this "
          "invocation)", registry=reg).set(duration_s)
    from prometheus_client import write_to_textfile

    write_to_textfile(str(path), reg)
