"""Reader-study settings and the study's error type (light: imported when the CLI parser is
built, so nothing heavy here)."""

from __future__ import annotations

from dataclasses import dataclass

from rankiq.service.errors import RankIQError

DEFAULT_DB = "sqlite:///rankiq-readers.db"
TASKS = ("rank", "likert")
ADMIN = "admin"
ORDERS = ("random", "disagreement", "priority")
RANK_CHOICES = ("left", "right", "similar", "skip")
MAX_SECONDS = 86400.0
DEFAULT_CRITERIA = (
    "5 excellent: no visible artefact, fully diagnostic\n"
    "4 good: minor artefacts, diagnostic\n"
    "3 fair: moderate artefacts, diagnostic with limitations\n"
    "2 poor: strong artefacts, hardly diagnostic\n"
    "1 non-diagnostic"
)


class StudyError(RankIQError):
    """A request the study refuses; ``http_status`` and ``reason`` say why (JSON answer)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.http_status = status
        self.reason = reason


@dataclass(frozen=True)
class Settings:
    """Study settings (stored in the database, stated in every export).

    Attributes:
        readers_per_pair: distinct readers each item should reach.
        repeat_fraction: repeats per answered first presentation (0 = none), ranking only.
        repeat_gap: items shown in between a pair and its repeat (>= 1).
        reference: ``shown`` or ``hidden`` beside the two images.
        likert_pairs: pairs in the Likert subset (both images scored); 0 = every pair.
        likert_criteria: the scale's text shown to Likert readers.
        order: ``random``, ``disagreement`` or ``priority`` (see the module docstring).
        priority_source: name of the priority CSV (its values are in ``priorities``).
        seed: seeds left/right, per-reader order and the Likert subset.
    """

    readers_per_pair: int = 3
    repeat_fraction: float = 0.1
    repeat_gap: int = 5
    reference: str = "shown"
    likert_pairs: int = 0
    likert_criteria: str = DEFAULT_CRITERIA
    order: str = "random"
    priority_source: str | None = None
    priorities: dict[str, float] | None = None
    seed: int = 0

    def validate(self) -> Settings:
        """Raise :class:`StudyError` (CLI exit 2) on an out-of-range setting."""
        def bad(msg: str) -> StudyError:
            return StudyError(422, "bad_settings", msg)

        if self.readers_per_pair < 1:
            raise bad("--readers-per-pair must be >= 1")
        if not 0.0 <= self.repeat_fraction <= 1.0:
            raise bad("--repeat-fraction must be in [0, 1]")
        if self.repeat_gap < 1:
            raise bad("--repeat-gap must be >= 1 (a pair never follows itself)")
        if self.reference not in ("shown", "hidden"):
            raise bad("--reference must be shown or hidden")
        if self.likert_pairs < 0:
            raise bad("--likert-pairs must be >= 0")
        if self.order not in ORDERS:
            raise bad(f"--order must be one of {', '.join(ORDERS)}")
        if self.order == "priority" and not self.priorities:
            raise bad("--order priority needs --priority CSV (pair_id,priority)")
        return self

    def statement(self) -> str:
        """One sentence on how items were ordered (written into the export)."""
        if self.order == "random":
            return ("random order (least-covered items first, then a per-reader seeded "
                    "shuffle); no active learning")
        if self.order == "disagreement":
            return ("active learning: items whose pooled reader votes were most uncertain "
                    "(entropy with one pseudo-vote per outcome) were shown first")
        return (f"active learning: items with the highest model uncertainty from "
                f"{self.priority_source} were shown first")
