"""SQLite journal of a QA run: what was scanned, decided and scored, so a run can resume.

One file, ``DIR/journal.sqlite``, written only by the run's main process. Every series result
is committed in one transaction together with its status, so a run killed at any point (even
SIGKILL) leaves each series either fully recorded or not at all: a resumed run scores exactly the
series not yet recorded (nothing rescored, nothing lost, nothing duplicated).

Tables:
    meta(key, value)                      settings fingerprint, scan_complete, runs
    instances(source PK, series_key, group_key, rows, cols, ref)
                                          header-only scan results (``ref``: the InstanceRef as
                                          JSON, :func:`ref_to_json`; never pickled, so opening
                                          a journal runs no code from it);
                                          ``group_key`` is the series key, or a per-matrix key
                                          for a series mixing matrix sizes (split like
                                          :func:`rankiq.service.io.group_instances`)
    failures(source PK, reason, message)  unreadable inputs
    series(series_key PK, status, reason, info, result, assets, run)
        status: pending | skipped | done | failed; ``info`` JSON (description, contrast...);
        ``result`` JSON (scores, aggregate, flag); ``assets`` JSON (base64 PNGs for the report);
        ``run``: which run (1, 2, ...) recorded it.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rankiq.service.errors import RankIQError
from rankiq.service.io.types import InstanceRef

JOURNAL_NAME = "journal.sqlite"
REF_FORMAT = "json-1"  # meta "refs": how instance refs are stored
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS instances (source TEXT PRIMARY KEY, series_key TEXT NOT NULL,
                                      group_key TEXT NOT NULL, rows INTEGER, cols INTEGER,
                                      ref TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_key);
CREATE INDEX IF NOT EXISTS instances_group ON instances(group_key);
CREATE TABLE IF NOT EXISTS failures (source TEXT PRIMARY KEY, reason TEXT, message TEXT);
CREATE TABLE IF NOT EXISTS series (series_key TEXT PRIMARY KEY, status TEXT NOT NULL,
                                   reason TEXT DEFAULT '', info TEXT DEFAULT '{}',
                                   result TEXT, assets TEXT, run INTEGER);
"""


def ref_to_json(ref: InstanceRef) -> str:
    """An :class:`~rankiq.service.io.types.InstanceRef` as a JSON object (its fields)."""
    return json.dumps(dataclasses.asdict(ref), separators=(",", ":"))


def ref_from_json(text: str) -> InstanceRef:
    """The :class:`~rankiq.service.io.types.InstanceRef` of :func:`ref_to_json` (lists back
    to tuples; unknown fields ignored)."""
    data = json.loads(text)
    names = {f.name for f in dataclasses.fields(InstanceRef)}
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in data.items() if k in names}
    return InstanceRef(**fields)


class JournalError(RankIQError):
    """The output directory holds a journal that cannot be used for this run."""

    reason = "journal"


class Journal:
    """The QA journal in ``out_dir`` (see the module docstring).

    Args:
        out_dir: the run's output directory (created if needed).
        settings: what must match to resume (model sha256, thresholds, rules fingerprints).
        resume: continue an existing journal; without it an existing journal is an error
            (a second run into the same directory must not silently mix results).
    """

    def __init__(self, out_dir: str | Path, settings: dict[str, Any], *, resume: bool) -> None:
        self.path = Path(out_dir) / JOURNAL_NAME
        existed = self.path.exists()
        if existed and not resume:
            raise JournalError(f"{out_dir} already holds a QA run; pass --resume to continue "
                               "it or choose another --out")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: commits survive a killed process
        self.db.executescript(SCHEMA)
        wanted = json.dumps(settings, sort_keys=True)
        stored = self.get_meta("settings")
        if stored is None:
            self.set_meta("settings", wanted)
        elif stored != wanted:
            old, new = json.loads(stored), settings
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise JournalError(f"{out_dir}: the journal was written with different settings "
                               f"({', '.join(diff)}); use a new --out to start afresh")
        refs = self.get_meta("refs")
        if refs is None and self.db.execute("SELECT 1 FROM instances LIMIT 1").fetchone():
            raise JournalError(f"{out_dir}: the journal was written by an older version "
                               "(pickled instance refs); use a new --out to start afresh")
        if refs is None:
            self.set_meta("refs", REF_FORMAT)
        self.run = int(self.get_meta("runs") or 0) + 1
        self.set_meta("runs", str(self.run))

    # -- meta ------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        """A stored value, or ``None``."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        """Store a value (committed at once)."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def scan_complete(self) -> bool:
        """Whether a previous run finished walking the inputs."""
        return self.get_meta("scan_complete") == "1"

    def mark_scan_complete(self) -> None:
        """Record that every input was walked (a resume then skips the walk)."""
        self.set_meta("scan_complete", "1")

    # -- scan ------------------------------------------------------------------------------
    def add_scanned(self, instances: Iterable[tuple[str, str, int, int, str, dict[str, Any]]],
                    failures: Iterable[tuple[str, str, str]]) -> None:
        """Record a batch of scanned instances and failures in one transaction.

        Args:
            instances: ``(source, series_key, rows, cols, ref_json, series_info)``; a series
                row is created (``pending``) on its first instance with ``series_info``.
            failures: ``(source, reason, message)``.
        """
        with self._tx():
            for source, key, rows, cols, ref, info in instances:
                self.db.execute("INSERT OR IGNORE INTO instances VALUES (?, ?, ?, ?, ?, ?)",
                                (source, key, key, rows, cols, ref))
                self.db.execute("INSERT OR IGNORE INTO series (series_key, status, info) "
                                "VALUES (?, 'pending', ?)", (key, json.dumps(info)))
            self.db.executemany("INSERT OR IGNORE INTO failures VALUES (?, ?, ?)", list(failures))

    def split_mixed_shapes(self, key_of: Callable[[str, int, int], str]) -> int:
        """Split series that mix matrix sizes into one group per size (idempotent).

        ``key_of(series_key, rows, cols)`` names each part. Returns the series split.
        """
        mixed = [k for (k,) in self.db.execute(
            "SELECT series_key FROM instances GROUP BY series_key "
            "HAVING COUNT(DISTINCT rows || 'x' || cols) > 1")]
        with self._tx():
            for key in mixed:
                info = self.db.execute("SELECT info FROM series WHERE series_key = ?",
                                       (key,)).fetchone()
                shapes = self.db.execute("SELECT DISTINCT rows, cols FROM instances "
                                         "WHERE series_key = ?", (key,)).fetchall()
                for rows, cols in shapes:
                    part = key_of(key, rows, cols)
                    self.db.execute("UPDATE instances SET group_key = ? WHERE series_key = ? "
                                    "AND rows = ? AND cols = ?", (part, key, rows, cols))
                    self.db.execute("INSERT OR IGNORE INTO series (series_key, status, info) "
                                    "VALUES (?, 'pending', ?)",
                                    (part, info[0] if info else "{}"))
                self.db.execute("DELETE FROM series WHERE series_key = ? AND status = 'pending'",
                                (key,))
        return len(mixed)

    def series_sizes(self) -> dict[str, int]:
        """Instances per series (group) key."""
        return dict(self.db.execute(
            "SELECT group_key, COUNT(*) FROM instances GROUP BY group_key"))

    def refs(self, series_key: str) -> list[str]:
        """Instance refs (JSON, :func:`ref_from_json`) of one series (group), in scan order."""
        rows = self.db.execute("SELECT ref FROM instances WHERE group_key = ? ORDER BY rowid",
                               (series_key,))
        return [r[0] for r in rows]

    # -- series ----------------------------------------------------------------------------
    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        """``(series_key, info)`` of series not yet decided, in scan order."""
        rows = self.db.execute("SELECT series_key, info FROM series WHERE status = 'pending' "
                               "ORDER BY rowid")
        return [(k, json.loads(i)) for k, i in rows]

    def record(self, series_key: str, status: str, *, reason: str = "",
               result: dict[str, Any] | None = None, assets: dict[str, Any] | None = None,
               info: dict[str, Any] | None = None) -> None:
        """Record a decision or result for a series (one transaction; only once: a series
        already recorded by an earlier run keeps that record)."""
        if status not in {"skipped", "done", "failed"}:
            raise ValueError(f"bad status {status!r}")
        with self._tx():
            cur = self.db.execute(
                "UPDATE series SET status = ?, reason = ?, result = ?, assets = ?, run = ?, "
                "info = COALESCE(?, info) WHERE series_key = ? AND status = 'pending'",
                (status, reason, None if result is None else json.dumps(result),
                 None if assets is None else json.dumps(assets), self.run,
                 None if info is None else json.dumps(info), series_key))
            if cur.rowcount != 1:
                raise JournalError(f"series {series_key} is not pending in the journal")

    def rows(self, status: str | None = None) -> Iterator[dict[str, Any]]:
        """Series rows (dicts with parsed JSON), in scan order; optionally one status only."""
        sql = "SELECT series_key, status, reason, info, result, assets, run FROM series"
        args: tuple[Any, ...] = ()
        if status is not None:
            sql += " WHERE status = ?"
            args = (status,)
        for key, st, reason, info, result, assets, run in self.db.execute(sql + " ORDER BY rowid",
                                                                          args):
            yield {"series_key": key, "status": st, "reason": reason, "info": json.loads(info),
                   "result": None if result is None else json.loads(result),
                   "assets": None if assets is None else json.loads(assets), "run": run}

    def failures(self) -> list[tuple[str, str, str]]:
        """``(source, reason, message)`` of unreadable inputs, sorted by source."""
        return list(self.db.execute("SELECT source, reason, message FROM failures "
                                    "ORDER BY source"))

    def counts(self) -> dict[str, int]:
        """Series per status."""
        return dict(self.db.execute("SELECT status, COUNT(*) FROM series GROUP BY status"))

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) for autocommit connections."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
