"""A DICOMweb client for RankIQ: QIDO-RS series queries, WADO-RS retrieval, STOW-RS storage.

Built on ``dicomweb-client``. Credentials come from the environment only (never the command
line, where ``ps`` and shell histories show them):

* ``RANKIQ_DICOMWEB_TOKEN``: a bearer token, or
* ``RANKIQ_DICOMWEB_USER`` and ``RANKIQ_DICOMWEB_PASSWORD``: HTTP basic authentication.

A URL holding credentials (``https://user:pass@host/...``) is refused. Every failure is a
:class:`PacsError` with a bounded ``reason`` and a one-line message that names the server by
its scheme, host and port and a series by its ``series_key``, never by a UID.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rankiq.service.errors import RankIQError
from rankiq.service.io.dicom import series_key_of

#: Seconds to wait for the server to answer (connect, read).
TIMEOUT_S = (5.0, 120.0)
SERIES_UID = "0020000E"
STUDY_UID = "0020000D"
MODALITY = "00080060"
DESCRIPTION = "0008103E"
INSTANCES = "00201209"  # NumberOfSeriesRelatedInstances
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class PacsError(RankIQError):
    """The PACS could not be used (HTTP 502 when met behind the service)."""

    http_status = 502
    reason = "pacs_error"


class PacsUnreachable(PacsError):
    """No connection (server down, wrong host or port, timeout)."""

    reason = "pacs_unreachable"


class PacsUnauthorized(PacsError):
    """The server refused the credentials (401/403)."""

    reason = "pacs_unauthorized"


class PacsBadAnswer(PacsError):
    """An answer that is not what DICOMweb specifies (not JSON, attributes missing...)."""

    reason = "pacs_bad_answer"


class SeriesGone(PacsError):
    """A series listed by QIDO-RS could not be retrieved any more (deleted meanwhile)."""

    reason = "series_not_found"


@dataclass(frozen=True)
class SeriesHit:
    """One series found by QIDO-RS.

    Attributes:
        study_uid, series_uid: the UIDs (kept in memory only: never printed or journalled).
        key: RankIQ's series key (first 16 hex of SHA-256 of the SeriesInstanceUID).
        modality: Modality; ``instances``: NumberOfSeriesRelatedInstances (0 if not given).
    """

    study_uid: str
    series_uid: str
    key: str
    modality: str
    instances: int


@dataclass(frozen=True)
class SeriesQuery:
    """Which series to score.

    Attributes:
        studies: StudyInstanceUIDs (empty: all studies matching the other filters).
        series: SeriesInstanceUIDs (empty: every series of the studies found).
        since: studies from this date on (``YYYYMMDD``), or ``None``.
        modality: Modality filter (``"MR"``; ``""`` for none).
    """

    studies: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    since: str | None = None
    modality: str = "MR"

    def fingerprint(self) -> dict[str, Any]:
        """JSON-ready identity of the query for the journal (UIDs as hashes)."""
        return {"studies": sorted(series_key_of(u, u) for u in self.studies),
                "series": sorted(series_key_of(u, u) for u in self.series),
                "since": self.since, "modality": self.modality}


def parse_date(text: str) -> str:
    """``YYYY-MM-DD`` or ``YYYYMMDD`` -> ``YYYYMMDD``.

    Raises:
        RankIQError: anything else.
    """
    import datetime

    digits = text.replace("-", "")
    try:
        datetime.datetime.strptime(digits, "%Y%m%d")
    except ValueError:
        raise RankIQError(f"--since must be a date (YYYY-MM-DD), not {text!r}") from None
    return digits


def check_uid(uid: str, option: str) -> str:
    """A syntactically valid UID (digits and dots, at most 64 characters)."""
    uid = uid.strip()
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise RankIQError(f"{option} takes a DICOM UID (digits and dots, at most 64 characters)")
    return uid


def server_name(url: str) -> str:
    """``scheme://host:port`` of a URL (what messages show of it)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}"


def connect(url: str, *, timeout: float | tuple[float, float] = TIMEOUT_S) -> Any:
    """A ``dicomweb_client.DICOMwebClient`` for ``url`` with the environment's credentials.

    Raises:
        RankIQError: a URL that is not http(s) or that holds credentials.
    """
    import requests
    from dicomweb_client import DICOMwebClient

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RankIQError("--dicomweb takes an http(s) URL of a DICOMweb service "
                          "(e.g. http://pacs:8042/dicom-web)")
    if parts.username or parts.password:
        raise RankIQError("--dicomweb: credentials in the URL are refused; set "
                          "RANKIQ_DICOMWEB_TOKEN or RANKIQ_DICOMWEB_USER and "
                          "RANKIQ_DICOMWEB_PASSWORD")
    session = requests.Session()
    session.trust_env = False  # no proxies or netrc credentials picked up behind our back
    token = os.environ.get("RANKIQ_DICOMWEB_TOKEN")
    user, password = (os.environ.get("RANKIQ_DICOMWEB_USER"),
                      os.environ.get("RANKIQ_DICOMWEB_PASSWORD"))
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user:
        session.auth = (user, password or "")
    client = DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout)
    # one retry of a busy server (429/503/504...), not dicomweb-client's 5 with a 30 s backoff
    client.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=250)
    return client


@contextlib.contextmanager
def pacs_errors(what: str, url: str) -> Iterator[None]:
    """Translate ``requests``/``dicomweb-client`` failures into :class:`PacsError` (one line,
    the server by scheme, host and port only)."""
    import requests

    where = server_name(url)
    try:
        yield
    except PacsError:
        raise
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            raise PacsUnauthorized(f"{what}: {where} answered {status} (check "
                                   "RANKIQ_DICOMWEB_TOKEN or RANKIQ_DICOMWEB_USER/PASSWORD)"
                                   ) from None
        if status == 404:
            raise SeriesGone(f"{what}: {where} answered 404 (not found)") from None
        raise PacsError(f"{what}: {where} answered HTTP {status}") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise PacsUnreachable(f"{what}: cannot reach {where} ({type(exc).__name__})") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        # not JSON, not multipart, not DICOM: dicomweb-client and pydicom fail in many ways
        raise PacsBadAnswer(f"{what}: {where} sent an answer that is not valid DICOMweb "
                            f"({type(exc).__name__})") from None
    except requests.RequestException as exc:
        raise PacsError(f"{what}: {where}: {type(exc).__name__}") from None


def _value(item: dict[str, Any], tag: str, *, required: bool) -> str:
    """The first value of a DICOM JSON attribute, as a string."""
    attr = item.get(tag)
    if attr is None:
        if required:
            raise PacsBadAnswer(f"a QIDO-RS answer lacks attribute ({tag[:4]},{tag[4:]})")
        return ""
    if not isinstance(attr, dict):
        raise PacsBadAnswer(f"a QIDO-RS answer has a malformed attribute ({tag[:4]},{tag[4:]})")
    values = attr.get("Value") or []
    if not isinstance(values, list) or (required and not values):
        raise PacsBadAnswer(f"a QIDO-RS answer has no value for ({tag[:4]},{tag[4:]})")
    return str(values[0]) if values else ""


def _hit(item: Any) -> SeriesHit:
    if not isinstance(item, dict):
        raise PacsBadAnswer("a QIDO-RS answer is not a list of DICOM JSON objects")
    series_uid = _value(item, SERIES_UID, required=True).strip()
    study_uid = _value(item, STUDY_UID, required=True).strip()
    for uid in (series_uid, study_uid):
        if len(uid) > 64 or not _UID.fullmatch(uid):
            raise PacsBadAnswer("a QIDO-RS answer holds a malformed UID")
    n = _value(item, INSTANCES, required=False)
    try:
        count = int(float(n)) if n else 0
    except ValueError:
        raise PacsBadAnswer("a QIDO-RS answer holds a malformed instance count") from None
    return SeriesHit(study_uid, series_uid, series_key_of(series_uid, series_uid),
                     _value(item, MODALITY, required=False), count)


def query_series(client: Any, query: SeriesQuery) -> list[SeriesHit]:
    """The series matching ``query`` (QIDO-RS, every page), in the server's order, each once.

    Raises:
        PacsError: unreachable, unauthorized or a malformed answer.
    """
    filters: dict[str, Any] = {}
    if query.modality:
        filters["Modality"] = query.modality
    if query.since:
        filters["StudyDate"] = f"{query.since}-"
    fields = [SERIES_UID, STUDY_UID, MODALITY, INSTANCES]
    hits: dict[str, SeriesHit] = {}
    for study in query.studies or (None,):
        with pacs_errors("QIDO-RS series query", client.base_url):
            answer = client.search_for_series(study_instance_uid=study, fields=fields,
                                              search_filters=dict(filters), get_remaining=True)
        if not isinstance(answer, list):
            raise PacsBadAnswer(f"QIDO-RS series query: {server_name(client.base_url)} sent "
                                "an answer that is not a list")
        for item in answer:
            hit = _hit(item)
            if query.modality and hit.modality and hit.modality != query.modality:
                continue  # a server that ignores the filter
            if query.series and hit.series_uid not in query.series:
                continue
            hits.setdefault(hit.series_uid, hit)
    return list(hits.values())


def _series_parts(client: Any, hit: SeriesHit) -> Iterator[bytes]:
    """WADO-RS of a series, streamed: each instance's Part 10 bytes as the server sent them.

    The request of ``client.iter_series`` (same URL, Accept header, retries and errors), without
    decoding every instance into a dataset only to encode it again for the staging folder (a
    third of the retrieval's CPU time, in the process that scores). Through the client's own
    request and multipart decoding (not public API: dicomweb-client's version range is pinned
    in pyproject.toml).
    """
    from dicomweb_client.web import _Transaction

    url = client._get_series_url(_Transaction.RETRIEVE, hit.study_uid, hit.series_uid)
    response = client._http_get(url, headers={"Accept": 'multipart/related; '
                                                        'type="application/dicom"'}, stream=True)
    if response.headers.get("Content-Type", "").startswith("application/dicom"):
        # one part sent non-encapsulated (servers that misread the standard; dicomweb-client
        # accepts it too)
        return iter([response.content])
    parts: Iterator[bytes] = client._decode_multipart_message(response, stream=True)
    return parts


def retrieve_series(client: Any, hit: SeriesHit, dest: Path) -> int:
    """Stream one series (WADO-RS) into the folder ``dest``, all or nothing.

    Instances are written to ``dest.part/`` as they arrive, one file each, and the folder is
    renamed to ``dest`` once the last one is on disk: ``dest`` exists only complete. The
    folder is private to the user (mode 0700): it holds the patient's images.

    Returns:
        instances written.

    Raises:
        SeriesGone: the series is no longer there (404, or an empty answer).
        PacsError: any other failure (``dest`` is then absent).
    """
    part = dest.with_name(dest.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True, mode=0o700)
    n = 0
    what = f"WADO-RS retrieval of series {hit.key}"
    try:
        with pacs_errors(what, client.base_url):
            for data in _series_parts(client, hit):
                if data[128:132] != b"DICM":  # application/dicom parts are Part 10 files
                    raise PacsBadAnswer(f"{what}: {server_name(client.base_url)} sent a part "
                                        "that is not a DICOM file")
                n += 1
                (part / f"{n:05d}.dcm").write_bytes(data)
        if n == 0:
            raise SeriesGone(f"WADO-RS retrieval of series {hit.key}: "
                             f"{server_name(client.base_url)} returned no instance")
        shutil.rmtree(dest, ignore_errors=True)
        part.rename(dest)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    return n


@dataclass(frozen=True)
class Encoded:
    """One DICOM instance ready for STOW-RS: its SOPInstanceUID and its Part 10 bytes (what
    a build process hands back, and what a staged file holds: nothing is decoded again)."""

    uid: str
    data: bytes

    @classmethod
    def of(cls, ds: Any) -> Encoded:
        """Encode a pydicom dataset (with its file meta information)."""
        import io

        import pydicom

        with io.BytesIO() as b:
            pydicom.dcmwrite(b, ds, enforce_file_format=True)
            return cls(str(ds.SOPInstanceUID), b.getvalue())

    @classmethod
    def read(cls, path: Path) -> Encoded:
        """A Part 10 file as stored (the UID from its file meta information only)."""
        from pydicom.filereader import read_file_meta_info

        return cls(str(read_file_meta_info(path).MediaStorageSOPInstanceUID), path.read_bytes())


def store(client: Any, datasets: list[Any], what: str) -> None:
    """Store pydicom datasets with STOW-RS (one request): :func:`store_encoded` of each
    :meth:`Encoded.of`."""
    store_encoded(client, [Encoded.of(ds) for ds in datasets], what)


def _post_instances(client: Any, parts: list[bytes]) -> Any:
    """``client.store_instances`` without encoding datasets again: the same request (its
    retries, timeouts and errors), through the client's own multipart POST (not public API:
    dicomweb-client's version range is pinned in pyproject.toml)."""
    from dicomweb_client.web import _Transaction

    return client._http_post_multipart_application_dicom(
        client._get_studies_url(_Transaction.STORE), parts)


def store_encoded(client: Any, instances: list[Encoded], what: str) -> None:
    """Store encoded instances with STOW-RS (one request; the server answers per instance).

    An instance counts as stored only when the answer does not list it as failed and, when the
    answer lists the stored instances (ReferencedSOPSequence), lists it there: a server may
    leave an instance it did not store out of both (Orthanc's DICOMweb plugin 1.7, with a 200,
    when its Lua filter fails on it). An answer without a body is taken at its status code.

    Args:
        client: from :func:`connect`.

    Raises:
        PacsError: refused, unreachable, or an instance the server did not store.
    """
    if not instances:
        return
    with pacs_errors(f"STOW-RS of the {what}", client.base_url):
        answer = _post_instances(client, [i.data for i in instances])
    failed = list(getattr(answer, "FailedSOPSequence", None) or [])
    stored = getattr(answer, "ReferencedSOPSequence", None)
    failed_uids = {str(item.get("ReferencedSOPInstanceUID", "")) for item in failed}
    stored_uids = {str(item.get("ReferencedSOPInstanceUID", "")) for item in stored or []}
    missing = [i for i in instances if i.uid in failed_uids
               or (stored is not None and i.uid not in stored_uids)]
    refused = min(len(instances), max(len(missing), len(failed)))
    if refused:
        raise PacsError(f"STOW-RS of the {what}: {server_name(client.base_url)} refused "
                        f"{refused} of {len(instances)} instances")
