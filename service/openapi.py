"""The service's OpenAPI document (``GET /docs.json``) and its API page (``GET /``).

BentoML generates a document from the route signatures; it lacks ``GET /models`` (a plain
Starlette route), the answers the request guard and the service give (401, 413, 415, 422, 503 in
the error shape ``{"error", "detail"}``), the bearer scheme and a version, lists 404/500 answers
no route gives on purpose, and names task statuses BentoML does not use. :func:`api_document`
corrects it. BentoML's Swagger page loads a third-party tag manager script: :func:`api_page`
is a static page (no scripts, no external requests) listing the routes and linking the JSON.
"""

from __future__ import annotations

import copy
import html
from typing import Any

#: Statuses of ``GET /qa/status`` (BentoML's result store; ``completed`` and ``failed`` end a
#: task, ``canceled`` is never set by this service).
TASK_STATUSES = ["in_progress", "completed", "failed", "canceled"]
ERROR_SCHEMA = {
    "type": "object", "title": "Error", "required": ["error", "detail"],
    "properties": {"error": {"type": "string", "description": "bounded reason code"},
                   "detail": {"type": "string", "description": "what to change, in words"}},
}
_ANSWERS = {
    "400": "Bad request: malformed multipart, a missing, duplicated or unknown field, a text "
           "value where a file is expected, a file name over 250 bytes, two Authorization "
           "headers",
    "401": "Missing or wrong bearer token (when RANKIQ_API_TOKEN is set)",
    "413": "Too large: the body above RANKIQ_MAX_UPLOAD_BYTES, or the images above a read "
           "budget (decoded pixels, slices, files, time)",
    "415": "Not multipart/form-data; for /score?format=dicom: k-space, not DICOM images",
    "422": "The input cannot be scored (unreadable, unsupported, several series, CT...); for "
           "a QA task: the job failed",
    "503": "Not ready: models not loaded or their self-check failed",
}
_FORM_ROUTES = ("/score", "/compare", "/qa", "/qa/submit")
_OPEN = ("/livez", "/readyz", "/healthz")


def _error(code: str) -> dict[str, Any]:
    return {"description": _ANSWERS[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def api_document(base: dict[str, Any], *, version: str, auth: bool) -> dict[str, Any]:
    """The corrected OpenAPI document.

    Args:
        base: BentoML's document (``Service.openapi_spec.asdict()``), not modified.
        version: the service version (the installed ``rankiq`` distribution).
        auth: whether a token is required (``RANKIQ_API_TOKEN`` set); the bearer scheme is
            described either way, and required on every route but the probes when set.
    """
    doc = copy.deepcopy(base)
    doc["info"] = {"title": "RankIQ", "version": version,
                   "description": "Scores MR image quality with the shipped models; batch QA "
                                  "of DICOM archives. Errors: {\"error\": reason, \"detail\": "
                                  "message}."}
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(name, None)
    task = schemas.get("TaskStatusResponse", {}).get("properties", {}).get("status")
    if task is not None:
        task["enum"] = list(TASK_STATUSES)
    components["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "RANKIQ_API_TOKEN, as `Authorization: Bearer <token>`" +
                       ("" if auth else " (not required by this server: no token set)")}}
    if auth:
        doc["security"] = [{"bearer": []}]
    paths = doc.setdefault("paths", {})
    paths["/models"] = {"get": {
        "tags": ["Service APIs"], "operationId": "rankiq__models",
        "description": "Loaded models, their metadata, ONNX Runtime provider, limits, worker.",
        "responses": {"200": {"description": "Models", "content": {"application/json": {
            "schema": {"type": "object", "additionalProperties": True}}}},
            "503": _error("503")}}}
    for path, item in paths.items():
        for method, op in item.items():
            responses = {str(k): v for k, v in op.get("responses", {}).items()}
            op["responses"] = responses
            for code in ("404", "500"):
                responses.pop(code, None)
            if path in _OPEN:
                op["security"] = []
                if path == "/readyz":
                    responses["503"] = {"description": _ANSWERS["503"]}
                continue
            if "400" in responses or path in _FORM_ROUTES:
                responses["400"] = _error("400")
            responses["401"] = _error("401")
            if path in _FORM_ROUTES and method == "post":
                for code in ("413", "415"):
                    responses[code] = _error(code)
                if path in ("/score", "/compare", "/qa"):
                    responses["422"] = _error("422")
                    responses["503"] = _error("503")
            if path == "/score" and method == "post":
                _score_formats(op)
            if path == "/qa/get":
                responses["422"] = _error("422")
            if path in ("/qa/status", "/qa/get"):
                responses["404"] = {"description": "Unknown task id", "content": {
                    "application/json": {"schema": {"type": "object"}}}}
    return doc


def _score_formats(op: dict[str, Any]) -> None:
    """``POST /score?format=dicom``: the query parameter and the DICOM answer (multipart)."""
    op.setdefault("parameters", []).append({
        "name": "format", "in": "query", "required": False,
        "description": "json (default): the scores; dicom: the DICOM Structured Report (TID "
                       "1500) and saliency Parametric Map(s) of the series, as "
                       "multipart/related (one application/dicom part each, the SR first, then "
                       "one map, or one per multi-frame instance when the series is split over "
                       "several; DICOM uploads with a FrameOfReferenceUID)",
        "schema": {"type": "string", "enum": ["json", "dicom"], "default": "json"}})
    ok = op["responses"].setdefault("200", {"description": "Successful Response"})
    ok.setdefault("content", {})["multipart/related"] = {"schema": {
        "type": "string", "format": "binary",
        "description": 'with format=dicom: type="application/dicom", the SR then the '
                       "Parametric Map(s) (one per multi-frame source instance when there are "
                       "several), the body of a DICOMweb STOW-RS request"}}
    op["responses"]["400"]["description"] += "; format neither json nor dicom"


def api_page(doc: dict[str, Any]) -> str:
    """A self-contained HTML page of the routes in ``doc`` (no scripts, no external links)."""
    rows = []
    for path, item in sorted(doc.get("paths", {}).items()):
        for method, op in item.items():
            codes = ", ".join(sorted(op.get("responses", {})))
            desc = str(op.get("description", "")).split("\n")[0]
            rows.append(f"<tr><td>{html.escape(method.upper())}</td><td><code>"
                        f"{html.escape(path)}</code></td><td>{html.escape(desc)}</td>"
                        f"<td>{html.escape(codes)}</td></tr>")
    info = doc.get("info", {})
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>RankIQ API</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 8px;"
            "border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
            f"<h1>RankIQ API {html.escape(str(info.get('version', '')))}</h1>"
            "<p>The OpenAPI document: <a href=\"docs.json\">docs.json</a>. Errors are JSON "
            "<code>{\"error\": reason, \"detail\": message}</code>.</p>"
            "<table><tr><th>Method</th><th>Path</th><th>What</th><th>Answers</th></tr>"
            + "".join(rows) + "</table></body></html>")
