"""JSON round trip shared by the simulator's frozen config dataclasses."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Self


class JsonConfig:
    """Mixin for frozen dataclasses whose ranges are tuples: JSON holds them as lists."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
