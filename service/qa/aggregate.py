"""Per-series aggregation of slice scores and the flag against a contrast-family threshold.

Scores follow the model's direction ``lower_is_better``: a series is flagged when its chosen
statistic (median by default, or the 90th percentile) is *above* the threshold of its contrast
family. Thresholds come from the model's ``metadata.json`` (``qa_thresholds``, calibrated on
simulated data) and can be overridden per site by a JSON/YAML file::

    {"statistic": "median", "thresholds": {"T2": 0.8, "FLAIR": 1.1}}

or simply ``{"T2": 0.8, "FLAIR": 1.1}``; families not listed keep the model's value, and
``other`` is the fallback for series whose family is unknown. ``rankiq calibrate`` writes such a
file with a ``provenance`` block (model name, version, sha256 of ``score.onnx``, rule, series per
family); a file calibrated with another model is refused (scores of two models are on
different scales).

Every flag names the rule that fired:

* ``model_threshold``: the model's threshold of the series' family;
* ``site_threshold``: a threshold from the site file (``--thresholds``);
* ``archive_outlier``: the series is an outlier among the series of its protocol in the same
  run (:func:`archive_outliers`, as MRIQC's group reports).

The comparison is strict everywhere: a statistic equal to its threshold (or a robust z equal to
the cut) is not flagged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rankiq.service.io.types import CONTRAST_FAMILIES
from rankiq.service.qa.selection import RulesError, load_document

STATISTICS = ("median", "p90")
RULES = ("model_threshold", "site_threshold", "archive_outlier")
#: Defaults of the archive-relative rule: robust z cut and the smallest protocol group.
DEFAULT_OUTLIER_Z = 3.5
MIN_GROUP = 5
#: Floor of the robust scale of log(statistic) (natural-log units, ~1 %): a group of identical
#: series has MAD 0, and a series 0.1 % worse must not become an infinite-z outlier.
MIN_LOG_SCALE = 0.01
#: Pixel spacing is rounded to this (mm) in the protocol key.
SPACING_STEP_MM = 0.1


@dataclass(frozen=True)
class SeriesAggregate:
    """Summary of a series' slice scores (model score units, lower is better).

    Attributes:
        median, p90, mean, worst: over scorable (non-blank) slices; NaN when none.
        worst_slices: indices of the highest-scoring slices, worst first (at most ``k``).
        slices: slices in the series; ``blank``: slices without signal (not scored).
    """

    median: float
    p90: float
    mean: float
    worst: float
    worst_slices: list[int]
    slices: int
    blank: int

    def statistic(self, name: str) -> float:
        """``median`` or ``p90``."""
        return float(getattr(self, name))


def aggregate(scores: np.ndarray, blank: np.ndarray | None = None, k: int = 3) -> SeriesAggregate:
    """Aggregate per-slice scores.

    Args:
        scores: ``(S,)`` slice scores.
        blank: bool ``(S,)``, slices whose score is meaningless (all-zero input); excluded.
        k: how many worst slices to return.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    blank = np.zeros(scores.shape, bool) if blank is None else np.asarray(blank, bool)
    valid = ~blank & np.isfinite(scores)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        nan = float("nan")
        return SeriesAggregate(nan, nan, nan, nan, [], int(scores.size), int(blank.sum()))
    v = scores[idx]
    order = idx[np.argsort(-v, kind="stable")][:k]
    return SeriesAggregate(
        median=float(np.median(v)),
        p90=float(np.percentile(v, 90)),
        mean=float(v.mean()),
        worst=float(v.max()),
        worst_slices=[int(i) for i in order],
        slices=int(scores.size),
        blank=int(blank.sum()),
    )


@dataclass(frozen=True)
class Thresholds:
    """Flag thresholds per contrast family and the statistic they apply to."""

    values: dict[str, float]
    statistic: str = "median"
    source: str = "model metadata"
    overridden: tuple[str, ...] = field(default=())

    def for_family(self, family: str) -> float:
        """Threshold for ``family`` (``other`` when the family has none)."""
        return self.values.get(family, self.values["other"])

    def fingerprint(self) -> str:
        """Short hash identifying these settings (stored in the QA journal)."""
        doc = json.dumps({"v": self.values, "s": self.statistic}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for qa.json)."""
        return asdict(self)


def threshold_rule(family: str, thresholds: Thresholds) -> str:
    """``site_threshold`` when the family's threshold (or the ``other`` fallback used for it)
    came from the site file, else ``model_threshold``."""
    fam = family if family in thresholds.values else "other"
    return "site_threshold" if fam in thresholds.overridden else "model_threshold"


def _check_provenance(doc: Mapping[str, Any], metadata: Mapping[str, Any], where: str) -> None:
    """Refuse a site file calibrated with another model (name or score.onnx sha256)."""
    prov = doc.get("provenance")
    if not isinstance(prov, Mapping):
        return
    model = prov.get("model") or {}
    if not isinstance(model, Mapping):
        raise RulesError(f"{where}: provenance.model must be a mapping")
    want_name, want_sha = metadata.get("name"), (metadata.get("files") or {}).get("score.onnx")
    name, sha = model.get("name"), model.get("sha256")
    if (name and want_name and name != want_name) or (sha and want_sha and sha != want_sha):
        raise RulesError(f"{where}: thresholds calibrated with another model ({name} "
                         f"{str(sha)[:12]}), not {want_name} {str(want_sha)[:12]}: run "
                         "rankiq calibrate again with this model")


def _check_values(values: Any, where: str) -> dict[str, float]:
    if not isinstance(values, Mapping) or not values:
        raise RulesError(f"{where}: thresholds must be a non-empty mapping family -> number")
    out = {}
    for fam, val in values.items():
        if fam not in CONTRAST_FAMILIES:
            raise RulesError(f"{where}: unknown contrast family {fam!r} "
                             f"(known: {CONTRAST_FAMILIES})")
        if isinstance(val, bool) or not isinstance(val, int | float) or not np.isfinite(val):
            raise RulesError(f"{where}: threshold for {fam} must be a finite number")
        out[fam] = float(val)
    return out


def load_thresholds(metadata: Mapping[str, Any], override: str | Path | None = None
                    ) -> Thresholds:
    """Thresholds from model metadata (``qa_thresholds``), optionally overridden by a file.

    Raises:
        RulesError: metadata without thresholds (and no complete override), bad file content.
    """
    base = metadata.get("qa_thresholds") or {}
    values = _check_values(base, "model metadata qa_thresholds") if base else {}
    statistic, source = "median", "model metadata"
    overridden: tuple[str, ...] = ()
    if override is not None:
        doc = load_document(override)
        where = str(override)
        if isinstance(doc, Mapping) and "thresholds" in doc:
            _check_provenance(doc, metadata, where)
            statistic = doc.get("statistic", statistic)
            doc = doc["thresholds"]
        elif isinstance(doc, Mapping) and "statistic" in doc:
            raise RulesError(f"{where}: 'statistic' needs a 'thresholds' mapping beside it")
        new = _check_values(doc, where)
        values = {**values, **new}
        overridden = tuple(sorted(new))
        source = f"model metadata + {where}" if base else where
    if statistic not in STATISTICS:
        raise RulesError(f"{source}: statistic must be one of {STATISTICS}, not {statistic!r}")
    if "other" not in values:
        if not values:
            raise RulesError("the model metadata holds no qa_thresholds; pass --thresholds FILE")
        values["other"] = max(values.values())  # unknown family: the most lenient known value
    return Thresholds(values, statistic, source, overridden)


def flag(agg: SeriesAggregate, family: str, thresholds: Thresholds) -> tuple[bool, str]:
    """Flag a series whose statistic is above its family's threshold.

    Returns:
        ``(flagged, reason)``; the reason states the numbers (``""`` when not flagged). A series
        without any scorable slice is flagged (``no_signal``): someone should look at it.
        Strictly above: a statistic equal to the threshold passes.
    """
    limit = thresholds.for_family(family)
    if agg.slices == 0 or not np.isfinite(agg.median):
        return True, "no scorable slice (all blank)"
    value = agg.statistic(thresholds.statistic)
    fam = family if family in thresholds.values else "other"
    if value > limit:
        return True, f"{thresholds.statistic} {value:.3f} > {fam} threshold {limit:.3f}"
    return False, ""


# -- archive-relative rule -------------------------------------------------------------------
def protocol_key(info: Mapping[str, Any]) -> str:
    """The protocol of a series, for the archive-relative rule: ``family|RxC|spacing|desc``.

    * contrast family (``T2``...);
    * matrix ``rows x cols``;
    * pixel spacing rounded to :data:`SPACING_STEP_MM` (``0.9mm``; ``0.9x1.2mm`` when rows and
      columns differ after rounding; ``?mm`` when unknown);
    * the first 8 hex digits of SHA-256 of the SeriesDescription (case-folded, whitespace
      collapsed): series named alike by the scanner's protocol group together, and the key
      itself carries no free text.

    Args:
        info: a series' journal info (``contrast``, ``rows``, ``cols``, ``pixel_spacing``
            ``[row_mm, col_mm]`` or ``None``, ``description``).
    """
    spacing = info.get("pixel_spacing")
    if spacing:
        r, c = (f"{round(float(v) / SPACING_STEP_MM) * SPACING_STEP_MM:.1f}" for v in spacing[:2])
        sp = f"{r}mm" if r == c else f"{r}x{c}mm"
    else:
        sp = "?mm"
    desc = " ".join(str(info.get("description") or "").casefold().split())
    digest = hashlib.sha256(desc.encode()).hexdigest()[:8]
    matrix = f"{info.get('rows', '?')}x{info.get('cols', '?')}"
    return f"{info.get('contrast', 'other')}|{matrix}|{sp}|{digest}"


@dataclass(frozen=True)
class Outlier:
    """Robust z of one series within its protocol group.

    Attributes:
        z: ``(log(statistic) - median) / scale`` over the group, or ``None`` when the group has
            fewer than ``min_group`` series (or the rule is off).
        n: series in the group (assessable series of the same protocol and model).
        median: the group median of the statistic (model score units), or ``None``.
        outlier: ``z > z_cut`` (strictly; one-sided: only worse than the group).
        limit: the statistic at ``z == z_cut``, ``median * exp(z_cut * scale)``: the threshold
            the rule amounts to for this group (``None`` without a z or with the rule off).
    """

    z: float | None
    n: int
    median: float | None
    outlier: bool
    limit: float | None = None


def archive_outliers(rows: Sequence[Mapping[str, Any]], *, z_cut: float = DEFAULT_OUTLIER_Z,
                     min_group: int = MIN_GROUP) -> dict[str, Outlier]:
    """The archive-relative rule (as MRIQC's group reports, on log scores).

    Series are grouped by ``(protocol, model)``; within a group of at least ``min_group``
    series, ``z = (log s - median(log s)) / max(1.4826 * MAD(log s), MIN_LOG_SCALE)`` with
    ``s`` the series statistic. Logs because scores are positive and spread multiplicatively;
    median and MAD because the outliers must not set the scale that judges them.

    Args:
        rows: per-series dicts with ``series_key``, ``protocol``, ``model`` and
            ``statistic_value`` (positive; non-positive or non-finite values are left out).
        z_cut: flag when ``z > z_cut``; ``0`` (or less) turns the rule off (z still reported).
        min_group: smallest group that gets a z.

    Returns:
        series key -> :class:`Outlier` for every row.
    """
    groups: dict[tuple[str, str], list[tuple[str, float]]] = {}
    out: dict[str, Outlier] = {}
    for r in rows:
        v = r.get("statistic_value")
        if v is None or not np.isfinite(v) or v <= 0:
            out[r["series_key"]] = Outlier(None, 0, None, False)
            continue
        groups.setdefault((str(r["protocol"]), str(r["model"])), []).append(
            (r["series_key"], float(np.log(v))))
    for members in groups.values():
        n = len(members)
        logs = np.array([v for _, v in members])
        med = float(np.median(logs))
        if n < min_group:
            for key, _ in members:
                out[key] = Outlier(None, n, float(np.exp(med)), False)
            continue
        scale = max(1.4826 * float(np.median(np.abs(logs - med))), MIN_LOG_SCALE)
        for key, v in members:
            z = (v - med) / scale
            out[key] = Outlier(float(z), n, float(np.exp(med)), bool(z_cut > 0 and z > z_cut),
                               float(np.exp(med + z_cut * scale)) if z_cut > 0 else None)
    return out
