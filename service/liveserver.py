"""Start a real ``bentoml serve`` of the RankIQ service in a subprocess (bench and tests).

```python
with LiveServer(workers=2, env={"RANKIQ_API_TOKEN": "s3cret"}) as server:
    requests.get(server.url + "/readyz")
```

The server listens on 127.0.0.1 on a free port, is ready when ``/readyz`` answers 200, and is
stopped (SIGTERM to its process group, SIGKILL after a grace period) on exit. Its output goes to
a log file (``server.log_path``) so a failed start can be diagnosed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status code of GET ``url`` (None when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


class LiveServer:
    """``bentoml serve service.app:RankIQ`` on 127.0.0.1 (context manager).

    Args:
        workers: BentoML worker processes (``RANKIQ_WORKERS``).
        env: extra environment variables (``RANKIQ_*`` settings).
        port: port to listen on (default: a free one).
        start_timeout: seconds to wait for ``/readyz``.
    """

    def __init__(self, *, workers: int = 1, env: dict[str, str] | None = None,
                 port: int | None = None, start_timeout: float = 120.0) -> None:
        self.workers = workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.env = {**os.environ, "RANKIQ_WORKERS": str(workers),
                    "BENTOML_DO_NOT_TRACK": "true", **(env or {})}
        self._tmp = tempfile.TemporaryDirectory(prefix="rankiq-server-")
        self.log_path = Path(self._tmp.name) / "server.log"
        # as `rankiq serve` does: this instance's own state (QA jobs, BentoML's home with its
        # result store and metrics) unless told otherwise. BentoML empties its prometheus
        # multiprocess dir at every start: a private home keeps concurrent servers from wiping
        # each other's metrics
        self.env.setdefault("RANKIQ_STATE_DIR", str(Path(self._tmp.name) / "state"))
        if "BENTOML_HOME" not in (env or {}):
            self.env["BENTOML_HOME"] = str(Path(self.env["RANKIQ_STATE_DIR"]) / "bentoml")
        if "RANKIQ_JOBS_DIR" not in (env or {}):
            self.env["RANKIQ_JOBS_DIR"] = str(Path(self.env["RANKIQ_STATE_DIR"]) / "jobs")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> LiveServer:
        cmd = [sys.executable, "-m", "bentoml", "serve", "rankiq.service.app:RankIQ",
               "--host", "127.0.0.1", "--port", str(self.port), "--working-dir", str(REPO)]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if http_status(self.url + "/readyz") == 200:
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready after {self.start_timeout:.0f}s:\n{self.log()}")

    def log(self, tail: int = 4000) -> str:
        """The last ``tail`` characters of the server's output."""
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The worker processes (children of the serve supervisor)."""
        import psutil

        if self.proc is None:
            return []
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_bytes(self) -> int:
        """Resident memory of the worker processes together (bytes)."""
        import psutil

        total = 0
        for pid in self.pids():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += psutil.Process(pid).memory_info().rss
        return total

    def stop(self) -> None:
        """SIGTERM the server's process group; SIGKILL what is left after 15 s."""
        if self.proc is not None and self.proc.poll() is None:
            pgid = os.getpgid(self.proc.pid)
            os.killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
