"""``rankiq evaluate real``: do no-reference scores order real MR images by quality?

Measured on the real MR slices of :mod:`rankiq.training.realdata` (evaluation only), each
corrupted along the graded ladders of :mod:`rankiq.training.ladders` (4 types x 6 levels).

Every metric is oriented so that *higher is worse* (RankIQ scores already are; IQMs where
higher is better are negated) and judged per corruption type by

* **adjacent-pair accuracy**: of the 5 adjacent pairs ``(level i, level i+1)`` of each ladder,
  the fraction where the more corrupted image gets the strictly worse value (ties and NaN count
  as wrong);
* **Spearman rho** between level (0..5) and the metric, per ladder, averaged over images
  (a ladder whose values are NaN or constant has no rho and is left out of the mean; the
  number of ladders averaged is reported).

For RankIQ models also **compare consistency**: for each adjacent pair, ``compare_series``
(level i as ``a``, level i+1 as ``b``) must prefer, among P(a better) and P(b better), the side
its own scores call better (the lower median); a pair with equal scores is consistent only with
equal probabilities. The fraction of 'similar' verdicts is reported beside it.

The archive section (:func:`archive_flag_rates`) writes a DICOM archive from the same real
slices (clean copies with a flip or a global scale, and level-3 corruptions of each type),
runs the batch QA of :mod:`rankiq.service.qa.runner` with each no-reference model's default
thresholds, and reports the fraction of clean and of corrupted series flagged.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rankiq.service.fft import fft2c, ifft2c
from rankiq.service.iqm import IQMS
from rankiq.training.ladders import LEVELS, N_LEVELS, TYPES, ladders, level_value
from rankiq.training.realdata import RealImage, real_images

#: level of the "moderately corrupted" series of the archive
ARCHIVE_LEVEL = 3
#: QA SeriesDescription per contrast family (recognised by rankiq.service.io.contrast)
FAMILY_DESCRIPTION = {"T1": "SAG T1 SE", "T1post": "AX T1 POST GAD", "T2": "AX T2 TSE",
                      "FLAIR": "AX T2 FLAIR", "other": "AX EPI"}


# -- measures ---------------------------------------------------------------------------------

def adjacent_correct(values: Sequence[float]) -> list[bool]:
    """Per adjacent pair ``(i, i+1)``: is ``values[i+1] > values[i]`` (strictly; NaN is
    wrong)? ``values`` are oriented higher = worse, in increasing corruption."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return [bool(v[i + 1] > v[i]) for i in range(v.size - 1)]


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either input holds NaN
    or is constant."""
    from scipy.stats import rankdata

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.isnan(a).any() or np.isnan(b).any():
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def summarise_ladders(values: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Accuracy and Spearman per type and overall.

    Args:
        values: ``{image: {type: [N_LEVELS values, higher = worse]}}``.

    Returns:
        ``{"per_type": {type: {"correct", "pairs", "accuracy", "spearman_mean",
        "spearman_n", "spearman": {image: rho}}}, "overall": {"correct", "pairs",
        "accuracy", "spearman_mean", "spearman_n"}}``.
    """
    per_type: dict[str, Any] = {}
    all_rho: list[float] = []
    correct = pairs = 0
    kinds = sorted({k for v in values.values() for k in v}, key=_type_order)
    for kind in kinds:
        c = p = 0
        rhos: dict[str, float] = {}
        for image, by_type in values.items():
            if kind not in by_type:
                continue
            ok = adjacent_correct(by_type[kind])
            c += sum(ok)
            p += len(ok)
            rhos[image] = spearman(range(len(by_type[kind])), by_type[kind])
        finite = [r for r in rhos.values() if math.isfinite(r)]
        per_type[kind] = {"correct": c, "pairs": p, "accuracy": c / p if p else float("nan"),
                          "spearman_mean": float(np.mean(finite)) if finite else float("nan"),
                          "spearman_n": len(finite), "spearman": rhos}
        correct += c
        pairs += p
        all_rho += finite
    return {"per_type": per_type,
            "overall": {"correct": correct, "pairs": pairs,
                        "accuracy": correct / pairs if pairs else float("nan"),
                        "spearman_mean": float(np.mean(all_rho)) if all_rho else float("nan"),
                        "spearman_n": len(all_rho)}}


def _type_order(kind: str) -> int:
    return TYPES.index(kind) if kind in TYPES else len(TYPES)


def consistent(score_a: float, score_b: float,
               probabilities: Sequence[float] | np.ndarray) -> bool:
    """Does a compare verdict agree with the two scores (lower is better)? Among P(a better)
    and P(b better) the larger must belong to the lower score; equal scores need equal
    probabilities."""
    pa, pb = float(probabilities[0]), float(probabilities[2])
    if score_a < score_b:
        return pa > pb
    if score_b < score_a:
        return pb > pa
    return pa == pb


# -- metrics ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reading:
    """One metric's reading of one image.

    Attributes:
        value: oriented so that higher is worse.
        flagged: the model's default QA verdict on the image (its median score above the
            threshold of its contrast family); ``None`` for an IQM, a model without a
            threshold, or an image the model calls out of range (not assessable).
        in_range: whether the model calls the image in range; ``None`` from an IQM.
        reasons: why not, when ``in_range`` is false.
    """

    value: float
    flagged: bool | None = None
    in_range: bool | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Metric:
    """One no-reference metric under evaluation.

    ``read(image, spacing, contrast)`` returns its :class:`Reading`; ``model`` is the loaded
    :class:`~rankiq.service.models.ScoringModel` of a RankIQ metric (else ``None``).
    """

    name: str
    kind: str  # "rankiq" or "iqm"
    read: Callable[[np.ndarray, tuple[float, float] | None, str], Reading]
    higher_is_worse: bool = True
    model: Any = None


def _series(image: np.ndarray, spacing: tuple[float, float] | None, contrast: str) -> Any:
    from rankiq.service.io.types import ImageSeries

    return ImageSeries.from_array(image, pixel_spacing=spacing, contrast=contrast)


def rankiq_metric(model: Any) -> Metric:
    """A loaded no-reference model as a :class:`Metric` (the series median of its score and
    its default QA verdict)."""
    from rankiq.service.scoring import score_series

    def read(image: np.ndarray, spacing: tuple[float, float] | None, contrast: str) -> Reading:
        r = score_series(model, _series(image, spacing, contrast))
        return Reading(float(r.median), r.flagged, r.in_range, tuple(r.range_reasons))

    return Metric(model.name, "rankiq", read, True, model)


def iqm_metric(name: str) -> Metric:
    """An IQM of :data:`rankiq.service.iqm.IQMS` as a :class:`Metric` (negated when higher is
    better)."""
    fn, higher_is_worse = IQMS[name]
    sign = 1.0 if higher_is_worse else -1.0

    def read(image: np.ndarray, spacing: tuple[float, float] | None, contrast: str) -> Reading:
        return Reading(sign * float(fn(image)))

    return Metric(name.upper(), "iqm", read, higher_is_worse)


def load_noref_models(models_dir: str | Path, threads: int = 1) -> list[Any]:
    """Every no-reference model under ``models_dir`` (sorted by name)."""
    from rankiq.service.models import load_models

    models = load_models(models_dir, threads=threads)
    return [models[n] for n in sorted(models) if models[n].mode == "no-reference"]


# -- the evaluation ---------------------------------------------------------------------------

def evaluate_ladders(images: Sequence[RealImage], metrics: Sequence[Metric], *, seed: int = 0,
                     compare: bool = True) -> dict[str, Any]:
    """Score every ladder of every image with every metric.

    Returns:
        ``{"metrics": {name: {"kind", "higher_is_worse", "values": {image: {type: [values]}},
        "timing_s", **summarise_ladders(...), "compare": {...}}}}``; ``values`` are the
        oriented (higher = worse) values of levels 0..5.
    """
    built = {im.name: ladders(im.image, seed, i) for i, im in enumerate(images)}
    out: dict[str, Any] = {}
    for m in metrics:
        t0 = time.perf_counter()
        values: dict[str, dict[str, list[float]]] = {}
        flags: dict[str, dict[str, list[bool | None]]] = {}
        in_range: dict[str, dict[str, Any]] = {}
        for im in images:
            clean = m.read(im.image, im.pixel_spacing, im.contrast)
            in_range[im.name] = {"in_range": clean.in_range, "reasons": list(clean.reasons)}
            read = {kind: [clean] + [m.read(x, im.pixel_spacing, im.contrast) for x in lad[1:]]
                    for kind, lad in built[im.name].items()}
            values[im.name] = {k: [r.value for r in rs] for k, rs in read.items()}
            flags[im.name] = {k: [r.flagged for r in rs] for k, rs in read.items()}
        entry: dict[str, Any] = {"kind": m.kind, "higher_is_worse": m.higher_is_worse,
                                 "values": values, **summarise_ladders(values)}
        if m.model is not None:
            entry["in_range"] = in_range
            entry["flags"] = flags
            entry["flag_by_level"] = flag_by_level(flags)
        if compare and m.model is not None:
            entry["compare"] = compare_consistency(m.model, images, built)
        entry["timing_s"] = round(time.perf_counter() - t0, 3)
        out[m.name] = entry
    return {"metrics": out}


def flag_by_level(flags: dict[str, dict[str, list[bool | None]]]) -> dict[str, Any]:
    """How often the default QA flag fires along the ladders: at which corruption level does a
    model call an image bad?

    Args:
        flags: ``{image: {type: [N_LEVELS verdicts]}}`` (``None``: not assessable).

    Returns:
        ``{"clean": {"flagged", "assessable"}, "per_type": {type: [{"flagged",
        "assessable"} for levels 1..N_LEVELS-1]}, "all": [the same summed over types]}``; the
        clean image counts once per image, whatever its number of ladders.
    """
    clean = {"flagged": 0, "assessable": 0}
    kinds = sorted({k for v in flags.values() for k in v}, key=_type_order)
    per_type = {k: [{"flagged": 0, "assessable": 0} for _ in range(N_LEVELS - 1)]
                for k in kinds}
    for by_type in flags.values():
        first = next(iter(by_type.values()), [None])[0]
        if first is not None:
            clean["assessable"] += 1
            clean["flagged"] += int(first)
        for kind, verdicts in by_type.items():
            for level, f in enumerate(verdicts[1:]):
                if f is not None:
                    per_type[kind][level]["assessable"] += 1
                    per_type[kind][level]["flagged"] += int(f)
    total = [{"flagged": sum(per_type[k][i]["flagged"] for k in kinds),
              "assessable": sum(per_type[k][i]["assessable"] for k in kinds)}
             for i in range(N_LEVELS - 1)]
    return {"clean": clean, "per_type": per_type, "all": total}


def compare_consistency(model: Any, images: Sequence[RealImage],
                        built: dict[str, dict[str, list[np.ndarray]]]) -> dict[str, Any]:
    """``compare_series`` on every adjacent ladder pair: agreement with the model's own scores.

    Returns:
        ``{"consistent", "pairs", "rate", "similar_verdicts", "per_type": {type: {"consistent",
        "pairs"}}, "max_similar_probability"}``.
    """
    from rankiq.service.scoring import OUTCOMES, compare_series

    per_type: dict[str, dict[str, int]] = {}
    ok = n = similar = 0
    max_sim = 0.0
    for im in images:
        for kind, lad in built[im.name].items():
            series = [_series(x, im.pixel_spacing, im.contrast) for x in lad]
            t = per_type.setdefault(kind, {"consistent": 0, "pairs": 0})
            for i in range(len(series) - 1):
                c = compare_series(model, series[i], series[i + 1])
                good = consistent(c.a.median, c.b.median, c.probabilities)
                verdict = OUTCOMES[int(np.argmax(c.probabilities))]
                similar += verdict == "similar"
                max_sim = max(max_sim, float(c.probabilities[1]))
                ok += good
                n += 1
                t["consistent"] += good
                t["pairs"] += 1
    return {"consistent": ok, "pairs": n, "rate": ok / n if n else float("nan"),
            "similar_verdicts": similar, "max_similar_probability": max_sim,
            "per_type": per_type}


def archive_variants(im: RealImage, index: int, seed: int) -> list[tuple[str, bool, np.ndarray]]:
    """The series the archive holds for one real image: ``(variant, corrupted, pixels)``.

    Clean: the image as is, flipped left-right, and scaled by 0.5 (DICOM rescale changes only);
    corrupted: level :data:`ARCHIVE_LEVEL` of each ladder type.
    """
    out: list[tuple[str, bool, np.ndarray]] = [
        ("clean", False, im.image),
        ("clean-flip", False, np.ascontiguousarray(im.image[:, ::-1])),
        ("clean-scale", False, im.image * np.float32(0.5)),
    ]
    for kind, lad in ladders(im.image, seed, index).items():
        out.append((f"{kind}-{ARCHIVE_LEVEL}", True, lad[ARCHIVE_LEVEL]))
    return out


def write_archive(root: Path, images: Sequence[RealImage], seed: int) -> list[dict[str, Any]]:
    """Write the archive (one single-slice MR DICOM series per variant, via
    :func:`rankiq.service.qa.synth.write_series`, with the image's real pixel spacing where
    known). Returns the truth rows ``{"image", "variant", "corrupted", "file"}``."""
    import pydicom
    from rankiq.service.qa.synth import write_series

    rng = np.random.default_rng([seed, 7919])
    truth = []
    number = 0
    for i, im in enumerate(images):
        desc = FAMILY_DESCRIPTION.get(im.contrast, FAMILY_DESCRIPTION["other"])
        for variant, corrupted, px in archive_variants(im, i, seed):
            number += 1
            files = write_series(root / f"series_{number:03d}", px[None].astype(np.float32),
                                 description=desc, rng=rng, series_number=number,
                                 patient="REAL^EVALUATION")
            if im.pixel_spacing is not None:
                for f in files:
                    ds = pydicom.dcmread(f)
                    ds.PixelSpacing = [f"{v:.6g}" for v in im.pixel_spacing]
                    ds.save_as(f, enforce_file_format=True)
            truth.append({"image": im.name, "variant": variant, "corrupted": corrupted,
                          "file": files[0]})
    return truth


def archive_flag_rates(images: Sequence[RealImage], model_dirs: Sequence[Path], *,
                       seed: int = 0, threads: int = 1) -> dict[str, Any]:
    """Batch QA flag rates on an archive built from the real images, per no-reference model.

    Returns:
        ``{"models": {model: {"clean": {"series", "flagged", "rate"}, "corrupted": {...},
        "by_variant": {variant: {"series", "flagged"}}, "not_scored" (skipped or failed),
        "not_in_range" (rows marked ``in_range: false``), "flag_reasons": {reason: count},
        "thresholds": {...}}}, "series", "level", "timing_s"}``.
    """
    from rankiq.service.qa.runner import QAOptions, run_qa
    from rankiq.service.qa.synth import series_key_of

    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rankiq-real-archive-") as tmp:
        archive = Path(tmp) / "archive"
        truth = write_archive(archive, images, seed)
        keys = {series_key_of(t["file"]): t for t in truth}
        for model_dir in model_dirs:
            opts = QAOptions(model_dir=Path(model_dir), workers=1, threads=threads,
                             progress=False, textfile=False)
            res = run_qa([archive], Path(tmp) / f"qa-{Path(model_dir).name}", opts)
            rows = {r["series_key"]: r for r in res.doc["series"]}
            groups: dict[str, dict[str, Any]] = {"clean": {"series": 0, "flagged": 0},
                                                 "corrupted": {"series": 0, "flagged": 0}}
            by_variant: dict[str, dict[str, int]] = {}
            reasons: dict[str, int] = {}
            not_scored = not_in_range = 0
            for key, t in keys.items():
                row = rows.get(key)
                if row is None:
                    not_scored += 1
                    continue
                variant = t["variant"].rsplit("-", 1)[0] if t["corrupted"] else t["variant"]
                g = groups["corrupted" if t["corrupted"] else "clean"]
                v = by_variant.setdefault(variant, {"series": 0, "flagged": 0})
                for d in (g, v):
                    d["series"] += 1
                    d["flagged"] += int(bool(row["flagged"]))
                if row["flagged"]:
                    r = str(row.get("reason") or "flagged")
                    reasons[r] = reasons.get(r, 0) + 1
                not_in_range += row.get("in_range") is False
            for g in groups.values():
                g["rate"] = g["flagged"] / g["series"] if g["series"] else float("nan")
            out[Path(model_dir).name] = {**groups, "by_variant": by_variant,
                                         "not_scored": not_scored,
                                         "not_in_range": not_in_range,
                                         "flag_reasons": reasons,
                                         "thresholds": res.doc.get("thresholds")}
    return {"models": out, "series": len(truth), "level": ARCHIVE_LEVEL,
            "timing_s": round(time.perf_counter() - t0, 3)}


# -- resampling -------------------------------------------------------------------------------

#: the resampled copies of :func:`resampling_changes`
RESAMPLINGS: tuple[str, ...] = ("zerofill_2x", "zerofill_2x_header", "linear_2x", "cubic_2x",
                                "block_mean_half")


def zero_filled(image: np.ndarray, factor: int) -> np.ndarray:
    """``(H, W)`` -> ``(factor H, factor W)``: the magnitude of the image's k-space zero-filled
    to ``factor`` times the matrix (a scanner's zero-filled interpolation, ZIP), same scale."""
    h, w = image.shape
    k = np.zeros((factor * h, factor * w), np.complex64)
    k[(factor - 1) * h // 2:(factor - 1) * h // 2 + h,
      (factor - 1) * w // 2:(factor - 1) * w // 2 + w] = fft2c(image.astype(np.complex64))
    return (np.abs(ifft2c(k)) * factor).astype(np.float32)


def resampled(image: np.ndarray, kind: str) -> np.ndarray:
    """One copy of :data:`RESAMPLINGS` (the ``_header`` variant has the same pixels as its
    plain one; :func:`resampling_changes` adds the header)."""
    from scipy.ndimage import zoom

    x = image.astype(np.float32)
    if kind in ("zerofill_2x", "zerofill_2x_header"):
        return zero_filled(x, 2)
    if kind == "linear_2x":
        return zoom(x, 2, order=1).astype(np.float32)
    if kind == "cubic_2x":
        return np.maximum(zoom(x, 2, order=3), 0).astype(np.float32)
    if kind == "block_mean_half":
        h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
        return x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    raise ValueError(f"unknown resampling {kind!r} (one of {', '.join(RESAMPLINGS)})")


def resampling_changes(images: Sequence[RealImage], model: Any) -> dict[str, Any]:
    """How much a model's score moves when a real slice is resampled (the same anatomy and
    acquisition at another matrix): ``{image: {"score", "changes": {kind: relative change}}}``
    for every image of at most 256 px a side (above, the analysis grid already Fourier-crops).

    ``zerofill_2x_header`` is the zero-filled copy as an original DICOM series whose Acquisition
    Matrix says what was acquired (:func:`rankiq.service.scoring.series_interpolation`); pixel
    spacings follow the matrix.
    """
    from dataclasses import replace

    from rankiq.service.scoring import score_series

    out: dict[str, Any] = {}
    for im in images:
        if max(im.image.shape) > 256:
            continue
        base = float(score_series(model, _series(im.image, im.pixel_spacing, im.contrast)).median)
        changes = {}
        for kind in RESAMPLINGS:
            y = resampled(im.image, kind)
            f = y.shape[0] / im.image.shape[0]
            sp = None if im.pixel_spacing is None else (im.pixel_spacing[0] / f,
                                                        im.pixel_spacing[1] / f)
            series = _series(y, sp, im.contrast)
            if kind.endswith("_header"):
                series = replace(series, attributes={
                    **series.attributes, "image_type": "ORIGINAL\\PRIMARY\\M\\ND",
                    "acquired_matrix": float(max(im.image.shape))})
            changes[kind] = float(score_series(model, series).median) / base - 1.0
        out[im.name] = {"score": base, "changes": changes}
    return out


# -- why a step is missed --------------------------------------------------------------------

#: a feature's share of a score change is listed when it moves log(score) by more than this
EXPLAIN_MIN = 0.02


def explain_misordered(images: Sequence[RealImage], model: Any, seed: int = 0
                       ) -> list[dict[str, Any]]:
    """Why a features model misorders a ladder: for every ladder of ``images`` with a step it
    does not order, and every level of it, the change of log(score) from the clean image
    (``total``) and, per feature, the change when only that feature takes the level's value
    (the rest stay at the clean image's; listed where larger than :data:`EXPLAIN_MIN`).

    Returns:
        ``[{"image", "type", "scores": [6 floats], "levels": [{"level", "total",
        "features": {name: change}}]}]``; empty for a model that is not a features model.
    """
    from rankiq.service.noref import FEATURES, prepare_features

    if getattr(model, "kind", None) != "features":
        return []
    out = []
    for i, im in enumerate(images):
        for kind, lad in ladders(im.image, seed, i).items():
            f = prepare_features(np.stack([x.astype(np.float32) for x in lad])).features
            s = np.asarray(model.score(f), np.float64).reshape(-1)
            if all(adjacent_correct(s.tolist())):
                continue
            levels = []
            for lv in range(1, len(lad)):
                swapped = np.repeat(f[:1], len(FEATURES), axis=0)
                idx = np.arange(len(FEATURES))
                swapped[idx, idx] = f[lv]  # row j: the clean features with feature j swapped
                d = np.log(np.asarray(model.score(swapped), np.float64).reshape(-1) / s[0])
                levels.append({"level": lv, "total": float(np.log(s[lv] / s[0])),
                               "features": {FEATURES[j]: float(d[j]) for j in np.argsort(-abs(d))
                                            if abs(d[j]) > EXPLAIN_MIN}})
            out.append({"image": im.name, "type": kind, "scores": s.tolist(), "levels": levels})
    return out


# -- report -----------------------------------------------------------------------------------

def model_agreement(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """How alike every two RankIQ models of one evaluation score the same ladder images (two
    rebuilds of a model with other seeds: what a rebuild changes on real scans).

    Args:
        metrics: ``evaluate_ladders(...)["metrics"]``.

    Returns:
        Per pair of models: ``{"a", "b", "images", "spearman"}`` over every ladder image
        (clean ones once), ``"median_change"``/``"max_change"``: ``|score_b / score_a - 1|``,
        and ``"steps_ordered_differently"`` of ``"steps"`` adjacent pairs.
    """
    names = [n for n, m in metrics.items() if m["kind"] == "rankiq"]
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            va, vb = metrics[a]["values"], metrics[b]["values"]
            xa, xb, differ, steps = [], [], 0, 0
            for image, ladders_a in va.items():
                for j, (kind, la) in enumerate(ladders_a.items()):
                    lb = vb[image][kind]
                    start = 0 if j == 0 else 1  # the clean image once per image
                    xa += la[start:]
                    xb += lb[start:]
                    differ += sum(p != q for p, q in zip(adjacent_correct(la),
                                                         adjacent_correct(lb), strict=True))
                    steps += len(la) - 1
            fa, fb = np.asarray(xa, np.float64), np.asarray(xb, np.float64)
            change = np.abs(fb / fa - 1.0)
            out.append({"a": a, "b": b, "images": int(fa.size), "spearman": spearman(fa, fb),
                        "median_change": float(np.median(change)),
                        "max_change": float(change.max()),
                        "steps_ordered_differently": int(differ), "steps": int(steps)})
    return out


def _pct(c: int, n: int) -> str:
    return f"{c}/{n} ({100.0 * c / n:.0f}%)" if n else "-"


def _rho(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.2f}"


def _flag_lines(name: str, fl: dict[str, Any] | None, kinds: Sequence[str]) -> list[str]:
    """The table of :func:`flag_by_level` for one model (none without it)."""
    if not fl:
        return []

    def cell(d: dict[str, int]) -> str:
        return f"{d['flagged']}/{d['assessable']}" if d["assessable"] else "-"

    levels = range(1, N_LEVELS)
    lines = ["", f"Default QA flag of {name} along the ladders (median score above the model's "
             "threshold for the image's contrast family), flagged / assessable images per "
             "level:", "",
             "| type | clean | " + " | ".join(f"level {i}" for i in levels) + " |",
             "|---" * (N_LEVELS + 1) + "|"]
    for kind in kinds:
        if kind in fl["per_type"]:
            lines.append(f"| {kind} | {cell(fl['clean'])} | "
                         + " | ".join(cell(d) for d in fl["per_type"][kind]) + " |")
    lines.append(f"| **all** | {cell(fl['clean'])} | "
                 + " | ".join(f"**{cell(d)}**" for d in fl["all"]) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The Markdown tables of a report from :func:`run`."""
    kinds = [k for k in TYPES if k in report["types"]]
    lines = ["Adjacent-pair accuracy (Spearman rho) per corruption type, "
             f"{len(report['images'])} real images x {N_LEVELS} levels; "
             "compare = verdicts agreeing with the model's own scores.", "",
             "| metric | " + " | ".join(kinds) + " | overall | compare |",
             "|---" * (len(kinds) + 3) + "|"]
    for name, m in report["metrics"].items():
        cells = [f"{_pct(m['per_type'][k]['correct'], m['per_type'][k]['pairs'])} "
                 f"(rho {_rho(m['per_type'][k]['spearman_mean'])})" for k in kinds]
        o = m["overall"]
        cmp = m.get("compare")
        cells.append(f"**{_pct(o['correct'], o['pairs'])}** (rho {_rho(o['spearman_mean'])})")
        cells.append(_pct(cmp["consistent"], cmp["pairs"]) if cmp else "-")
        label = name if m["kind"] == "rankiq" else f"{name} (IQM)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for name, m in report["metrics"].items():
        lines += _flag_lines(name, m.get("flag_by_level"), kinds)
    if report.get("agreement"):
        lines += ["", "Agreement between models on the same ladder images (Spearman of the "
                  "scores; change = |score_b / score_a - 1|; steps one orders right and the "
                  "other not):", "",
                  "| a | b | images | Spearman | median change | largest change | steps "
                  "ordered differently |", "|---" * 7 + "|"]
        for g in report["agreement"]:
            lines.append(f"| {g['a']} | {g['b']} | {g['images']} | {g['spearman']:.4f} | "
                         f"{100 * g['median_change']:.1f} % | {100 * g['max_change']:.0f} % | "
                         f"{g['steps_ordered_differently']} of {g['steps']} |")
    arch = report.get("archive")
    if arch:
        lines += ["", f"Batch QA flag rates on an archive of {arch['series']} single-slice "
                  f"series built from the same images (clean: as is, flipped, scaled; corrupted: "
                  f"level {arch['level']} of each type), default thresholds.", "",
                  "| model | clean flagged | corrupted flagged | "
                  + " | ".join(kinds) + " | not assessable (out of range) | not scored |",
                  "|---" * (len(kinds) + 5) + "|"]
        for name, a in arch["models"].items():
            bv = a["by_variant"]
            cells = [_pct(bv[k]["flagged"], bv[k]["series"]) if k in bv else "-" for k in kinds]
            lines.append(f"| {name} | {_pct(a['clean']['flagged'], a['clean']['series'])} | "
                         f"{_pct(a['corrupted']['flagged'], a['corrupted']['series'])} | "
                         + " | ".join(cells)
                         + f" | {a.get('not_in_range', 0)} | {a['not_scored']} |")
    out_of_range = sorted({f"{im} ({', '.join(v['reasons']) or 'out of range'})"
                           for m in report["metrics"].values()
                           for im, v in m.get("in_range", {}).items() if v["in_range"] is False})
    if out_of_range:
        lines += ["", "Clean images a model calls out of range: " + ", ".join(out_of_range) + "."]
    lines += ["", "Ties and NaN count as wrong. FBER over an exactly zero background is infinite "
              "(ranked best). SNR and CJV use the two classes of an Otsu split inside the head "
              "mask as tissue classes (rankiq.service.iqm).",
              "Levels: " + "; ".join(
        f"{k} {', '.join(f'{level_value(k, i):g}' for i in range(N_LEVELS))}" for k in kinds)
        + " (see rankiq.training.ladders).",
        "Images: " + ", ".join(f"{i['name']} {i['shape'][0]}x{i['shape'][1]}"
                               for i in report["images"]) + "."]
    for name, res in (report.get("resampling") or {}).items():
        lines += ["", f"Score change of {name} when the same slice is resampled (relative to the "
                  "slice as it is; zerofill = zero-filled k-space, as a scanner interpolates; "
                  "_header = the same pixels as an original DICOM image whose Acquisition Matrix "
                  "says what was acquired):", "",
                  "| image | score | " + " | ".join(RESAMPLINGS) + " |",
                  "|---" * (len(RESAMPLINGS) + 2) + "|"]
        for image, r in res.items():
            lines.append(f"| {image} | {r['score']:.2f} | " + " | ".join(
                f"{100 * r['changes'][k]:+.0f} %" for k in RESAMPLINGS) + " |")
    for name, rows in (report.get("explain") or {}).items():
        lines += ["", f"Ladders {name} misorders, and why: change of log(score) from the clean "
                  "image at each level, in total and when only one feature takes the level's "
                  f"value (|change| > {EXPLAIN_MIN:g}):", "",
                  "| image | type | level | score | total | by feature |", "|---" * 6 + "|"]
        for r in rows:
            for lv in r["levels"]:
                lines.append(f"| {r['image']} | {r['type']} | {lv['level']} | "
                             f"{r['scores'][lv['level']]:.3f} | {lv['total']:+.2f} | " + ", ".join(
                                 f"{k} {v:+.2f}" for k, v in lv["features"].items()) + " |")
    if report.get("models"):
        lines.append("Models: " + ", ".join(f"{m['name']} {m['version']} (score.onnx sha256 "
                                            f"{str(m['sha256'])[:12]})"
                                            for m in report["models"]) + ".")
    return "\n".join(lines)


def run(models_dir: str | Path | None, *, images: Sequence[str] | None = None, seed: int = 0,
        iqms: Sequence[str] | None = None, archive: bool = False, compare: bool = True,
        threads: int = 1, resampling: bool = False, explain: bool = False) -> dict[str, Any]:
    """The whole evaluation (what ``rankiq evaluate real`` prints and saves).

    Args:
        models_dir: directory of exported models (every no-reference one is evaluated), or
            ``None`` for IQMs only.
        images: real image names (default: every available one).
        seed: ladder seed.
        iqms: IQM names (default all of :data:`rankiq.service.iqm.IQMS`).
        archive: also build the DICOM archive and run batch QA.
        compare: also measure compare consistency of the RankIQ models.
        resampling: also measure each model's score change under resampling
            (:func:`resampling_changes`).
        explain: also attribute the misordered ladders of each features model to its
            features (:func:`explain_misordered`).
        threads: ONNX Runtime threads.

    Raises:
        ValueError: no real image is available (or none of ``images``).
    """
    t0 = time.perf_counter()
    ims = real_images(list(images) if images else None)
    if not ims:
        raise ValueError("no real MR image available" + (f" among {', '.join(images)}"
                                                         if images else ""))
    models = load_noref_models(models_dir, threads) if models_dir is not None else []
    metrics = [rankiq_metric(m) for m in models]
    metrics += [iqm_metric(n) for n in (iqms or list(IQMS))]
    report: dict[str, Any] = {
        "seed": seed,
        "types": list(TYPES),
        "levels": {k: [level_value(k, i) for i in range(N_LEVELS)] for k in LEVELS},
        "images": [{"name": im.name, "shape": list(im.image.shape),
                    "pixel_spacing": im.pixel_spacing, "contrast": im.contrast,
                    "source": im.source, "description": im.description} for im in ims],
        "models": [{"name": m.name, "version": m.version, "sha256": m.sha256,
                    "qa_thresholds": m.metadata.get("qa_thresholds")} for m in models],
        **evaluate_ladders(ims, metrics, seed=seed, compare=compare),
    }
    report["agreement"] = model_agreement(report["metrics"])
    if archive:
        dirs = [Path(m.path) for m in models if getattr(m, "path", None) is not None]
        report["archive"] = archive_flag_rates(ims, dirs, seed=seed, threads=threads)
    if resampling:
        report["resampling"] = {m.name: resampling_changes(ims, m) for m in models}
    if explain:
        report["explain"] = {m.name: explain_misordered(ims, m, seed) for m in models
                             if m.kind == "features"}
    report["wall_s"] = round(time.perf_counter() - t0, 2)
    return report
