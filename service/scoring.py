"""Scoring a series with a loaded model: the one scorer behind the CLI, the HTTP service and QA.

```python
from rankiq.service.models import load_models
from rankiq.service.scoring import score_series, compare_series, select_model
models = load_models("models")
result = score_series(select_model(models, reference=True), series, reference_series)
result.scores, result.median, result.worst, result.worst_slice
```

Each slice is prepared by :func:`rankiq.service.preprocess.prepare` with the model's grid, input
kind
and percentile, slices are run through ONNX Runtime in batches (``ScoringModel.batch_size``),
and the series is summarised by the median and the worst (highest: lower is better) score of its
non-blank slices. Volumes above ``max_slices`` are refused (:class:`InputTooLarge`, HTTP 413),
never truncated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from rankiq.service.domain import check_range
from rankiq.service.errors import InputTooLarge, InvalidImage, RankIQError
from rankiq.service.noref import (
    AIR_FEATURES,
    EVIDENCE,
    FEATURES,
    N_EVIDENCE,
    FeatureInput,
    air_weight,
    analysis_box,
    evidence_map,
    interpolation_factor,
    prepare_features,
)
from rankiq.service.preprocess import DEFAULT_PERCENTILE, as_slices, prepare

if TYPE_CHECKING:
    from rankiq.service.io.types import ImageSeries
    from rankiq.service.models import ScoringModel

#: Most slices scored in one call unless the caller says otherwise (HTTP: RANKIQ_MAX_SLICES).
DEFAULT_MAX_SLICES = 512
#: Preferred model per mode when several are loaded.
PREFERRED = {"reference": "iqnet-ref", "no-reference": "iqnet-noref"}
OUTCOMES = ("a_better", "similar", "b_better")


class MultipleSeries(InvalidImage):
    """An upload that holds more than one series where one is expected."""

    reason = "multiple_series"


class ModeUnavailable(RankIQError):
    """No loaded model serves the requested mode (a deployment problem: HTTP 503)."""

    http_status = 503
    reason = "model_unavailable"


@dataclass(frozen=True)
class SeriesScore:
    """Scores of one series.

    Attributes:
        model: name, version, sha256 (of score.onnx), mode, input_kind, grid, provider.
        contrast: contrast family of the image series (``"T1"``, ..., ``"other"``).
        scores: float32 ``(S,)`` per-slice scores, lower is better.
        blank: bool ``(S,)``; slices with nothing to score (scored, but left out of the
            summary): all zero, or, for the no-reference model, without foreground.
        median, worst: over non-blank slices; ``worst`` is the highest score.
        worst_slice: index (0-based, in series order) of the worst slice.
        timings: seconds: ``prepare``, ``inference``, ``total``.
        saliency: float32 ``(S, C, H, W)`` d score / d network input, or ``None``.
        saliency_input: what a features model's saliency is computed from
            (:func:`feature_saliency`), kept instead of computing it when the saliency is
            ``"deferred"``; else ``None``.
        display: float32 ``(S, H, W)`` normalised image on the model grid (for overlays), or
            ``None`` (kept only with saliency).
        shape: ``(slices, rows, cols)`` of the input image.
        in_range: whether the series is inside what the model was trained on (matrix, pixel
            spacing, modality, features); scores out of range are reported, not trusted.
        range_reasons: why not, as short reason codes (``"matrix_too_small"``...); empty when
            in range.
        threshold: the model's QA threshold for the series' contrast family (median score),
            or ``None`` when the model has none.
        flagged: ``median > threshold``; ``None`` without a threshold or out of range (a score
            outside the model's domain neither passes nor fails).
    """

    model: dict[str, Any]
    contrast: str
    scores: np.ndarray
    blank: np.ndarray
    median: float
    worst: float
    worst_slice: int
    timings: dict[str, float]
    shape: tuple[int, int, int]
    saliency: np.ndarray | None = None
    saliency_input: FeatureInput | None = None
    display: np.ndarray | None = None
    in_range: bool = True
    range_reasons: tuple[str, ...] = ()
    threshold: float | None = None
    flagged: bool | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores[~self.blank]))


@dataclass(frozen=True)
class Comparison:
    """Two series scored by one model and the classifier's verdict.

    Attributes:
        a, b: the two :class:`SeriesScore`.
        probabilities: float64 ``(3,)``: (a better, similar, b better) from the series medians.
        per_slice: float64 ``(S, 3)`` per-slice probabilities when a and b have the same number
            of slices, else ``None``.
    """

    a: SeriesScore
    b: SeriesScore
    probabilities: np.ndarray
    per_slice: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


def model_info(model: ScoringModel) -> dict[str, Any]:
    """The identifying fields of a model, as reported with every score."""
    return {"name": model.name, "version": model.version, "sha256": model.sha256,
            "mode": model.mode, "input_kind": model.input_kind, "grid": list(model.grid),
            "provider": model.provider}


def select_model(models: dict[str, ScoringModel], *, reference: bool) -> ScoringModel:
    """The model for a request: a reference-mode model when a reference is given, else a
    no-reference one (``iqnet-ref`` / ``iqnet-noref`` preferred, then by name).

    Raises:
        ModeUnavailable: no loaded model has that mode.
    """
    mode = "reference" if reference else "no-reference"
    preferred = models.get(PREFERRED[mode])
    if preferred is not None and preferred.mode == mode:
        return preferred
    for name in sorted(models):
        if models[name].mode == mode:
            return models[name]
    raise ModeUnavailable(f"no {mode} model is loaded ({', '.join(sorted(models)) or 'none'})")


def _pixels(series: ImageSeries, model: ScoringModel, role: str) -> np.ndarray:
    """The array a model scores: magnitude pixels, or the complex image for complex models."""
    if model.input_kind == "complex":
        if series.complex_pixels is None:
            raise InvalidImage(f"model {model.name} scores complex images: send k-space (HDF5), "
                               "not magnitude DICOM", source=role)
        return series.complex_pixels
    return series.pixels


def _check_size(series: ImageSeries, max_slices: int, role: str) -> None:
    n = int(series.pixels.shape[0])
    if n > max_slices:
        raise InputTooLarge(f"{n} slices, above the limit of {max_slices} slices per request "
                            "(refused, not truncated)", source=role)


def series_interpolation(series: ImageSeries) -> float:
    """How much the scanner interpolated the series beyond its acquired matrix, from the DICOM
    header (:func:`rankiq.service.noref.interpolation_factor`; 1 where the header does not
    say, and for every non-DICOM source)."""
    acquired = series.attributes.get("acquired_matrix")
    rows, cols = series.pixels.shape[-2:]
    return interpolation_factor((int(rows), int(cols)),
                                float(acquired) if isinstance(acquired, int | float) else None,
                                str(series.attributes.get("image_type") or ""))


def summarise(scores: np.ndarray, blank: np.ndarray) -> tuple[float, float, int]:
    """``(median, worst, worst_slice)`` over the non-blank slices (worst = highest score).

    Raises:
        InvalidImage: every slice is blank.
    """
    keep = np.flatnonzero(~blank)
    if keep.size == 0:
        raise InvalidImage("every slice is blank (all zero, or for the no-reference model without "
                           "any foreground to measure): nothing to score")
    vals = scores[keep].astype(np.float64)
    worst_i = int(keep[int(np.argmax(vals))])
    return float(np.median(vals)), float(scores[worst_i]), worst_i


def score_series(
    model: ScoringModel,
    series: ImageSeries,
    reference: ImageSeries | None = None,
    *,
    saliency: bool | Literal["deferred"] = False,
    max_slices: int = DEFAULT_MAX_SLICES,
) -> SeriesScore:
    """Score every slice of ``series`` (against ``reference`` for a reference-mode model).

    Args:
        model: a loaded :class:`rankiq.service.models.ScoringModel`; its mode must match whether a
            reference is given.
        series: the image series, ``pixels`` float32 ``(S, rows, cols)``.
        reference: same geometry as ``series`` (reference mode), or ``None``.
        saliency: also compute d score / d input per slice (slower: forward + adjoint);
            ``"deferred"``: a features model keeps what its saliency is computed from
            (:attr:`SeriesScore.saliency_input`, to compute it in another process) instead of
            computing it; other models compute it as with ``True``.
        max_slices: refuse larger volumes.

    Raises:
        InputTooLarge: more than ``max_slices`` slices.
        GeometryMismatch: reference and image differ in slices, rows or columns.
        InvalidImage: NaN/Inf pixels, a matrix outside 16..4096, every slice blank, or a
            reference given to a no-reference model (and the reverse).
    """
    t0 = time.perf_counter()
    _check_size(series, max_slices, "image")
    if (reference is not None) != (model.mode == "reference"):
        raise InvalidImage(f"model {model.name} is a {model.mode} model: "
                           + ("it needs a reference" if reference is None
                              else "it takes no reference"))
    ref_px = None
    if reference is not None:
        _check_size(reference, max_slices, "reference")
        ref_px = _pixels(reference, model, "reference")
    pixels = _pixels(series, model, "image")
    if model.kind == "features":
        # saliency reuses the masks its features were measured on
        fi = prepare_features(as_slices(pixels), keep_masks=bool(saliency),
                              interpolation=series_interpolation(series))
        x, empty, dark = fi.features, fi.empty, fi.dark_tissue
    else:
        prepared = prepare(pixels, ref_px, grid=model.grid,
                           input_kind=model.input_kind,  # type: ignore[arg-type]
                           percentile=float(model.metadata.get("percentile",
                                                               DEFAULT_PERCENTILE)))
        x, empty, dark = prepared.network_input, prepared.empty, None
    t1 = time.perf_counter()
    maps = None
    deferred = saliency == "deferred" and model.kind == "features"
    if deferred:
        scores = model.score(x)
    elif saliency and model.kind == "features":
        scores = model.score(x)
        maps = feature_saliency(model, fi)
    elif saliency:
        scores, maps = model.score_and_saliency(x)
    else:
        scores = model.score(x)
    t2 = time.perf_counter()
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if not np.isfinite(scores).all():
        raise RuntimeError(f"model {model.name} returned non-finite scores")  # a model bug
    blank = np.asarray(empty, dtype=bool)
    median, worst, worst_slice = summarise(scores, blank)
    display = None
    if saliency and not deferred:
        if model.kind == "features":
            display = fi.grids / np.maximum(fi.grids.reshape(len(fi.grids), -1).max(1),
                                            1e-12)[:, None, None]
        else:
            img = prepared.image
            display = (np.abs(img[:, 0]) if img.shape[1] == 1
                       else np.hypot(img[:, 0], img[:, 1])).astype(np.float32)
    in_range, reasons = check_range(model, series, x, blank, dark)
    threshold = model_threshold(model, series.contrast)
    flagged = None if threshold is None or not in_range else bool(median > threshold)
    return SeriesScore(
        model=model_info(model), contrast=series.contrast, scores=scores, blank=blank,
        median=median, worst=worst, worst_slice=worst_slice,
        timings={"prepare": t1 - t0, "inference": t2 - t1, "total": time.perf_counter() - t0},
        shape=tuple(int(n) for n in series.pixels.shape),  # type: ignore[arg-type]
        saliency=maps, saliency_input=fi if deferred else None, display=display,
        in_range=in_range, range_reasons=reasons,
        threshold=threshold, flagged=flagged,
    )


def model_threshold(model: ScoringModel, contrast: str) -> float | None:
    """The model's default QA threshold for a contrast family (``other`` as the fallback)."""
    values = model.metadata.get("qa_thresholds") or {}
    value = values.get(contrast, values.get("other"))
    if value is None and values:
        value = max(values.values())
    return None if value is None else float(value)


def feature_saliency(model: ScoringModel, fi: FeatureInput) -> np.ndarray:
    """Saliency of a features model, float32 ``(S, 1, G, G)``: the evidence map of each feature
    (:func:`rankiq.service.noref.evidence_maps`) weighted by how much the score moves with that
    feature (``|d score / d feature|``, central differences through the model; the air
    features times their :func:`rankiq.service.noref.air_weight`), so the map
    shows where the evidence that raised the score lies; each map sums to the slice's score.
    """
    f = fi.features.astype(np.float64)
    n, k = f.shape
    h = 1e-3
    eye = h * np.eye(k)[None]
    steps = np.concatenate([f[:, None, :] + eye, f[:, None, :] - eye], axis=1).reshape(-1, k)
    s = model.score(steps.astype(np.float32)).astype(np.float64).reshape(n, 2, k)
    grad = np.abs(s[:, 0] - s[:, 1]) / (2 * h)  # (S, F)
    # the air features enter the score through the air gate: the air's pixels weigh w times
    gate = np.array([air_weight(float(b)) for b in f[:, FEATURES.index("border")]])
    grad[:, [FEATURES.index(a) for a in AIR_FEATURES]] *= gate[:, None]
    base = model.score(fi.features).astype(np.float64)
    out = np.zeros((n, 1, *fi.grids.shape[1:]), np.float32)
    for i in range(n):
        if fi.empty[i]:
            continue
        # features that share an evidence map add their weights (= the per-feature tensordot)
        weights = np.bincount(EVIDENCE, weights=grad[i], minlength=N_EVIDENCE)
        m = evidence_map(fi.grids[i], weights, fi.slice_masks(i))
        total = float(m.sum())
        if total > 0:
            out[i, 0] = m * (base[i] / total)
    return out


def saliency_to_input(saliency: np.ndarray, pixels: np.ndarray, *, features: bool,
                      interpolation: float = 1.0) -> np.ndarray:
    """Bring saliency from the model's grid back to the scan's own matrix.

    Args:
        saliency: float ``(S, C, G, G)`` (:attr:`SeriesScore.saliency`), d score / d input on
            the model grid (or the features model's analysis grid).
        pixels: the series' pixels ``(S, rows, cols)`` the grid was made from.
        features: the features model (its analysis grid crops each slice's exact-zero border,
            pads to a square and brings a side above 256 down to 256:
            :func:`rankiq.service.noref.analysis_grid`); otherwise the network grid (the whole
            slice padded to a square, then resampled: :func:`rankiq.service.preprocess.to_grid`).
        interpolation: the series' :func:`series_interpolation` (the features model's grid
            of an interpolated series lies on its acquired samples).

    Returns:
        float32 ``(S, C, rows, cols)``: each channel linearly interpolated onto the square the
        grid was made from, the padding cropped, and scaled by the pixel-area ratio (a
        derivative per pixel: a slice's total is the same on either grid); zero outside the
        analysed region (the features model's cropped border).
    """
    from scipy.ndimage import zoom

    s = np.asarray(saliency, np.float64)
    n, rows, cols = pixels.shape
    out = np.zeros((n, s.shape[1], rows, cols), np.float32)
    for i in range(n):
        if features:
            box = analysis_box(pixels[i], interpolation)
            if box is None:
                continue  # a blank slice: no analysed region, no evidence
            r0, r1, c0, c1 = box
        else:
            r0, r1, c0, c1 = 0, rows, 0, cols
        h, w = r1 - r0, c1 - c0
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2  # where analysis_grid / to_grid padded
        for ch in range(s.shape[1]):
            g = s[i, ch]
            if g.shape[0] != side:
                g = zoom(g, side / g.shape[0], order=1, grid_mode=True, mode="nearest")
                g = g[:side, :side] * (s[i, ch].size / float(side * side))
            out[i, ch, r0:r1, c0:c1] = g[top:top + h, left:left + w]
    return out


def compare_series(
    model: ScoringModel,
    a: ImageSeries,
    b: ImageSeries,
    reference: ImageSeries | None = None,
    *,
    max_slices: int = DEFAULT_MAX_SLICES,
) -> Comparison:
    """Score ``a`` and ``b`` with one model and ask its rank classifier which is better.

    The series-level probabilities compare the two medians; per-slice probabilities are added
    when both series have the same number of slices.
    """
    t0 = time.perf_counter()
    sa = score_series(model, a, reference, max_slices=max_slices)
    sb = score_series(model, b, reference, max_slices=max_slices)
    probs = model.classify(np.array([sa.median]), np.array([sb.median]))[0]
    per_slice = None
    if sa.scores.shape == sb.scores.shape:
        per_slice = model.classify(sa.scores, sb.scores)
    return Comparison(a=sa, b=sb, probabilities=np.asarray(probs, dtype=np.float64),
                      per_slice=per_slice, timings={"total": time.perf_counter() - t0})


# -- JSON views (the HTTP answers; `rankiq score --json` prints the same) ------------------------

def _ms(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1000.0, 3) for k, v in timings.items()}


def series_json(result: SeriesScore, *, png: bool = True, raw: bool = True) -> dict[str, Any]:
    """JSON-ready view of a :class:`SeriesScore` (saliency as PNG and/or float32 when present).

    Shape::

        {"mode", "model": {...}, "contrast", "score_direction": "lower_is_better",
         "shape": [S, rows, cols],
         "summary": {"median", "worst", "worst_slice", "mean", "slices", "blank_slices"},
         "in_range": bool, "range_reasons": [str], "threshold": float | null,
         "flagged": bool | null,
         "slices": [{"index", "score", "blank",
                     "saliency": {"overlay_png": b64, "map": {"data", "shape", "dtype",
                                                             "byte_order"}}}],
         "timings_ms": {"prepare", "inference", "total", ...}}
    """
    from rankiq.service.overlay import encode_array, overlay_png

    slices: list[dict[str, Any]] = []
    for i, s in enumerate(result.scores):
        row: dict[str, Any] = {"index": i, "score": float(s), "blank": bool(result.blank[i])}
        if result.saliency is not None:
            sal: dict[str, Any] = {}
            if png and result.display is not None:
                import base64

                sal["overlay_png"] = base64.b64encode(
                    overlay_png(result.display[i], result.saliency[i])).decode("ascii")
            if raw:
                sal["map"] = encode_array(result.saliency[i])
            row["saliency"] = sal
        slices.append(row)
    return {
        "mode": result.model["mode"],
        "model": result.model,
        "contrast": result.contrast,
        "score_direction": "lower_is_better",
        "shape": list(result.shape),
        "summary": {"median": result.median, "worst": result.worst,
                    "worst_slice": result.worst_slice, "mean": result.mean,
                    "slices": len(result.scores), "blank_slices": int(result.blank.sum())},
        "in_range": result.in_range,
        "range_reasons": list(result.range_reasons),
        "threshold": result.threshold,
        "flagged": result.flagged,
        "slices": slices,
        "timings_ms": _ms(result.timings),
    }


def comparison_json(cmp: Comparison) -> dict[str, Any]:
    """JSON-ready view of a :class:`Comparison`."""

    def side(r: SeriesScore) -> dict[str, Any]:
        return {"contrast": r.contrast, "shape": list(r.shape),
                "summary": {"median": r.median, "worst": r.worst, "worst_slice": r.worst_slice,
                            "mean": r.mean, "slices": len(r.scores),
                            "blank_slices": int(r.blank.sum())},
                "in_range": r.in_range, "range_reasons": list(r.range_reasons),
                "threshold": r.threshold, "flagged": r.flagged,
                "scores": [float(s) for s in r.scores]}

    probs = {k: float(v) for k, v in zip(OUTCOMES, cmp.probabilities, strict=True)}
    out: dict[str, Any] = {
        "mode": cmp.a.model["mode"],
        "model": cmp.a.model,
        "score_direction": "lower_is_better",
        "a": side(cmp.a),
        "b": side(cmp.b),
        "probabilities": probs,
        "verdict": max(probs, key=probs.__getitem__),
        "per_slice": None if cmp.per_slice is None else [
            {"index": i, **{k: float(v) for k, v in zip(OUTCOMES, p, strict=True)}}
            for i, p in enumerate(cmp.per_slice)],
        "timings_ms": _ms(cmp.timings),
    }
    return out
