"""The reader-study web app (ASGI, Starlette): login, the reader page, the admin page and the
JSON API behind them. Run it with ``rankiq readers serve``.

Why this stack: Starlette and uvicorn already ship with the service (BentoML depends on them), so
the app adds no web framework; pages are rendered on the server with escaped f-strings and one
small vanilla-JS file per page, served by the app itself (no CDN, no third-party request:
hospital networks are often offline). Images are PNGs rendered from the pairs file on demand.

Authentication: an invitation token (``rankiq readers invite``) is exchanged at ``POST /login``
for an HttpOnly, SameSite=Strict session cookie signed with the study secret (HMAC-SHA256) and
bound to the current token hash; API clients may send ``Authorization: Bearer <token>`` instead.
Unknown token: 401. Cookie-authenticated writes need the ``X-CSRF-Token`` header the page
carries (an HMAC of the session). Readers and admins are separate invitations: a reader token
opens no admin route and an admin token votes on nothing (403).

Every error is a JSON object ``{"error": reason, "detail": text}`` with a 4xx status.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import urllib.parse
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rankiq.service.readers import agreement
from rankiq.service.readers.db import StudyDB, presentations
from rankiq.service.readers.pairsource import PairSource
from rankiq.service.readers.rankings import write_likert, write_rankings
from rankiq.service.readers.settings import Settings, StudyError
from rankiq.service.readers.study import (
    Identity,
    Item,
    collect,
    identity_by_id,
    identity_by_token,
    load_settings,
    next_item,
    own_votes,
    progress,
    record_vote,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"reader.js": "text/javascript", "admin.js": "text/javascript",
                "readers.css": "text/css"}
COOKIE = "rankiq_session"
MAX_BODY = 4096  # bytes: a vote or a login is a few dozen
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "script-src 'self'; style-src 'self'; frame-ancestors 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
log = logging.getLogger("rankiq.readers")


def _error(status: int, reason: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": reason, "detail": detail}, status_code=status)


class ReaderApp:
    """Routes over one study database and one pairs file."""

    def __init__(self, db: StudyDB, source: PairSource) -> None:
        self.db = db
        self.source = source
        self.secret = bytes.fromhex(db.study_row()["secret"])

    # --- identities ---------------------------------------------------------------------------

    def _sign(self, purpose: str, who: Identity, token_hash: str) -> str:
        msg = f"{purpose}:{who.id}:{token_hash}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def session_cookie(self, who: Identity, token_hash: str) -> str:
        """``<id>.<hmac>``: the cookie value of a session."""
        return f"{who.id}.{self._sign('session', who, token_hash)}"

    def csrf_token(self, who: Identity, token_hash: str) -> str:
        """The CSRF token the pages send back in ``X-CSRF-Token``."""
        return self._sign("csrf", who, token_hash)

    def identify(self, request: Request) -> tuple[Identity, str, bool] | None:
        """(identity, token hash, by_cookie) of a request, or None (no or unknown credential).

        A presented but unknown bearer token or a forged cookie is None as well (-> 401)."""
        auth = request.headers.get("authorization", "")
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            found = identity_by_token(self.db, token.strip())
            return None if found is None else (found[0], found[1], False)
        cookie = request.cookies.get(COOKIE, "")
        rid, _, sig = cookie.partition(".")
        if not rid.isdigit() or len(rid) > 12:
            return None
        found = identity_by_id(self.db, int(rid))
        if found is None:
            return None
        who, th = found
        if not hmac.compare_digest(sig, self._sign("session", who, th)):
            return None
        return who, th, True

    def require(self, request: Request, *, admin: bool, write: bool = False) -> Identity:
        """The request's identity with the right role (401 / 403 otherwise); cookie writes
        need the CSRF header."""
        found = self.identify(request)
        if found is None:
            raise StudyError(401, "unauthorized", "unknown or missing token")
        who, th, by_cookie = found
        if admin and not who.is_admin:
            raise StudyError(403, "forbidden", "this needs the admin token")
        if not admin and who.is_admin:
            raise StudyError(403, "forbidden", "the admin token does not read; invite a reader")
        if write and by_cookie:
            sent = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(sent, self.csrf_token(who, th)):
                raise StudyError(403, "csrf", "missing or wrong X-CSRF-Token header")
        return who

    # --- pages --------------------------------------------------------------------------------

    def login_page(self, request: Request) -> Response:
        found = self.identify(request)
        if found is not None:
            return RedirectResponse("/admin" if found[0].is_admin else "/read", 303)
        return HTMLResponse(_page("Sign in", _LOGIN.format(error="")))

    async def login(self, request: Request) -> Response:
        body = await _body(request)
        token = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        found = identity_by_token(self.db, token.strip()) if token.strip() else None
        if found is None:
            err = '<p class="error" role="alert">Unknown token.</p>'
            return HTMLResponse(_page("Sign in", _LOGIN.format(error=err)), status_code=401)
        who, th = found
        resp = RedirectResponse("/admin" if who.is_admin else "/read", 303)
        resp.set_cookie(COOKIE, self.session_cookie(who, th), httponly=True, samesite="strict",
                        path="/", secure=request.url.scheme == "https")
        return resp

    async def logout(self, request: Request) -> Response:
        self.require_any_write(request)
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(COOKIE, path="/")
        return resp

    def require_any_write(self, request: Request) -> None:
        found = self.identify(request)
        if found is None:
            raise StudyError(401, "unauthorized", "unknown or missing token")
        who, th, by_cookie = found
        if by_cookie and not hmac.compare_digest(request.headers.get("x-csrf-token", ""),
                                                 self.csrf_token(who, th)):
            raise StudyError(403, "csrf", "missing or wrong X-CSRF-Token header")

    def read_page(self, request: Request) -> Response:
        found = self.identify(request)
        if found is None or found[0].is_admin:
            return RedirectResponse("/", 303)
        who, th, _ = found
        s = load_settings(self.db)
        body = _READER.format(
            name=html.escape(who.name), task=who.task, csrf=self.csrf_token(who, th),
            reference=s.reference,
            buttons=_RANK_BUTTONS if who.task == "rank" else _likert_buttons(s),
            viewers=_rank_viewers(s) if who.task == "rank" else _likert_viewers(s))
        return HTMLResponse(_page("Reader", body, script="reader.js"))

    def admin_page(self, request: Request) -> Response:
        found = self.identify(request)
        if found is None or not found[0].is_admin:
            return RedirectResponse("/", 303)
        who, th, _ = found
        summary = self.summary()
        return HTMLResponse(_page("Admin", _admin_html(summary, self.csrf_token(who, th)),
                                  script="admin.js", refresh=20))

    # --- API ----------------------------------------------------------------------------------

    def api_next(self, request: Request) -> Response:
        who = self.require(request, admin=False)
        item = next_item(self.db, who, self.source.pair_ids)
        if item is None:
            return JSONResponse({"done": True, "answered": len(own_votes(self.db, who))})
        return JSONResponse({"done": False, "item": self._item_json(item)})

    def _item_json(self, item: Item) -> dict[str, Any]:
        base = f"/api/image/{item.id}"
        s = load_settings(self.db)
        images = ({"left": f"{base}/left", "right": f"{base}/right"} if item.task == "rank"
                  else {"single": f"{base}/single"})
        if s.reference == "shown":
            images["reference"] = f"{base}/reference"
        return {"id": item.id, "nonce": item.nonce, "task": item.task, "position": item.seq + 1,
                "images": images}

    async def api_vote(self, request: Request) -> Response:
        who = self.require(request, admin=False, write=True)
        if "json" not in request.headers.get("content-type", ""):
            raise StudyError(415, "malformed_vote", "send the vote as application/json")
        raw = await _body(request)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise StudyError(422, "malformed_vote", "the body is not JSON") from None
        from starlette.concurrency import run_in_threadpool

        done = await run_in_threadpool(record_vote, self.db, who, body)
        return JSONResponse({"ok": True, **done})

    def api_me(self, request: Request) -> Response:
        who = self.require(request, admin=False)
        return JSONResponse({"reader": who.name, "task": who.task,
                             "votes": own_votes(self.db, who)})

    def api_image(self, request: Request) -> Response:
        who = self.require(request, admin=False)
        try:
            pres = int(request.path_params["pres"])
        except ValueError:
            raise StudyError(404, "not_found", "no such image") from None
        if not 1 <= pres < 2**31:
            raise StudyError(404, "not_found", "no such image")
        slot = request.path_params["slot"]
        with self.db.read() as conn:
            row = conn.execute(sa.select(presentations).where(
                presentations.c.id == pres)).first()
        if row is None or row.reader_id != who.id:
            raise StudyError(403, "not_assigned", "this item was not assigned to you")
        if slot == "reference":
            if load_settings(self.db).reference != "shown":
                raise StudyError(403, "reference_hidden", "this study hides the reference")
            which = "reference"
        elif who.task == "rank" and slot in ("left", "right"):
            which = "image2" if (slot == "left") == bool(row.flipped) else "image1"
        elif who.task == "likert" and slot == "single":
            which = f"image{row.image}"
        else:
            raise StudyError(404, "not_found", "no such image")
        return Response(self.source.png(row.pair_id, which), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    def summary(self) -> dict[str, Any]:
        """Progress and live agreement (the paper's statistics, from :mod:`.agreement`)."""
        votes, scores = collect(self.db)
        s = load_settings(self.db)
        n_likert = (len(self.source.pair_ids) if s.likert_pairs == 0
                    else min(s.likert_pairs, len(self.source.pair_ids))) * 2
        items = {"rank": len(self.source.pair_ids), "likert": n_likert}
        out = agreement.summarize(votes, scores or None)
        out.pop("confusion")
        by_contrast: dict[str, Any] = {}
        for c in sorted(set(self.source.contrast)):
            sub = [v for v in votes if self.source.contrast_of(v.pair_id) == c]
            counts = agreement.vote_counts(sub)
            intra, inter = agreement.agreement_tables(counts)
            by_contrast[c] = {
                "n_votes": sum(v.outcome != "skip" for v in sub),
                "overall": agreement.overall_agreement(counts),
                "intra_mean": _mean(intra.values()), "inter_mean": _mean(inter.values())}
        counts = agreement.vote_counts(votes)
        _, n_readers = agreement.pooled_counts(counts)
        out.update({
            "by_contrast": by_contrast, "progress": progress(self.db, items),
            "settings": _public_settings(s), "order": s.statement(),
            "pairs": len(self.source.pair_ids),
            "pairs_complete": sum(1 for p in self.source.pair_ids
                                  if n_readers.get(p, 0) >= s.readers_per_pair)})
        return out

    def api_summary(self, request: Request) -> Response:
        self.require(request, admin=True)
        return JSONResponse(self.summary())

    def api_export(self, request: Request) -> Response:
        self.require(request, admin=True)
        name = request.path_params["name"]
        import tempfile

        votes, scores = collect(self.db)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "out.csv"
            if name == "rankings.csv":
                write_rankings(path, votes)
            elif name == "likert.csv":
                write_likert(path, scores)
            else:
                raise StudyError(404, "not_found", "export rankings.csv or likert.csv")
            data = path.read_bytes()
        return Response(data, media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{name}"'})

    def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            raise StudyError(404, "not_found", "no such file")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name],
                            headers={"Cache-Control": "no-cache"})

    def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")


def _mean(values: Any) -> float | None:
    v = list(values)
    return sum(v) / len(v) if v else None


def _public_settings(s: Settings) -> dict[str, Any]:
    d = {k: getattr(s, k) for k in ("readers_per_pair", "repeat_fraction", "repeat_gap",
                                    "reference", "likert_pairs", "order", "priority_source",
                                    "seed")}
    return d


async def _body(request: Request) -> bytes:
    """The request body, refused (413) above :data:`MAX_BODY` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise StudyError(413, "too_large", f"body above {MAX_BODY} bytes")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise StudyError(413, "too_large", f"body above {MAX_BODY} bytes")
    return data


# --- HTML ---------------------------------------------------------------------------------------

def _page(title: str, body: str, script: str | None = None, refresh: int | None = None) -> str:
    js = f'<script src="/static/{script}" defer></script>' if script else ""
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>RankIQ reader study: {html.escape(title)}</title>"
            f'<link rel="stylesheet" href="/static/readers.css">{js}</head>'
            f"<body>{body}</body></html>")


_LOGIN = """<main class="login"><h1>RankIQ reader study</h1>
<form method="post" action="/login">{error}
<label for="token">Invitation token</label>
<input id="token" name="token" type="password" autocomplete="off" required autofocus>
<button id="signin" type="submit">Sign in</button></form></main>"""

_READER = """<header><strong>RankIQ reader study</strong> <span>{name} ({task})</span>
<span id="progress"></span><button id="logout" type="button">Sign out</button></header>
<main id="reader" data-task="{task}" data-reference="{reference}" data-csrf="{csrf}">
<div class="viewers">{viewers}</div>
<div class="answer">{buttons}</div>
<p class="help">Wheel: zoom &middot; drag: pan &middot; right-drag or shift+drag: window/level
(both images together) &middot; R: reset view</p>
<p id="status" role="status"></p></main>"""

_RANK_BUTTONS = """<button type="button" data-choice="left">Left better <kbd>1</kbd></button>
<button type="button" data-choice="right">Right better <kbd>2</kbd></button>
<button type="button" data-choice="similar">Similar <kbd>3</kbd></button>
<button type="button" data-choice="skip" class="skip">Skip <kbd>S</kbd></button>"""


def _viewer(cid: str, label: str) -> str:
    return (f'<figure><figcaption>{label}</figcaption>'
            f'<canvas id="{cid}" width="384" height="384"></canvas></figure>')


def _rank_viewers(s: Settings) -> str:
    ref = _viewer("reference", "Reference") if s.reference == "shown" else ""
    return ref + _viewer("left", "Left") + _viewer("right", "Right")


def _likert_viewers(s: Settings) -> str:
    ref = _viewer("reference", "Reference") if s.reference == "shown" else ""
    return ref + _viewer("single", "Image")


def _likert_buttons(s: Settings) -> str:
    crit = "".join(f"<li>{html.escape(line)}</li>"
                   for line in s.likert_criteria.splitlines() if line.strip())
    btns = "".join(f'<button type="button" data-choice="{k}">{k} <kbd>{k}</kbd></button>'
                   for k in range(1, 6))
    return (f'<ol class="criteria" reversed>{crit}</ol>{btns}'
            '<button type="button" data-choice="skip" class="skip">Skip <kbd>S</kbd></button>')


def _num(v: float | None, fmt: str) -> str:
    return "&ndash;" if v is None else format(v, fmt)


def _pct(v: float | None) -> str:
    return "&ndash;" if v is None else f"{100 * v:.1f} %"


def _admin_html(s: dict[str, Any], csrf: str) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(p['reader'])}</td><td>{p['task']}</td><td>{p['answered']}</td>"
        f"<td>{p['skips']}</td><td>{p['repeats']}</td><td>{p['open']}</td><td>{p['items']}</td>"
        f"<td>{_num(p['median_seconds'], '.1f')}</td>"
        f"<td>{_pct(s['intra'].get(p['reader'])) if p['task'] == 'rank' else ''}</td></tr>"
        for p in s["progress"])
    inter = "".join(f"<tr><td>{html.escape(k.replace('|', ' & '))}</td><td>{_pct(v)}</td></tr>"
                    for k, v in s["inter"].items())
    contrast = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{e['n_votes']}</td><td>{_pct(e['overall'])}</td>"
        f"<td>{_pct(e['intra_mean'])}</td><td>{_pct(e['inter_mean'])}</td></tr>"
        for c, e in s["by_contrast"].items() if e["n_votes"])
    likert = "".join(
        f"<tr><td>{html.escape(k.replace('|', ' & '))}</td><td>{e['n_images']}</td>"
        f"<td>{_num(e['kappa_w'], '.3f')}</td>"
        f"<td>{_pct(e['agreement'])}</td></tr>" for k, e in s["likert"].items())
    st = s["settings"]
    return f"""<header><strong>RankIQ reader study: admin</strong>
<button id="logout" type="button">Sign out</button></header>
<main id="admin" data-csrf="{csrf}">
<section><h2>Progress</h2>
<p id="overall-progress">{s['pairs_complete']} of {s['pairs']} pairs reached
{st['readers_per_pair']} readers; {s['n_votes']} votes, {s['n_skips']} skips.</p>
<table id="progress"><thead><tr><th>Reader</th><th>Task</th><th>Answered</th><th>Skips</th>
<th>Repeats</th><th>Open</th><th>Items</th><th>Median s</th><th>Intra</th></tr></thead>
<tbody>{rows}</tbody></table></section>
<section><h2>Agreement</h2>
<p>Intra-reader mean <b id="intra-mean">{_pct(s['intra_mean'])}</b>,
inter-reader mean <b id="inter-mean">{_pct(s['inter_mean'])}</b>,
overall <b id="overall">{_pct(s['overall'])}</b>
(definitions as in <code>rankiq agreement</code>).</p>
<table id="inter"><thead><tr><th>Readers</th><th>Inter</th></tr></thead><tbody>{inter}</tbody>
</table>
<table id="contrast"><thead><tr><th>Contrast</th><th>Votes</th><th>Overall</th><th>Intra</th>
<th>Inter</th></tr></thead><tbody>{contrast}</tbody></table>
<table id="likert"><thead><tr><th>Likert readers</th><th>Images</th><th>&kappa;<sub>w</sub></th>
<th>Agreement</th></tr></thead><tbody>{likert}</tbody></table></section>
<section><h2>Export</h2><p>{html.escape(s['order'])}.</p>
<p><a id="export-rankings" href="/api/admin/export/rankings.csv" download>rankings.csv</a>
&middot; <a id="export-likert" href="/api/admin/export/likert.csv" download>likert.csv</a>
(the formats <code>rankiq agreement</code> and <code>rankiq train</code> read), or
<code>rankiq readers export</code> for both with the study settings.</p></section></main>"""


# --- the ASGI app -------------------------------------------------------------------------------

def create_app(db: StudyDB, source: PairSource) -> ASGIApp:
    """The Starlette app of a study (``db`` opened and configured, ``source`` its pairs file)."""
    ra = ReaderApp(db, source)

    async def study_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StudyError)
        return _error(exc.http_status, exc.reason, str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, "not_found" if exc.status_code == 404 else "http",
                      str(exc.detail))

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("internal error: %s", type(exc).__name__)
        return _error(500, "internal", "internal error (the vote was not recorded)")

    routes = [
        Route("/", ra.login_page),
        Route("/login", ra.login, methods=["POST"]),
        Route("/logout", ra.logout, methods=["POST"]),
        Route("/read", ra.read_page),
        Route("/admin", ra.admin_page),
        Route("/healthz", ra.healthz),
        Route("/api/next", ra.api_next),
        Route("/api/vote", ra.api_vote, methods=["POST"]),
        Route("/api/me", ra.api_me),
        Route("/api/image/{pres}/{slot}", ra.api_image),
        Route("/api/admin/summary", ra.api_summary),
        Route("/api/admin/export/{name}", ra.api_export),
        Route("/static/{name}", ra.static),
    ]
    app = Starlette(routes=routes, exception_handlers={
        StudyError: study_error, HTTPException: http_error, Exception: internal})
    return SecurityHeaders(app)


class SecurityHeaders:
    """ASGI wrapper adding :data:`SECURITY_HEADERS` to every HTTP answer (those the route did
    not set itself)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                hdrs = list(message.get("headers", []))
                have = {k.lower() for k, _ in hdrs}
                for k, v in SECURITY_HEADERS.items():
                    if k.lower().encode() not in have:
                        hdrs.append((k.lower().encode(), v.encode()))
                message = {**message, "headers": hdrs}
            await send(message)

        await self.app(scope, receive, send_with)
