"""The reader study's database: schema (SQLAlchemy Core), engine set-up and migrations.

SQLite by default (WAL journal, ``synchronous=FULL``: a committed transaction is on disk before
the commit returns, so an acknowledged vote survives a killed server or a power cut), or
PostgreSQL by URL (``postgresql+psycopg://user@host/db``; commits are durable with its default
``synchronous_commit=on``). The schema is created and upgraded by Alembic migrations
(``migrations/``) every time a database is opened.

Tables:

- ``study``: one row (id 1): the secret that signs session cookies and CSRF tokens, the pairs
  file fingerprint and count, the study settings (JSON).
- ``readers``: one row per invitation: ``name``, ``task`` (``rank``, ``likert`` or ``admin``),
  ``token_hash`` (SHA-256 of the token; the token itself is never stored).
- ``presentations``: one row per item shown to a reader, in the reader's order ``seq``; the
  answer (``outcome``, ``seconds``, ``answered_at``) is written into the same row exactly once.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rankiq.service.errors import RankIQError
from rankiq.service.readers.settings import DEFAULT_DB  # noqa: F401 - re-exported
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

metadata = sa.MetaData()

study = sa.Table(
    "study", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("secret", sa.String(64), nullable=False),
    sa.Column("pairs_fingerprint", sa.String(64), nullable=True),
    sa.Column("n_pairs", sa.Integer, nullable=True),
    sa.Column("settings_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

readers = sa.Table(
    "readers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("task", sa.String(8), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("name", "task", name="uq_readers_name_task"),
)

presentations = sa.Table(
    "presentations", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("reader_id", sa.Integer, sa.ForeignKey("readers.id"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("pair_id", sa.Integer, nullable=False),
    sa.Column("image", sa.Integer, nullable=False),  # 0 = the pair (ranking), 1/2 = Likert item
    sa.Column("is_repeat", sa.Boolean, nullable=False),
    sa.Column("flipped", sa.Boolean, nullable=False),  # True: image 2 shown on the left
    sa.Column("nonce", sa.String(64), nullable=False),
    sa.Column("issued_at", sa.Float, nullable=False),
    sa.Column("answered_at", sa.Float, nullable=True),
    sa.Column("outcome", sa.String(8), nullable=True),  # 1, 2, similar, skip or a Likert score
    sa.Column("seconds", sa.Float, nullable=True),
    sa.UniqueConstraint("reader_id", "seq", name="uq_presentations_reader_seq"),
    sa.Index("ix_presentations_pair", "pair_id"),
)


class StudyDatabaseError(RankIQError):
    """A database URL that cannot be opened, or a database that belongs to another study."""

    reason = "bad_database"


def _sqlite_setup(engine: Engine) -> None:
    """WAL + synchronous=FULL on every connection; transactions begin IMMEDIATE (the write lock
    is taken at BEGIN, so two schedulers never read the same state and then both write)."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # sqlite3 module: no implicit BEGIN; we issue it
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def redact(url: str) -> str:
    """The URL without its password (for messages)."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable URL>"


class StudyDB:
    """An opened, migrated study database.

    ``write()`` is the one way to change it: a transaction that holds the study's write lock
    (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock) and commits
    before returning, so the caller answers only after the data is durable.
    """

    def __init__(self, url: str = DEFAULT_DB) -> None:
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError:
            raise StudyDatabaseError("--db is not a database URL (e.g. sqlite:///study.db or "
                                     "postgresql+psycopg://user@host/db)") from None
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise StudyDatabaseError(f"unsupported database {self.dialect!r} "
                                     "(sqlite or postgresql)")
        if self.dialect == "sqlite":
            db = parsed.database or ""
            if not db or db == ":memory:":
                raise StudyDatabaseError("an SQLite study needs a file (sqlite:///study.db)")
            if not Path(db).resolve().parent.is_dir():
                raise StudyDatabaseError("the SQLite file's directory does not exist")
            self.engine = sa.create_engine(parsed, connect_args={"check_same_thread": False},
                                           poolclass=sa.pool.QueuePool, pool_size=8)
            _sqlite_setup(self.engine)
        else:
            if parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg")
            self.engine = sa.create_engine(parsed, pool_size=8, pool_pre_ping=True)
        self._lock = threading.Lock()  # one writer per process (the DB lock covers processes)
        try:
            self.migrate()
            self._ensure_study()
        except sa.exc.OperationalError as exc:
            self.engine.dispose()
            raise StudyDatabaseError(f"cannot open {redact(url)}: "
                                     f"{str(exc.orig).splitlines()[0]}") from None

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest Alembic revision."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def _ensure_study(self) -> None:
        with self.write() as conn:
            if conn.execute(sa.select(study.c.id)).first() is None:
                conn.execute(study.insert().values(
                    id=1, secret=secrets.token_hex(32), settings_json="{}",
                    created_at=time.time()))

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A locked read-write transaction, committed (durably) on normal exit."""
        with self._lock, self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7513)"))
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction."""
        with self.engine.connect() as conn:
            yield conn

    def study_row(self) -> dict[str, Any]:
        """The study row as a dict, ``settings`` parsed."""
        with self.read() as conn:
            row = conn.execute(sa.select(study).where(study.c.id == 1)).mappings().one()
        out = dict(row)
        out["settings"] = json.loads(out.pop("settings_json"))
        return out

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()
