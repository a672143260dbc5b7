"""The one place that touches BentoML's internals (``bentoml._internal``).

RankIQ needs four things BentoML 1.4 has no public API for: the request temp-dir pool (so each
request gets its own directory, removed when it ends), the worker index, the HTTP metrics
middleware (to bound its path labels) and the result store's file (to finish the tasks of a
worker that died). Internals change between minor versions, so every accessor first checks
that the installed BentoML is a version these were written for (pinned in pyproject.toml) and
fails with :class:`UnsupportedBentoML` naming both versions otherwise.
"""

from __future__ import annotations

from typing import Any

#: BentoML versions whose internals this module was written and tested against (major, minor)
SUPPORTED = ((1, 4),)


class UnsupportedBentoML(RuntimeError):
    """The installed BentoML is not a version this adapter knows."""


def check_version(version: str | None = None) -> str:
    """The installed (or given) BentoML version, if supported; else :class:`UnsupportedBentoML`."""
    if version is None:
        import bentoml

        version = str(bentoml.__version__)
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        raise UnsupportedBentoML(f"cannot parse the BentoML version {version!r}") from None
    if (major, minor) not in SUPPORTED:
        wanted = ", ".join(f"{a}.{b}.x" for a, b in SUPPORTED)
        raise UnsupportedBentoML(f"BentoML {version} is installed; RankIQ uses internals of "
                                 f"BentoML {wanted} (install the version in pyproject.toml)")
    return version


def install_request_tempdir_pool(acquire: Any, release: Any) -> None:
    """Replace BentoML's pooled request temp directories with ``acquire() -> str`` and
    ``release(dir)`` (BentoML reads the pool, a module global, at each request)."""
    check_version()
    from bentoml._internal import context
    from bentoml._internal.utils.filesystem import TempfilePool

    class Pool(TempfilePool):
        def acquire(self) -> str:
            return str(acquire())

        def release(self, dir: str) -> None:  # noqa: A002 - BentoML's signature
            release(dir)

    context.request_tempdir_pool = Pool()


def worker_index() -> int | None:
    """This BentoML worker's index (1-based), ``None`` outside a server."""
    check_version()
    from bentoml._internal.context import server_context

    index = server_context.worker_index
    return None if index is None else int(index)


def http_metrics_middleware() -> type:
    """BentoML's HTTP request-metrics middleware class (it labels by ``scope["path"]``)."""
    check_version()
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    return RunnerTrafficMetricsMiddleware


def result_store_file() -> str | None:
    """The SQLite file of BentoML's task result store, ``None`` without a BentoML container."""
    check_version()
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        return str(BentoMLContainer.result_store_file.get())
    except Exception:  # noqa: BLE001 - no container configured: nothing to update
        return None
