"""Batch QA of series pulled from a PACS over DICOMweb, and write-back of the results.

``rankiq qa --dicomweb URL`` (:func:`run_dicomweb_qa`):

1. **query** (QIDO-RS): the series matching ``--study``/``--series``/``--since``/``--modality``,
   before anything is written (an unreachable server, a 401 or a malformed answer stops the run
   with nothing on disk).
2. **retrieve** (WADO-RS, streamed): a background thread fetches series one by one into a
   private staging folder (``OUT/dicomweb-staging``, mode 0700: it holds the patient's images),
   each folder complete or absent (:func:`rankiq.service.pacs.dicomweb.retrieve_series`), up
   to :data:`PREFETCH` series ahead of scoring.
3. **QA**: :func:`rankiq.service.qa.runner.run_qa` scans and scores each batch as it arrives,
   with the same selection rules, journal and reports as a folder run. A series that vanished
   before it could be retrieved is listed in ``failed.csv`` (``series_not_found``), the others
   go on; a series already journalled is not fetched again, so ``--resume`` completes only what
   is missing.
4. **write-back** (STOW-RS, :func:`write_back`): for each scored series, the TID 1500 SR and/or
   the saliency Parametric Map (:mod:`rankiq.service.results_dicom`), recorded per series and
   kind in the journal (table ``writeback``) once the server has stored it; their UIDs are
   derived from the source series, so a repeated store duplicates nothing.

The staging folder is removed once every scored series is written back as asked.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rankiq.service.errors import RankIQError
from rankiq.service.pacs.dicomweb import (
    PacsError,
    SeriesGone,
    SeriesHit,
    SeriesQuery,
    connect,
    query_series,
    retrieve_series,
    server_name,
    store,
)
from rankiq.service.qa.journal import JOURNAL_NAME, Journal, ref_from_json
from rankiq.service.qa.runner import QAOptions, QAResult, run_qa

STAGING = "dicomweb-staging"
PREFETCH = 2  # series retrieved ahead of scoring (bounds the staging folder)
WRITE_BACK_KINDS = ("sr", "saliency")
_WRITEBACK_SCHEMA = """
CREATE TABLE IF NOT EXISTS writeback (series_key TEXT NOT NULL, kind TEXT NOT NULL,
                                      run INTEGER, PRIMARY KEY (series_key, kind));
"""


@dataclass
class DicomwebResult:
    """What a DICOMweb QA run did.

    Attributes:
        qa: the :class:`~rankiq.service.qa.runner.QAResult` of the QA stage.
        found: series the query matched; ``retrieved``: series fetched in this run (
            ``instances``: their instances); ``gone``: series that could not be retrieved.
        written: objects stored by write-back in this run, per kind; ``unsupported``: scored
            series write-back cannot describe (slices that are frames of several multi-frame
            instances, or source headers that break a rule of the IODs).
        timings: wall seconds: ``query``, ``retrieve`` (in the background thread, overlapping
            the QA stage), ``write_back``.
    """

    qa: QAResult
    found: int
    retrieved: int = 0
    instances: int = 0
    gone: int = 0
    written: dict[str, int] = field(default_factory=dict)
    unsupported: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def parse_write_back(text: str | None) -> tuple[str, ...]:
    """``"sr,saliency"`` -> ``("sr", "saliency")``.

    Raises:
        RankIQError: an unknown kind.
    """
    if not text:
        return ()
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    bad = [k for k in kinds if k not in WRITE_BACK_KINDS]
    if bad or not kinds:
        raise RankIQError(f"--write-back takes a comma-separated list of "
                          f"{', '.join(WRITE_BACK_KINDS)}")
    return kinds


class DicomwebFeed:
    """The :class:`~rankiq.service.qa.runner.SeriesFeed` of a DICOMweb run: retrieves the
    series not yet in the journal in a background thread and hands over each batch of
    complete series folders as soon as it is there."""

    def __init__(self, client: Any, url: str, query: SeriesQuery, hits: list[SeriesHit],
                 staging: Path, prefetch: int = PREFETCH) -> None:
        self.client, self.hits, self.staging, self.prefetch = client, hits, staging, prefetch
        self.fingerprint = {"dicomweb": server_name(url) + urlsplit(url).path.rstrip("/"),
                            "query": query.fingerprint()}
        self.retrieved = self.instances = self.gone = 0
        self.retrieve_s = 0.0

    def __call__(self, journal: Journal) -> Iterator[list[Path]]:
        known = {k for (k,) in journal.db.execute("SELECT DISTINCT series_key FROM instances")}
        todo = [h for h in self.hits if h.key not in known]
        if not todo:
            return
        self.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.staging.chmod(0o700)
        items: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: Any) -> None:
            while not stop.is_set():
                with contextlib.suppress(queue.Full):
                    items.put(item, timeout=0.2)
                    return

        def produce() -> None:
            t0 = time.perf_counter()
            try:
                for hit in todo:
                    if stop.is_set():
                        return
                    dest = self.staging / hit.key
                    try:
                        n = 0 if dest.is_dir() else retrieve_series(self.client, hit, dest)
                        put((hit, dest, n))
                    except SeriesGone as exc:
                        put((hit, exc, 0))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                put(exc)
            finally:
                self.retrieve_s += time.perf_counter() - t0
                put(None)

        thread = threading.Thread(target=produce, name="rankiq-wado", daemon=True)
        thread.start()
        try:
            done = False
            while not done:
                batch: list[Path] = []
                item = items.get()
                while True:
                    if item is None:
                        done = True
                        break
                    if isinstance(item, BaseException):
                        raise item
                    hit, where, n = item
                    if isinstance(where, SeriesGone):
                        self.gone += 1
                        journal.add_scanned([], [(f"series {hit.key}", where.reason,
                                                  str(where))])
                    else:
                        journal.db.execute("DELETE FROM failures WHERE source = ?",
                                           (f"series {hit.key}",))
                        self.retrieved += 1
                        self.instances += n
                        batch.append(where)
                    try:
                        item = items.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    yield batch
        finally:
            stop.set()
            thread.join(timeout=30)


def run_dicomweb_qa(url: str, out_dir: Path, options: QAOptions, query: SeriesQuery, *,
                    write_back_kinds: tuple[str, ...] = (), client: Any = None,
                    software_version: str = "") -> DicomwebResult:
    """Query, retrieve, score and (optionally) write back; see the module docstring.

    Raises:
        PacsError: the server is unreachable, refuses the credentials or answers malformed
            DICOMweb (before anything is written when it happens at the query).
        RankIQError: as :func:`~rankiq.service.qa.runner.run_qa`.
    """
    if options.references_file is not None:
        raise RankIQError("--references is not available with --dicomweb")
    client = client or connect(url)
    t0 = time.perf_counter()
    hits = query_series(client, query)
    t_query = time.perf_counter() - t0
    if not options.resume and (out_dir / JOURNAL_NAME).exists():
        raise RankIQError(f"{out_dir} already holds a QA run; pass --resume to continue it or "
                          "choose another --out")
    staging = out_dir / STAGING
    feed = DicomwebFeed(client, url, query, hits, staging)
    res = run_qa([], out_dir, options, feed=feed)
    result = DicomwebResult(qa=res, found=len(hits), retrieved=feed.retrieved,
                            instances=feed.instances, gone=feed.gone,
                            timings={"query": t_query, "retrieve": feed.retrieve_s})
    t1 = time.perf_counter()
    if write_back_kinds:
        result.written, result.unsupported = write_back(
            client, out_dir, write_back_kinds, res.doc, options,
            software_version=software_version)
    result.timings["write_back"] = time.perf_counter() - t1
    if _all_written(out_dir, write_back_kinds, res.doc) and not res.doc["failed"]:
        shutil.rmtree(staging, ignore_errors=True)  # the patient's images leave the disk
    return result


def _writeback_db(out_dir: Path) -> sqlite3.Connection:
    db = sqlite3.connect(out_dir / JOURNAL_NAME, timeout=30, isolation_level=None)
    db.executescript(_WRITEBACK_SCHEMA)
    return db


def _all_written(out_dir: Path, kinds: tuple[str, ...], doc: dict[str, Any]) -> bool:
    if not kinds:
        return True
    db = _writeback_db(out_dir)
    try:
        have = set(db.execute("SELECT series_key, kind FROM writeback"))
    finally:
        db.close()
    return all((r["series_key"], k) in have for r in doc["series"] for k in kinds)


def _sources(refs: list[str], series: Any) -> Any:
    """The :class:`~rankiq.service.results_dicom.SliceSources` of ``series`` (headers only:
    one single-frame image per slice, or one multi-frame image and each slice's frame), or
    ``None`` when the results cannot reference its slices (frames of several multi-frame
    instances)."""
    import pydicom
    from rankiq.service.results_dicom import slice_sources

    where: dict[str, str] = {}
    for text in refs:
        ref = ref_from_json(text)
        if ref.path is not None:
            where[ref.source] = ref.path
    files = list(series.source_files)
    if any(f not in where for f in files):
        return None
    headers = [(f, pydicom.dcmread(where[f], stop_before_pixels=True)) for f in files]
    try:
        return slice_sources(headers, series.shape[0])
    except ValueError:
        return None


def write_back(client: Any, out_dir: Path, kinds: tuple[str, ...], doc: dict[str, Any],
               options: QAOptions, *, software_version: str = "") -> tuple[dict[str, int], int]:
    """Store the SR and/or saliency map of every scored series not yet written back.

    Each object is recorded in the journal's ``writeback`` table once the server stored it;
    a failure stops the write-back with :class:`PacsError` and a rerun stores the rest.

    Returns:
        ``({kind: objects stored now}, series whose slices the objects cannot reference:
        frames of several multi-frame instances, or headers that break a rule of the IODs)``.
    """
    from rankiq.service.io import load_series
    from rankiq.service.models import ScoringModel
    from rankiq.service.results_dicom import (
        SeriesVerdict,
        build_saliency,
        build_sr,
        saliency_on_matrix,
    )
    from rankiq.service.scoring import score_series

    written = dict.fromkeys(kinds, 0)
    unsupported = 0
    db = _writeback_db(out_dir)
    model = None
    try:
        have = set(db.execute("SELECT series_key, kind FROM writeback"))
        run = int((db.execute("SELECT value FROM meta WHERE key = 'runs'").fetchone()
                   or ["0"])[0])
        for row in doc["series"]:
            key = row["series_key"]
            missing = [k for k in kinds if (key, k) not in have]
            if not missing:
                continue
            refs = [r for (r,) in db.execute("SELECT ref FROM instances WHERE group_key = ? "
                                             "ORDER BY rowid", (key,))]
            stored = db.execute("SELECT result FROM series WHERE series_key = ?",
                                (key,)).fetchone()
            result = json.loads(stored[0]) if stored and stored[0] else {}
            try:
                series = load_series([ref_from_json(r) for r in refs], key=key,
                                     limits=options.limits)
            except RankIQError as exc:
                raise PacsError(f"write-back of series {key}: its retrieved images are gone "
                                f"({exc.reason}); rerun with --resume") from None
            sources = _sources(refs, series)
            if sources is None:
                unsupported += 1
                continue
            verdict = SeriesVerdict.from_row(row, result.get("scores") or [],
                                             str(result.get("model_sha256", "")))
            for kind in missing:
                maps = None
                if kind == "saliency":
                    if model is None:
                        model = ScoringModel.load(str(options.model_dir),
                                                  threads=options.threads or 1)
                    scored = score_series(model, series, saliency=True,
                                          max_slices=options.max_slices)
                    assert scored.saliency is not None  # asked for: saliency=True
                    maps = saliency_on_matrix(scored.saliency, series.pixels,
                                              features=model.kind == "features")
                try:
                    if maps is None:
                        obj = build_sr(sources.images, verdict, frames=sources.frames,
                                       software_version=software_version)
                        what = f"SR of series {key}"
                    else:
                        obj = build_saliency(sources.images, maps, verdict,
                                             frames=sources.frames,
                                             software_version=software_version)
                        what = f"saliency map of series {key}"
                except (ValueError, TypeError, AttributeError):
                    # the source headers break a rule of the IODs (no frame of reference...)
                    unsupported += 1
                    break
                store(client, [obj], what)
                db.execute("INSERT OR REPLACE INTO writeback VALUES (?, ?, ?)", (key, kind, run))
                written[kind] += 1
    finally:
        db.close()
    return written, unsupported
