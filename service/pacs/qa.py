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
4. **write-back** (STOW-RS, :class:`StowWriter`, :func:`write_back`): for each scored series,
   the TID 1500 SR and/or the saliency Parametric Map(s) (:mod:`rankiq.service.results_dicom`:
   one map per multi-frame source instance of a series split over several), recorded per
   series and kind in the journal (table ``writeback``) once the server has stored all of that
   kind; their UIDs are derived from the source series, so a repeated store duplicates
   nothing. The map is computed from the QA's one scoring pass (its saliency input, in a build
   process) and stored while the next series is scored; the SR, built then too, is stored once
   the reports give the final verdict (the SRs of a run in a few STOW-RS requests).

The staging folder is removed once every scored series is written back as asked.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import multiprocessing
import queue
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rankiq.service.errors import RankIQError
from rankiq.service.pacs.dicomweb import (
    Encoded,
    PacsError,
    SeriesGone,
    SeriesHit,
    SeriesQuery,
    connect,
    query_series,
    retrieve_series,
    server_name,
    store_encoded,
)
from rankiq.service.qa.journal import JOURNAL_NAME, Journal, ref_from_json
from rankiq.service.qa.runner import QAOptions, QAResult, SeriesOutcome, run_qa
from rankiq.service.results_dicom import PendingSaliency

STAGING = "dicomweb-staging"
PREFETCH = 2  # series retrieved ahead of scoring (bounds the staging folder)
WRITE_QUEUE = 1  # scored series waiting for the write-back thread (each holds its saliency)
BUILDERS = 2  # write-back build processes (series whose objects are built at once)
SR_BATCH = 32  # SRs (about 30 kB each) stored in one STOW-RS request at the end of a run
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
        written: objects stored by write-back in this run, per kind (a series split over
            several multi-frame instances has a map per instance); ``unsupported``: scored
            series write-back cannot describe (source headers that break a rule of the IODs,
            staged files that are not the slices read).
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
        """Retrieve the series the journal does not hold yet and yield their folders, each
        batch what arrived while the previous one was scored."""
        known = {k for (k,) in journal.db.execute("SELECT DISTINCT series_key FROM instances")}
        todo = [h for h in self.hits if h.key not in known]
        if not todo:
            return
        self.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.staging.chmod(0o700)
        retrieval = _Retrieval(self, todo)
        try:
            while not retrieval.done:
                batch: list[Path] = []
                for hit, where, n in retrieval.arrived():
                    folder = self._arrived(journal, hit, where, n)
                    if folder is not None:
                        batch.append(folder)
                if batch:
                    yield batch
        finally:
            retrieval.close()

    def _arrived(self, journal: Journal, hit: SeriesHit, where: Path | SeriesGone,
                 n: int) -> Path | None:
        """Journal what became of a series: gone (listed in failed.csv), or retrieved into
        the folder ``where`` with ``n`` instances (the folder, to scan; a failure of an
        earlier try is forgotten)."""
        if isinstance(where, SeriesGone):
            self.gone += 1
            journal.add_scanned([], [(f"series {hit.key}", where.reason, str(where))])
            return None
        journal.db.execute("DELETE FROM failures WHERE source = ?", (f"series {hit.key}",))
        self.retrieved += 1
        self.instances += n
        return where


class _Retrieval:
    """The background thread of one :class:`DicomwebFeed` call: retrieves ``todo`` in order
    into the staging folder and hands each ``(hit, folder or SeriesGone, instances)`` over a
    queue of :attr:`DicomwebFeed.prefetch` items, then ``None``; an error of its own is handed
    over too, and raised in the consumer.

    Attributes:
        done: the consumer has taken the last item.
    """

    def __init__(self, feed: DicomwebFeed, todo: list[SeriesHit]) -> None:
        self.feed, self.todo = feed, todo
        self.items: queue.Queue[Any] = queue.Queue(maxsize=feed.prefetch)
        self.stop = threading.Event()
        self.done = False
        self.thread = threading.Thread(target=self._produce, name="rankiq-wado", daemon=True)
        self.thread.start()

    def arrived(self) -> Iterator[tuple[SeriesHit, Path | SeriesGone, int]]:
        """The items there now: waits for one, then takes those already queued (one batch).

        Raises:
            BaseException: the retrieval's error, as it was raised in the thread.
        """
        item = self.items.get()
        while True:
            if item is None:
                self.done = True
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            try:
                item = self.items.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        """Stop the thread (it ends after the series it is retrieving; waits 30 s at most)."""
        self.stop.set()
        self.thread.join(timeout=30)

    def _put(self, item: Any) -> None:
        """Queue ``item``, waiting for room until the consumer stops."""
        while not self.stop.is_set():
            with contextlib.suppress(queue.Full):
                self.items.put(item, timeout=0.2)
                return

    def _produce(self) -> None:
        """The thread: retrieve each series of ``todo`` (a folder already there is kept),
        adding the seconds spent to :attr:`DicomwebFeed.retrieve_s`."""
        feed = self.feed
        t0 = time.perf_counter()
        try:
            for hit in self.todo:
                if self.stop.is_set():
                    return
                dest = feed.staging / hit.key
                try:
                    n = 0 if dest.is_dir() else retrieve_series(feed.client, hit, dest)
                    self._put((hit, dest, n))
                except SeriesGone as exc:
                    self._put((hit, exc, 0))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(exc)
        finally:
            feed.retrieve_s += time.perf_counter() - t0
            self._put(None)


def run_dicomweb_qa(url: str, out_dir: Path, options: QAOptions, query: SeriesQuery, *,
                    write_back_kinds: tuple[str, ...] = (), client: Any = None,
                    software_version: str = "") -> DicomwebResult:
    """Query, retrieve, score and (optionally) write back; see the module docstring.

    Raises:
        PacsError: the server is unreachable, refuses the credentials or answers malformed
            DICOMweb (before anything is written when it happens at the query), or a
            write-back failed (after the reports are written; a rerun stores the rest).
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
    model_dir = str(options.model_dir)
    writer = (StowWriter(client, out_dir, prepare=partial(_warm_builder, model_dir))
              if write_back_kinds else None)
    on_scored = None
    if writer is not None:
        options = replace(options, saliency_maps="saliency" in write_back_kinds)

        def on_scored(key: str, outcome: SeriesOutcome) -> None:
            writer.submit((key,), partial(_build_apart, writer, key, outcome, write_back_kinds,
                                       staging, software_version, model_dir))
    try:
        res = run_qa([], out_dir, options, feed=feed, on_scored=on_scored)
    except BaseException as exc:
        if writer is not None:
            writer.stop(exc)
        raise
    result = DicomwebResult(qa=res, found=len(hits), retrieved=feed.retrieved,
                            instances=feed.instances, gone=feed.gone,
                            timings={"query": t_query, "retrieve": feed.retrieve_s})
    t1 = time.perf_counter()
    if writer is not None:
        result.written, result.unsupported = write_back(
            client, out_dir, write_back_kinds, res.doc, options,
            software_version=software_version, writer=writer)
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


#: What a write-back job hands the writer: ``[(kind, what, instances)]`` to store in this
#: order (the encoded instances of one kind in one STOW-RS request, recorded once all are
#: stored), plus the kinds the series' headers cannot describe (counted as unsupported, never
#: stored). Encoded where they are built, so the scoring process never encodes them.
Objects = tuple[list[tuple[str, str, list[Encoded]]], tuple[str, ...]]


#: The writer's jobs being built, oldest first: the series keys of each and its objects (or
#: their build under way).
_Building = collections.deque[tuple[tuple[str, ...], Objects | Future[Objects]]]


class StowWriter:
    """The one background thread of write-back: starts each job (the build of a series'
    objects, :func:`_scored_objects`, in one of :data:`BUILDERS` build processes while the next
    series is scored), stores the objects with STOW-RS in the order the jobs came and records
    them in the journal's ``writeback`` table once the server stored them.

    At most :data:`WRITE_QUEUE` jobs wait and :data:`BUILDERS` are built at once (each may hold
    a series' pixels and saliency input: memory stays a few series). The first failure stops
    it: later jobs are dropped (their objects are not recorded, so a rerun stores them) and
    :meth:`close` raises it.

    Attributes:
        written: objects stored, per kind; ``unsupported``: ``(series key, kind)`` whose
            objects the source headers cannot describe; ``error``: the failure, if any.
    """

    def __init__(self, client: Any, out_dir: Path,
                 prepare: Callable[[], None] | None = None) -> None:
        self.client, self.out_dir = client, out_dir
        self.written: dict[str, int] = {}
        self.unsupported: set[tuple[str, str]] = set()
        self.error: BaseException | None = None
        self._jobs: queue.Queue[Any] = queue.Queue(maxsize=WRITE_QUEUE)
        self._stop = threading.Event()
        # forked now, while this process runs no other thread (retrieval starts later)
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux")
                                              else "spawn")
        self._pool = ProcessPoolExecutor(BUILDERS, mp_context=context)
        self._pool.submit(int).result()  # forks them all (a fork context starts all at once)
        if prepare is not None:  # while the first series is retrieved and scored
            for _ in range(BUILDERS):
                self._pool.submit(prepare)
        self._thread = threading.Thread(target=self._run, name="rankiq-stow", daemon=True)
        self._thread.start()

    def submit(self, keys: tuple[str, ...],
               job: Callable[[sqlite3.Connection], Objects | Future[Objects]]) -> None:
        """Queue ``job`` (called in the writer thread with its journal connection: the objects,
        or their build under way), whose objects are recorded under each of the series
        ``keys`` once stored; blocks while :data:`WRITE_QUEUE` jobs wait."""
        self._jobs.put((keys, job))

    def apart(self, fn: Callable[..., Objects], *args: Any) -> Future[Objects]:
        """``fn(*args)`` in one of the writer's build processes: building the objects is pure
        Python, which in a thread would hold the interpreter lock the scoring needs; in a
        process it runs beside it (and with :data:`BUILDERS` of them, the last series of a run
        are built side by side once the scoring is done)."""
        return self._pool.submit(fn, *args)

    def flush(self) -> None:
        """Wait until every queued job is done (stored, or dropped after a failure)."""
        self._jobs.join()

    def close(self) -> None:
        """Finish the queued jobs and stop the thread.

        Raises:
            PacsError: a store failed (or another error of a job, re-raised as it was).
        """
        self._jobs.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def stop(self, exc: BaseException) -> None:
        """The caller failed with ``exc``: store what is queued when it is an error (the
        journal then says what was written), drop it when interrupted; never raises."""
        interrupted = not isinstance(exc, Exception)
        if interrupted:
            self._stop.set()
        deadline = time.monotonic() + 30 if interrupted else None
        while self._thread.is_alive() and (deadline is None or time.monotonic() < deadline):
            with contextlib.suppress(queue.Full):
                self._jobs.put(None, timeout=0.5)
                break
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        run = 0
        # jobs whose objects are being built, oldest first: up to BUILDERS at once, stored in
        # the order they came (each item's task_done once it is stored or dropped)
        building: _Building = collections.deque()
        try:
            while True:
                try:
                    item = self._jobs.get(timeout=0.05) if building else self._jobs.get()
                except queue.Empty:  # nothing new: store the oldest when it is built
                    self._store_next(building, db, run)
                    continue
                if item is None:
                    while building:
                        self._store_next(building, db, run)
                    self._jobs.task_done()
                    return
                try:
                    if self.error is not None or self._stop.is_set():
                        self._jobs.task_done()
                        continue
                    if db is None:  # opened here: the journal exists once a series is scored
                        db = _writeback_db(self.out_dir)
                        run = int((db.execute("SELECT value FROM meta WHERE key = 'runs'")
                                   .fetchone() or ["0"])[0])
                    keys, job = item
                    building.append((keys, job(db)))
                except BaseException as exc:  # noqa: BLE001 - raised by close() in the caller
                    self.error = exc
                    self._jobs.task_done()
                while len(building) >= BUILDERS:
                    self._store_next(building, db, run)
        finally:
            if db is not None:
                db.close()
            self._pool.shutdown(cancel_futures=True)

    def _store_next(self, building: _Building, db: sqlite3.Connection | None,
                    run: int) -> None:
        """Store the oldest job's objects (waiting for its build) and record them; after a
        failure (or a stop), drop it."""
        keys, built = building.popleft()
        try:
            if self.error is not None or self._stop.is_set() or db is None:
                if isinstance(built, Future):
                    built.cancel()
                return
            objects, unsupported = built.result() if isinstance(built, Future) else built
            self.unsupported.update((key, k) for key in keys for k in unsupported)
            for kind, what, instances in objects:
                # all of a kind or none recorded: a rerun stores them again under the same
                # UIDs, which duplicates nothing
                store_encoded(self.client, instances, what)
                db.executemany("INSERT OR REPLACE INTO writeback VALUES (?, ?, ?)",
                               [(key, kind, run) for key in keys])
                self.written[kind] = self.written.get(kind, 0) + len(instances)
        except BaseException as exc:  # noqa: BLE001 - raised by close() in the caller
            self.error = exc
        finally:
            self._jobs.task_done()


def _build_apart(writer: StowWriter, key: str, outcome: SeriesOutcome, kinds: tuple[str, ...],
                 staging: Path, software_version: str, model_dir: str,
                 db: sqlite3.Connection) -> Future[Objects]:
    """The writer job of a series just scored: :func:`_scored_objects` in a build process."""
    return writer.apart(_scored_objects, key, outcome, kinds, staging, software_version,
                        _refs(db, key), model_dir)


def _warm_builder(model_dir: str) -> None:
    """Load what every build needs once, in the build process (highdicom and its tables of
    the standard's IODs, about 0.7 s; the model that computes pending saliency maps), so that
    the first series' objects are not late."""
    from highdicom._standard_utils import is_multiframe_image
    from pydicom import Dataset
    from pydicom.uid import MRImageStorage

    probe = Dataset()
    probe.SOPClassUID = MRImageStorage
    is_multiframe_image(probe)
    _builder_model(model_dir)


@functools.cache
def _builder_model(model_dir: str) -> Any:
    """The build process's own copy of the scoring model (one ONNX Runtime thread: the
    scoring has the other cores), for :meth:`PendingSaliency.on_matrix`."""
    from rankiq.service.models import ScoringModel

    return ScoringModel.load(model_dir, threads=1)


def _refs(db: sqlite3.Connection, key: str) -> list[str]:
    """The journalled instance references of a series (scan order)."""
    return [r for (r,) in db.execute("SELECT ref FROM instances WHERE group_key = ? "
                                     "ORDER BY rowid", (key,))]


def _sources(refs: list[str], source_files: tuple[str, ...] | list[str], n_slices: int) -> Any:
    """The :class:`~rankiq.service.results_dicom.SliceSources` of a series (headers only:
    each slice's instance and, in a multi-frame instance, frame), or ``None`` when its staged
    files are not (all) there or their frames are not the slices read.

    Args:
        refs: its journalled instance references (where the staged files are).
        source_files: its source names in the reader's order (``ImageSeries.source_files``).
        n_slices: its number of slices.
    """
    import pydicom
    from rankiq.service.results_dicom import slice_sources

    where: dict[str, str] = {}
    for text in refs:
        ref = ref_from_json(text)
        if ref.path is not None:
            where[ref.source] = ref.path
    if any(f not in where for f in source_files):
        return None
    headers = [(f, pydicom.dcmread(where[f], stop_before_pixels=True)) for f in source_files]
    try:
        return slice_sources(headers, n_slices)
    except ValueError:
        return None


def _sr_spool(staging: Path, key: str, verdict: Any, software_version: str) -> Path:
    """Where the SR built while the series was scored waits for the run's final verdict: its
    name holds a digest of what the SR reports (the verdict and RankIQ's version), so the
    report time judgement (the archive rule) uses it only when it says the same."""
    digest = hashlib.sha256(repr((verdict, software_version)).encode()).hexdigest()[:16]
    return staging / f"{key}-{digest}.sr.dcm"


#: what building a result object raises when the source headers break a rule of the IODs
#: (no frame of reference...): the series' objects cannot be built, nothing is stored
_UNBUILDABLE = (ValueError, TypeError, AttributeError)


def _encoded_object(kind: str, key: str, sources: Any, verdict: Any, maps: Any,
                    software_version: str) -> tuple[str, str, list[Encoded]]:
    """One write-back object of a series, built and encoded: ``(kind, what, instances)``.

    Args:
        kind: ``"sr"`` or ``"saliency"``.
        key: the series key (named in ``what``, for the journal and errors).
        sources: its :class:`~rankiq.service.results_dicom.SliceSources`.
        verdict: its :class:`~rankiq.service.results_dicom.SeriesVerdict`.
        maps: for ``"saliency"``, the map on the series' own matrix, float32
            ``(S, rows, cols)``.
        software_version: RankIQ's version, written into the objects.

    Raises:
        ValueError, TypeError, AttributeError (``_UNBUILDABLE``): the source headers break
        a rule of the IODs.
    """
    from rankiq.service.results_dicom import build_saliency, build_sr

    if kind == "saliency":
        return ("saliency", f"saliency map of series {key}",
                [Encoded.of(pm) for pm in build_saliency(sources, maps, verdict,
                                                         software_version=software_version)])
    return ("sr", f"SR of series {key}",
            [Encoded.of(build_sr(sources, verdict, software_version=software_version))])


def _scored_objects(key: str, outcome: SeriesOutcome, kinds: tuple[str, ...], staging: Path,
                    software_version: str, refs: list[str], model_dir: str) -> Objects:
    """The write-back of a series just scored (runs in a build process, while the next one is
    scored): the saliency map from the scoring pass's saliency (a :class:`PendingSaliency` is
    computed here with the model of ``model_dir``), to store now; and the SR, built now with
    the series' own verdict but kept in the staging folder (private, like the images) until
    the reports are written, because the archive rule may still change it.

    Returns:
        the saliency map to store (when asked), and the kinds the headers cannot describe.
    """
    from rankiq.service.qa.report import qa_row
    from rankiq.service.results_dicom import SeriesVerdict

    assert outcome.result is not None  # only scored series are handed over
    result = outcome.result.to_json()  # as journalled: the verdict the reports start from
    maps = outcome.saliency
    if isinstance(maps, PendingSaliency):
        maps = maps.on_matrix(_builder_model(model_dir))
    want = [k for k in kinds if k == "sr" or maps is not None]
    sources = _sources(refs, outcome.source_files, len(result["scores"]))
    if sources is None:
        return [], tuple(want)
    verdict = SeriesVerdict.from_row(
        qa_row({"series_key": key, "info": outcome.info, "result": result}),
        result["scores"], str(result.get("model_sha256", "")))
    objects: list[tuple[str, str, list[Encoded]]] = []
    unsupported: list[str] = []
    for kind in want:
        try:
            built = _encoded_object(kind, key, sources, verdict, maps, software_version)
        except _UNBUILDABLE:
            unsupported.append(kind)
            continue
        if kind == "saliency":
            objects.append(built)
            continue
        path = _sr_spool(staging, key, verdict, software_version)
        part = path.with_name(path.name + ".part")
        part.write_bytes(built[2][0].data)
        part.replace(path)  # complete or absent
    return objects, tuple(unsupported)


def write_back(client: Any, out_dir: Path, kinds: tuple[str, ...], doc: dict[str, Any],
               options: QAOptions, *, software_version: str = "",
               writer: StowWriter | None = None) -> tuple[dict[str, int], int]:
    """Store the SR and/or saliency map of every scored series not yet written back.

    Run once the reports are written (the SR reports the run's final verdict). What the
    ``writer`` stored while the series were scored is not stored again; an SR built then is
    used when the final verdict is the one it reports, else built again; a series scored in
    an earlier run (or by another engine) is read again from the staging folder and, for its
    saliency map, scored again. The objects are built here and stored by the writer thread
    (building the next overlaps storing this one).

    Each object is recorded in the journal's ``writeback`` table once the server stored it;
    a failure stops the write-back with :class:`PacsError` and a rerun stores the rest.

    Returns:
        ``({kind: objects stored in this run}, series whose objects cannot be built: headers
        that break a rule of the IODs, or staged files that are not the slices read)``.
    """
    writer = writer or StowWriter(client, out_dir)
    _drain(writer)
    unsupported = {key for key, _ in writer.unsupported}
    db = _writeback_db(out_dir)
    try:
        have = set(db.execute("SELECT series_key, kind FROM writeback")) | writer.unsupported
        state = _WriteBack(writer, db, out_dir / STAGING, options, software_version, unsupported)
        for row in doc["series"]:
            missing = [k for k in kinds if (row["series_key"], k) not in have]
            if not missing:
                continue
            if writer.error is not None:
                break  # close() raises it
            state.series(row, missing)
        if writer.error is None:
            state.flush_srs()
    except BaseException as exc:
        writer.stop(exc)
        raise
    finally:
        db.close()
    writer.close()  # raises a failure of the writer
    return {k: writer.written.get(k, 0) for k in kinds}, len(unsupported)


def _drain(writer: StowWriter) -> None:
    """Wait until what the scoring pass handed over is stored (or failed).

    Raises:
        PacsError: a store failed (or another error of the writer's jobs, as it was).
    """
    try:
        writer.flush()
    except BaseException as exc:
        writer.stop(exc)
        raise
    if writer.error is not None:
        writer.close()  # raises it


@dataclass
class _WriteBack:
    """One :func:`write_back` pass over the scored series; :meth:`series` is one step of its
    loop.

    Attributes:
        writer: stores the objects built here; ``db``: the journal (write-back's connection).
        staging: the staging folder (the retrieved images, the SRs built during scoring).
        unsupported: keys of the series whose objects the source headers cannot describe.
        model: the scoring model, loaded the first time a saliency map is scored again.
        srs: SRs built while their series were scored, ``(series key, SR)``, waiting to be
            stored together (:meth:`flush_srs`: one STOW-RS request for up to
            :data:`SR_BATCH`, not one round trip per series).
    """

    writer: StowWriter
    db: sqlite3.Connection
    staging: Path
    options: QAOptions
    software_version: str
    unsupported: set[str]
    model: Any = None
    srs: list[tuple[str, Encoded]] = field(default_factory=list)

    def series(self, row: dict[str, Any], missing: list[str]) -> None:
        """Build the objects of kinds ``missing`` of the series of the qa row ``row`` and hand
        them to the writer (nothing when its slices cannot be referenced).

        Raises:
            PacsError: its retrieved images are gone from the staging folder.
        """
        key = row["series_key"]
        refs = _refs(self.db, key)
        verdict = self.verdict(key, row)
        spool = _sr_spool(self.staging, key, verdict, self.software_version)
        if "sr" in missing and spool.exists():  # built while the series was scored
            self.srs.append((key, Encoded.read(spool)))
            missing.remove("sr")
            if len(self.srs) >= SR_BATCH:
                self.flush_srs()
        if missing:
            series = self.load(key, refs)
            sources = _sources(refs, series.source_files, series.shape[0])
            if sources is None:
                self.unsupported.add(key)
                return
            self.writer.submit((key,), partial(
                _ready, self.build(key, missing, series, sources, verdict)))

    def flush_srs(self) -> None:
        """Hand the waiting SRs to the writer as one job (recorded under each series)."""
        if self.srs:
            keys = tuple(k for k, _ in self.srs)
            what = f"SR of series {keys[0]}" if len(keys) == 1 else f"SRs of {len(keys)} series"
            self.writer.submit(keys, partial(_ready, [("sr", what, [e for _, e in self.srs])]))
            self.srs = []

    def verdict(self, key: str, row: dict[str, Any]) -> Any:
        """The :class:`~rankiq.service.results_dicom.SeriesVerdict` of the qa row ``row`` (the
        run's final verdict), with the journalled scores and model digest."""
        from rankiq.service.results_dicom import SeriesVerdict

        stored = self.db.execute("SELECT result FROM series WHERE series_key = ?",
                                 (key,)).fetchone()
        result = json.loads(stored[0]) if stored and stored[0] else {}
        return SeriesVerdict.from_row(row, result.get("scores") or [],
                                      str(result.get("model_sha256", "")))

    def load(self, key: str, refs: list[str]) -> Any:
        """The series, read again from the staging folder.

        Raises:
            PacsError: its images are gone.
        """
        from rankiq.service.io import load_series

        try:
            return load_series([ref_from_json(r) for r in refs], key=key,
                               limits=self.options.limits)
        except RankIQError as exc:
            raise PacsError(f"write-back of series {key}: its retrieved images are gone "
                            f"({exc.reason}); rerun with --resume") from None
        except OSError:  # a run without write-back removed the staging folder when it ended
            raise PacsError(f"write-back of series {key}: its retrieved images are no longer "
                            "staged (the run that scored it did not write back); run the QA "
                            "with --write-back into a new --out folder") from None

    def build(self, key: str, kinds: list[str], series: Any, sources: Any,
              verdict: Any) -> list[tuple[str, str, list[Encoded]]]:
        """The objects of ``kinds``, in that order, up to the first the source headers cannot
        describe (the series is then unsupported)."""
        objects: list[tuple[str, str, list[Encoded]]] = []
        for kind in kinds:
            maps = self.saliency(series) if kind == "saliency" else None
            try:
                objects.append(_encoded_object(kind, key, sources, verdict, maps,
                                               self.software_version))
            except _UNBUILDABLE:
                self.unsupported.add(key)
                break
        return objects

    def saliency(self, series: Any) -> Any:
        """The series' saliency map on its own matrix, float32 ``(S, rows, cols)``, scored
        again (the model is loaded on first use)."""
        from rankiq.service.models import ScoringModel
        from rankiq.service.results_dicom import saliency_on_matrix
        from rankiq.service.scoring import score_series, series_interpolation

        if self.model is None:
            self.model = ScoringModel.load(str(self.options.model_dir),
                                           threads=self.options.threads or 1)
        scored = score_series(self.model, series, saliency=True,
                              max_slices=self.options.max_slices)
        assert scored.saliency is not None  # asked for: saliency=True
        return saliency_on_matrix(scored.saliency, series.pixels,
                                  features=self.model.kind == "features",
                                  interpolation=series_interpolation(series))


def _ready(objects: list[tuple[str, str, list[Encoded]]], db: sqlite3.Connection) -> Objects:
    """A writer job whose objects are already built."""
    return objects, ()
