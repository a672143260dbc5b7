"""The batch QA pipeline behind ``rankiq qa`` and the service's ``POST /qa`` jobs.

Stages (each series goes through 3-5 in one worker process, so its pixels are read once):

1. **scan**: a header-only streaming walk of files, directories and zips
   (:func:`rankiq.service.io.scan_instances`); instances and unreadable inputs go to the journal in
   batches, so memory stays flat for archives of millions of files. Skipped on resume once
   complete.
2. **select**: :class:`~service.qa.selection.SeriesSelector` decides per series from its header
   attributes; skips are journalled with their reason.
3. **decode**: :func:`rankiq.service.io.load_series` reads the series' pixels.
4. **score**: :func:`rankiq.service.scoring.score_series`, the one scorer behind ``rankiq
   score`` and ``/score`` (same preprocessing, batching, non-finite checks and slice limit).
5. **judge** (:func:`judge`): a series the scorer labels out of range is *not assessable* (never
   flagged or passed); otherwise it is flagged when its statistic is above its family's
   threshold (rule ``model_threshold`` or ``site_threshold``). Flagged series get saliency of
   their worst slices and the PNGs for the report.

Every series result is committed to the journal in one transaction, which makes a killed run
resumable (see :mod:`rankiq.service.qa.journal`). Reports are (re)written from the journal at the
end; that is also when the archive-relative rule (``archive_outlier``,
:func:`rankiq.service.qa.aggregate.archive_outliers`) compares each series with the others of its
protocol, so a resumed run (or a rerun with another ``--outlier-z``) judges the whole archive.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from rankiq.service.io.limits import DEFAULT_LIMITS, ReadLimits
from rankiq.service.qa.aggregate import (
    DEFAULT_OUTLIER_Z,
    MIN_GROUP,
    SeriesAggregate,
    Thresholds,
    aggregate,
    archive_outliers,
    flag,
    load_thresholds,
    threshold_rule,
)
from rankiq.service.qa.journal import Journal, ref_from_json, ref_to_json
from rankiq.service.qa.references import ReferenceMap, load_reference_map
from rankiq.service.qa.selection import RulesError, SeriesSelector, load_selector
from rankiq.service.results_dicom import PendingSaliency
from rankiq.service.scoring import DEFAULT_MAX_SLICES
from rankiq.service.settings import usable_cpus

if TYPE_CHECKING:
    from rankiq.service.io.types import ImageSeries
    from rankiq.service.models import ScoringModel
    from rankiq.service.scoring import SeriesScore

DEFAULT_MODEL = "iqnet-noref"
SCAN_BATCH = 500  # instances per journal transaction during the walk
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
        outlier_z: robust z cut of the archive-relative rule (``0`` turns it off); applied
            when reports are written, so it may change on ``resume``.
        outlier_min_group: fewest series of one protocol that the rule compares.
        max_slices: larger series fail with ``too_large`` (the scorer's limit, never truncated).
        render: saliency and PNGs of the worst slices of flagged series (off for calibration).
        saliency_maps: each scored series' saliency map on its own matrix, computed in the
            scoring pass and handed to ``run_qa``'s ``on_scored`` (DICOMweb write-back).
        limits: size limits of every read (the service passes its own; the CLI the library's).
        max_scan_seconds: wall-clock budget of the header walk (``None``: unlimited); past it
            the run fails with ``too_large`` before anything is scored.
        engine: where series are scored: ``local`` (this process or a process pool of
            ``workers``) or ``ray`` (actors on a Ray cluster,
            :mod:`rankiq.service.qa.ray_engine`; ``workers`` > 1 then sets the actors, else one
            per CPU of the cluster). The journal does not depend on it: a run may resume on the
            other engine.
        address: the Ray cluster (``auto`` or ``HOST:PORT``; ``None``: a local Ray instance).
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
    outlier_z: float = DEFAULT_OUTLIER_Z
    outlier_min_group: int = MIN_GROUP
    max_slices: int = DEFAULT_MAX_SLICES
    render: bool = True
    saliency_maps: bool = False
    limits: ReadLimits = DEFAULT_LIMITS
    max_scan_seconds: float | None = None
    engine: Literal["local", "ray"] = "local"
    address: str | None = None

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


@dataclass(frozen=True)
class SeriesResult:
    """The verdict on one scored series (journalled as JSON by :meth:`to_json`).

    Attributes:
        scores: per-slice scores (model units, lower is better); ``blank``: indices of blank
            slices (left out of the statistics).
        aggregate: median/p90/mean/worst and the worst slices.
        status: ``passed``, ``flagged`` or ``not_assessable`` (out of the model's range: never
            flagged or passed).
        flagged: ``status == "flagged"``; ``rule``: the rule that fired (``model_threshold``,
            ``site_threshold``; ``archive_outlier`` is added when reports are written), ``""``
            when not flagged; ``reason``: the numbers, in words.
        statistic: ``median`` or ``p90``; ``statistic_value``: its value for this series.
        threshold: the family's threshold (model score units).
        in_range, range_reasons: from :class:`rankiq.service.scoring.SeriesScore`.
        model, model_version, model_sha256, mode, input_kind: the model that scored it.
        reference_mapped: scored against a mapped reference series (reference model).
    """

    scores: tuple[float, ...]
    blank: tuple[int, ...]
    aggregate: SeriesAggregate
    status: Literal["passed", "flagged", "not_assessable"]
    flagged: bool
    rule: str
    reason: str
    statistic: str
    statistic_value: float | None
    threshold: float
    in_range: bool
    range_reasons: tuple[str, ...]
    model: str
    model_version: str
    model_sha256: str
    mode: str
    input_kind: str
    reference_mapped: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the journal's ``result``; lists for tuples)."""
        out = asdict(self)
        out.update(scores=[round(float(v), 6) for v in self.scores], blank=list(self.blank),
                   range_reasons=list(self.range_reasons))
        return out


@dataclass(frozen=True)
class SeriesOutcome:
    """What a worker hands back for one series.

    Attributes:
        status: ``done`` (scored: see ``result``), ``skipped`` (by a selection rule) or
            ``failed`` (unreadable or unscorable).
        reason: skip or failure reason code (``""`` when done); ``message``: failure details.
        info: description, contrast, modality, rows, cols, pixel_spacing (mm).
        result: the :class:`SeriesResult` when done.
        assets: base64 PNGs of the worst slices of a flagged series (for report.html).
        timings: seconds per stage (``decode``, ``preprocess``, ``score``, ``render``).
        saliency: when the run asks for it (:attr:`QAOptions.saliency_maps`), the saliency map
            of a scored series on its own matrix, float32 ``(S, rows, cols)`` in slice order
            (:func:`rankiq.service.results_dicom.saliency_on_matrix`), from the one scoring
            pass: computed, or for a features model a
            :class:`~rankiq.service.results_dicom.PendingSaliency` that its consumer computes
            (off the scoring path); ``source_files``: the series' source names, as the reader
            gave them.
    """

    status: Literal["done", "skipped", "failed"]
    timings: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    result: SeriesResult | None = None
    assets: dict[str, Any] | None = None
    reason: str = ""
    message: str = ""
    saliency: np.ndarray | PendingSaliency | None = None
    source_files: tuple[str, ...] = ()


def judge(score: SeriesScore, thresholds: Thresholds, *, k: int = WORST_K,
          reference_mapped: bool = False) -> SeriesResult:
    """Aggregate a :class:`~rankiq.service.scoring.SeriesScore` and apply the threshold rule.

    Out-of-range scores are ``not_assessable`` whatever their value. Otherwise the series is
    ``flagged`` when its statistic is strictly above its family's threshold; the rule is
    ``site_threshold`` when that threshold came from a site file, else ``model_threshold``.
    """
    agg = aggregate(score.scores, score.blank, k=k)
    value = agg.statistic(thresholds.statistic)
    status: Literal["passed", "flagged", "not_assessable"]
    if not score.in_range:
        status, flagged, rule = "not_assessable", False, ""
        reason = "not assessable: " + (", ".join(score.range_reasons) or "out of range")
    else:
        flagged, reason = flag(agg, score.contrast, thresholds)
        rule = threshold_rule(score.contrast, thresholds) if flagged else ""
        status = "flagged" if flagged else "passed"
    m = score.model
    return SeriesResult(
        scores=tuple(float(v) for v in score.scores),
        blank=tuple(int(i) for i in np.flatnonzero(score.blank)),
        aggregate=agg, status=status, flagged=flagged, rule=rule, reason=reason,
        statistic=thresholds.statistic,
        statistic_value=float(value) if np.isfinite(value) else None,
        threshold=thresholds.for_family(score.contrast),
        in_range=bool(score.in_range), range_reasons=tuple(score.range_reasons),
        model=str(m.get("name")), model_version=str(m.get("version")),
        model_sha256=str(m.get("sha256", "")), mode=str(m.get("mode", "no-reference")),
        input_kind=str(m.get("input_kind", "magnitude")), reference_mapped=reference_mapped)


def _take(series: ImageSeries, idx: list[int]) -> ImageSeries:
    """The slices ``idx`` of a series (pixels and complex pixels)."""
    cplx = None if series.complex_pixels is None else series.complex_pixels[idx]
    return replace(series, pixels=series.pixels[idx], complex_pixels=cplx)


def render_assets(model: ScoringModel, series: ImageSeries, reference: ImageSeries | None,
                  worst: list[int], scores: list[float] | tuple[float, ...]) -> dict[str, Any]:
    """Thumbnails (and saliency overlays when the model has a saliency graph) of the worst
    slices of a series, for report.html.

    Saliency is computed by the one scorer on the worst slices only (preprocessing is per
    slice, so these are the same network inputs as in the full series).

    Returns:
        ``{"slices": [{"index", "score", "thumb", "overlay"?}]}`` (base64 PNGs).
    """
    from rankiq.service.qa.report import slice_assets
    from rankiq.service.scoring import score_series

    idx = [int(i) for i in worst]
    sub = _take(series, idx)
    ref = None if reference is None else _take(reference, idx)
    slices = []
    shown = None
    if model.has_saliency:
        shown = score_series(model, sub, ref, saliency=True, max_slices=max(1, len(idx)))
    for j, i in enumerate(idx):
        if shown is not None and shown.saliency is not None and shown.display is not None:
            image = shown.display[j].astype(np.float64)
            s_map = np.sqrt((np.asarray(shown.saliency[j], np.float64) ** 2).sum(axis=0))
        else:
            image, s_map = np.asarray(sub.pixels[j], np.float64), None
        slices.append({"index": i, "score": float(scores[i]), **slice_assets(image, s_map)})
    return {"slices": slices}


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
                reference_thresholds: Thresholds | None = None,
                max_slices: int = DEFAULT_MAX_SLICES, render: bool = True,
                limits: ReadLimits = DEFAULT_LIMITS, saliency: bool = False) -> None:
    """Load the model(s) once per worker process (ONNX Runtime sessions with ``threads``); the
    reference model only when series are mapped to references. ``saliency``: hand back each
    scored series' saliency map (:attr:`SeriesOutcome.saliency`)."""
    if in_pool:
        _die_with_parent()
    from rankiq.service.models import ScoringModel

    _WORKER.update(model=ScoringModel.load(model_dir, threads=threads), thresholds=thresholds,
                   selector=selector, worst_k=worst_k, reference_model=None,
                   reference_thresholds=reference_thresholds, max_slices=max_slices,
                   render=render, limits=limits, saliency=saliency)
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


def _open_zips(refs: list[str]) -> dict[str, Any]:
    """Per-worker cache of open zips (a huge zip's central directory is parsed once)."""
    import zipfile

    from rankiq.service.io.archive import cached_zip

    cache: dict[str, zipfile.ZipFile] = _WORKER.setdefault("zips", {})
    first = ref_from_json(refs[0]) if refs else None
    path = getattr(first, "path", None)
    if first is not None and first.member is not None and path:
        cached_zip(cache, path)  # not opened: load_series reports it
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


def series_info(series: ImageSeries) -> dict[str, Any]:
    """Journalled facts of a decoded series (no identifiers): description, contrast family,
    modality, matrix, pixel spacing ``[row_mm, col_mm]`` or ``None``."""
    spacing = series.pixel_spacing
    return {"description": series.description, "contrast": series.contrast,
            "modality": series.modality, "rows": series.shape[1], "cols": series.shape[2],
            "pixel_spacing": None if spacing is None else [float(v) for v in spacing]}


def process_series(key: str, refs: list[str], reference: str | None = None) -> SeriesOutcome:
    """Decode, score (:func:`rankiq.service.scoring.score_series`) and judge one series (runs in
    a worker).

    With ``reference`` (a mapped reference path) the series is scored against it by the
    reference model and judged by that model's thresholds.
    """
    from rankiq.service.errors import RankIQError
    from rankiq.service.io import load_series
    from rankiq.service.scoring import score_series

    model = _WORKER["model"]
    thresholds: Thresholds = _WORKER["thresholds"]
    if reference is not None:
        model, thresholds = _WORKER["reference_model"], _WORKER["reference_thresholds"]
    timings = dict.fromkeys(("decode", "preprocess", "score", "render"), 0.0)
    t0 = time.perf_counter()
    try:
        series = load_series([ref_from_json(r) for r in refs], key=key, zips=_open_zips(refs),
                             limits=_WORKER["limits"])
    except RankIQError as exc:
        return SeriesOutcome("failed", timings, reason=exc.reason, message=str(exc))
    timings["decode"] = time.perf_counter() - t0
    info = series_info(series)
    decision = _WORKER["selector"].decide(loaded_attributes(series))
    if not decision.selected:
        return SeriesOutcome("skipped", timings, info, reason=decision.reason)
    try:
        ref_series = None if reference is None else _read_reference(reference)
        wanted = _WORKER.get("saliency", False) and model.has_saliency
        score = score_series(model, series, ref_series, max_slices=_WORKER["max_slices"],
                             saliency="deferred" if wanted else False)
    except RankIQError as exc:
        return SeriesOutcome("failed", timings, info, reason=exc.reason, message=str(exc))
    timings["preprocess"] = score.timings.get("prepare", 0.0)
    timings["score"] = score.timings.get("inference", 0.0)
    maps: np.ndarray | PendingSaliency | None = None
    if score.saliency_input is not None:  # asked for (DICOMweb write-back): on the scan's
        maps = PendingSaliency(score.saliency_input, series.pixels)  # matrix, computed apart
    elif score.saliency is not None:
        from rankiq.service.results_dicom import saliency_on_matrix
        from rankiq.service.scoring import series_interpolation

        maps = saliency_on_matrix(score.saliency, series.pixels,
                                  features=model.kind == "features",
                                  interpolation=series_interpolation(series))
    result = judge(score, thresholds, k=_WORKER["worst_k"],
                   reference_mapped=reference is not None)
    assets = None
    if result.flagged and result.aggregate.worst_slices and _WORKER["render"]:
        t1 = time.perf_counter()
        assets = render_assets(model, series, ref_series, result.aggregate.worst_slices,
                               result.scores)
        timings["render"] = time.perf_counter() - t1
    return SeriesOutcome("done", timings, info, result, assets, saliency=maps,
                         source_files=tuple(series.source_files))


def finish_rows(rows: list[dict[str, Any]], *, outlier_z: float = DEFAULT_OUTLIER_Z,
                min_group: int = MIN_GROUP) -> None:
    """Apply the archive-relative rule to qa rows in place (see
    :func:`rankiq.service.qa.aggregate.archive_outliers`).

    Every assessable row gets ``robust_z`` (``None`` in groups under ``min_group``) and
    ``protocol_series``; an outlier not already flagged becomes ``flagged`` by
    ``archive_outlier``, with the threshold the rule implies for its group (``threshold``).
    Not-assessable rows take no part.
    """
    judged = [r for r in rows if r["status"] != "not_assessable"]
    found = archive_outliers(judged, z_cut=outlier_z, min_group=min_group)
    for r in rows:
        o = found.get(r["series_key"])
        r["robust_z"] = None if o is None or o.z is None else round(o.z, 3)
        r["protocol_series"] = 0 if o is None else o.n
        if o is None or not o.outlier or r["flagged"]:
            continue
        r.update(flagged=True, status="flagged", rule="archive_outlier", threshold=o.limit,
                 reason=(f"{r['statistic']} {r['statistic_value']:.3f} > {o.limit:.3f}: robust "
                         f"z {o.z:.2f} > {outlier_z:g} among {o.n} series of its protocol "
                         f"(median {o.median:.3f})"))


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
              on_progress: Callable[[int], None] | None = None, *,
              limits: ReadLimits = DEFAULT_LIMITS, max_seconds: float | None = None,
              complete: bool = True, pool: Executor | None = None) -> None:
    """Walk ``paths`` (header only, within ``limits``) and journal every instance and
    unreadable input (``complete``: then mark the scan complete, so a resume skips it).
    ``pool``: parse the headers in its processes (:func:`rankiq.service.io.scan_instances`).

    Raises:
        InputTooLarge: the walk took longer than ``max_seconds``.
    """
    from rankiq.service.errors import InputTooLarge
    from rankiq.service.io import scan_instances
    from rankiq.service.io.types import ReadFailure

    batch: list[tuple[str, str, int, int, str, dict[str, Any]]] = []
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    failures: list[tuple[str, str, str]] = []
    import warnings

    # pydicom warns (to stderr) about every malformed header; failures are reported in
    # failed.csv instead
    warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
    for n, item in enumerate(scan_instances([str(p) for p in paths], limits=limits, pool=pool),
                             start=1):
        if deadline is not None and time.monotonic() > deadline:
            raise InputTooLarge(f"reading the inputs took longer than {max_seconds:g} s")
        if isinstance(item, ReadFailure):
            failures.append((item.source, item.reason, item.message))
        else:
            batch.append((str(item.source), item.series_key, int(item.rows), int(item.cols),
                          ref_to_json(item), series_attributes(item)))
        if len(batch) + len(failures) >= SCAN_BATCH:
            journal.add_scanned(batch, failures)
            batch, failures = [], []
            if on_progress:
                on_progress(n)
    journal.add_scanned(batch, failures)
    from rankiq.service.io.dicom import shape_key

    journal.split_mixed_shapes(shape_key)
    if complete:
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
              selector: SeriesSelector, *, outlier_z: float = DEFAULT_OUTLIER_Z,
              min_group: int = MIN_GROUP) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The qa.json document and the report assets, from the journal (the archive-relative rule
    applied over every scored series: :func:`finish_rows`)."""
    series, skipped, failed, assets = _journal_rows(journal)
    finish_rows(series, outlier_z=outlier_z, min_group=min_group)
    doc = {
        "model": {"name": model_meta.get("name"), "version": model_meta.get("version"),
                  "mode": model_meta.get("mode")},
        "thresholds": thresholds.to_dict(),
        "rules": selector.source,
        "archive_rule": {"z": float(outlier_z), "min_group": int(min_group),
                         "statistic": thresholds.statistic,
                         "protocol": "contrast family | rows x cols | pixel spacing (0.1 mm) | "
                                     "SeriesDescription hash"},
        "summary": _summary(series, skipped, failed, journal.run),
        "series": series,
        "skipped": skipped,
        "failed": failed,
    }
    return doc, assets


def _journal_rows(journal: Journal) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                             list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The journal's series as qa.json's lists, in journal order.

    Returns:
        ``(series, skipped, failed, assets)``: the qa rows of the scored series (before the
        archive rule), the skips, the failures (sorted by source) and the report assets per
        series key (scored series with PNGs).
    """
    from rankiq.service.qa.report import qa_row

    sizes = journal.series_sizes()
    series: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    assets: dict[str, dict[str, Any]] = {}
    for row in journal.rows():
        info = row["info"]
        if row["status"] == "done":
            series.append(qa_row(row))
            if row["assets"]:
                assets[row["series_key"]] = row["assets"]
        elif row["status"] == "skipped":
            skipped.append(_skipped_row(row, sizes.get(row["series_key"], 0)))
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
    return series, skipped, failed, assets


def _skipped_row(row: dict[str, Any], instances: int) -> dict[str, Any]:
    """The qa.json entry of a series skipped by a selection rule (``instances``: its number
    of instances); its description and modality as journalled by the worker (decoded) or,
    when the scan's selection skipped it, as the walk saw them."""
    from rankiq.service.io import description_label

    info = row["info"]
    return {"series_key": row["series_key"],
            "description": description_label(str(info.get(
                "description", info.get("SeriesDescription", "")))),
            "modality": str(info.get("modality", info.get("Modality", ""))),
            "instances": instances,
            "reason": row["reason"]}


def _summary(series: list[dict[str, Any]], skipped: list[dict[str, Any]],
             failed: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    """qa.json's ``summary``: counts of series (flagged, not assessable, per rule that fired),
    skips, failed inputs and slices scored, and the runs the journal has seen."""
    rules: dict[str, int] = {}
    for r in series:
        if r["rule"]:
            rules[r["rule"]] = rules.get(r["rule"], 0) + 1
    return {
        "series": len(series),
        "flagged": sum(r["flagged"] for r in series),
        "not_assessable": sum(r["status"] == "not_assessable" for r in series),
        "rules": dict(sorted(rules.items())),
        "skipped": len(skipped),
        "failed_inputs": len(failed),
        "slices": sum(int(r["slices"]) for r in series),
        "runs": runs,
    }


class SeriesFeed(Protocol):
    """A source of series other than files named up front (e.g. a PACS over DICOMweb).

    ``fingerprint`` replaces the input paths in the journal's settings (a resumed run must
    name the same source). Called with the journal, it yields folders as they become
    available, each holding series not yet journalled; the run scans and scores each batch
    as it comes, so fetching the next overlaps scoring this one.
    """

    fingerprint: dict[str, Any]

    def __call__(self, journal: Journal) -> Iterator[list[Path]]: ...


def run_qa(paths: Sequence[str | Path], out_dir: str | Path, options: QAOptions,
           *, on_series: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
           feed: SeriesFeed | None = None,
           on_scored: Callable[[str, SeriesOutcome], None] | None = None) -> QAResult:
    """Run (or resume) batch QA of ``paths`` into ``out_dir``; see the module docstring.

    Args:
        paths: files, directories (recursive) and zips.
        out_dir: output directory (journal, qa.csv, qa.json, failed.csv, report.html,
            rankiq_qa.prom).
        options: :class:`QAOptions`.
        on_series: called in the main process with each newly scored series' qa.csv row and
            its full result (per-slice ``scores``...); the service feeds its metrics with it.
        feed: series arriving while the run goes (:class:`SeriesFeed`), scanned and scored
            batch by batch; ``paths`` must then be empty.
        on_scored: called in the main process with the key and :class:`SeriesOutcome` of each
            newly scored series once it is journalled (with its saliency map when
            :attr:`QAOptions.saliency_maps` and the local engine): DICOMweb write-back stores
            its objects while the next series is scored.

    Raises:
        RankIQError: bad model directory, thresholds or rules file, or a journal that cannot
            be resumed.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    setup = _run_setup(paths, options, feed)
    journal = Journal(out, setup.settings, resume=options.resume)
    run = _Run(out, options, setup, journal, on_series, on_scored, t_start)
    try:
        before = journal.counts().get("done", 0)
        run.scan_and_score(paths, feed)
        doc = run.reports()
        done = journal.counts().get("done", 0)
    finally:
        journal.close()
    return QAResult(out, doc, done - before, before, run.slices,
                    time.perf_counter() - t_start, run.timings)


@dataclass(frozen=True)
class _RunSetup:
    """What :func:`run_qa` loads and checks before it opens the journal.

    Attributes:
        meta: the model's ``metadata.json``; ``thresholds``: its (or the site's) thresholds;
            ``selector``: the series selection rules.
        reference_setup: the reference map and the reference model's thresholds, when series
            are mapped to references.
        settings: the journal's settings (a resumed run must match them).
    """

    meta: dict[str, Any]
    thresholds: Thresholds
    selector: SeriesSelector
    reference_setup: tuple[ReferenceMap, Thresholds] | None
    settings: dict[str, Any]


def _run_setup(paths: Sequence[str | Path], options: QAOptions,
               feed: SeriesFeed | None) -> _RunSetup:
    """Load the model metadata, thresholds, rules and reference map, and check the options of
    the archive rule (in this order: the first problem is the one reported).

    Raises:
        RankIQError: as :func:`run_qa` (a :class:`RulesError` for the reference model and the
            archive rule's options).
    """
    meta = read_model_metadata(options.model_dir)
    thresholds = load_thresholds(meta, options.thresholds_file)
    selector = load_selector(options.rules_file)
    refmap = load_reference_map(options.references_file)
    settings = {
        "model": meta.get("name"),
        "model_files": _fingerprint(meta.get("files", {})),
        "thresholds": thresholds.fingerprint(),
        "rules": _fingerprint(selector.document),
        "inputs": feed.fingerprint if feed is not None else
        sorted(str(Path(p).resolve()) for p in paths),
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
    if options.outlier_z < 0 or not np.isfinite(options.outlier_z):
        raise RulesError(f"--outlier-z must be a number >= 0 (0 turns the rule off), not "
                         f"{options.outlier_z}")
    if options.outlier_min_group < 3:
        raise RulesError("the archive rule needs groups of at least 3 series")
    return _RunSetup(meta, thresholds, selector, reference_setup, settings)


@dataclass
class _Run:
    """One :func:`run_qa` with its journal open; each method is one of its stages.

    Attributes:
        out: the output directory; ``t_start``: ``perf_counter`` seconds when the run started.
        timings: seconds per stage (see :class:`QAResult`); ``slices``: slices scored so far.
    """

    out: Path
    options: QAOptions
    setup: _RunSetup
    journal: Journal
    on_series: Callable[[dict[str, Any], dict[str, Any]], None] | None
    on_scored: Callable[[str, SeriesOutcome], None] | None
    t_start: float
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("scan", "decode", "preprocess", "score", "render", "report"), 0.0))
    slices: int = 0

    def scan_and_score(self, paths: Sequence[str | Path], feed: SeriesFeed | None) -> None:
        """Walk ``paths`` (unless a resumed scan is complete), select and score what is
        pending; then, with a ``feed``, each of its batches the same way."""
        t0 = time.perf_counter()
        if feed is None and not self.journal.scan_complete:
            with _scan_pool(self.options) as pool:
                scan_into(self.journal, paths, limits=self.options.limits,
                          max_seconds=self.options.max_scan_seconds, pool=pool)
        select_pending(self.journal, self.setup.selector)
        self.timings["scan"] = time.perf_counter() - t0
        self.score_pending()
        if feed is not None:  # pending series of an interrupted run are scored first
            for batch in feed(self.journal):
                t0 = time.perf_counter()
                scan_into(self.journal, batch, limits=self.options.limits, complete=False)
                select_pending(self.journal, self.setup.selector)
                self.timings["scan"] += time.perf_counter() - t0
                self.score_pending()
            self.journal.mark_scan_complete()

    def score_pending(self) -> None:
        """Score the pending series (:func:`_score_pending`)."""
        self.slices += _score_pending(self.journal, self.options, self.setup.thresholds,
                                      self.setup.selector, self.timings, self.on_series,
                                      self.setup.reference_setup, self.on_scored)

    def reports(self) -> dict[str, Any]:
        """Judge the archive and write the reports (and ``rankiq_qa.prom``); returns qa.json's
        document."""
        from rankiq.service.qa.metrics import write_textfile
        from rankiq.service.qa.report import write_reports

        t0 = time.perf_counter()
        doc, assets = build_doc(self.journal, self.setup.meta, self.setup.thresholds,
                                self.setup.selector, outlier_z=self.options.outlier_z,
                                min_group=self.options.outlier_min_group)
        if self.options.render:
            _render_missing(self.journal, doc, assets, self.options, self.setup.reference_setup)
        write_reports(self.out, doc, assets)
        wall = time.perf_counter() - self.t_start
        if self.options.textfile:
            write_textfile(self.out / "rankiq_qa.prom", doc, duration_s=wall)
        self.timings["report"] = time.perf_counter() - t0
        return doc


def _score_pending(journal: Journal, options: QAOptions, thresholds: Thresholds,
                   selector: SeriesSelector, timings: dict[str, float],
                   on_series: Callable[[dict[str, Any], dict[str, Any]], None] | None,
                   reference_setup: tuple[ReferenceMap, Thresholds] | None = None,
                   on_scored: Callable[[str, SeriesOutcome], None] | None = None) -> int:
    """Score every pending (selected) series; returns slices scored."""
    sizes = journal.series_sizes()
    # the largest series first (a stable sort: scan order among equals), so that no worker is
    # left with a long series while the others idle at the end; the reports keep scan order
    todo = sorted((key for key, _ in journal.pending()), key=lambda k: -sizes.get(k, 0))
    total = sum(sizes.get(k, 0) for k in todo)
    if not todo:
        return 0
    workers = max(1, int(options.workers))
    threads = options.threads or max(1, usable_cpus() // workers)
    refmap, ref_thresholds = reference_setup or (None, None)
    scoring = _Scoring(journal, options, thresholds, selector, timings, sizes,
                       _progress(total, options.progress), refmap, ref_thresholds, on_series,
                       on_scored)
    try:
        scoring.run(todo, workers, threads)
    finally:
        scoring.bar.close()
    return scoring.slices


@dataclass
class _Scoring:
    """One :func:`_score_pending` pass: the series go to the run's engine, and each outcome
    comes back to :meth:`record` in the main process, whatever the engine.

    Attributes:
        timings: the run's seconds per stage (each outcome's are added);
            ``sizes``: instances per series key; ``bar``: the progress bar (slices).
        refmap, ref_thresholds: the reference map and the reference model's thresholds, or
            ``None`` when no series is mapped.
        slices: slices scored so far.
    """

    journal: Journal
    options: QAOptions
    thresholds: Thresholds
    selector: SeriesSelector
    timings: dict[str, float]
    sizes: dict[str, int]
    bar: Any
    refmap: ReferenceMap | None
    ref_thresholds: Thresholds | None
    on_series: Callable[[dict[str, Any], dict[str, Any]], None] | None
    on_scored: Callable[[str, SeriesOutcome], None] | None
    slices: int = 0

    def run(self, todo: list[str], workers: int, threads: int) -> None:
        """Score ``todo`` on Ray, in this process (``workers`` 1) or in a process pool, with
        ``threads`` ONNX Runtime threads per worker (Ray: ``options.threads``, at least 1).
        Only the local engines hand back saliency maps (:attr:`QAOptions.saliency_maps`)."""
        if self.options.engine == "ray":  # imported here: Ray is an optional extra
            from rankiq.service.qa.ray_engine import SeriesWork, run_ray

            work = SeriesWork(init_worker, self.initargs(max(1, self.options.threads), False),
                              process_series, _failed)
            run_ray(self.journal, todo, self.options, work, self.record, self.reference_of,
                    self.timings)
        elif workers == 1:
            initargs = (*self.initargs(threads, False), self.options.saliency_maps)
            init_worker(*initargs)
            for key in todo:
                self.record(key, process_series(key, self.journal.refs(key),
                                                self.reference_of(key)))
        else:
            _run_pool(self.journal, todo, self.options,
                      (*self.initargs(threads, True), self.options.saliency_maps), self.record,
                      self.reference_of)

    def initargs(self, threads: int, in_pool: bool) -> tuple[Any, ...]:
        """:func:`init_worker`'s arguments up to ``limits``."""
        o = self.options
        ref_model = None if self.refmap is None else str(o.reference_model())
        return (str(o.model_dir), threads, self.thresholds, self.selector, o.worst_k, in_pool,
                ref_model, self.ref_thresholds, o.max_slices, o.render, o.limits)

    def reference_of(self, key: str) -> str | None:
        """The mapped reference path of a series, or ``None``."""
        return _reference_of(self.journal, self.refmap, key)

    def record(self, key: str, out: SeriesOutcome) -> None:
        """Journal the outcome of a series (one transaction), add its timings and move the
        progress bar by its slices (its instances when it was not scored)."""
        for k, v in out.timings.items():
            self.timings[k] += v
        info = {**_info(self.journal, key), **out.info}
        if out.status == "done" and out.result is not None:
            n = self.record_scored(key, out, info)
        elif out.status == "skipped":
            self.journal.record(key, "skipped", reason=out.reason, info=info)
            n = self.sizes.get(key, 0)
        else:
            refs = self.journal.refs(key)
            first = str(ref_from_json(refs[0]).source) if refs else f"series {key}"
            self.journal.record(key, "failed", reason=out.reason,
                                info={**info, "first_source": first, "message": out.message})
            n = self.sizes.get(key, 0)
        self.bar.update(n)

    def record_scored(self, key: str, out: SeriesOutcome, info: dict[str, Any]) -> int:
        """Journal a scored series and hand it to ``on_series`` and ``on_scored``; returns its
        slices."""
        assert out.result is not None  # scored
        result = out.result.to_json()
        self.journal.record(key, "done", result=result, assets=out.assets, info=info)
        n = len(out.result.scores)
        self.slices += n
        if self.on_series:
            from rankiq.service.qa.report import qa_row

            self.on_series(qa_row({"series_key": key, "info": info, "result": result}), result)
        if self.on_scored:
            self.on_scored(key, out)
        return n


def _failed(reason: str, message: str) -> SeriesOutcome:
    """The outcome of a series that could not be scored (e.g. ``worker_lost``)."""
    return SeriesOutcome("failed", {}, reason=reason, message=message)


def _reference_of(journal: Journal, refmap: ReferenceMap | None, key: str) -> str | None:
    """The mapped reference path of a series, or ``None``."""
    if refmap is None:
        return None
    refs = journal.refs(key)
    if not refs:
        return refmap.lookup(key, None)
    ref = ref_from_json(refs[0])
    # the file's location (``source`` is only a display name, which may be a hash)
    where = ref.path or ref.source
    return refmap.lookup(key, f"{where}!{ref.member}" if ref.member else str(where))


def _render_missing(journal: Journal, doc: dict[str, Any], assets: dict[str, dict[str, Any]],
                    options: QAOptions,
                    reference_setup: tuple[ReferenceMap, Thresholds] | None) -> None:
    """Worst-slice PNGs (and saliency) for series flagged at report time (archive outliers),
    decoded again in this process: few by construction, and not journalled (a rerun of the
    reports may judge the archive differently)."""
    from rankiq.service.errors import RankIQError
    from rankiq.service.io import load_series
    from rankiq.service.models import ScoringModel

    todo = [r for r in doc["series"] if r["flagged"] and r["series_key"] not in assets
            and r["worst_slices"]]
    if not todo:
        return
    refmap = reference_setup[0] if reference_setup else None
    threads = options.threads or 1
    models: dict[str, ScoringModel] = {}
    for r in todo:
        key = r["series_key"]
        reference = _reference_of(journal, refmap, key)
        where = str(options.reference_model() if reference else options.model_dir)
        if where not in models:
            models[where] = ScoringModel.load(where, threads=threads)
        try:
            series = load_series([ref_from_json(b) for b in journal.refs(key)], key=key,
                                  limits=options.limits)
            ref_series = None if reference is None else _read_reference(reference)
            scores = _result(journal, key).get("scores") or []
            assets[key] = render_assets(models[where], series, ref_series, r["worst_slices"],
                                        scores)
        except RankIQError:  # the input changed since it was scored: the row stands, no PNGs
            continue


def _result(journal: Journal, key: str) -> dict[str, Any]:
    row = journal.db.execute("SELECT result FROM series WHERE series_key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row and row[0] else {}


def _info(journal: Journal, key: str) -> dict[str, Any]:
    row = journal.db.execute("SELECT info FROM series WHERE series_key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else {}


def _scan_pool(options: QAOptions) -> contextlib.AbstractContextManager[Executor | None]:
    """Processes for the header walk of a local run with several workers (forked: they start
    in milliseconds and need no model), else ``None`` (the walk runs in this process). The
    walk is a sixth of a QA run's time on 2 cores when one process does it."""
    import multiprocessing as mp

    if options.engine != "local" or options.workers < 2 or not sys.platform.startswith("linux"):
        return contextlib.nullcontext(None)
    return ProcessPoolExecutor(options.workers, mp_context=mp.get_context("fork"),
                               initializer=_die_with_parent)


def _run_pool(journal: Journal, todo: Iterable[str], options: QAOptions, initargs: tuple,
              record: Callable[[str, SeriesOutcome], None],
              reference_of: Callable[[str], str | None]) -> None:
    """Score series in ``options.workers`` processes, at most 2 per worker in flight."""
    import multiprocessing as mp

    from rankiq.service.noref import warm

    ctx = mp.get_context("fork") if sys.platform.startswith("linux") else None
    if ctx is not None:
        warm()  # compiled feature kernels are inherited: each worker need not load them again
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
