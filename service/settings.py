"""RankIQ's settings: every ``RANKIQ_*`` environment variable is read here, when asked for
(:meth:`ServiceSettings.from_env`, :func:`fft_workers`), never at import time.

=========================  =============================================  ====================
variable                   meaning                                        default
=========================  =============================================  ====================
RANKIQ_MODELS_DIR          directory holding ``models/NAME/`` folders     the repo's models/
RANKIQ_ORT_THREADS         ONNX Runtime intra-op threads per worker       1
RANKIQ_WORKERS             BentoML worker processes                       one per usable CPU,
                                                                          at most 4
RANKIQ_API_THREADS         requests one worker computes at a time         1
RANKIQ_API_TOKEN           bearer token; unset or empty = no auth         unset
RANKIQ_MAX_UPLOAD_BYTES    largest request body (all files together)      512 MiB
RANKIQ_MAX_SLICES          most slices in one image (or reference)        512
RANKIQ_REQUEST_TIMEOUT     seconds before a request is abandoned (504)    60
RANKIQ_MAX_SERIES_BYTES    largest decoded series (float32 pixels); also  256 MiB
                           the decoded total of one request
RANKIQ_RETENTION           seconds QA job data (uploads, results) stays   86400 (24 h)
                           on disk after the job ended; 0 = purge at once
RANKIQ_STATE_DIR           this instance's state (QA jobs, BentoML home:  a fresh private
                           result store, metrics files)                   temp dir per serve
RANKIQ_TRACING             1: let BentoML create OpenTelemetry spans      0 (off)
RANKIQ_JOBS_DIR            QA job directories                             $RANKIQ_STATE_DIR/jobs
                                                                          else ~/.rankiq/jobs
RANKIQ_QA_MODEL            model of POST /qa jobs (a name in models dir)  iqnet-noref
RANKIQ_QA_THRESHOLDS       site thresholds file of POST /qa jobs          the model's
RANKIQ_QA_RULES            series selection rules file of POST /qa jobs   built-in rules
RANKIQ_FFT_WORKERS         threads of each FFT (0 = one per usable        0; RANKIQ_ORT_THREADS
                           CPU; a service worker: its ORT threads)        in a service worker
RANKIQ_DEBUG               1: the CLI shows tracebacks of internal errors 0 (off)
=========================  =============================================  ====================

PACS credentials (``RANKIQ_DICOMWEB_TOKEN``, or ``RANKIQ_DICOMWEB_USER`` and
``RANKIQ_DICOMWEB_PASSWORD``) are read by :mod:`rankiq.service.pacs.dicomweb` when it connects.

Inputs above a limit are refused with 413, never truncated. Where patient data rests: uploads
live in BentoML's request temp files while a request runs (deleted after it), QA job inputs
and outputs under ``RANKIQ_STATE_DIR/jobs`` (or ``RANKIQ_JOBS_DIR``) until
``RANKIQ_RETENTION`` seconds after the job ended, and QA answers (hashed names and scores
only) in BentoML's result store (``RANKIQ_STATE_DIR/bentoml``) for as long (with 0, until
BentoML's own 24 h cleanup); the request bodies BentoML stores there with each QA task are
scrubbed at submit (see ``docs/operations.md``, "Where patient data rests").
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankiq.service.io.limits import ReadLimits

MiB = 1024**2
REPO_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
#: most service workers started by default: each holds its own models and decode buffers
#: (about 120 MiB once warm, up to RANKIQ_MAX_SERIES_BYTES more while it decodes a request)
MAX_DEFAULT_WORKERS = 4
#: most batch QA worker processes started by default (``rankiq qa``/``calibrate``): each holds
#: a model and up to two decoded series, so a many-core host is not filled by default
MAX_DEFAULT_QA_WORKERS = 8
CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup's CPU quota (a
    container's ``--cpus`` or a Kubernetes CPU limit, which ``os.cpu_count()`` ignores),
    rounded up; at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``cpu.max`` of cgroup v2, else
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` of v1), or ``None`` when there is none or it
    cannot be read."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        p = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


@functools.cache
def _process_cpus() -> int:
    """:func:`usable_cpus`, read once per process: the FFTs ask for it at every call (reading
    it costs about 0.1 ms, a small FFT less)."""
    return usable_cpus()


def default_workers(most: int = MAX_DEFAULT_WORKERS) -> int:
    """Worker processes when none are asked for: one per usable CPU (a request or a series
    computes on one core), at most ``most`` (service workers: :data:`MAX_DEFAULT_WORKERS`;
    batch QA: :data:`MAX_DEFAULT_QA_WORKERS`)."""
    return min(usable_cpus(), most)


def env_int(name: str, default: int, minimum: int = 1) -> int:
    """An integer variable (``default`` when unset or empty); ``ValueError`` names a bad one."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def read_limits(settings: ServiceSettings) -> ReadLimits:
    """The :class:`ReadLimits` of one request: the decoded budget is shared by its files, and
    the counts and time are bounded so a zip of thousands of tiny series is refused fast."""
    from rankiq.service.io.limits import ReadLimits

    return ReadLimits(
        max_bytes=settings.max_upload_bytes, max_slices=settings.max_slices,
        max_series_bytes=settings.max_series_bytes,
        max_decoded_bytes=settings.max_series_bytes,
        max_inflated_bytes=settings.max_series_bytes,
        max_total_uncompressed=4 * settings.max_series_bytes,
        max_entry_uncompressed=settings.max_series_bytes,
        max_zip_entries=4 * settings.max_slices + 64,
        max_instances=2 * settings.max_slices + 64,
        max_series=16,
        max_read_seconds=settings.request_timeout / 2,
    )


@dataclass(frozen=True)
class ServiceSettings:
    """Settings of one service process (see the module docstring for the variables)."""

    models_dir: Path
    ort_threads: int = 1
    workers: int = 1
    api_threads: int = 1
    api_token: str | None = None
    max_upload_bytes: int = 512 * MiB
    max_slices: int = 512
    request_timeout: int = 60
    max_series_bytes: int = 256 * MiB
    retention_s: int = 86400
    tracing: bool = False
    state_dir: Path | None = None
    jobs_dir_env: Path | None = None
    qa_model: str = "iqnet-noref"
    qa_thresholds: Path | None = None
    qa_rules: Path | None = None
    fft_workers: int = 0
    debug: bool = False

    @property
    def jobs_dir(self) -> Path:
        """``RANKIQ_JOBS_DIR``, else ``RANKIQ_STATE_DIR/jobs``, else ``~/.rankiq/jobs``."""
        if self.jobs_dir_env is not None:
            return self.jobs_dir_env
        if self.state_dir is not None:
            return self.state_dir / "jobs"
        return Path.home() / ".rankiq" / "jobs"

    @classmethod
    def from_env(cls) -> ServiceSettings:
        """Read the ``RANKIQ_*`` variables (raises ``ValueError`` naming a malformed one)."""
        token = os.environ.get("RANKIQ_API_TOKEN", "").strip() or None
        return cls(
            models_dir=models_dir(),
            ort_threads=env_int("RANKIQ_ORT_THREADS", 1),
            workers=env_int("RANKIQ_WORKERS", default_workers()),
            api_threads=env_int("RANKIQ_API_THREADS", 1),
            api_token=token,
            max_upload_bytes=env_int("RANKIQ_MAX_UPLOAD_BYTES", 512 * MiB, minimum=1024),
            max_slices=env_int("RANKIQ_MAX_SLICES", 512),
            request_timeout=env_int("RANKIQ_REQUEST_TIMEOUT", 60),
            max_series_bytes=env_int("RANKIQ_MAX_SERIES_BYTES", 256 * MiB, minimum=1024),
            retention_s=env_int("RANKIQ_RETENTION", 86400, minimum=0),
            tracing=_flag("RANKIQ_TRACING"),
            state_dir=_path("RANKIQ_STATE_DIR"),
            jobs_dir_env=_path("RANKIQ_JOBS_DIR"),
            qa_model=os.environ.get("RANKIQ_QA_MODEL", "").strip() or "iqnet-noref",
            qa_thresholds=_path("RANKIQ_QA_THRESHOLDS"),
            qa_rules=_path("RANKIQ_QA_RULES"),
            fft_workers=env_int("RANKIQ_FFT_WORKERS", 0, minimum=0),
            debug=_flag("RANKIQ_DEBUG"),
        )


def models_dir() -> Path:
    """``RANKIQ_MODELS_DIR``, else the repository's ``models/`` (this variable alone: commands
    that need no other setting do not fail on another malformed one)."""
    return _path("RANKIQ_MODELS_DIR") or REPO_MODELS_DIR


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}


def _path(name: str) -> Path | None:
    raw = os.environ.get(name, "").strip()
    return Path(raw) if raw else None


#: FFT threads of this process when RANKIQ_FFT_WORKERS is unset (0 = one per usable CPU); a
#: service worker sets it to its ONNX Runtime threads (:func:`set_default_fft_workers`)
_default_fft_workers = 0


def set_default_fft_workers(n: int) -> None:
    """This process's FFT threads when ``RANKIQ_FFT_WORKERS`` is unset (0 = one per usable
    CPU)."""
    global _default_fft_workers
    _default_fft_workers = max(0, int(n))


def fft_workers() -> int:
    """Threads of each FFT, decided when called: ``RANKIQ_FFT_WORKERS``, else the process
    default (:func:`set_default_fft_workers`), else one per usable CPU."""
    return (env_int("RANKIQ_FFT_WORKERS", 0, minimum=0) or _default_fft_workers
            or _process_cpus())
