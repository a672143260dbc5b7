"""Per-series aggregation of slice scores and the flag against a contrast-family threshold.

Scores follow the model's direction ``lower_is_better``: a series is flagged when its chosen
statistic (median by default, or the 90th percentile) is *above* the threshold of its contrast
family. Thresholds come from the model's ``metadata.json`` (``qa_thresholds``, calibrated on
simulated data) and can be overridden per site by a JSON/YAML file::

    {"statistic": "median", "thresholds": {"T2": 0.8, "FLAIR": 1.1}}

or simply ``{"T2": 0.8, "FLAIR": 1.1}``; families not listed keep the model's value, and
``other`` is the fallback for series whose family is unknown.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rankiq.service.qa.selection import RulesError, load_document

STATISTICS = ("median", "p90")
FAMILIES = ("T1", "T1post", "T2", "FLAIR", "other")


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


def _check_values(values: Any, where: str) -> dict[str, float]:
    if not isinstance(values, Mapping) or not values:
        raise RulesError(f"{where}: thresholds must be a non-empty mapping family -> number")
    out = {}
    for fam, val in values.items():
        if fam not in FAMILIES:
            raise RulesError(f"{where}: unknown contrast family {fam!r} (known: {FAMILIES})")
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
    statistic, source, overridden = "median", "model metadata", ()
    if override is not None:
        doc = load_document(override)
        where = str(override)
        if isinstance(doc, Mapping) and "thresholds" in doc:
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
    """
    limit = thresholds.for_family(family)
    if agg.slices == 0 or not np.isfinite(agg.median):
        return True, "no scorable slice (all blank)"
    value = agg.statistic(thresholds.statistic)
    fam = family if family in thresholds.values else "other"
    if value > limit:
        return True, f"{thresholds.statistic} {value:.3f} > {fam} threshold {limit:.3f}"
    return False, ""
