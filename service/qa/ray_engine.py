"""The Ray engine of batch QA (``rankiq qa --engine ray``): series scored by actors on a cluster.

The driver (the ``rankiq qa`` process) does what the local engine does: it walks the inputs,
selects series and owns the journal (:mod:`rankiq.service.qa.journal`). Only the per-series work
moves to Ray actors, one per CPU of the cluster, each holding its own ONNX Runtime session(s).
The runner hands that work in as a :class:`SeriesWork` (its ``init_worker`` and
``process_series``: decode, score, judge, saliency of flagged series), so this module does not
import the runner. A series is one task, so its slices stay together; results stream back and are
journalled as they arrive, one transaction each, exactly as with the local process pool.
Outputs, thresholds, selection and journal semantics are therefore those of the local engine.

Workers read the inputs by path: every node must see the archive at the same path (a shared
filesystem, as for any Ray job reading files).

Failures:
    * a worker node (or an actor) dies: the series it held were not journalled, so they go back
      to the queue and other actors score them (replacement actors are started when the cluster
      has free CPUs); nothing is lost and nothing is journalled twice. A series whose actor dies
      :data:`MAX_ATTEMPTS` times (a crash of its own) fails with reason ``worker_lost``.
    * the driver dies: its actors die with it (they are not detached) and nothing half-written
      reaches the journal; ``rankiq qa ... --resume`` (on either engine) scores the rest.

Ray is imported lazily (it is the optional ``ray`` extra); the service never imports this module.
:class:`LocalRayCluster` starts real Ray nodes as processes on this machine (``ray start``), for
``rankiq bench qa --engine ray`` and the tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from rankiq.service.settings import usable_cpus

if TYPE_CHECKING:
    from rankiq.service.qa.journal import Journal

MAX_ATTEMPTS = 3  # actor deaths one series may see before it fails as worker_lost
IN_FLIGHT = 2  # series queued per actor (one scoring, one waiting: no idle gap)
START_TIMEOUT_S = 300.0  # how long to wait for at least one actor to come up

#: what scoring one series returns (the runner's ``SeriesOutcome``; opaque here)
Outcome = TypeVar("Outcome")


class EngineOptions(Protocol):
    """What the engine reads of the run's options (the runner's ``QAOptions`` has them)."""

    @property
    def address(self) -> str | None:
        """The Ray cluster (``auto`` or ``HOST:PORT``; ``None``: a local Ray instance)."""

    @property
    def workers(self) -> int:
        """Actors to run when > 1 (else one per CPU of the cluster)."""

    @property
    def threads(self) -> int:
        """ONNX Runtime (and FFT) threads per actor (0: 1)."""


@dataclass(frozen=True)
class SeriesWork(Generic[Outcome]):
    """The per-series work the actors run, handed in by the runner.

    Attributes:
        init: loads an actor's worker state once (model sessions, thresholds, selector),
            called as ``init(*initargs)`` in the actor's process.
        initargs: ``init``'s arguments, the same for every actor (pickled to each).
        process: scores one series in an actor: ``(series key, instance refs as journalled,
            mapped reference path or None) -> outcome``.
        failed: the driver's outcome of a series that could not be scored, from ``(reason
            code, message)``.
    """

    init: Callable[..., None]
    initargs: tuple
    process: Callable[[str, list[str], str | None], Outcome]
    failed: Callable[[str, str], Outcome]


def import_ray() -> Any:
    """``import ray``, or a one-line error naming the extra to install."""
    from rankiq.service.errors import RankIQError

    try:
        import ray
    except ImportError as exc:
        raise RankIQError("--engine ray needs Ray: pip install 'rankiq[ray]'") from exc
    return ray


class ScorerActor:
    """One Ray actor: the QA worker state of :attr:`SeriesWork.init` (the model's ONNX Runtime
    session(s), thresholds, selector) in its own process."""

    def __init__(self, env: dict[str, str], init: Callable[..., None], initargs: tuple,
                 process: Callable[[str, list[str], str | None], Any]) -> None:
        # before the model loads and anything reads them (thread counts)
        os.environ.update(env)
        init(*initargs)
        self._process = process

    def ready(self) -> str:
        """The node this actor runs on (answered once the model is loaded)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def score(self, key: str, refs: list[str], reference: str | None) -> Any:
        """:attr:`SeriesWork.process` of one series."""
        return self._process(key, refs, reference)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of this actor's process so far."""
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime


@dataclass
class RayStats:
    """What one Ray run did (for ``rankiq bench qa --engine ray``).

    Attributes:
        actors: actors started in all (replacements included); ``nodes``: distinct nodes they
            ran on; ``lost``: actors that died; ``retried``: series sent again after a death.
        startup_s: wall seconds until the first actor was ready (Ray connect + model load).
        score_wall_s: wall seconds from the first ready actor to the last result.
        actor_cpu_s: CPU seconds of the live actors' processes at the end (model loading
            included; dead actors' CPU is not counted).
    """

    actors: int = 0
    nodes: set[str] = field(default_factory=set)
    lost: int = 0
    retried: int = 0
    startup_s: float = 0.0
    score_wall_s: float = 0.0
    actor_cpu_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (``nodes`` as a count)."""
        return {"actors": self.actors, "nodes": len(self.nodes), "lost": self.lost,
                "retried": self.retried, "startup_s": round(self.startup_s, 3),
                "score_wall_s": round(self.score_wall_s, 3),
                "actor_cpu_s": round(self.actor_cpu_s, 3)}


#: stats of the last :func:`run_ray` in this process (read by the bench)
LAST_STATS = RayStats()


def _connect(ray: Any, options: EngineOptions, env: dict[str, str]) -> bool:
    """Connect to ``options.address`` or start a local Ray instance; ``True`` when this call
    did (so the caller shuts it down)."""
    from rankiq.service.errors import RankIQError

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kw: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR",
                          "configure_logging": True, "runtime_env": {"env_vars": env}}
    try:
        if options.address:
            ray.init(address=options.address, **kw)
        else:
            # a fresh local instance: token auth with a token of this run only (Ray would
            # otherwise write one to ~/.ray, where every later `ray start` picks it up)
            if "RAY_AUTH_MODE" not in os.environ:
                os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
            cpus = options.workers if options.workers > 1 else usable_cpus()
            ray.init(num_cpus=cpus, include_dashboard=False, **kw)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = options.address or "a local Ray instance"
        raise RankIQError(f"cannot connect to Ray at {where}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                          ) from exc
    return True


def _wanted_actors(ray: Any, options: EngineOptions) -> int:
    """Actors to run: ``--workers`` when given (> 1), else one per CPU of the live cluster."""
    if options.workers > 1:
        return options.workers
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@dataclass
class _Dispatch(Generic[Outcome]):
    """The driver's side of one Ray run: the queue of series, the actors (starting or ready)
    and the series in flight. Each method is one step of :func:`run_ray`'s loop.

    Attributes:
        ray: the ``ray`` module; ``actor_cls``: :class:`ScorerActor` as a Ray actor class.
        died: the exceptions of a dead actor (or node).
        env: the actors' environment (thread counts).
        queue: series keys not yet sent (a lost series goes back to its front).
        attempts: actor deaths each series has seen.
        starting: ready ref -> actor still loading its model; ``load``: ready actor -> series
            in flight on it; ``inflight``: result ref -> (series key, actor).
        t_start: ``perf_counter`` seconds when the run started; ``t_ready``: when the first
            actor was ready (``None`` until then).
        deadline: ``monotonic`` seconds after which a cluster without actors is an error.
    """

    ray: Any
    actor_cls: Any
    died: tuple[type[BaseException], ...]
    env: dict[str, str]
    options: EngineOptions
    work: SeriesWork[Outcome]
    journal: Journal
    record: Callable[[str, Outcome], None]
    reference_of: Callable[[str], str | None]
    stats: RayStats
    queue: deque[str]
    t_start: float
    attempts: dict[str, int] = field(default_factory=dict)
    starting: dict[Any, Any] = field(default_factory=dict)
    load: dict[Any, int] = field(default_factory=dict)
    inflight: dict[Any, tuple[str, Any]] = field(default_factory=dict)
    t_ready: float | None = None
    deadline: float = field(default_factory=lambda: time.monotonic() + START_TIMEOUT_S)

    def start_actors(self) -> None:
        """Start actors up to the wanted number, but no more than there are series left."""
        want = _wanted_actors(self.ray, self.options) - len(self.load) - len(self.starting)
        for _ in range(max(0, min(want, len(self.queue) + len(self.inflight)))):
            actor = self.actor_cls.remote(self.env, self.work.init, self.work.initargs,
                                          self.work.process)
            self.starting[actor.ready.remote()] = actor
            self.stats.actors += 1

    def fill(self) -> None:
        """Send queued series to every ready actor, up to :data:`IN_FLIGHT` each."""
        for actor in list(self.load):
            while self.queue and self.load.get(actor, IN_FLIGHT) < IN_FLIGHT:
                key = self.queue.popleft()
                ref = actor.score.remote(key, self.journal.refs(key), self.reference_of(key))
                self.inflight[ref] = (key, actor)
                self.load[actor] += 1

    def restart(self) -> None:
        """Nothing in flight or starting (every actor died): start new ones on what is left.

        Raises:
            RankIQError: none could start by :attr:`deadline`.
        """
        from rankiq.service.errors import RankIQError

        if time.monotonic() > self.deadline:
            raise RankIQError("no Ray worker could start (are there CPUs in the cluster?)")
        self.start_actors()
        if not self.starting:
            time.sleep(1.0)

    def next_ready(self) -> Any:
        """The first ref (result or actor start) to be ready.

        Raises:
            RankIQError: nothing was ready within :data:`START_TIMEOUT_S`.
        """
        from rankiq.service.errors import RankIQError

        waiting = list(self.inflight) + list(self.starting)
        ready, _ = self.ray.wait(waiting, num_returns=1, timeout=START_TIMEOUT_S)
        if not ready:
            raise RankIQError(f"no Ray result in {START_TIMEOUT_S:g} s")
        return ready[0]

    def actor_ready(self, ref: Any) -> None:
        """An actor answered ``ready`` (its model is loaded): it takes series from now on."""
        actor = self.starting.pop(ref)
        try:
            self.stats.nodes.add(self.ray.get(ref))
        except self.died:
            self.stats.lost += 1
            return
        self.load[actor] = 0
        if self.t_ready is None:
            self.t_ready = time.perf_counter()
            self.stats.startup_s = self.t_ready - self.t_start

    def result(self, ref: Any) -> None:
        """A series' result came back: record it, or send the series again if its actor died."""
        key, actor = self.inflight.pop(ref)
        try:
            outcome = self.ray.get(ref)
        except self.died:
            self.requeue(key, actor)
            return
        if actor in self.load:
            self.load[actor] -= 1
        self.record(key, outcome)

    def requeue(self, key: str, actor: Any) -> None:
        """The actor (or its node) died holding ``key``, which was never journalled: queue it
        first again, or fail it as ``worker_lost`` after :data:`MAX_ATTEMPTS` deaths."""
        self.lose(actor)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if self.attempts[key] >= MAX_ATTEMPTS:
            self.record(key, self.work.failed("worker_lost",
                                              f"its worker died {MAX_ATTEMPTS} times"))
        else:
            self.stats.retried += 1
            self.queue.appendleft(key)
        if not self.starting:
            self.start_actors()

    def lose(self, actor: Any) -> None:
        """Forget a dead actor (counted once) and make sure it is gone."""
        if self.load.pop(actor, None) is not None:
            self.stats.lost += 1
        with contextlib.suppress(Exception):
            self.ray.kill(actor)

    def finish(self, timings: dict[str, float]) -> None:
        """Scoring wall time and the live actors' CPU seconds (added to ``worker_cpu``)."""
        if self.t_ready is not None:
            self.stats.score_wall_s = time.perf_counter() - self.t_ready
        for actor in list(self.load):
            with contextlib.suppress(*self.died):
                self.stats.actor_cpu_s += float(
                    self.ray.get(actor.cpu_seconds.remote(), timeout=60))
        timings["worker_cpu"] = timings.get("worker_cpu", 0.0) + self.stats.actor_cpu_s

    def close(self) -> None:
        """End every actor this run started (ready or still starting)."""
        for actor in [*self.load, *self.starting.values()]:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)


def run_ray(journal: Journal, todo: Iterable[str], options: EngineOptions,
            work: SeriesWork[Outcome], record: Callable[[str, Outcome], None],
            reference_of: Callable[[str], str | None], timings: dict[str, float]) -> None:
    """Score the series ``todo`` on Ray actors, calling ``record`` (which journals) in this
    process as each result arrives; see the module docstring.

    Args:
        journal: the run's journal (read here for each series' instance refs).
        todo: pending series keys, in scan order (submitted in that order).
        options: the run's options (``address``, ``workers`` = actors, ``threads``).
        work: the per-series work every actor runs (the runner's).
        record: journals one outcome (the runner's).
        reference_of: a series' mapped reference path, or ``None``.
        timings: the run's stage seconds; ``worker_cpu`` (actor CPU seconds) is added.

    Raises:
        RankIQError: Ray missing or unreachable, or no actor could start.
    """
    global LAST_STATS
    ray = import_ray()
    from ray.exceptions import RayActorError, WorkerCrashedError

    threads = str(max(1, options.threads or 1))
    env = {"OMP_NUM_THREADS": threads, "RANKIQ_FFT_WORKERS": threads}
    stats = LAST_STATS = RayStats()
    t_start = time.perf_counter()
    owned = _connect(ray, options, env)
    run = _Dispatch(ray, ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(ScorerActor),
                    (RayActorError, WorkerCrashedError), env, options, work, journal, record,
                    reference_of, stats, deque(todo), t_start)
    try:
        run.start_actors()
        while run.queue or run.inflight:
            run.fill()
            if not run.inflight and not run.starting:
                run.restart()
                continue
            ref = run.next_ready()
            if ref in run.starting:
                run.actor_ready(ref)
            else:
                run.result(ref)
        run.finish(timings)
    finally:
        run.close()
        if owned:
            ray.shutdown()


# -- a Ray cluster of local processes (bench, tests) ---------------------------------------------
def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RayNode:
    """One ``ray start --block`` process (its own session: killing the group kills the node)."""

    proc: subprocess.Popen
    temp_dir: Path
    log: Path


class LocalRayCluster:
    """A Ray cluster of real node processes on this machine: ``ray start --head`` plus extra
    ``ray start --address`` nodes, each with ``cpus`` CPUs, its own ports and temp dir.

    Args:
        cpus: CPUs each node offers (``--num-cpus``).
        object_store_bytes: each node's object store (QA results are small).
        fast_failure_detection: a dead node is noticed in about 3 s instead of ~30 s (the GCS
            health check), for tests and the bench.

    The nodes use token authentication with a token made for this cluster; a driver needs
    :attr:`driver_env` in its environment before it imports Ray. Use as a context manager;
    :meth:`stop` ends every node it started (never ``ray stop``, which would end every Ray
    process of the machine).
    """

    def __init__(self, cpus: int = 1, object_store_bytes: int = 80_000_000,
                 fast_failure_detection: bool = True) -> None:
        self.cpus = cpus
        self.object_store_bytes = object_store_bytes
        # short: Ray's unix socket paths under it must stay under 107 characters
        self.root = Path(tempfile.mkdtemp(prefix="rq-ray-", dir="/tmp"))
        self.nodes: list[RayNode] = []
        self.port = free_port()
        # token auth with a token of this cluster only (nothing written to ~/.ray); drivers
        # connect with :attr:`driver_env`
        self.driver_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                           "RAY_USAGE_STATS_ENABLED": "0"}
        self.env = {**os.environ, **self.driver_env, "PYTHONUNBUFFERED": "1"}
        if fast_failure_detection:
            self.env.update(RAY_health_check_period_ms="500", RAY_health_check_timeout_ms="1000",
                            RAY_health_check_failure_threshold="3",
                            RAY_health_check_initial_delay_ms="1000")

    @property
    def address(self) -> str:
        """``HOST:PORT`` of the head node (``--address`` of ``rankiq qa``)."""
        return f"127.0.0.1:{self.port}"

    def _ray(self) -> str:
        exe = Path(sys.executable).parent / "ray"
        return str(exe) if exe.exists() else (shutil.which("ray") or "ray")

    def _start(self, head: bool, timeout: float) -> RayNode:
        n = len(self.nodes)
        temp = self.root / f"n{n}"
        temp.mkdir()
        log = self.root / f"n{n}.log"
        args = [self._ray(), "start", "--block", "--num-cpus", str(self.cpus),
                "--object-store-memory", str(self.object_store_bytes), "--disable-usage-stats",
                "--temp-dir", str(temp), "--node-ip-address", "127.0.0.1",
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--metrics-export-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port())]
        if head:
            args += ["--head", "--port", str(self.port), "--include-dashboard=false"]
        else:
            args += ["--address", self.address]
        with log.open("wb") as f:
            proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True, stdin=subprocess.DEVNULL)
        node = RayNode(proc, temp, log)
        self.nodes.append(node)
        deadline = time.monotonic() + timeout
        while b"Ray runtime started" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"ray start failed (exit {proc.poll()}):\n{tail}")
            time.sleep(0.2)
        return node

    def start(self, nodes: int = 1, timeout: float = 120.0) -> LocalRayCluster:
        """Start the head node and ``nodes - 1`` worker nodes; returns ``self``."""
        self._start(True, timeout)
        for _ in range(nodes - 1):
            self.add_node(timeout)
        return self

    def add_node(self, timeout: float = 120.0) -> RayNode:
        """Start one more worker node and wait until the cluster counts its CPUs."""
        node = self._start(False, timeout)
        self.wait_for_cpus(self.cpus * self.alive(), timeout)
        return node

    def alive(self) -> int:
        """Nodes whose process still runs."""
        return sum(n.proc.poll() is None for n in self.nodes)

    def wait_for_cpus(self, cpus: int, timeout: float = 120.0, exact: bool = False) -> None:
        """Wait until ``ray status`` shows at least (``exact``: exactly) ``cpus`` CPUs in the
        cluster (a dead node's leave it once the head has noticed the death)."""
        deadline = time.monotonic() + timeout
        shown = ""
        while time.monotonic() < deadline:
            out = subprocess.run([self._ray(), "status", "--address", self.address],
                                 capture_output=True, text=True, env=self.env, timeout=60)
            m = re.search(r"/([0-9.]+) CPU", out.stdout)
            shown = m.group(1) if m else out.stdout[-300:]
            if m and (float(m.group(1)) == cpus if exact else float(m.group(1)) >= cpus):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Ray cluster never showed {cpus} CPUs (last: {shown})")

    def processes(self, node: RayNode) -> list[int]:
        """Process ids of everything ``node`` started (raylet, agents, workers: Ray gives each
        worker its own session, so the process group is not enough), from ``/proc``."""
        parent: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    # field 4 of stat, after the parenthesised command name
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    parent[int(entry.name)] = int(stat[1])
        found, frontier = [], [node.proc.pid]
        while frontier:
            pid = frontier.pop()
            kids = [c for c, p in parent.items() if p == pid]
            found += kids
            frontier += kids
        return found

    def kill_node(self, node: RayNode) -> None:
        """SIGKILL a node and everything it started (raylet, workers): a crashed machine."""
        if node.proc.poll() is not None:
            return
        for pid in [node.proc.pid, *self.processes(node)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.proc.wait(timeout=30)

    def stop(self) -> None:
        """End every node (worker nodes first: SIGTERM, then SIGKILL to whatever is left of it
        after a few seconds) and remove the temp dirs."""
        for node in reversed(self.nodes):
            if node.proc.poll() is None:
                started = self.processes(node)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(timeout=5)
                for pid in [node.proc.pid, *started]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                node.proc.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
