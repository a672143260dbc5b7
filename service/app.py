"""The RankIQ HTTP service (BentoML 1.4 class-based API on ONNX Runtime).

Serve with ``rankiq serve`` (or ``bentoml serve service.app:RankIQ``). Routes:

* ``POST /score`` (multipart): ``image`` file, optional ``reference`` file, ``saliency`` flag
  (maps on the scan's matrix); ``?format=dicom``: the SR and saliency map as DICOM parts.
* ``POST /compare`` (multipart): ``image_a``, ``image_b``, optional ``reference``.
* ``GET /models``: loaded models, their metadata, provider, limits, this worker.
* ``GET /livez``, ``GET /readyz`` (ready after the models loaded and passed the self-check),
  ``GET /metrics`` (BentoML's request metrics + ``rankiq_*``, all workers aggregated).

Settings come from ``RANKIQ_*`` environment variables (:mod:`rankiq.service.settings`). Each worker
process loads one ONNX Runtime session per model with ``RANKIQ_ORT_THREADS`` intra-op threads.
Errors are JSON ``{"error": reason, "detail": message}`` with the status of the
:class:`rankiq.service.errors.RankIQError` subclass (415, 422, 413; 503 when not ready);
request-level
problems (auth, size, malformed multipart) are answered by :mod:`rankiq.service.guard` before
BentoML
parses anything. Logs and errors carry form field names and bounded reasons, never the client's
file names or any DICOM identifier.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from rankiq.service.guard import FormSpec, RequestGuard
from rankiq.service.metrics import bound_http_metric_paths
from rankiq.service.qa.route import QAJobRecorder
from rankiq.service.settings import ServiceSettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# BentoML reads a service's configuration (workers, threads, timeout) when the class is
# defined, so these few settings are read at import; everything else is read per worker.
SETTINGS = ServiceSettings.from_env()

bound_http_metric_paths()


def one_shot_request_tempdirs() -> None:
    """Give each request its own temporary directory, removed when the request ends.

    BentoML writes uploads into a pooled directory (``bentoml-request-*``) that it empties but
    never removes until a clean shutdown, so a killed or busy worker leaves empty directories
    behind in the system temp dir. Its pool is a module global read at each request.
    """
    import functools
    import shutil
    import tempfile

    from rankiq.service.bentoml_adapter import install_request_tempdir_pool

    install_request_tempdir_pool(functools.partial(tempfile.mkdtemp, prefix="rankiq-request-"),
                                 functools.partial(shutil.rmtree, ignore_errors=True))


one_shot_request_tempdirs()

logger = logging.getLogger("rankiq.service")

FORMS = {
    "/score": FormSpec(required_files=("image",), optional_files=("reference",),
                       bool_values=("saliency",)),
    "/compare": FormSpec(required_files=("image_a", "image_b"), optional_files=("reference",)),
    # batch QA upload: one or more zips / DICOM files in the repeated field "files"
    "/qa/submit": FormSpec(required_files=("files",), repeated_files=("files",)),
    "/qa": FormSpec(required_files=("files",), repeated_files=("files",)),
}


def _reject_metric(reason: str) -> None:
    from rankiq.service.metrics import service_metrics

    service_metrics().reject(reason)


def error_response(status: int, reason: str, detail: str) -> JSONResponse:
    """The service's error shape."""
    return JSONResponse({"error": reason, "detail": detail}, status_code=status)


async def models_endpoint(_: Request) -> JSONResponse:
    """GET /models (a plain Starlette route: BentoML APIs are POST-only)."""
    svc = bentoml.get_current_service()
    if svc is None:
        return error_response(503, "not_ready", "service instance not initialised")
    return JSONResponse(svc.models_info())


_models_app = Starlette(routes=[Route("/models", models_endpoint, methods=["GET"])])


@bentoml.asgi_app(_models_app, path="/", name="rankiq-models")
@bentoml.service(
    name="rankiq",
    workers=SETTINGS.workers,
    threads=SETTINGS.api_threads,
    # BentoML's TimeoutMiddleware never cancels its per-request timer, so every request's
    # context (OpenTelemetry spans included) stays referenced for `timeout` seconds: worker RSS
    # rises by ~rate x timeout x a few KB before it levels off. Keep the timeout short.
    traffic={"timeout": SETTINGS.request_timeout},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
    # BentoML records an OpenTelemetry span per request even with tracing off (sample rate 0, no
    # exporter): skip them unless RANKIQ_TRACING=1 (for a configured trace exporter).
    tracing={"excluded_urls": [] if SETTINGS.tracing else [".*"]},
)
class RankIQ:
    """Scores MR images with the shipped models (one ONNX Runtime session per model)."""

    def __init__(self) -> None:
        from rankiq.service.io.privacy import silence_library_loggers
        from rankiq.service.metrics import service_metrics
        from rankiq.service.settings import read_limits, set_default_fft_workers

        # one worker's share of native threads: its ONNX Runtime threads for the FFTs too,
        # unless RANKIQ_FFT_WORKERS says otherwise
        set_default_fft_workers(SETTINGS.ort_threads)
        silence_library_loggers()  # pydicom/h5py messages may quote element values
        self.settings = SETTINGS
        self.read_limits = read_limits(SETTINGS)
        self.metrics = service_metrics()
        self.models: dict[str, Any] = {}
        self.ready = False
        self.load_error: str | None = None
        self.started = time.time()
        try:
            self._load()
        except Exception as exc:  # noqa: BLE001 - stay alive, report not ready and why
            self.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("models not ready: %s", self.load_error)

    def _load(self) -> None:
        from rankiq.service.models import load_models
        from rankiq.service.selfcheck import self_check

        models = load_models(self.settings.models_dir, threads=self.settings.ort_threads)
        for m in models.values():
            self_check(m)
            self.metrics.set_model_info(model=m.name, version=m.version, mode=m.mode,
                                        input_kind=m.input_kind, provider=m.provider,
                                        sha256=m.sha256)
            logger.info("model %s %s (%s, %s) passed the self-check on %s", m.name, m.version,
                        m.mode, m.input_kind, m.provider)
        self.models = models
        self.ready = True
        import gc

        # everything loaded so far lives as long as the worker: move it out of the collector's
        # reach, so the full collection after each request scans only what requests created
        # (a full pass over the ~190k start-up objects cost ~80 ms per request)
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return self.ready

    # -- helpers -------------------------------------------------------------------------------
    def models_info(self) -> dict[str, Any]:
        """The body of GET /models."""
        from rankiq.service.bentoml_adapter import worker_index
        from rankiq.service.scoring import model_info

        return {
            "ready": self.ready,
            "error": self.load_error,
            "worker": {"index": worker_index(), "pid": os.getpid()},
            "ort_threads": self.settings.ort_threads,
            "limits": {"max_upload_bytes": self.settings.max_upload_bytes,
                       "max_slices": self.settings.max_slices,
                       "max_series_bytes": self.settings.max_series_bytes},
            "models": [{**model_info(m), "metadata": m.metadata}
                       for m in self.models.values()],
        }

    def _read(self, path: Path | None, field: str, budget: Any) -> Any:
        """Read one uploaded file into a single :class:`ImageSeries` (None stays None);
        ``budget`` (a :class:`rankiq.service.io.ReadBudget`) is shared by a request's files."""
        if path is None:
            return None
        from rankiq.service.errors import RankIQError, UnreadableInput
        from rankiq.service.io import read_upload
        from rankiq.service.io.dicom import check_scorable
        from rankiq.service.scoring import MultipleSeries

        data = Path(path).read_bytes()
        try:
            found = read_upload(data, field, limits=self.read_limits, budget=budget)
        except RankIQError:
            raise
        except Exception as exc:  # noqa: BLE001 - a decoder crash on hostile bytes is bad input
            logger.warning("decoder failure on field %s: %s", field, type(exc).__name__)
            raise UnreadableInput(f"cannot be decoded ({type(exc).__name__})",
                                  source=field) from None
        if len(found) != 1:
            raise MultipleSeries(f"holds {len(found)} series; send one series per request",
                                 source=field)
        check_scorable(found[0], field)
        return found[0]

    def _budget(self) -> Any:
        from rankiq.service.io import ReadBudget

        return ReadBudget(self.read_limits)

    def _guarded(self, route: str, work: Any) -> dict[str, Any] | JSONResponse:
        """Run ``work()``; map RankIQError to its status and count the rejection."""
        from rankiq.service.errors import RankIQError

        if not self.ready:
            self.metrics.reject("not_ready")
            return error_response(503, "not_ready", "models not loaded or self-check failed"
                                  + (f": {self.load_error}" if self.load_error else ""))
        try:
            return work()
        except RankIQError as exc:
            self.metrics.reject(exc.reason)
            logger.info("refused %s: %d %s", route, exc.http_status, exc.reason)
            return error_response(exc.http_status, exc.reason, str(exc))
        except MemoryError:
            self.metrics.reject("too_large")
            logger.warning("refused %s: 413 too_large (out of memory)", route)
            return error_response(413, "too_large", "the images need more memory than this "
                                  "server has; send a smaller series")
        finally:
            import gc

            gc.collect()  # large pixel arrays go back to the allocator before the next request

    def _observe(self, result: Any) -> None:
        keep = [float(s) for s, b in zip(result.scores, result.blank, strict=True) if not b]
        m = result.model
        self.metrics.observe_scores(model=m["name"], mode=m["mode"], contrast=result.contrast,
                                    input_kind=m["input_kind"], scores=keep)

    # -- routes --------------------------------------------------------------------------------
    # Optional uploads are typed `Path = None`: BentoML 1.4.39 cannot take an optional file
    # field (`Path | None` skips its file decoder, so an upload fails validation;
    # `Optional[Path]` fails at import on an unhashable annotation). Pydantic does not validate
    # the default, so an absent field is None.
    @bentoml.api(route="/score")
    def score(self, image: Path, ctx: bentoml.Context,
              reference: Path = None,  # type: ignore[assignment]
              saliency: bool = False) -> dict[str, Any]:
        """Score an image (a DICOM file, a zip of one DICOM series, or a fastMRI / ISMRMRD HDF5
        k-space file); with ``reference`` the reference model scores ``image`` against it.

        Saliency (``saliency=true``) is answered on the scan's own matrix. ``?format=dicom``
        answers the DICOM SR and saliency Parametric Map of the series instead of JSON
        (``multipart/related; type="application/dicom"``:
        :func:`rankiq.service.results_dicom.dicom_answer`).
        """
        answer = ctx.request.query_params.get("format", "json")
        if answer not in ("json", "dicom"):
            self.metrics.reject("bad_request")
            ctx.response.status_code = 400  # with a ctx BentoML answers ctx's status
            return error_response(400, "bad_request",  # type: ignore[return-value]
                                  "query parameter format: json or dicom")

        def work() -> Any:
            import dataclasses

            from rankiq.service.scoring import (
                saliency_to_input,
                score_series,
                select_model,
                series_interpolation,
                series_json,
            )

            t0 = time.perf_counter()
            budget = self._budget()
            img = self._read(image, "image", budget)
            ref = self._read(reference, "reference", budget)
            if answer == "dicom":
                from rankiq.service.results_dicom import upload_sources

                # the headers first: a non-DICOM upload is refused before any scoring
                sources = upload_sources(Path(image).read_bytes(), img, "image")
            t1 = time.perf_counter()
            model = select_model(self.models, reference=ref is not None)
            result = score_series(model, img, ref, saliency=saliency or answer == "dicom",
                                  max_slices=self.settings.max_slices)
            self._observe(result)
            if result.saliency is not None:  # back from the model's grid to the scan's matrix
                result = dataclasses.replace(
                    result, saliency=saliency_to_input(
                        result.saliency, img.pixels, features=model.kind == "features",
                        interpolation=series_interpolation(img)),
                    display=np.abs(img.pixels).astype(np.float32, copy=False))
            if answer == "dicom":
                from importlib.metadata import version

                from rankiq.service.results_dicom import dicom_answer

                return dicom_answer(sources, result, software_version=version("rankiq"))
            out = series_json(result)
            out["input_kind"] = img.kind
            out["timings_ms"] = {"read": round((t1 - t0) * 1000, 3), **out["timings_ms"],
                                 "request": round((time.perf_counter() - t0) * 1000, 3)}
            return out

        # an API may answer a Starlette Response (the error shape, the DICOM parts) instead of
        # its declared type; with a ctx parameter BentoML gives it ctx's status
        out = self._guarded("/score", work)
        if isinstance(out, Response):
            ctx.response.status_code = out.status_code
        return out  # type: ignore[return-value]

    @bentoml.api(route="/compare")
    def compare(self, image_a: Path, image_b: Path,
                reference: Path = None) -> dict[str, Any]:  # type: ignore[assignment]
        """Score two images with one model and give the classifier's probabilities
        (a better, similar, b better)."""

        def work() -> dict[str, Any]:
            from rankiq.service.scoring import compare_series, comparison_json, select_model

            t0 = time.perf_counter()
            budget = self._budget()
            a = self._read(image_a, "image_a", budget)
            b = self._read(image_b, "image_b", budget)
            ref = self._read(reference, "reference", budget)
            t1 = time.perf_counter()
            model = select_model(self.models, reference=ref is not None)
            cmp = compare_series(model, a, b, ref, max_slices=self.settings.max_slices)
            self._observe(cmp.a)
            self._observe(cmp.b)
            out = comparison_json(cmp)
            out["timings_ms"] = {"read": round((t1 - t0) * 1000, 3), **out["timings_ms"],
                                 "request": round((time.perf_counter() - t0) * 1000, 3)}
            return out

        return self._guarded("/compare", work)  # type: ignore[return-value]

    # -- batch QA (added by the QA engineer: logic in service/qa/route.py) ---------------------
    @bentoml.on_startup
    def _qa_recover_jobs(self) -> None:
        """Resume QA jobs whose worker died (background thread; see service.qa.jobs)."""
        from rankiq.service.qa.route import start_job_recovery

        start_job_recovery()

    @bentoml.task(route="/qa")
    def qa(self, files: list[Path], ctx: bentoml.Context) -> dict[str, Any]:
        """Batch QA of uploaded zips / DICOM files as a background task (``/qa/submit``,
        ``/qa/status``, ``/qa/get``): the per-series table of ``rankiq qa``."""
        from rankiq.service.qa.jobs import FAILED_HTTP_STATUS
        from rankiq.service.qa.route import run_task

        out = run_task(files, getattr(ctx.request.state, "task_id", None))
        if out.get("status") == "failed":  # the task's status becomes "failed" too
            ctx.response.status_code = FAILED_HTTP_STATUS
        return out


#: the decorated class is a BentoML ``Service`` (its API is invisible to the type checker)
_SERVICE: Any = RankIQ


class ApiDocs:
    """ASGI middleware answering ``GET /docs.json`` (the corrected OpenAPI document) and
    ``GET /`` (a static page without third-party scripts) in place of BentoML's
    (:mod:`rankiq.service.openapi`)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._doc: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        if self._doc is None:
            from importlib.metadata import version

            from rankiq.service.openapi import api_document

            self._doc = api_document(_SERVICE.openapi_spec.asdict(), version=version("rankiq"),
                                     auth=SETTINGS.api_token is not None)
        return self._doc

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD") or \
                path not in ("/", "/docs.json"):
            await self.app(scope, receive, send)
            return
        from rankiq.service.openapi import api_page
        from starlette.responses import HTMLResponse

        doc = self.document()
        response = JSONResponse(doc) if path == "/docs.json" else HTMLResponse(api_page(doc))
        await response(scope, receive, send)


# outermost first: the guard answers bad requests before the job recorder buffers anything
_SERVICE.add_asgi_middleware(RequestGuard, token=SETTINGS.api_token,
                             max_body=SETTINGS.max_upload_bytes, forms=FORMS,
                             on_reject=_reject_metric)
_SERVICE.add_asgi_middleware(ApiDocs)
_SERVICE.add_asgi_middleware(QAJobRecorder)
