"""JSON round trip shared by the frozen config dataclasses (simulator, training), and the
training run's typed configuration :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from typing import Any, Self

from rankiq.service.errors import RankIQError

MODELS = ("iqnet", "efficientnet", "mse", "ssim", "distill")
METRIC_MODELS = ("mse", "ssim")
STUDENTS = ("iqnet-relu", "efficientnet")
MODES = ("reference", "no-reference")


class RunError(RankIQError):
    """A run directory (or its training configuration) that cannot be created, resumed or
    loaded."""

    reason = "bad_run"


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


# --- the training run's configuration -------------------------------------------------------

#: values that runs written before a key existed were trained with (config.json of older runs
#: lacks these keys; loading fills them so the run is described as it was actually trained)
LEGACY_DEFAULTS: dict[str, Any] = {"selection": "validation", "inner_fraction": 0.0,
                                   "crop": None, "final": False, "group_by": "subject"}


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """Everything ``rankiq train`` needs to reproduce a run (its folder's ``config.json``).

    Validated on construction (:class:`RunError`, one line). Learning
    rates per optimiser step; ``lr_decay`` per epoch; ``dropout`` a probability; ``grid``
    ``(H, W)`` pixels (None: the pairs file's size); ``crop`` the side in pixels of the random
    native-resolution square crop each training pair is cut to (None: whole images);
    ``selection`` ``"inner"`` (the epoch is chosen on an inner split of the training folds,
    grouped like the folds; ``inner_fraction`` of their groups) or ``"validation"`` (the legacy
    choice on the held-out fold itself, which biases its accuracy upward); ``final``: after the
    folds, train one model on all labelled pairs for the folds' median chosen epoch
    (``final/``, what ``rankiq export`` ships); ``group_by`` ``"volume"`` (true source volume,
    falling back to ``"subject"`` when there are fewer volumes than folds) or ``"subject"``.
    """

    model: str = "iqnet"
    mode: str = "reference"
    input_kind: str = "magnitude"
    grid: tuple[int, int] | None = None
    folds: int = 5
    seed: int = 0
    epochs: int = 30
    batch_size: int = 24
    lr: float = 1e-4
    lr_classifier: float = 1e-3
    lr_decay: float = 0.999
    weight_decay: float = 1e-5
    augment: bool = True
    activation: str = "identity"
    dropout: float = 0.5
    effnet_size: int = 224
    channels: int = 8
    blocks: int = 5
    classifier_warmup: int = 300
    classifier_warmup_lr: float = 1e-2
    selection: str = "inner"
    inner_fraction: float = 0.2
    crop: int | None = None
    final: bool = False
    group_by: str = "volume"
    student: str | None = None
    fresh_fraction: float = 1.0
    distill_epochs: int | None = None
    distill_lr: float = 1e-3
    teacher: dict[str, Any] | None = None
    created_by: str = "rankiq.training"
    data: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise RunError(f"training config: {what}")

        need(self.model in MODELS, f"model {self.model!r} not one of {', '.join(MODELS)}")
        need(self.mode in MODES, f"mode {self.mode!r} not one of {', '.join(MODES)}")
        need(self.input_kind in ("magnitude", "complex"),
             f"input_kind {self.input_kind!r} not magnitude or complex")
        need(self.activation in ("identity", "relu", "leaky_relu"),
             f"activation {self.activation!r} not identity, relu or leaky_relu")
        need(self.student is None or self.student in STUDENTS,
             f"student {self.student!r} not one of {', '.join(STUDENTS)}")
        need(self.selection in ("inner", "validation"),
             f"selection {self.selection!r} not inner or validation")
        need(self.group_by in ("volume", "subject"),
             f"group_by {self.group_by!r} not volume or subject")
        for name in ("folds", "epochs", "batch_size", "effnet_size", "channels", "blocks"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                 f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        need(self.folds >= 2, f"folds must be >= 2, got {self.folds}")
        need(self.classifier_warmup >= 0, "classifier_warmup must be >= 0")
        for name in ("lr", "lr_classifier", "classifier_warmup_lr", "distill_lr"):
            v = getattr(self, name)
            need(isinstance(v, int | float) and v > 0, f"{name} must be > 0, got {v!r}")
        need(0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.selection != "inner" or 0 < self.inner_fraction < 1,
             f"inner_fraction must be in (0, 1) with inner selection, got {self.inner_fraction}")
        need(self.crop is None or (isinstance(self.crop, int) and self.crop >= 16
                                   and self.crop >= 2 ** self.blocks),
             f"crop must be an integer >= 16 and >= 2**blocks pixels (each block halves it), "
             f"got {self.crop!r}")
        need(self.grid is None or (len(self.grid) == 2 and min(self.grid) >= 16),
             f"grid must be (H, W) with sides >= 16, got {self.grid!r}")
        need(self.crop is None or self.grid is None or self.crop <= min(self.grid),
             f"crop {self.crop} is larger than the grid {self.grid}")
        need(0 <= self.fresh_fraction <= 1, "fresh_fraction must be in [0, 1]")

    @classmethod
    def coerce(cls, config: TrainConfig | dict[str, Any]) -> TrainConfig:
        """A config from a ``TrainConfig`` or a dict of its fields (unknown keys: RunError)."""
        if isinstance(config, TrainConfig):
            return config
        unknown = sorted(set(config) - {f.name for f in fields(cls)})
        if unknown:
            raise RunError(f"training config: unknown key(s) {', '.join(unknown)}")
        return cls.from_dict(dict(config))

    @classmethod
    def from_run_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Read a run folder's config.json: keys missing from runs written by older versions
        take the values those runs were trained with (:data:`LEGACY_DEFAULTS`)."""
        return cls.coerce({**LEGACY_DEFAULTS, **d} if "selection" not in d else d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)
