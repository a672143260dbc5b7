"""service.guard as an ASGI app, called directly (fake scope/receive/send, no server): auth,
content type, body limits, multipart structure, and the error shape of every refusal and of the
wrapped app's own error answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from rankiq.service.guard import (
    BOOL_WORDS,
    MAX_DETAIL,
    MAX_FILENAME,
    FormSpec,
    RequestGuard,
    RequestRejected,
    check_multipart,
    error_shape,
    replay_body,
    send_json,
)

SPEC = FormSpec(required_files=("image",), optional_files=("reference",),
                bool_values=("saliency",))
QA = FormSpec(required_files=("files",), repeated_files=("files",))
BOUNDARY = "b0undary"
CT = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart body of ``(field, filename or None for a text value, data)`` parts."""
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"'
        if filename is not None:
            disp += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def rejected(body: bytes, spec: FormSpec = SPEC, ctype: str = CT) -> RequestRejected:
    with pytest.raises(RequestRejected) as err:
        check_multipart(body, ctype, spec)
    return err.value


class App:
    """The wrapped app: records what reached it and answers ``status`` with ``body``."""

    def __init__(self, status: int = 200, body: bytes = b'{"ok": true}',
                 headers: list[tuple[bytes, bytes]] | None = None,
                 chunks: list[bytes] | None = None) -> None:
        self.status, self.body, self.chunks = status, body, chunks
        self.headers = headers if headers is not None else [(b"content-type",
                                                             b"application/json")]
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, scope, receive, send) -> None:
        received = b""
        if scope["type"] == "http" and scope.get("method") == "POST":
            while True:
                msg = await receive()
                received += msg.get("body", b"")
                if not msg.get("more_body", False):
                    break
        self.calls.append({"scope": scope, "body": received})
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": self.status,
                    "headers": self.headers})
        chunks = self.chunks if self.chunks is not None else [self.body]
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk,
                        "more_body": i < len(chunks) - 1})


def call(guard: RequestGuard, *, path: str = "/score", method: str = "POST",
         headers: list[tuple[bytes, bytes]] | None = None,
         chunks: list[bytes] | None = None, disconnect: bool = False,
         scope_type: str = "http") -> tuple[int | None, dict[bytes, bytes], bytes, list]:
    """Run one request through ``guard``: ``(status, response headers, body, sent messages)``."""
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
               for i, c in enumerate(chunks or [])]
    if disconnect:
        pending = pending[:1] if pending else []
        if pending:
            pending[0]["more_body"] = True
        pending.append({"type": "http.disconnect"})
    sent: list[dict[str, Any]] = []

    async def receive():
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": scope_type, "path": path, "method": method, "headers": headers or []}
    asyncio.run(guard(scope, receive, send))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    status = int(starts[0]["status"]) if starts else None
    hdrs = dict(starts[0]["headers"]) if starts else {}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, hdrs, body, sent


def guard_for(app: App, *, token: str | None = None, max_body: int = 10_000,
              rejects: list[str] | None = None) -> RequestGuard:
    return RequestGuard(app, token=token, max_body=max_body, forms={"/score": SPEC, "/qa": QA},
                        on_reject=None if rejects is None else rejects.append)


def post(body: bytes, *extra: tuple[bytes, bytes], length: bool = True
         ) -> list[tuple[bytes, bytes]]:
    hdrs = [(b"content-type", CT.encode()), *extra]
    if length:
        hdrs.append((b"content-length", str(len(body)).encode()))
    return hdrs


VALID = form(("image", "x.dcm", b"\0" * 300), ("saliency", None, b"true"))


# -- check_multipart: the structure of a form ------------------------------------------------------

def test_a_valid_form_passes_and_repeated_file_fields_are_allowed_where_declared():
    check_multipart(VALID, CT, SPEC)
    check_multipart(form(("image", "a", b"1"), ("reference", "b", b"2")), CT, SPEC)
    check_multipart(form(("files", "a", b"1"), ("files", "b", b"2"), ("files", "c", b"")),
                    CT, QA)
    err = rejected(form(("image", "a", b"1"), ("image", "b", b"2")))
    assert (err.status, err.reason, str(err)) == (400, "bad_request", "field 'image' given twice")


@pytest.mark.parametrize("ctype", ["application/json", "multipart/mixed; boundary=b0undary",
                                   "", "text/plain"])
def test_only_multipart_form_data_is_accepted(ctype):
    err = rejected(VALID, ctype=ctype)
    assert (err.status, err.reason) == (415, "unsupported_request")
    assert str(err) == "send the files as multipart/form-data"


def test_structural_problems_are_400_with_a_reason():
    err = rejected(VALID, ctype="multipart/form-data")
    assert (err.status, err.reason, str(err)) == (
        400, "bad_request", "multipart/form-data without a boundary")
    assert str(rejected(VALID[:-10])) == "truncated multipart body"
    assert str(rejected(b"garbage")).startswith("malformed multipart body") or str(
        rejected(b"garbage")) == "truncated multipart body"
    nameless = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; filename=\"a\"\r\n\r\n"
                f"x\r\n--{BOUNDARY}--\r\n").encode()
    assert str(rejected(nameless)) == "a multipart part has no field name"
    assert str(rejected(form(("reference", "a", b"1")))) == "missing file field(s): image"
    assert str(rejected(form(), spec=FormSpec(required_files=("image_a", "image_b")))) == (
        "missing file field(s): image_a, image_b")


def test_an_unknown_field_lists_the_allowed_ones_and_never_echoes_its_name():
    err = rejected(form(("image", "a", b"1"), ("ZZSECRETQ", "b", b"2")))
    assert (err.status, err.reason) == (400, "bad_request")
    assert str(err) == "unknown field (fields: image, reference, saliency)"
    assert "ZZSECRETQ" not in str(err)


def test_a_text_value_where_a_file_is_expected_is_refused():
    err = rejected(form(("image", None, b"http://example.org/a.dcm")))
    assert err.status == 400 and "field 'image' must be a file upload" in str(err)
    assert "example.org" not in str(err)


def test_file_name_length_limit_is_inclusive():
    check_multipart(form(("image", "n" * MAX_FILENAME, b"1")), CT, SPEC)
    err = rejected(form(("image", "n" * (MAX_FILENAME + 1), b"1")))
    assert (err.status, str(err)) == (
        400, f"field 'image': file name longer than {MAX_FILENAME} bytes")
    assert MAX_FILENAME == 250  # the documented limit


@pytest.mark.parametrize("char", ["\x01", "\x1f", "\x7f"])
def test_control_characters_in_a_file_name_are_refused(char):
    err = rejected(form(("image", f"a{char}b.dcm", b"1")))
    assert (err.status, str(err)) == (400, "field 'image': control characters in the file name")
    assert "a" + char not in str(err)


def test_printable_file_names_pass():
    check_multipart(form(("image", " ~space and tilde~ ", b"1")), CT, SPEC)


@pytest.mark.parametrize("word", sorted(BOOL_WORDS))
def test_every_boolean_word_is_accepted_in_any_case_and_quoted(word):
    for value in (word, word.upper(), f' "{word}" '):
        check_multipart(form(("image", "a", b"1"), ("saliency", None, value.encode())), CT, SPEC)


def test_boolean_words_are_the_documented_ones():
    assert {k for k, v in BOOL_WORDS.items() if v} == {"true", "1", "yes", "on"}
    assert {k for k, v in BOOL_WORDS.items() if not v} == {"false", "0", "no", "off"}


@pytest.mark.parametrize("value", [b"perhaps", b"", b"truee", b"true" + b"x" * 100])
def test_an_unparsable_boolean_is_refused(value):
    err = rejected(form(("image", "a", b"1"), ("saliency", None, value)))
    assert (err.status, str(err)) == (400, "field 'saliency' must be true or false")


def test_a_boolean_with_long_padding_is_read_in_full():
    # a short flag padded with whitespace inside the kept bytes still parses
    check_multipart(form(("image", "a", b"1"), ("saliency", None, b" " * 40 + b"on")), CT, SPEC)


# -- error_shape: the service's error shape for any error answer -----------------------------------

@pytest.mark.parametrize(("status", "reason"), [
    (400, "bad_request"), (401, "unauthorized"), (403, "forbidden"), (404, "not_found"),
    (405, "method_not_allowed"), (408, "timeout"), (409, "conflict"), (413, "too_large"),
    (415, "unsupported_request"), (422, "invalid_input"), (429, "too_many_requests"),
    (418, "bad_request"), (499, "bad_request")])
def test_client_errors_get_their_bounded_reason(status, reason):
    assert error_shape(status, b"") == {"error": reason, "detail": reason.replace("_", " ")}


@pytest.mark.parametrize(("status", "reason"), [(500, "internal"), (502, "internal"),
                                                 (503, "not_ready"), (504, "timeout")])
def test_server_errors_never_carry_the_exception_text(status, reason):
    for body in (b"Traceback ZZSECRETQ", b'{"error": "ZZSECRETQ"}', b""):
        assert error_shape(status, body) == {
            "error": reason, "detail": "internal error (see the server log)"}


def test_an_answer_already_in_shape_is_kept():
    assert error_shape(400, b'{"error": "x", "detail": "y"}') is None
    assert error_shape(500, b'{"error": "x", "detail": "y", "more": 1}') is None
    assert error_shape(422, b'[{"error": "x", "detail": "y"}]') is None  # BentoML's list form
    # not the shape: detail missing or not a string, or a list of two
    assert error_shape(400, b'{"error": "x"}') == {"error": "bad_request", "detail": "x"}
    assert error_shape(400, b'{"error": "x", "detail": 3}') == {"error": "bad_request",
                                                                "detail": "x"}
    two = b'[{"error": "x", "detail": "y"}, {"error": "x", "detail": "y"}]'
    assert error_shape(400, two) == {"error": "bad_request", "detail": two.decode()}


def test_details_are_taken_from_json_pydantic_errors_and_text():
    assert error_shape(400, b'{"error": "task_id is required"}') == {
        "error": "bad_request", "detail": "task_id is required"}
    assert error_shape(404, b'{"detail": "no such job"}') == {"error": "not_found",
                                                               "detail": "no such job"}
    pyd = json.dumps({"detail": [
        {"loc": ["body", "saliency"], "msg": "not a bool", "input": "ZZSECRETQ"},
        {"loc": ["query", 0], "msg": "missing"}, "not a dict"]}).encode()
    assert error_shape(422, pyd) == {"error": "invalid_input",
                                     "detail": "body.saliency: not a bool; query.0: missing"}
    assert error_shape(405, b"Method Not Allowed") == {"error": "method_not_allowed",
                                                       "detail": "Method Not Allowed"}
    assert error_shape(404, b"{}") == {"error": "not_found", "detail": "not found"}
    assert error_shape(404, b"[1, 2]") == {"error": "not_found", "detail": "[1, 2]"}


def test_a_long_detail_is_cut_to_the_limit():
    assert MAX_DETAIL == 300
    assert error_shape(400, b"x" * (MAX_DETAIL + 50))["detail"] == "x" * MAX_DETAIL
    assert error_shape(400, b"y" * MAX_DETAIL)["detail"] == "y" * MAX_DETAIL


# -- the guard as ASGI middleware ------------------------------------------------------------------

def test_a_valid_form_reaches_the_app_with_its_body_unchanged():
    app, rejects = App(), []
    status, hdrs, body, _ = call(guard_for(app, rejects=rejects), headers=post(VALID),
                                 chunks=[VALID[:100], VALID[100:]])
    assert status == 200 and body == b'{"ok": true}' and rejects == []
    assert len(app.calls) == 1 and app.calls[0]["body"] == VALID


def test_a_replayed_body_is_handed_over_once_then_receive_defers():
    async def run() -> list[dict[str, Any]]:
        async def receive():
            return {"type": "http.disconnect"}

        replay = replay_body(b"abc", receive)
        return [await replay(), await replay(), await replay()]

    first, second, third = asyncio.run(run())
    assert first == {"type": "http.request", "body": b"abc", "more_body": False}
    assert second == third == {"type": "http.disconnect"}


def test_non_http_scopes_and_other_routes_pass_straight_through():
    app = App()
    status, _, _, sent = call(guard_for(app, token="t"), scope_type="lifespan")
    assert status is None and sent == [] and len(app.calls) == 1
    # a route without a form, and a form route with another method: no body checks
    status, _, _, _ = call(guard_for(app), path="/models", method="GET")
    assert status == 200
    status, _, _, _ = call(guard_for(app), path="/score", method="GET",
                           headers=[(b"content-type", b"text/plain")])
    assert status == 200 and len(app.calls) == 3


def test_a_wrong_or_missing_token_is_401_with_a_challenge():
    app, rejects = App(), []
    g = guard_for(app, token="s3cret", rejects=rejects)
    for hdrs in ([], [(b"authorization", b"Bearer wrong")], [(b"authorization", b"s3cret")]):
        status, out, body, _ = call(g, path="/models", method="GET", headers=hdrs)
        assert status == 401 and out[b"www-authenticate"] == b'Bearer realm="rankiq"'
        assert json.loads(body) == {
            "error": "unauthorized",
            "detail": "missing or wrong bearer token (Authorization: Bearer ...)"}
        assert out[b"content-type"] == b"application/json"
        assert int(out[b"content-length"]) == len(body)
    assert rejects == ["unauthorized"] * 3 and app.calls == []
    # the right token (scheme in any case), and the probes without one
    for path, hdrs in (("/models", [(b"Authorization", b"bearer s3cret")]), ("/livez", [])):
        status, out, _, _ = call(g, path=path, method="GET", headers=hdrs)
        assert status == 200 and b"www-authenticate" not in out
    assert len(app.calls) == 2


def test_two_authorization_headers_are_refused_whatever_they_say():
    app, rejects = App(), []
    g = guard_for(app, token="s3cret", rejects=rejects)
    hdrs = [(b"authorization", b"Bearer s3cret"), (b"Authorization", b"Bearer s3cret")]
    status, out, body, _ = call(g, path="/models", method="GET", headers=hdrs)
    assert status == 400 and json.loads(body) == {"error": "bad_request",
                                                  "detail": "more than one Authorization header"}
    assert b"www-authenticate" not in out and rejects == ["bad_request"] and app.calls == []
    # without a token too: which header would count is ambiguous either way
    status, _, _, _ = call(guard_for(app), path="/models", method="GET", headers=hdrs)
    assert status == 400
    one = [(b"authorization", b"Bearer s3cret")]
    assert call(g, path="/models", method="GET", headers=one)[0] == 200


def test_a_form_route_without_multipart_is_415():
    app, rejects = App(), []
    status, _, body, _ = call(guard_for(app, rejects=rejects),
                              headers=[(b"content-type", b"application/json")], chunks=[b"{}"])
    assert status == 415 and json.loads(body)["error"] == "unsupported_request"
    assert rejects == ["unsupported_request"] and app.calls == []


def test_the_declared_body_size_limit_is_inclusive():
    app, rejects = App(), []
    g = guard_for(app, max_body=len(VALID), rejects=rejects)
    assert call(g, headers=post(VALID), chunks=[VALID])[0] == 200
    g = guard_for(app, max_body=len(VALID) - 1, rejects=rejects)
    status, _, body, _ = call(g, headers=post(VALID), chunks=[VALID])
    assert status == 413 and json.loads(body) == {
        "error": "too_large",
        "detail": f"request body of {len(VALID)} bytes exceeds the request limit of "
                  f"{len(VALID) - 1} bytes (RANKIQ_MAX_UPLOAD_BYTES)"}
    assert rejects == ["too_large"] and len(app.calls) == 1


def test_a_streamed_body_is_counted_against_the_limit():
    app = App()
    chunks = [VALID[:50], VALID[50:200], VALID[200:]]
    g = guard_for(app, max_body=len(VALID))
    assert call(g, headers=post(VALID, length=False), chunks=chunks)[0] == 200
    assert app.calls[0]["body"] == VALID
    g = guard_for(app, max_body=len(VALID) - 1)
    status, _, body, _ = call(g, headers=post(VALID, length=False), chunks=chunks)
    assert status == 413 and json.loads(body) == {
        "error": "too_large",
        "detail": f"request body exceeds the request limit of {len(VALID) - 1} bytes "
                  "(RANKIQ_MAX_UPLOAD_BYTES)"}
    # a Content-Length that understates the body does not lift the limit
    lying = [(b"content-type", CT.encode()), (b"content-length", b"10")]
    assert call(g, headers=lying, chunks=chunks)[0] == 413
    assert len(app.calls) == 1


def test_an_invalid_content_length_and_a_disconnect_are_400():
    app = App()
    status, _, body, _ = call(guard_for(app), headers=[(b"content-type", CT.encode()),
                                                       (b"content-length", b"ten")],
                              chunks=[VALID])
    assert status == 400 and json.loads(body)["detail"] == "invalid Content-Length"
    status, _, body, _ = call(guard_for(app), headers=post(VALID, length=False),
                              chunks=[VALID[:20]], disconnect=True)
    assert status == 400 and json.loads(body) == {"error": "bad_request",
                                                  "detail": "client disconnected"}
    assert app.calls == []


def test_a_malformed_form_is_refused_before_the_app_sees_it():
    app, rejects = App(), []
    bad = form(("image", None, b"text"))
    status, _, body, _ = call(guard_for(app, rejects=rejects), headers=post(bad), chunks=[bad])
    assert status == 400 and json.loads(body)["error"] == "bad_request"
    assert "must be a file upload" in json.loads(body)["detail"]
    assert rejects == ["bad_request"] and app.calls == []


# -- the wrapped app's own error answers are reshaped ----------------------------------------

def test_success_answers_pass_through_untouched():
    app = App(status=200, body=b"plain", headers=[(b"content-type", b"text/plain"),
                                                   (b"x-extra", b"1")])
    status, out, body, sent = call(guard_for(app), path="/models", method="GET")
    assert (status, body) == (200, b"plain")
    assert out == {b"content-type": b"text/plain", b"x-extra": b"1"}
    assert call(guard_for(App(status=399, body=b"x")), path="/m", method="GET")[2] == b"x"


def test_an_app_error_in_another_shape_is_rewritten_with_fresh_headers():
    app = App(status=404, headers=[(b"content-type", b"text/plain"), (b"content-length", b"9"),
                                   (b"x-request-id", b"abc")], chunks=[b"Not ", b"Found"])
    status, out, body, sent = call(guard_for(app), path="/nowhere", method="GET")
    assert status == 404 and json.loads(body) == {"error": "not_found", "detail": "Not Found"}
    assert out == {b"x-request-id": b"abc", b"content-type": b"application/json",
                   b"content-length": str(len(body)).encode()}
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[-1].get("more_body", False) is False
    # a 500's text never reaches the client
    status, _, body, _ = call(guard_for(App(status=500, body=b"Traceback ZZSECRETQ")),
                              path="/m", method="GET")
    assert status == 500 and b"ZZSECRETQ" not in body
    assert json.loads(body)["error"] == "internal"


def test_an_app_error_already_in_shape_keeps_its_body_and_content_type():
    shaped = b'{"error": "invalid_image", "detail": "not a DICOM"}'
    app = App(status=422, body=shaped, headers=[(b"Content-Type", b"application/problem+json"),
                                                (b"content-length", b"999")])
    status, out, body, _ = call(guard_for(app), path="/m", method="GET")
    assert (status, body) == (422, shaped)
    assert out[b"content-type"] == b"application/problem+json"
    assert out[b"content-length"] == str(len(shaped)).encode()
    # without a content type of its own, JSON is declared
    app = App(status=400, body=shaped, headers=[])
    assert call(guard_for(app), path="/m", method="GET")[1][b"content-type"] == (
        b"application/json")


def test_send_json_sends_one_complete_json_answer():
    sent: list[dict[str, Any]] = []

    async def send(m):
        sent.append(m)

    asyncio.run(send_json(send, 409, {"error": "conflict", "detail": "x"}, [(b"x-a", b"1")]))
    start, body = sent
    payload = json.dumps({"error": "conflict", "detail": "x"}).encode()
    assert start == {"type": "http.response.start", "status": 409, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
        (b"x-a", b"1")]}
    assert body == {"type": "http.response.body", "body": payload}
    sent.clear()
    asyncio.run(send_json(send, 200, {}))
    assert sent[0]["headers"] == [(b"content-type", b"application/json"),
                                  (b"content-length", b"2")]


def test_form_spec_files_are_required_then_optional():
    assert SPEC.files == ("image", "reference")
    assert QA.files == ("files",) and QA.optional_files == () and QA.bool_values == ()
    with pytest.raises(AttributeError):
        SPEC.required_files = ()  # type: ignore[misc]  (frozen: shared by every request)


def test_guard_options_are_keyword_only():
    """``token`` and ``max_body`` by keyword only: a positional token must never be read as a
    size limit (or the reverse)."""
    import inspect

    params = inspect.signature(RequestGuard).parameters.values()
    assert [p.name for p in params if p.kind is p.KEYWORD_ONLY] == [
        "token", "max_body", "forms", "on_reject"]
    assert [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD] == ["app"]
    with pytest.raises(TypeError):
        RequestGuard(App(), None, 10, {})  # type: ignore[misc]


def test_only_post_gets_the_form_checks():
    app = App()
    for method in ("PUT", "GET", "DELETE", "PATCH"):
        status, _, _, _ = call(guard_for(app), method=method,
                               headers=[(b"content-type", b"text/plain")], chunks=[b"x"])
        assert status == 200, method
    assert len(app.calls) == 4
