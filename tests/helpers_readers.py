"""Real components for the reader-study tests: ``rankiq readers serve`` in a subprocess on
127.0.0.1, a throw-away PostgreSQL (initdb/pg_ctl as the ``postgres`` user), and invitations."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests
from rankiq.service.liveserver import free_port

RANKIQ = [sys.executable, "-m", "rankiq.service.cli"]


def invite(db: str, name: str, task: str = "rank") -> str:
    """A new token, created in-process (the same code ``rankiq readers invite`` runs)."""
    from rankiq.service.readers.db import StudyDB
    from rankiq.service.readers.study import invite as make

    study = StudyDB(db)
    try:
        return make(study, name, task)
    finally:
        study.close()


def invite_cli(db: str, name: str, task: str = "rank") -> str:
    """A new token from ``rankiq readers invite`` (a subprocess)."""
    out = subprocess.run([*RANKIQ, "readers", "invite", name, "--db", db, "--task", task],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


class ReaderServer:
    """``rankiq readers serve`` on a free port (context manager; ``kill()`` = SIGKILL)."""

    def __init__(self, pairs: Path, db: str, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [*RANKIQ, "readers", "serve", "--pairs", str(pairs), "--db", db,
                    "--port", str(self.port), *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ReaderServer:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"server exited {self.proc.returncode}: {out[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def kill(self) -> None:
        """SIGKILL the server (no shutdown code runs)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ReaderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(cands[-1]) if cands else None


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server in a temp dir (run as the ``postgres`` user when we are root);
    yields its SQLAlchemy URL. Raises FileNotFoundError when the binaries are missing."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise FileNotFoundError("initdb/pg_ctl not found (Debian package postgresql)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
    tmp = Path(tempfile.mkdtemp(prefix="rankiq-pg-"))
    os.chmod(tmp, 0o777)
    data = tmp / "data"
    port = free_port()
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True)
    opts = f"-p {port} -k {tmp} -h 127.0.0.1 -c fsync=on"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(tmp / "log"),
                    "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
