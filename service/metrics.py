"""The service's own Prometheus metrics (``prometheus_client`` directly; ``bentoml.metrics`` is
deprecated).

Multiprocess: ``bentoml serve`` exports ``PROMETHEUS_MULTIPROC_DIR`` in the environment of every
worker process it spawns (``_bentoml_impl/server/serving.py``: ``env = {"PROMETHEUS_MULTIPROC_DIR":
ensure_prometheus_dir()}``, a fresh, emptied directory per server start), so ``prometheus_client``
starts in multiprocess mode in each worker and writes these series to per-process files; BentoML's
``/metrics`` aggregates every file of that directory with a ``MultiProcessCollector``. The metrics
are created lazily (first call of :func:`service_metrics`), never at import, so nothing is
registered in processes that only import the service (``bentoml build``, the serve supervisor).

Labels are bounded: model name, mode, contrast family, input kind, rejection reason (the ``reason``
of a :mod:`rankiq.service.errors` class, or a few request-level reasons). Never UIDs, file names or
patient data.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

# IQ-Net scores: >= 0 in practice (0 = identical to the reference), roughly log-distributed.
SCORE_BUCKETS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100,
                                    200, 500, 1000)

#: Request-level rejection reasons besides :class:`rankiq.service.errors.RankIQError` reasons.
REQUEST_REASONS = ("bad_request", "unsupported_request", "too_large", "unauthorized", "not_ready")


@dataclass(frozen=True)
class ServiceMetrics:
    """The metric objects of one process (see :func:`service_metrics`)."""

    score: Histogram  # rankiq_score{model, mode, contrast, input_kind}: per-slice scores
    rejected: Counter  # rankiq_inputs_rejected_total{reason}
    slices: Counter  # rankiq_slices_scored_total{model, mode}
    model_info: Gauge  # rankiq_model_info{model, version, mode, input_kind, provider, sha256} = 1

    def observe_scores(self, *, model: str, mode: str, contrast: str, input_kind: str,
                       scores: list[float]) -> None:
        """Record the (non-blank) slice scores of one scored series."""
        h = self.score.labels(model=model, mode=mode, contrast=contrast, input_kind=input_kind)
        for s in scores:
            h.observe(s)
        self.slices.labels(model=model, mode=mode).inc(len(scores))

    def reject(self, reason: str) -> None:
        """Count one refused request by its bounded reason."""
        self.rejected.labels(reason=reason).inc()

    def set_model_info(self, *, model: str, version: str, mode: str, input_kind: str,
                       provider: str, sha256: str) -> None:
        """Publish one loaded model (value 1)."""
        self.model_info.labels(model=model, version=version, mode=mode, input_kind=input_kind,
                               provider=provider, sha256=sha256[:16]).set(1)


def rejection_reasons() -> tuple[str, ...]:
    """Every bounded rejection reason: the request-level ones and those of every
    :class:`rankiq.service.errors.RankIQError` subclass defined so far."""
    from rankiq.service.errors import RankIQError

    reasons, todo = set(REQUEST_REASONS), [RankIQError]
    while todo:
        cls = todo.pop()
        reasons.add(cls.reason)
        todo.extend(cls.__subclasses__())
    return tuple(sorted(reasons))


@functools.cache
def service_metrics() -> ServiceMetrics:
    """Create (once per process) the metrics on prometheus_client's default registry.

    Every rejection reason starts at 0, so a first burst of refusals shows up in ``rate()``
    (a series born with its burst already counted has no visible increase).
    """
    metrics = _create()
    for reason in rejection_reasons():
        metrics.rejected.labels(reason=reason)
    return metrics


def _create() -> ServiceMetrics:
    return ServiceMetrics(
        score=Histogram("rankiq_score", "IQ-Net score per scored slice (lower is better)",
                        ["model", "mode", "contrast", "input_kind"], buckets=SCORE_BUCKETS),
        rejected=Counter("rankiq_inputs_rejected", "Requests refused as bad input, by reason",
                         ["reason"]),
        slices=Counter("rankiq_slices_scored", "Slices scored by the service",
                       ["model", "mode"]),
        # livemax: one value per label set across live workers (each worker loads every model)
        model_info=Gauge("rankiq_model_info", "Models loaded by the service (value 1)",
                         ["model", "version", "mode", "input_kind", "provider", "sha256"],
                         multiprocess_mode="livemax"),
    )


#: Paths BentoML's HTTP metrics may label by name; any other path is labelled ``/other`` (and
#: BentoML's Swagger assets ``/static_content``), so random paths cannot grow ``/metrics``.
KNOWN_PATHS = frozenset({"/", "/score", "/compare", "/models", "/livez", "/readyz", "/healthz",
                         "/metrics", "/docs", "/docs.json", "/qa", "/qa/submit", "/qa/status",
                         "/qa/get", "/qa/cancel", "/qa/retry"})


def metric_path(path: str) -> str:
    """The bounded ``endpoint`` label of a request path."""
    if path in KNOWN_PATHS:
        return path
    if path.startswith("/static_content/"):
        return "/static_content"
    return "/other"


def bound_http_metric_paths() -> None:
    """Make BentoML's HTTP metrics middleware label requests by :func:`metric_path` instead of
    the raw path (BentoML 1.4 labels ``bentoml_service_request_*`` by ``scope["path"]``).

    The middleware sees a copy of the scope with the bounded path; the app behind it gets the
    original scope, so routing is unchanged. Idempotent.
    """
    import copy

    from rankiq.service.bentoml_adapter import http_metrics_middleware

    M = http_metrics_middleware()
    if getattr(M, "_rankiq_bounded", False):
        return
    original = M.__call__

    async def bounded(self, scope, receive, send):
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        label = metric_path(path) if path else path
        if label == path:
            await original(self, scope, receive, send)
            return
        inner = self.app

        async def unlabelled(_scope, rcv, snd):
            await inner(scope, rcv, snd)

        proxy = copy.copy(self)
        proxy.app = unlabelled
        await original(proxy, {**scope, "path": label}, receive, send)

    M.__call__ = bounded  # type: ignore[method-assign]
    M._rankiq_bounded = True  # type: ignore[attr-defined]
