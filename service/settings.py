"""Service settings, read once from the environment (every knob of the HTTP service lives here).

=========================  =============================================  ====================
variable                   meaning                                        default
=========================  =============================================  ====================
RANKIQ_MODELS_DIR          directory holding ``models/NAME/`` folders     the repo's models/
RANKIQ_ORT_THREADS         ONNX Runtime intra-op threads per worker       1
RANKIQ_WORKERS             BentoML worker processes                       1
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
=========================  =============================================  ====================

Inputs above a limit are refused with 413, never truncated. Where patient data rests: uploads
live in BentoML's request temp files while a request runs (deleted after it), QA job inputs
and outputs under ``RANKIQ_STATE_DIR/jobs`` (or ``RANKIQ_JOBS_DIR``) until
``RANKIQ_RETENTION`` seconds after the job ended, and QA results in BentoML's result store
(``RANKIQ_STATE_DIR/bentoml``), which holds hashed names and scores only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankiq.service.io.limits import ReadLimits

MiB = 1024**2
REPO_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def _int_env(name: str, default: int, minimum: int = 1) -> int:
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

    @classmethod
    def from_env(cls) -> ServiceSettings:
        """Read the ``RANKIQ_*`` variables (raises ``ValueError`` naming a malformed one)."""
        token = os.environ.get("RANKIQ_API_TOKEN", "").strip() or None
        return cls(
            models_dir=Path(os.environ.get("RANKIQ_MODELS_DIR", "").strip() or REPO_MODELS_DIR),
            ort_threads=_int_env("RANKIQ_ORT_THREADS", 1),
            workers=_int_env("RANKIQ_WORKERS", 1),
            api_threads=_int_env("RANKIQ_API_THREADS", 1),
            api_token=token,
            max_upload_bytes=_int_env("RANKIQ_MAX_UPLOAD_BYTES", 512 * MiB, minimum=1024),
            max_slices=_int_env("RANKIQ_MAX_SLICES", 512),
            request_timeout=_int_env("RANKIQ_REQUEST_TIMEOUT", 60),
            max_series_bytes=_int_env("RANKIQ_MAX_SERIES_BYTES", 256 * MiB, minimum=1024),
            retention_s=_int_env("RANKIQ_RETENTION", 86400, minimum=0),
            tracing=os.environ.get("RANKIQ_TRACING", "").strip().lower() in {"1", "true", "yes"},
        )
