"""Series selection for batch QA: which series get scored, and why the others do not.

Modelled on MONAI Deploy's series selector: rules match DICOM attributes (by keyword) with
regular expressions, read from a JSON or YAML file. A rules document::

    {
      "require": [                       # every rule must match, else skip with its reason
        {"reason": "not_mr", "all": {"Modality": "^MR$"}}
      ],
      "exclude": [                       # the first rule that matches skips with its reason
        {"reason": "localizer", "any": {"ImageType": "(?i)^LOCALIZER$",
                                         "SeriesDescription": "(?i)locali[sz]er|scout"}},
        {"reason": "derived", "any": {"ImageType": "(?i)^(ADC|FA|MIP|SUB)$"}}
      ]
    }

A condition maps an attribute keyword to:

* a string: a regular expression searched in the value (for a multi-valued attribute such as
  ``ImageType``: in any one of its values);
* a list of strings: every expression must match some value (MONAI's "all listed present");
* ``{"min": a, "max": b}``: a numeric range (either bound optional);
* ``null``: the attribute is absent or empty.

``all`` needs every condition to hold, ``any`` at least one. Attributes available (from the
header-only scan): ``Modality``, ``SeriesDescription``, ``ImageType``, ``SOPClass`` (the SOP
class *name*, e.g. ``MR Image Storage``), ``Rows``, ``Columns``, ``NumberOfFrames``, and the
pseudo-attribute ``_slices`` (instances in the series), e.g. ``{"_slices": {"min": 3}}``.
Missing attributes never match a regex (so a ``require`` on them skips the series).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankiq.service.errors import RankIQError

# SOP classes (by name) holding MR pixel data: MR Image Storage, Enhanced MR Image Storage,
# Legacy Converted Enhanced MR Image Storage.
MR_IMAGE_SOP_CLASSES = r"(?i)^(Enhanced |Legacy Converted Enhanced )?MR Image Storage$"

# Derived series that are not images of anatomy, by an ImageType value (vendors put the kind of
# map in values 3 and 4): diffusion maps (ADC, exponential ADC, FA and colour FA, trace and
# trace-weighted, mean diffusivity, tensor), perfusion maps (CBF, CBV, MTT, TTP, Tmax),
# parametric maps (T1/T2/T2*/R2* maps, any value ending in MAP), subtractions and intensity
# projections (MIP, MinIP). Not listed, so scored: DERIVED\SECONDARY in general (pydicom's
# MR_small.dcm, PACS re-exports), reformats (MPR: a reformatted slice is still anatomy), motion
# correction (MOCO), Dixon water/fat, normalised (NORM) and filtered images.
DERIVED_MAP_TYPES = (r"(?i)^(ADC|EADC|EXP|FA|COLFA|COLOR_FA|TRACE|TRACEW|MD|TENSOR|CBF|CBV|MTT|"
                     r"TTP|TMAX|MIP|MNIP|MINIP|MAX_IP|MIN_IP|SUB|SUBTRACT|SUBTRACTION|"
                     r"R2\*?|R2_STAR|.*[ _]?MAP)$")
# The same kinds named as whole words in a SeriesDescription (only for series whose ImageType
# says DERIVED: an acquisition named "dwi_ADC" by its protocol is still an acquisition).
DERIVED_MAP_WORDS = (r"(?i)(?<![a-z0-9])(adc|eadc|fa|colfa|tracew?|md|cbf|cbv|mtt|ttp|tmax|mip|"
                     r"minip|mnip|sub|subtraction|t1.?map|t2\*?.?map)(?![a-z0-9])")
# Phase images (Siemens ImageType value 3 "P", flow velocity): not magnitude images.
PHASE_TYPES = r"(?i)^(P|PHASE|PHASE MAP|VELOCITY)$"

DEFAULT_RULES: dict[str, Any] = {
    "require": [
        {"reason": "not_mr", "all": {"Modality": "^MR$"}},
        {"reason": "non_image", "all": {"SOPClass": MR_IMAGE_SOP_CLASSES}},
    ],
    "exclude": [
        {
            "reason": "localizer",
            "any": {
                "ImageType": "(?i)^LOCALI[SZ]ER$",
                # whole words (letters around do not count, so "AX_SCOUT" matches and
                # "scoutless" does not)
                "SeriesDescription": r"(?i)(?<![a-z])(locali[sz]er|scout|survey|3.?plane|"
                                     r"tri.?pilot)(?![a-z])",
            },
        },
        {"reason": "derived", "any": {"ImageType": DERIVED_MAP_TYPES}},
        {"reason": "derived", "all": {"ImageType": "(?i)^DERIVED$",
                                      "SeriesDescription": DERIVED_MAP_WORDS}},
        {"reason": "phase", "any": {"ImageType": PHASE_TYPES}},
    ],
}


class RulesError(RankIQError):
    """A selection rules or thresholds file that cannot be used."""

    reason = "bad_rules"


@dataclass(frozen=True)
class Condition:
    """One attribute test (see the module docstring for the forms of ``expected``)."""

    keyword: str
    expected: Any

    def matches(self, attrs: Mapping[str, Any]) -> bool:
        """Whether ``attrs`` (keyword -> value, multi-valued as lists) satisfies the test."""
        value = attrs.get(self.keyword)
        values = _as_values(value)
        if self.expected is None:
            return not values
        if isinstance(self.expected, dict):
            try:
                number = float(values[0])
            except (IndexError, TypeError, ValueError):
                return False
            lo, hi = self.expected.get("min"), self.expected.get("max")
            return (lo is None or number >= lo) and (hi is None or number <= hi)
        patterns = self.expected if isinstance(self.expected, list) else [self.expected]
        return all(any(p.search(v) for v in values) for p in patterns)


@dataclass(frozen=True)
class Rule:
    """Conditions combined with ``all`` or ``any``; ``reason`` names a skip."""

    reason: str
    conditions: tuple[Condition, ...]
    mode: str = "all"

    def matches(self, attrs: Mapping[str, Any]) -> bool:
        """Whether the rule holds for the series attributes ``attrs``."""
        results = (c.matches(attrs) for c in self.conditions)
        return all(results) if self.mode == "all" else any(results)


@dataclass(frozen=True)
class Decision:
    """``selected`` or not, with the skip ``reason`` (``""`` when selected)."""

    selected: bool
    reason: str = ""


@dataclass(frozen=True)
class SeriesSelector:
    """Ordered ``require`` and ``exclude`` rules (see the module docstring)."""

    require: tuple[Rule, ...] = ()
    exclude: tuple[Rule, ...] = ()
    source: str = "built-in"
    document: dict[str, Any] = field(default_factory=dict, compare=False)

    def decide(self, attrs: Mapping[str, Any]) -> Decision:
        """Select a series from its attributes (keyword -> value, plus ``_slices``)."""
        for rule in self.require:
            if not rule.matches(attrs):
                return Decision(False, rule.reason)
        for rule in self.exclude:
            if rule.matches(attrs):
                return Decision(False, rule.reason)
        return Decision(True)


def _as_values(value: Any) -> list[str]:
    """Attribute value -> list of strings (multi-valued kept apart, empty -> [])."""
    if value is None:
        return []
    if isinstance(value, str | bytes):
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        return [text] if text.strip() else []
    if isinstance(value, Sequence):
        return [str(v) for v in value if str(v).strip()]
    return [str(value)]


def _compile(expected: Any, where: str) -> Any:
    try:
        if isinstance(expected, str):
            return re.compile(expected)
        if isinstance(expected, list) and all(isinstance(e, str) for e in expected):
            return [re.compile(e) for e in expected]
    except re.error as exc:
        raise RulesError(f"{where}: bad regular expression: {exc}") from exc
    if expected is None:
        return None
    if isinstance(expected, dict) and set(expected) <= {"min", "max"} and all(
        isinstance(v, int | float) for v in expected.values()
    ):
        return dict(expected)
    raise RulesError(f"{where}: a condition must be a regex, a list of regexes, "
                     "{'min','max'} or null")


def _rule(doc: Any, where: str) -> Rule:
    if not isinstance(doc, dict) or not isinstance(doc.get("reason"), str):
        raise RulesError(f"{where}: each rule needs a 'reason' string")
    modes = [m for m in ("all", "any") if m in doc]
    if len(modes) != 1 or not isinstance(doc[modes[0]], dict) or not doc[modes[0]]:
        raise RulesError(f"{where}: each rule needs exactly one non-empty 'all' or 'any' mapping")
    if not re.fullmatch(r"[a-z0-9_]{1,40}", doc["reason"]):
        raise RulesError(f"{where}: reason {doc['reason']!r} must be a short snake_case label")
    conds = tuple(Condition(k, _compile(v, f"{where}.{k}")) for k, v in doc[modes[0]].items())
    return Rule(doc["reason"], conds, modes[0])


def selector_from_dict(doc: Mapping[str, Any], source: str = "built-in") -> SeriesSelector:
    """Build a selector from a rules document (validated; :class:`RulesError` if malformed)."""
    if not isinstance(doc, Mapping) or set(doc) - {"require", "exclude"}:
        raise RulesError(f"{source}: rules must be a mapping with 'require' and/or 'exclude'")
    require = tuple(_rule(r, f"{source}: require[{i}]")
                    for i, r in enumerate(doc.get("require") or []))
    exclude = tuple(_rule(r, f"{source}: exclude[{i}]")
                    for i, r in enumerate(doc.get("exclude") or []))
    return SeriesSelector(require, exclude, source, dict(doc))


def load_document(path: str | Path) -> Any:
    """Read a JSON or YAML file (by content: JSON first, then YAML)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise RulesError(f"cannot read: {exc.strerror}", source=str(p)) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"neither JSON nor YAML: {exc}", source=str(p)) from exc


def load_selector(path: str | Path | None = None) -> SeriesSelector:
    """The built-in rules, or the rules in ``path`` (JSON or YAML), which replace them."""
    if path is None:
        return selector_from_dict(DEFAULT_RULES)
    return selector_from_dict(load_document(path), str(path))
