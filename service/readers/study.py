"""The reader study's rules: settings, invitations, scheduling, votes, export and the live
summary. Pure functions of a :class:`~.db.StudyDB` (no HTTP here; :mod:`.app` serves them).

Scheduling (per reader, on each request for the next item, inside the study's write lock):

1. An unanswered item already issued to the reader is issued again (a reload or a restarted
   server resumes exactly where the reader stopped).
2. A repeat, when the reader's repeats are fewer than ``repeat_fraction`` x their answered first
   presentations and a pair answered once was shown at least ``repeat_gap`` items ago (oldest
   first). Repeats measure intra-reader agreement; Likert items are never repeated (a Likert file
   holds one score per reader and image).
3. A new item the reader has not seen whose coverage (readers with a non-skip answer or an open
   presentation) is below ``readers_per_pair``, in the study's order: ``random`` (least covered
   first, then a per-reader seeded shuffle), ``disagreement`` (pairs whose pooled votes are most
   uncertain first: entropy of the counts with one pseudo-vote per outcome, so an unvoted pair
   counts as most uncertain) or ``priority`` (a model's uncertainty per pair from a CSV, highest
   first).

Left/right is drawn per presentation (seeded by study seed, reader and position). A reader never
gets the same pair twice in a row: new items are unseen and repeats need ``repeat_gap >= 1``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from rankiq.service.readers.db import StudyDB, presentations, readers, study
from rankiq.service.readers.rankings import (
    LikertScore,
    Vote,
    write_likert,
    write_rankings,
)
from rankiq.service.readers.settings import (  # noqa: F401 - re-exported
    ADMIN,
    DEFAULT_CRITERIA,
    MAX_SECONDS,
    ORDERS,
    RANK_CHOICES,
    TASKS,
    Settings,
    StudyError,
)
from sqlalchemy.engine import Connection

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


def read_priorities(path: str | Path) -> dict[str, float]:
    """``pair_id,priority`` CSV (header required; higher = shown earlier) -> {pair id: value}."""
    out: dict[str, float] = {}
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        raise StudyError(422, "bad_priority", "--priority: cannot read the CSV") from None
    fh = io.StringIO(text, newline="")
    rows = csv.DictReader(fh)
    if rows.fieldnames is None or not {"pair_id", "priority"} <= set(rows.fieldnames):
        raise StudyError(422, "bad_priority", "--priority: header must have pair_id,priority")
    for row in rows:
        try:
            pid, val = int(row["pair_id"]), float(row["priority"])
        except (TypeError, ValueError):
            raise StudyError(422, "bad_priority", f"--priority: line {rows.line_num}: "
                             "pair_id must be an integer and priority a number") from None
        if not math.isfinite(val):
            raise StudyError(422, "bad_priority", f"--priority: line {rows.line_num}: "
                             "priority must be finite")
        out[str(pid)] = val
    return out


# --- invitations and identities -----------------------------------------------------------------

def hash_token(token: str) -> str:
    """SHA-256 hex of a token (tokens are 192-bit random, so no salt or stretching is needed)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def invite(db: StudyDB, name: str, task: str) -> str:
    """Create (or replace) the invitation of ``name`` for ``task`` (``rank``, ``likert`` or
    ``admin``); returns the new token, which is shown once and stored only hashed. Replacing a
    token invalidates the old one and its sessions."""
    if not _NAME.match(name):
        raise StudyError(422, "bad_name", "reader name must be 1-40 letters, digits, '.', '_' "
                                          "or '-', starting with a letter or digit")
    if task not in (*TASKS, ADMIN):
        raise StudyError(422, "bad_task", f"task must be one of {', '.join((*TASKS, ADMIN))}")
    token = "rq_" + secrets.token_urlsafe(24)
    with db.write() as conn:
        row = conn.execute(sa.select(readers.c.id).where(
            readers.c.name == name, readers.c.task == task)).first()
        if row is None:
            conn.execute(readers.insert().values(name=name, task=task,
                                                 token_hash=hash_token(token),
                                                 created_at=time.time()))
        else:
            conn.execute(readers.update().where(readers.c.id == row.id).values(
                token_hash=hash_token(token)))
    return token


@dataclass(frozen=True)
class Identity:
    """An authenticated invitation. ``key`` binds sessions and CSRF tokens to the current
    token (a replaced token invalidates them)."""

    id: int
    name: str
    task: str

    @property
    def is_admin(self) -> bool:
        return self.task == ADMIN


def identity_by_token(db: StudyDB, token: str) -> tuple[Identity, str] | None:
    """The invitation of a token and its token hash, or None."""
    with db.read() as conn:
        row = conn.execute(sa.select(readers).where(
            readers.c.token_hash == hash_token(token))).first()
    return None if row is None else (Identity(row.id, row.name, row.task), row.token_hash)


def identity_by_id(db: StudyDB, reader_id: int) -> tuple[Identity, str] | None:
    """The invitation with this id and its token hash, or None."""
    with db.read() as conn:
        row = conn.execute(sa.select(readers).where(readers.c.id == reader_id)).first()
    return None if row is None else (Identity(row.id, row.name, row.task), row.token_hash)


# --- study set-up -------------------------------------------------------------------------------

def configure(db: StudyDB, fingerprint: str, n_pairs: int, settings: Settings) -> None:
    """Bind the database to a pairs file (refusing another file once votes exist) and store the
    settings."""
    settings.validate()
    with db.write() as conn:
        row = conn.execute(sa.select(study).where(study.c.id == 1)).one()
        if row.pairs_fingerprint not in (None, fingerprint):
            n = conn.execute(sa.select(sa.func.count()).select_from(presentations)).scalar_one()
            if n:
                raise StudyError(422, "other_pairs_file",
                                 "this database holds a study of another pairs file; "
                                 "use another --db")
        conn.execute(study.update().where(study.c.id == 1).values(
            pairs_fingerprint=fingerprint, n_pairs=n_pairs,
            settings_json=json.dumps(asdict(settings))))


def load_settings(db: StudyDB) -> Settings:
    """The stored settings (defaults when the study was never served)."""
    raw = db.study_row()["settings"]
    return Settings(**raw) if raw else Settings()


# --- scheduling ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One issued presentation, as the reader page needs it (no pair id or image index: the
    reader is blind to which image is which)."""

    id: int
    nonce: str
    task: str
    seq: int
    pair_id: int
    image: int
    flipped: bool
    is_repeat: bool


def _items(pair_ids: Sequence[int], task: str, s: Settings) -> list[tuple[int, int]]:
    """Every (pair id, image) item of a task: ranking (pair, 0); Likert (pair, 1) and (pair, 2)
    for the Likert subset (``likert_pairs`` pairs drawn with the study seed; 0 = all)."""
    if task == "rank":
        return [(p, 0) for p in pair_ids]
    chosen = list(pair_ids)
    if 0 < s.likert_pairs < len(chosen):
        rng = np.random.default_rng([s.seed, 15])
        chosen = sorted(int(p) for p in rng.choice(chosen, s.likert_pairs, replace=False))
    return [(p, k) for p in chosen for k in (1, 2)]


def _uncertainty(counts: Sequence[int]) -> float:
    """Entropy (nats) of outcome counts with one pseudo-vote per outcome."""
    c = np.asarray(counts, dtype=np.float64) + 1.0
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


def _row_item(row: Any, task: str) -> Item:
    return Item(row.id, row.nonce, task, row.seq, row.pair_id, row.image, bool(row.flipped),
                bool(row.is_repeat))


def next_item(db: StudyDB, who: Identity, pair_ids: Sequence[int]) -> Item | None:
    """The reader's current item (issued now if needed), or None when they are done."""
    s = load_settings(db)
    with db.write() as conn:
        hist = conn.execute(sa.select(presentations).where(
            presentations.c.reader_id == who.id).order_by(presentations.c.seq)).all()
        for row in hist:
            if row.answered_at is None:
                return _row_item(row, who.task)
        seq = len(hist)
        last_pair = hist[-1].pair_id if hist else None
        pick = _repeat(hist, s) if who.task == "rank" else None
        if pick is None:
            pick = _new(conn, who, hist, pair_ids, s)
        if pick is None:
            return None
        (pair_id, image), is_repeat = pick
        assert pair_id != last_pair or image != 0  # the same pair never follows itself
        rng = np.random.default_rng([s.seed, who.id, seq])
        flipped = bool(rng.integers(0, 2)) if who.task == "rank" else False
        nonce = secrets.token_urlsafe(16)
        res = conn.execute(presentations.insert().values(
            reader_id=who.id, seq=seq, pair_id=pair_id, image=image, is_repeat=is_repeat,
            flipped=flipped, nonce=nonce, issued_at=time.time()))
        pk = res.inserted_primary_key
        assert pk is not None
        return Item(int(pk[0]), nonce, who.task, seq, pair_id, image, flipped, is_repeat)


def _repeat(hist: Sequence[Any], s: Settings) -> tuple[tuple[int, int], bool] | None:
    if s.repeat_fraction <= 0:
        return None
    firsts = [r for r in hist if not r.is_repeat and r.outcome not in (None, "skip")]
    n_rep = sum(1 for r in hist if r.is_repeat)
    if n_rep >= s.repeat_fraction * len(firsts):
        return None
    repeated = {r.pair_id for r in hist if r.is_repeat}
    for r in firsts:  # oldest first
        if r.pair_id not in repeated and len(hist) - r.seq - 1 >= s.repeat_gap:
            return (r.pair_id, 0), True
    return None


def _new(conn: Connection, who: Identity, hist: Sequence[Any], pair_ids: Sequence[int],
         s: Settings) -> tuple[tuple[int, int], bool] | None:
    items = _items(pair_ids, who.task, s)
    seen = {(r.pair_id, r.image) for r in hist}
    live = sa.or_(presentations.c.outcome.is_(None), presentations.c.outcome != "skip")
    cov_rows = conn.execute(
        sa.select(presentations.c.pair_id, presentations.c.image,
                  sa.func.count(sa.distinct(presentations.c.reader_id)))
        .join(readers, readers.c.id == presentations.c.reader_id)
        .where(readers.c.task == who.task, presentations.c.is_repeat.is_(False), live)
        .group_by(presentations.c.pair_id, presentations.c.image)).all()
    coverage = {(int(p), int(k)): int(n) for p, k, n in cov_rows}
    cands = [it for it in items if it not in seen and coverage.get(it, 0) < s.readers_per_pair]
    if not cands:
        return None
    perm = np.random.default_rng([s.seed, who.id, 7]).permutation(len(items))
    rank_of = {it: int(perm[i]) for i, it in enumerate(items)}
    if s.order == "disagreement":
        pooled: dict[int, list[int]] = {}
        for pid, outcome, n in conn.execute(
                sa.select(presentations.c.pair_id, presentations.c.outcome, sa.func.count())
                .join(readers, readers.c.id == presentations.c.reader_id)
                .where(readers.c.task == "rank",
                       presentations.c.outcome.in_(("1", "similar", "2")))
                .group_by(presentations.c.pair_id, presentations.c.outcome)).all():
            pooled.setdefault(int(pid), [0, 0, 0])[("1", "similar", "2").index(outcome)] += n
        unc = {it: _uncertainty(pooled.get(it[0], [0, 0, 0])) for it in cands}
        cands.sort(key=lambda it: (-round(unc[it], 12), coverage.get(it, 0), rank_of[it]))
    elif s.order == "priority":
        pr = s.priorities or {}
        cands.sort(key=lambda it: (-pr.get(str(it[0]), -math.inf), coverage.get(it, 0),
                                   rank_of[it]))
    else:
        cands.sort(key=lambda it: (coverage.get(it, 0), rank_of[it]))
    return cands[0], False


# --- votes --------------------------------------------------------------------------------------

def parse_vote(body: object, task: str) -> tuple[int, str, str, float | None]:
    """Validate a vote body ``{"presentation": int, "nonce": str, "choice": str, "seconds":
    number?}``; returns (presentation id, nonce, choice, seconds) or raises 422."""
    def bad(msg: str) -> StudyError:
        return StudyError(422, "malformed_vote", msg)

    if not isinstance(body, dict):
        raise bad("the vote must be a JSON object")
    extra = set(body) - {"presentation", "nonce", "choice", "seconds"}
    if extra:
        raise bad(f"unknown field(s): {', '.join(sorted(str(k)[:20] for k in extra))}")
    pid, nonce, choice = body.get("presentation"), body.get("nonce"), body.get("choice")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 1 <= pid < 2**31:
        raise bad("presentation must be a positive integer (below 2^31)")
    if not isinstance(nonce, str) or not 1 <= len(nonce) <= 64:
        raise bad("nonce must be the string issued with the item")
    if isinstance(choice, int) and not isinstance(choice, bool):
        choice = str(choice)
    allowed = RANK_CHOICES if task == "rank" else ("1", "2", "3", "4", "5", "skip")
    if choice not in allowed:
        raise bad(f"choice must be one of {', '.join(allowed)}")
    seconds = body.get("seconds")
    if seconds is not None:
        if (not isinstance(seconds, int | float) or isinstance(seconds, bool)
                or not 0.0 <= float(seconds) <= MAX_SECONDS):
            raise bad(f"seconds must be a number in [0, {MAX_SECONDS:.0f}]")
        seconds = float(seconds)
    assert isinstance(choice, str)
    return pid, nonce, choice, seconds


def record_vote(db: StudyDB, who: Identity, body: object) -> dict[str, Any]:
    """Record one answer durably (committed before this returns) and exactly once.

    Errors: 422 malformed, 403 ``not_assigned`` (not this reader's presentation), 403
    ``bad_nonce``, 409 ``replayed`` (already answered). Returns ``{"recorded": id, "seq": n}``.
    """
    pres_id, nonce, choice, seconds = parse_vote(body, who.task)
    now = time.time()
    with db.write() as conn:
        row = conn.execute(sa.select(presentations).where(
            presentations.c.id == pres_id)).first()
        if row is None or row.reader_id != who.id:
            raise StudyError(403, "not_assigned", "this item was not assigned to you")
        if not secrets.compare_digest(row.nonce, nonce):
            raise StudyError(403, "bad_nonce", "the nonce does not match the issued item")
        if row.answered_at is not None:
            raise StudyError(409, "replayed", "this item was already answered")
        if who.task == "rank" and choice in ("left", "right"):
            outcome = "2" if (choice == "left") == bool(row.flipped) else "1"
        else:
            outcome = choice  # similar, skip, or a Likert score 1-5
        if seconds is None:
            seconds = max(0.0, now - row.issued_at)
        done = conn.execute(presentations.update().where(
            presentations.c.id == pres_id, presentations.c.answered_at.is_(None)).values(
            outcome=outcome, seconds=seconds, answered_at=now))
        if done.rowcount != 1:  # pragma: no cover - guarded by the lock and the check above
            raise StudyError(409, "replayed", "this item was already answered")
    return {"recorded": pres_id, "seq": row.seq}


def own_votes(db: StudyDB, who: Identity) -> list[dict[str, Any]]:
    """The reader's own answered items (no other reader's), oldest first."""
    with db.read() as conn:
        rows = conn.execute(sa.select(presentations).where(
            presentations.c.reader_id == who.id, presentations.c.answered_at.is_not(None))
            .order_by(presentations.c.seq)).all()
    return [{"seq": r.seq, "pair_id": r.pair_id, "image": r.image or None,
             "outcome": r.outcome, "seconds": round(float(r.seconds or 0.0), 3),
             "repeat": bool(r.is_repeat)} for r in rows]


# --- export and summary -------------------------------------------------------------------------

def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def collect(db: StudyDB) -> tuple[list[Vote], list[LikertScore]]:
    """Every answered ranking (skips included) and Likert score (skips left out), by reader
    and order of answer."""
    with db.read() as conn:
        rows = conn.execute(
            sa.select(presentations, readers.c.name, readers.c.task)
            .join(readers, readers.c.id == presentations.c.reader_id)
            .where(presentations.c.answered_at.is_not(None))
            .order_by(readers.c.name, readers.c.task, presentations.c.seq)).all()
    votes = [Vote(r.name, r.pair_id, r.outcome, r.seconds, _iso(r.answered_at))
             for r in rows if r.task == "rank"]
    scores = [LikertScore(r.name, r.pair_id, r.image, int(r.outcome), r.seconds)
              for r in rows if r.task == "likert" and r.outcome != "skip"]
    return votes, scores


def export(db: StudyDB, out: str | Path) -> dict[str, Any]:
    """Write ``rankings.csv``, ``likert.csv`` (when there are scores) and ``study.json`` (settings,
    the order statement, counts) into the folder ``out``; returns the study.json content."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    votes, scores = collect(db)
    write_rankings(folder / "rankings.csv", votes)
    if scores:
        write_likert(folder / "likert.csv", scores)
    row = db.study_row()
    s = load_settings(db)
    settings = asdict(s)
    settings.pop("priorities")
    info = {"format": "rankiq-reader-study", "exported_at": _iso(time.time()),
            "pairs_fingerprint": row["pairs_fingerprint"], "n_pairs": row["n_pairs"],
            "settings": settings, "order": s.statement(),
            "files": ["rankings.csv", *(["likert.csv"] if scores else []), "study.json"],
            "n_votes": len(votes), "n_skips": sum(v.outcome == "skip" for v in votes),
            "n_likert_scores": len(scores)}
    (folder / "study.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info


def progress(db: StudyDB, n_items: Mapping[str, int]) -> list[dict[str, Any]]:
    """Per invitation (admins left out): answered, skips, repeats, open, median seconds."""
    with db.read() as conn:
        rs = conn.execute(sa.select(readers).where(readers.c.task != ADMIN)
                          .order_by(readers.c.name, readers.c.task)).all()
        rows = conn.execute(sa.select(presentations)).all()
    out = []
    for r in rs:
        mine = [p for p in rows if p.reader_id == r.id]
        done = [p for p in mine if p.answered_at is not None]
        secs = [float(p.seconds) for p in done if p.seconds is not None and p.outcome != "skip"]
        out.append({"reader": r.name, "task": r.task, "answered": len(done),
                    "skips": sum(p.outcome == "skip" for p in done),
                    "repeats": sum(bool(p.is_repeat) for p in done),
                    "open": len(mine) - len(done), "items": n_items.get(r.task, 0),
                    "median_seconds": float(np.median(secs)) if secs else None,
                    "last": _iso(max(p.answered_at for p in done)) if done else None})
    return out
