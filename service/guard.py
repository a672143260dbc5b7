"""ASGI middleware in front of the BentoML app: authentication and request-level checks.

BentoML parses multipart bodies itself, and some malformed requests would surface from its
parser as 500s (a broken multipart body, a text field where a file is expected, which BentoML
would even try to download as a URL). This guard answers those before BentoML sees them, with the
service's error shape ``{"error": reason, "detail": message}``:

* 401 ``unauthorized``: token required (see :mod:`rankiq.service.auth`) and missing or wrong;
* 415 ``unsupported_request``: a scoring route called without ``multipart/form-data``;
* 413 ``too_large``: body above ``max_body`` bytes (from Content-Length, or counted while
  streaming a chunked body), refused before it is parsed;
* 400 ``bad_request``: malformed multipart, a missing, duplicated or unknown field, a text value
  where a file is expected, an unparsable boolean, a file name over ``MAX_FILENAME`` bytes or
  with control characters, a
  request with more than one ``Authorization`` header (which one would count is ambiguous).

Every error answer of the wrapped app that is not already in that shape (BentoML's own
validation errors, ``{"error": "task_id is required"}``, Starlette's plain-text 404/405, a 500) is
rewritten into it by :class:`ErrorShaper`; a 5xx never carries the exception's text.

The bearer scheme is matched case-insensitively (``bearer`` is accepted: RFC 7235 section 2.1).

The body of an accepted request is buffered (at most ``max_body`` bytes) and replayed to BentoML
unchanged. Messages name the form field, never the client's file name (which may identify a
patient).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from rankiq.service.auth import needs_auth, token_matches

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


def replay_body(body: bytes, receive: Callable[[], Awaitable[Message]]
                ) -> Callable[[], Awaitable[Message]]:
    """An ASGI ``receive`` that hands the already-read ``body`` over once, then defers to the
    original ``receive`` (for the disconnect message)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("rankiq.service")

BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True,
              "false": False, "0": False, "no": False, "off": False}
MAX_VALUE_BYTES = 64  # non-file form values are short flags
MAX_FILENAME = 250  # bytes of a part's filename parameter (never used: content is sniffed)


@dataclass(frozen=True)
class FormSpec:
    """The multipart fields one route accepts."""

    required_files: tuple[str, ...]
    optional_files: tuple[str, ...] = ()
    bool_values: tuple[str, ...] = ()
    repeated_files: tuple[str, ...] = ()  # file fields that may be given more than once

    @property
    def files(self) -> tuple[str, ...]:
        return self.required_files + self.optional_files


class RequestRejected(Exception):
    """A request refused by the guard (status, bounded reason, message)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass
class _Part:
    name: str | None = None
    is_file: bool = False
    long_name: bool = False
    odd_name: bool = False
    value: bytearray = field(default_factory=bytearray)


def check_multipart(body: bytes, content_type: str, spec: FormSpec) -> None:
    """Validate a multipart body's structure against ``spec`` (parts are not stored).

    Raises:
        RequestRejected: 415 when not multipart/form-data, 400 for any structural problem.
    """
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise RequestRejected(415, "unsupported_request",
                              "send the files as multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestRejected(400, "bad_request", "multipart/form-data without a boundary")
    _check_parts(_parse_parts(body, boundary), spec)


def _parse_parts(body: bytes, boundary: bytes) -> list[_Part]:
    """The parts of a multipart body (names, whether each is a file, file-name problems, the
    first bytes of text values); 400 when the body is malformed or truncated."""
    parts: list[_Part] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}

    def on_part_begin() -> None:
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        if bytes(header["field"]).strip().lower() == b"content-disposition":
            _, opts = parse_options_header(bytes(header["value"]))
            name = opts.get(b"name")
            parts[-1].name = name.decode("utf-8", "replace") if name is not None else None
            parts[-1].is_file = b"filename" in opts or b"filename*" in opts
            name_len = max(len(opts.get(b"filename", b"")), len(opts.get(b"filename*", b"")))
            parts[-1].long_name = name_len > MAX_FILENAME
            # control characters (NUL...) break BentoML's temp file, whose error would quote it
            parts[-1].odd_name = any(c < 0x20 or c == 0x7F for key in (b"filename", b"filename*")
                                     for c in opts.get(key, b""))
        header["field"], header["value"] = bytearray(), bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        if not part.is_file and len(part.value) <= MAX_VALUE_BYTES:
            part.value += data[start:end]

    ended: list[bool] = []
    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_part_data": on_part_data, "on_end": lambda: ended.append(True),
    })
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # noqa: BLE001 - any parser failure is a malformed body
        raise RequestRejected(400, "bad_request", f"malformed multipart body ({exc})") from None
    if not ended:
        raise RequestRejected(400, "bad_request", "truncated multipart body")
    return parts


def _check_parts(parts: list[_Part], spec: FormSpec) -> None:
    """Every part named, known, not repeated (unless allowed), a file where a file is
    expected, boolean values true/false, and every required file present (400 otherwise)."""
    seen: set[str] = set()
    for part in parts:
        if part.name is None:
            raise RequestRejected(400, "bad_request", "a multipart part has no field name")
        if part.name not in spec.files and part.name not in spec.bool_values:
            allowed = ", ".join(spec.files + spec.bool_values)
            raise RequestRejected(400, "bad_request",  # the name is the client's: not echoed
                                  f"unknown field (fields: {allowed})")
        if part.name in seen and part.name not in spec.repeated_files:
            raise RequestRejected(400, "bad_request", f"field {part.name!r} given twice")
        seen.add(part.name)
        if part.long_name:
            raise RequestRejected(400, "bad_request",
                                  f"field {part.name!r}: file name longer than {MAX_FILENAME} "
                                  "bytes")
        if part.odd_name:
            raise RequestRejected(400, "bad_request",
                                  f"field {part.name!r}: control characters in the file name")
        if part.name in spec.files and not part.is_file:
            raise RequestRejected(400, "bad_request",
                                  f"field {part.name!r} must be a file upload (curl -F "
                                  f"'{part.name}=@FILE'), not a text value")
        if part.name in spec.bool_values:
            word = bytes(part.value).decode("utf-8", "replace").strip().strip('"').lower()
            if word not in BOOL_WORDS:
                raise RequestRejected(400, "bad_request",
                                      f"field {part.name!r} must be true or false")
    missing = [f for f in spec.required_files if f not in seen]
    if missing:
        raise RequestRejected(400, "bad_request", f"missing file field(s): {', '.join(missing)}")


REASONS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
           405: "method_not_allowed", 408: "timeout", 409: "conflict", 413: "too_large",
           415: "unsupported_request", 422: "invalid_input", 429: "too_many_requests",
           503: "not_ready", 504: "timeout"}
MAX_DETAIL = 300  # characters of a rewritten message


def error_shape(status: int, body: bytes) -> dict[str, Any] | None:
    """The service's error shape for an error answer ``body``; ``None`` when it already has
    it (a JSON object with string ``error`` and ``detail``)."""
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    if isinstance(doc, list) and len(doc) == 1:  # BentoML answers some errors as [{...}]
        doc = doc[0]
    if (isinstance(doc, dict) and isinstance(doc.get("error"), str)
            and isinstance(doc.get("detail"), str)):
        return None
    reason = REASONS.get(status, "internal" if status >= 500 else "bad_request")
    if status >= 500:
        return {"error": reason, "detail": "internal error (see the server log)"}
    detail = ""
    if isinstance(doc, dict):
        extra = doc.get("detail")
        if isinstance(extra, list):  # pydantic errors, input values left out
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                for e in extra if isinstance(e, dict))
        detail = detail or str(doc.get("error") or doc.get("detail") or "")
    elif body:
        detail = body.decode("utf-8", "replace")
    return {"error": reason, "detail": (detail or reason.replace("_", " "))[:MAX_DETAIL]}


class ErrorShaper:
    """Wraps an ASGI ``send``: error answers (status >= 400) not in the service's shape are
    buffered and rewritten (see :func:`error_shape`); other answers pass through."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if int(message["status"]) >= 400:
                self.start = message
                return
        elif message["type"] == "http.response.body" and self.start is not None:
            self.chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            status = int(self.start["status"])
            fixed = error_shape(status, b"".join(self.chunks))
            headers = [(k, v) for k, v in self.start.get("headers", [])
                       if k.lower() not in (b"content-length", b"content-type")]
            body = b"".join(self.chunks) if fixed is None else json.dumps(fixed).encode()
            ctype = b"application/json"
            if fixed is None:
                ctype = next((v for k, v in self.start.get("headers", [])
                              if k.lower() == b"content-type"), ctype)
            self.start = None
            await self.send({"type": "http.response.start", "status": status, "headers": [
                *headers, (b"content-type", ctype), (b"content-length", str(len(body)).encode())]})
            await self.send({"type": "http.response.body", "body": body})
            return
        await self.send(message)


async def send_json(send: Send, status: int, payload: dict[str, Any],
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send a complete JSON response."""
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware: auth on every route but the probes, body checks on the form routes.

    Args:
        app: the wrapped ASGI app.
        token: the bearer token, or ``None`` for no authentication.
        max_body: largest accepted request body in bytes.
        forms: route path -> :class:`FormSpec` of the multipart routes.
        on_reject: called with the bounded reason of every refused request (metrics).
    """

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int,
                 forms: dict[str, FormSpec],
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.forms = forms
        self.on_reject = on_reject

    async def _refuse(self, send: Send, path: str, exc: RequestRejected) -> None:
        logger.info("refused %s: %d %s", path, exc.status, exc.reason)
        if self.on_reject is not None:
            self.on_reject(exc.reason)
        headers = [(b"www-authenticate", b'Bearer realm="rankiq"')] if exc.status == 401 else []
        await send_json(send, exc.status, {"error": exc.reason, "detail": str(exc)}, headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = ErrorShaper(send)
        path = scope.get("path", "")
        raw = scope.get("headers", [])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
        if sum(k.lower() == b"authorization" for k, _ in raw) > 1:
            await self._refuse(send, path, RequestRejected(
                400, "bad_request", "more than one Authorization header"))
            return
        if needs_auth(path, self.token) and not token_matches(
                self.token, headers.get("authorization")):  # type: ignore[arg-type]
            await self._refuse(send, path, RequestRejected(
                401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer ...)"))
            return
        spec = self.forms.get(path)
        if spec is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(headers, receive)
            check_multipart(body, headers.get("content-type", ""), spec)
        except RequestRejected as exc:
            await self._refuse(send, path, exc)
            return
        await self.app(scope, replay_body(body, receive), send)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        ctype, _ = parse_options_header(headers.get("content-type", ""))
        if ctype != b"multipart/form-data":
            raise RequestRejected(415, "unsupported_request",
                                  "send the files as multipart/form-data")
        limit = f"the request limit of {self.max_body} bytes (RANKIQ_MAX_UPLOAD_BYTES)"
        declared = headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise RequestRejected(400, "bad_request", "invalid Content-Length") from None
            if n > self.max_body:
                raise RequestRejected(413, "too_large",
                                      f"request body of {n} bytes exceeds {limit}")
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestRejected(400, "bad_request", "client disconnected")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                raise RequestRejected(413, "too_large", f"request body exceeds {limit}")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
