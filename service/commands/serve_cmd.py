"""``rankiq serve``: wraps ``bentoml serve rankiq.service.app:RankIQ`` (the benchmark,
``rankiq bench serve``, lives in :mod:`rankiq.service.bench.serve`)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry


def add_commands(reg: Registry) -> None:
    """Add ``rankiq serve``."""
    p = reg.command("serve", "rankiq.service.commands.serve_cmd:run_serve",
                    "serve the shipped models over HTTP (bentoml serve service.app:RankIQ)")
    p.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; a non-loopback address needs "
                        "RANKIQ_API_TOKEN or --insecure)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback bind without RANKIQ_API_TOKEN (anyone who can "
                        "reach the port can score images and read QA results)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: $RANKIQ_WORKERS, else one per usable CPU, "
                        "at most 4)")
    p.add_argument("--models", metavar="DIR", default=None,
                   help="models directory (sets RANKIQ_MODELS_DIR; default: the repo's models/)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def state_dir(env: dict[str, str]) -> tuple[str, int]:
    """This instance's state directory (``RANKIQ_STATE_DIR``, else a fresh private temporary
    one) and an fd holding its exclusive lock: two servers never share a result store, a
    metrics directory or a QA job store.

    Raises:
        RuntimeError: another running server holds the directory.
    """
    import fcntl
    import tempfile

    root = env.get("RANKIQ_STATE_DIR", "").strip() or tempfile.mkdtemp(prefix="rankiq-state-")
    os.makedirs(root, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(root, "instance.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError("RANKIQ_STATE_DIR is in use by another running server; give each "
                           "server its own") from None
    os.set_inheritable(fd, True)  # held by bentoml serve after the exec, released at its exit
    return root, fd


def serve_env(env: dict[str, str]) -> dict[str, str]:
    """Point BentoML's home (result store, metrics files) and the QA jobs at the state dir."""
    root, _ = state_dir(env)
    env = {**env, "RANKIQ_STATE_DIR": root}
    env.setdefault("BENTOML_HOME", os.path.join(root, "bentoml"))
    env.setdefault("RANKIQ_JOBS_DIR", os.path.join(root, "jobs"))
    return env


def run_serve(args: argparse.Namespace) -> int:
    """Handler of ``rankiq serve``: replace this process with ``bentoml serve``."""
    from rankiq.service.liveserver import REPO

    env = dict(os.environ)
    if args.workers is not None:
        if args.workers < 1:
            print("rankiq serve: --workers must be >= 1", file=sys.stderr)
            return 1
        env["RANKIQ_WORKERS"] = str(args.workers)
    if args.models:
        env["RANKIQ_MODELS_DIR"] = os.path.abspath(args.models)
    if not is_loopback(args.host) and not env.get("RANKIQ_API_TOKEN", "").strip() \
            and not args.insecure:
        print(f"rankiq serve: refusing to listen on {args.host} without RANKIQ_API_TOKEN "
              "(set a token, bind 127.0.0.1, or pass --insecure)", file=sys.stderr)
        return 2
    try:
        env = serve_env(env)
    except (RuntimeError, OSError) as exc:
        print(f"rankiq serve: {exc}", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "bentoml", "serve", "rankiq.service.app:RankIQ", "--host",
           args.host, "--port", str(args.port), "--working-dir", str(REPO)]
    sys.stdout.flush()
    os.execve(sys.executable, cmd, env)
    return 0  # not reached
