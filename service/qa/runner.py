"""The batch QA pipeline behind ``rankiq qa`` and the service's ``POST /qa`` jobs.

Stages (each series goes through 3-5 in one worker process, so its pixels are read once):

1. **scan**: a header-only streaming walk of files, directories and zips
   (:func:`rankiq.service.io.scan_instances`); instances and unreadable inputs go to the journal in
   batches, so memory stays flat for archives of millions of files. Skipped on resume once
   complete.
2. **select**: :class:`~service.qa.selection.SeriesSelector` decides per series from its header
   attributes; skips are journalled with their reason.
3. **decode**: :func:`rankiq.service.io.load_series` reads the series' pixels.
4. **preprocess + score**: :func:`rankiq.service.preprocess.prepare` at the model's grid, then the
   no-reference ONNX model on all slices of the series in batches.
5. **aggregate + flag**; for flagged series, saliency of the worst slices and the PNGs for the
   report.

Every series result is committed to the journal in one transaction, which makes a killed run
resumable (see :mod:`rankiq.service.qa.journal`). Reports are (re)written from the journal at the
end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rankiq.service.qa.aggregate import Thresholds, aggregate, flag, load_thresholds
from rankiq.service.qa.journal import Journal
from rankiq.service.qa.references import ReferenceMap, load_reference_map
from rankiq.service.qa.selection import RulesError, SeriesSelector, load_selector

DEFAULT_MODEL = "iqnet-noref"
SCAN_BATCH = 500  # instances per journal transaction during the walk
SCORE_BATCH = 16  # slices per ONNX call (bounds memory at large grids)
WORST_K = 3  # worst slices kept per series (and rendered for flagged ones)
STAGES = ("scan", "decode", "preprocess", "score", "report")


@dataclass
class QAOptions:
    """Settings of one QA run.

    Attributes:
        model_dir: the shipped no-reference model directory (``models/iqnet-noref``).
        thresholds_file: per-site override of the model's ``qa_thresholds`` (JSON/YAML).
        rules_file: series selection rules (JSON/YAML) replacing the built-in ones.
        workers: worker processes (1 = score in this process).
        threads: ONNX Runtime intra-op threads per worker (0 = cores // workers).
        resume: continue the journal in the output directory.
        progress: show a progress bar (stderr) with rate and ETA.
        worst_k: worst slices kept per series.
        textfile: write ``rankiq_qa.prom`` for node_exporter's textfile collector (off in the
            service: its metrics go to ``/metrics``, and in prometheus_client's multiprocess
            mode every metric object writes to the shared files, whatever its registry).
        references_file: series -> reference map (:mod:`rankiq.service.qa.references`); mapped
            series are scored against their reference with ``reference_model_dir``.
        reference_model_dir: the reference-mode model (default: ``iqnet-ref`` beside
            ``model_dir``); its own ``qa_thresholds`` flag the mapped series.
    """

    model_dir: Path
    thresholds_file: Path | None = None
    rules_file: Path | None = None
    workers: int = 1
    threads: int = 0
    resume: bool = False
    progress: bool = True
    worst_k: int = WORST_K
    textfile: bool = True
    references_file: Path | None = None
    reference_model_dir: Path | None = None

    def reference_model(self) -> Path:
        """The reference-mode model directory used for mapped series."""
        return self.reference_model_dir or Path(self.model_dir).parent / "iqnet-ref"


@dataclass
class QAResult:
    """Outcome of :func:`run_qa` (what the CLI prints and the bench measures).

    ``timings`` holds seconds per stage: ``scan`` and ``report`` (final reports) are wall time
    in the main process; ``decode``/``preprocess``/``score`` and ``render`` (saliency + PNGs of
    flagged series) are summed over workers (CPU-seconds when workers run in parallel).
    """

    out_dir: Path
    doc: dict[str, Any]
    scored_now: int
    scored_before: int
    slices_now: int
    wall_s: float
    timings: dict[str, float] = field(default_factory=dict)


# -- worker side -----------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the main process dies (even by SIGKILL)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def init_worker(model_dir: str, threads: int, thresholds: Thresholds, selector: SeriesSelector,
                worst_k: int, in_pool: bool = True, reference_model_dir: str | None = None,
                reference_thresholds: Thresholds | None = None) -> None:
    """Load the model(s) once per worker process (ONNX Runtime sessions with ``threads``); the
    reference model only when series are mapped to references."""
    if in_pool:
        _die_with_parent()
    from rankiq.service.models import ScoringModel

    _WORKER.update(model=ScoringModel.load(model_dir, threads=threads), thresholds=thresholds,
                   selector=selector, worst_k=worst_k, reference_model=None,
                   reference_thresholds=reference_thresholds)
    if reference_model_dir is not None:
        _WORKER["reference_model"] = ScoringModel.load(reference_model_dir, threads=threads)


def loaded_attributes(series: Any) -> dict[str, Any]:
    """Selection attributes of a decoded :class:`~service.io.types.ImageSeries` (full header
    metadata, so rules on e.g. ``ImageType`` hold even when the scan could not see them)."""
    a = series.attributes
    image_type = a.get("image_type") or ""
    return {"Modality": series.modality, "SeriesDescription": series.description,
            "ImageType": [v for v in str(image_type).split("\\") if v],
            "SOPClass": a.get("sop_class", ""), "Rows": series.shape[1],
            "Columns": series.shape[2], "_slices": series.shape[0]}


def _open_zips(refs: list[bytes]) -> dict[str, Any]:
    """Per-worker cache of open zips (a huge zip's central directory is parsed once)."""
    import zipfile

    cache: dict[str, zipfile.ZipFile] = _WORKER.setdefault("zips", {})
    first = pickle.loads(refs[0]) if refs else None
    path = getattr(first, "path", None)
    if first is not None and first.member is not None and path and path not in cache:
        while len(cache) >= 4:
            cache.pop(next(iter(cache))).close()
        with contextlib.suppress(OSError, zipfile.BadZipFile):  # load_series reports it
            cache[path] = zipfile.ZipFile(path)
    return cache


def _read_reference(path: str) -> Any:
    """The one image series at ``path`` (a mapped reference)."""
    from rankiq.service.errors import UnreadableInput
    from rankiq.service.io import read_series

    found = read_series(path)
    if len(found) != 1:
        why = (f"holds {len(found)} series" if found else
               (found.failures[0].message if found.failures else "holds no image series"))
        raise UnreadableInput(f"mapped reference must hold exactly one series: {why}",
                              source=path)
    return found[0]


def process_series(key: str, refs: list[bytes], reference: str | None = None
                   ) -> dict[str, Any]:
    """Decode, score, aggregate and flag one series (runs in a worker).

    With ``reference`` (a mapped reference path) the series is scored against it by the
    reference model and flagged by that model's thresholds.

    Returns a dict with ``status`` (``done``/``skipped``/``failed``), ``result``, ``assets``,
    ``info`` (description, contrast...), ``timings`` (seconds per stage) and for skips and
    failures ``reason`` (and ``message``).
    """
    from rankiq.service.errors import RankIQError
    from rankiq.service.io import load_series
    from rankiq.service.preprocess import prepare

    model = _WORKER["model"]
    thresholds: Thresholds = _WORKER["thresholds"]
    if reference is not None:
        model, thresholds = _WORKER["reference_model"], _WORKER["reference_thresholds"]
    timings = dict.fromkeys(("decode", "preprocess", "score", "render"), 0.0)
    t0 = time.perf_counter()
    try:
        series = load_series([pickle.loads(r) for r in refs], key=key, zips=_open_zips(refs))
    except RankIQError as exc:
        return {"status": "failed", "reason": exc.reason, "message": str(exc),
                "timings": timings}
    t1 = time.perf_counter()
    timings["decode"] = t1 - t0
    info = {"description": series.description, "contrast": series.contrast,
            "modality": series.modality, "rows": series.shape[1], "cols": series.shape[2]}
    decision = _WORKER["selector"].decide(loaded_attributes(series))
    if not decision.selected:
        return {"status": "skipped", "reason": decision.reason, "info": info,
                "timings": timings}
    try:
        ref_series = None if reference is None else _read_reference(reference)

        def pixels(s: Any) -> np.ndarray:
            if model.input_kind == "complex" and s.complex_pixels is not None:
                return s.complex_pixels
            return s.pixels

        percentile = float(model.metadata.get("percentile", 99.5))
        prep = prepare(pixels(series), None if ref_series is None else pixels(ref_series),
                       grid=tuple(model.grid), input_kind=model.input_kind,
                       percentile=percentile)
    except RankIQError as exc:
        return {"status": "failed", "reason": exc.reason, "message": str(exc), "info": info,
                "timings": timings}
    t2 = time.perf_counter()
    timings["preprocess"] = t2 - t1
    x = prep.network_input
    scores = np.concatenate([np.asarray(model.score(x[i:i + SCORE_BATCH]), np.float32)
                             for i in range(0, x.shape[0], SCORE_BATCH)])
    t3 = time.perf_counter()
    timings["score"] = t3 - t2
    agg = aggregate(scores, prep.empty, k=_WORKER["worst_k"])
    flagged, reason = flag(agg, series.contrast, thresholds)
    assets = None
    if flagged and agg.worst_slices:
        from rankiq.service.qa.report import slice_assets

        idx = np.asarray(agg.worst_slices)
        sal = model.score_and_saliency(x[idx])[1] if model.has_saliency else None
        slices = []
        for j, i in enumerate(idx):
            s_map = (None if sal is None
                     else np.sqrt((np.asarray(sal[j], np.float64) ** 2).sum(axis=0)))
            pics = slice_assets(np.sqrt((prep.image[i].astype(np.float64) ** 2).sum(axis=0)),
                                s_map)
            slices.append({"index": int(i), "score": float(scores[i]), **pics})
        assets = {"slices": slices}
        timings["render"] = time.perf_counter() - t3
    result = {
        "scores": [round(float(s), 6) for s in scores],
        "blank": [int(i) for i in np.flatnonzero(prep.empty)],
        "aggregate": agg.__dict__,
        "flagged": flagged,
        "reason": reason,
        "statistic": thresholds.statistic,
        "threshold": thresholds.for_family(series.contrast),
        "model": model.name,
        "model_version": str(model.version),
        "mode": model.mode,
        "input_kind": model.input_kind,
        "reference_mapped": reference is not None,
    }
    return {"status": "done", "result": result, "assets": assets, "info": info,
            "timings": timings}


# -- main side -------------------------------------------------------------------------------
def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_model_metadata(model_dir: Path) -> dict[str, Any]:
    """``metadata.json`` of a shipped model (no ONNX session needed)."""
    from rankiq.service.errors import RankIQError

    try:
        return json.loads((model_dir / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RankIQError(f"{model_dir}: not a RankIQ model directory ({exc})") from exc


def scan_into(journal: Journal, paths: Sequence[str | Path],
              on_progress: Callable[[int], None] | None = None) -> None:
    """Walk ``paths`` (header only) and journal every instance and unreadable input."""
    from rankiq.service.io import scan_instances
    from rankiq.service.io.types import ReadFailure

    batch: list[tuple[str, str, bytes, dict[str, Any]]] = []
    failures: list[tuple[str, str, str]] = []
    import warnings

    # pydicom warns (to stderr) about every malformed header; failures are reported in
    # failed.csv instead
    warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
    for n, item in enumerate(scan_instances([str(p) for p in paths]), start=1):
        if isinstance(item, ReadFailure):
            failures.append((item.source, item.reason, item.message))
        else:
            batch.append((str(item.source), item.series_key, int(item.rows), int(item.cols),
                          pickle.dumps(item), series_attributes(item)))
        if len(batch) + len(failures) >= SCAN_BATCH:
            journal.add_scanned(batch, failures)
            batch, failures = [], []
            if on_progress:
                on_progress(n)
    journal.add_scanned(batch, failures)
    from rankiq.service.io.dicom import shape_key

    journal.split_mixed_shapes(shape_key)
    journal.mark_scan_complete()


def series_attributes(ref: Any) -> dict[str, Any]:
    """Selection attributes of a series from one instance ref (JSON-ready, no identifiers).

    Keys are DICOM keywords where one exists: ``Modality``, ``SeriesDescription``,
    ``ImageType`` (list), ``Rows``, ``Columns``, ``NumberOfFrames``, plus ``SOPClass`` (the SOP
    class *name*, e.g. ``"MR Image Storage"``: io never hands out UIDs).
    """
    fields = {"Modality": "modality", "SeriesDescription": "description",
              "SOPClass": "sop_class", "ImageType": "image_type", "Rows": "rows",
              "Columns": "cols", "NumberOfFrames": "frames"}
    attrs: dict[str, Any] = {}
    for keyword, name in fields.items():
        value = getattr(ref, name, None)
        if isinstance(value, tuple | list):
            value = [str(v) for v in value]
        if value is not None:
            attrs[keyword] = value
    return attrs


def select_pending(journal: Journal, selector: SeriesSelector) -> None:
    """Journal a skip for every pending series the selector rejects."""
    sizes = journal.series_sizes()
    for key, info in journal.pending():
        decision = selector.decide({**info, "_slices": sizes.get(key, 0)})
        if not decision.selected:
            journal.record(key, "skipped", reason=decision.reason)


def build_doc(journal: Journal, model_meta: dict[str, Any], thresholds: Thresholds,
              selector: SeriesSelector) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The qa.json document and the report assets, from the journal."""
    from rankiq.service.qa.report import qa_row

    sizes = journal.series_sizes()
    series, skipped, failed, assets = [], [], [], {}
    for row in journal.rows():
        info = row["info"]
        if row["status"] == "done":
            series.append(qa_row(row))
            if row["assets"]:
                assets[row["series_key"]] = row["assets"]
        elif row["status"] == "skipped":
            skipped.append({"series_key": row["series_key"],
                            "description": str(info.get("description",
                                                        info.get("SeriesDescription", ""))),
                            "modality": str(info.get("modality", info.get("Modality", ""))),
                            "instances": sizes.get(row["series_key"], 0),
                            "reason": row["reason"]})
        elif row["status"] == "failed":
            failed.append({"source": info.get("first_source", f"series {row['series_key']}"),
                           "reason": row["reason"], "message": info.get("message", "")})
    for source, reason, message in journal.failures():
        if reason == "non_image":  # a readable object without an image: skipped, not failed
            skipped.append({"series_key": "", "description": "", "modality": "",
                            "instances": 1, "reason": reason, "source": source})
        else:
            failed.append({"source": source, "reason": reason, "message": message})
    failed.sort(key=lambda r: r["source"])
    doc = {
        "model": {"name": model_meta.get("name"), "version": model_meta.get("version"),
                  "mode": model_meta.get("mode")},
        "thresholds": thresholds.to_dict(),
        "rules": selector.source,
        "summary": {
            "series": len(series),
            "flagged": sum(r["flagged"] for r in series),
            "skipped": len(skipped),
            "failed_inputs": len(failed),
            "slices": sum(int(r["slices"]) for r in series),
            "runs": journal.run,
        },
        "series": series,
        "skipped": skipped,
        "failed": failed,
    }
    return doc, assets


def run_qa(paths: Sequence[str | Path], out_dir: str | Path, options: QAOptions,
           *, on_series: Callable[[dict[str, Any], dict[str, Any]], None] | None = None
           ) -> QAResult:
    """Run (or resume) batch QA of ``paths`` into ``out_dir``; see the module docstring.

    Args:
        paths: files, directories (recursive) and zips.
        out_dir: output directory (journal, qa.csv, qa.json, failed.csv, report.html,
            rankiq_qa.prom).
        options: :class:`QAOptions`.
        on_series: called in the main process with each newly scored series' qa.csv row and
            its full result (per-slice ``scores``...); the service feeds its metrics with it.

    Raises:
        RankIQError: bad model directory, thresholds or rules file, or a journal that cannot
            be resumed.
    """
    from rankiq.service.qa.metrics import write_textfile
    from rankiq.service.qa.report import write_reports

    t_start = time.perf_counter()
    out = Path(out_dir)
    meta = read_model_metadata(options.model_dir)
    thresholds = load_thresholds(meta, options.thresholds_file)
    selector = load_selector(options.rules_file)
    refmap = load_reference_map(options.references_file)
    settings = {
        "model": meta.get("name"),
        "model_files": _fingerprint(meta.get("files", {})),
        "thresholds": thresholds.fingerprint(),
        "rules": _fingerprint(selector.document),
        "inputs": sorted(str(Path(p).resolve()) for p in paths),
    }
    reference_setup = None
    if refmap is not None:
        ref_meta = read_model_metadata(options.reference_model())
        if ref_meta.get("mode") != "reference":
            raise RulesError(f"{options.reference_model()}: not a reference-mode model "
                             "(needed for series mapped to references)")
        reference_setup = (refmap, load_thresholds(ref_meta, None))
        settings.update(references=refmap.fingerprint(), reference_model=_fingerprint(
            ref_meta.get("files", {})))
    journal = Journal(out, settings, resume=options.resume)
    timings = dict.fromkeys(("scan", "decode", "preprocess", "score", "render", "report"), 0.0)
    try:
        before = journal.counts().get("done", 0)
        t0 = time.perf_counter()
        if not journal.scan_complete:
            scan_into(journal, paths)
        select_pending(journal, selector)
        timings["scan"] = time.perf_counter() - t0
        slices_now = _score_pending(journal, options, thresholds, selector, timings, on_series,
                                    reference_setup)
        t0 = time.perf_counter()
        doc, assets = build_doc(journal, meta, thresholds, selector)
        write_reports(out, doc, assets)
        wall = time.perf_counter() - t_start
        if options.textfile:
            write_textfile(out / "rankiq_qa.prom", doc, duration_s=wall)
        timings["report"] = time.perf_counter() - t0
        done = journal.counts().get("done", 0)
    finally:
        journal.close()
    return QAResult(out, doc, done - before, before, slices_now,
                    time.perf_counter() - t_start, timings)


def _score_pending(journal: Journal, options: QAOptions, thresholds: Thresholds,
                   selector: SeriesSelector, timings: dict[str, float],
                   on_series: Callable[[dict[str, Any], dict[str, Any]], None] | None,
                   reference_setup: tuple[ReferenceMap, Thresholds] | None = None) -> int:
    """Score every pending (selected) series; returns slices scored."""
    sizes = journal.series_sizes()
    todo = [key for key, _ in journal.pending()]
    total = sum(sizes.get(k, 0) for k in todo)
    if not todo:
        return 0
    workers = max(1, int(options.workers))
    threads = options.threads or max(1, (os.cpu_count() or 1) // workers)
    bar = _progress(total, options.progress)
    slices = 0
    refmap, ref_thresholds = reference_setup or (None, None)

    def reference_of(key: str) -> str | None:
        if refmap is None:
            return None
        refs = journal.refs(key)
        first = str(pickle.loads(refs[0]).source) if refs else None
        return refmap.lookup(key, first)

    def record(key: str, out: dict[str, Any]) -> None:
        nonlocal slices
        for k, v in out["timings"].items():
            timings[k] += v
        info = {**(out.get("info") or {})}
        if out["status"] == "done":
            journal.record(key, "done", result=out["result"], assets=out["assets"],
                           info={**_info(journal, key), **info})
            n = len(out["result"]["scores"])
            slices += n
            if on_series:
                from rankiq.service.qa.report import qa_row

                on_series(qa_row({"series_key": key, "info": {**_info(journal, key), **info},
                                  "result": out["result"]}), out["result"])
        elif out["status"] == "skipped":
            journal.record(key, "skipped", reason=out["reason"], info={**_info(journal, key),
                                                                        **info})
            n = sizes.get(key, 0)
        else:
            refs = journal.refs(key)
            first = str(pickle.loads(refs[0]).source) if refs else f"series {key}"
            journal.record(key, "failed", reason=out["reason"],
                           info={**_info(journal, key), **info, "first_source": first,
                                 "message": out["message"]})
            n = sizes.get(key, 0)
        bar.update(n)

    try:
        ref_model = None if refmap is None else str(options.reference_model())
        if workers == 1:
            init_worker(str(options.model_dir), threads, thresholds, selector, options.worst_k,
                        False, ref_model, ref_thresholds)
            for key in todo:
                record(key, process_series(key, journal.refs(key), reference_of(key)))
        else:
            _run_pool(journal, todo, options, (str(options.model_dir), threads, thresholds,
                                               selector, options.worst_k, True, ref_model,
                                               ref_thresholds), record, reference_of)
    finally:
        bar.close()
    return slices


def _info(journal: Journal, key: str) -> dict[str, Any]:
    row = journal.db.execute("SELECT info FROM series WHERE series_key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else {}


def _run_pool(journal: Journal, todo: Iterable[str], options: QAOptions, initargs: tuple,
              record: Callable[[str, dict[str, Any]], None],
              reference_of: Callable[[str], str | None]) -> None:
    """Score series in ``options.workers`` processes, at most 2 per worker in flight."""
    import multiprocessing as mp

    ctx = mp.get_context("fork") if sys.platform.startswith("linux") else None
    with ProcessPoolExecutor(options.workers, mp_context=ctx, initializer=init_worker,
                             initargs=initargs) as pool:
        pending: dict[Future, str] = {}
        it = iter(todo)
        limit = 2 * options.workers
        while True:
            while len(pending) < limit:
                key = next(it, None)
                if key is None:
                    break
                pending[pool.submit(process_series, key, journal.refs(key),
                                    reference_of(key))] = key
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                record(pending.pop(fut), fut.result())


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar in slices (rate and ETA) on stderr, or a no-op."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="slice", desc="qa", file=sys.stderr, smoothing=0.1,
                mininterval=0.5, dynamic_ncols=True)
