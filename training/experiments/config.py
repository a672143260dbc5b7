"""The experiments' configuration (a run folder's ``config.json``) and the scale defaults.

CPU defaults (``--device cpu``) are sized to finish each experiment in well under an hour on
2 cores; CUDA defaults (``--device cuda``) are the paper's network width and learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from rankiq.service.errors import RankIQError
from rankiq.training.config import JsonConfig

KINDS = ("denoise", "recon")
#: the losses each experiment may train with (the paper's sets)
LOSSES: dict[str, tuple[str, ...]] = {
    "denoise": ("iqnet", "efficientnet-ref", "efficientnet-noref", "mse", "ssim"),
    "recon": ("iqnet", "mse", "ssim"),
}
DEFAULT_LOSSES = ("iqnet", "mse", "ssim")


class ExperimentError(RankIQError):
    """An experiment that cannot run as asked (bad settings, missing models, another run's
    folder)."""

    reason = "bad_experiment"


@dataclass(frozen=True)
class ExperimentConfig(JsonConfig):
    """Everything an experiment run needs to be reproduced.

    Attributes:
        kind: ``denoise`` or ``recon``.
        size: image side in pixels (square; divisible by 4).
        width: first-level channels of the ResUNet (the paper: 64), doubled per level.
        levels: ResUNet levels (3 for the denoiser, 2 inside the unrolled network).
        iterations: unrolled rounds (recon).
        epochs, n_train, n_val, n_test: epochs and slices per split.
        batch: slices per optimiser step.
        lr, lr_decay: Adam learning rate and its per-epoch decay (the paper: 1e-4, 0.99).
        losses: the losses to train with (one network each, identical initialisation).
        seed: data, initialisation and batch-order seed.
        noise: denoise noise standard deviation range (fraction of the reference maximum).
        accel_train, accels_test: Poisson-disc accelerations (recon).
        coils, calib, snr: recon coils, fully sampled centre side, thermal SNR.
        metric: the reference IQ-Net model directory (the ``iqnet`` loss and the score).
        efficientnet, efficientnet_noref: EfficientNet model directories (None: found in
            ``models``).
        device: ``cpu`` or ``cuda``.
    """

    kind: str = "denoise"
    size: int = 128
    width: int = 16
    levels: int = 3
    iterations: int = 4
    epochs: int = 15
    n_train: int = 96
    n_val: int = 16
    n_test: int = 48
    batch: int = 4
    lr: float = 1e-3
    lr_decay: float = 0.99
    losses: tuple[str, ...] = DEFAULT_LOSSES
    seed: int = 0
    noise: tuple[float, float] = (0.03, 0.08)
    accel_train: float = 16.0
    accels_test: tuple[float, ...] = (8.0, 16.0)
    coils: int = 6
    calib: int = 16
    snr: float = 200.0
    metric: str = "models/iqnet-ref"
    efficientnet: str | None = None
    efficientnet_noref: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ExperimentError(what)

        need(self.kind in KINDS, f"experiment kind {self.kind!r} not one of {', '.join(KINDS)}")
        m = 2 ** (self.levels - 1)
        need(isinstance(self.size, int) and self.size >= 32 and self.size % m == 0,
             f"--size must be an integer >= 32 divisible by {m}, got {self.size!r}")
        for name in ("width", "levels", "iterations", "epochs", "n_train", "n_val", "n_test",
                     "batch", "coils", "calib"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        need(self.n_test >= 2, "n_test must be >= 2 (paired t-tests)")
        need(self.lr > 0 and 0 < self.lr_decay <= 1, "lr must be > 0 and lr_decay in (0, 1]")
        allowed = LOSSES[self.kind]
        bad = [x for x in self.losses if x not in allowed]
        need(not bad and len(self.losses) >= 1 and len(set(self.losses)) == len(self.losses),
             f"losses {', '.join(bad) or 'list'} not valid for {self.kind}: choose from "
             f"{', '.join(allowed)} (each once)")
        need(0 <= self.noise[0] <= self.noise[1], "noise must be a range lo <= hi, lo >= 0")
        need(self.accel_train > 1 and all(a > 1 for a in self.accels_test),
             "accelerations must be > 1")
        need(2 <= self.calib <= self.size // 2, "calib must be in 2..size/2")
        top = max((self.accel_train, *self.accels_test))
        need(self.kind != "recon" or self.calib ** 2 * top <= 0.5 * self.size ** 2,
             f"a {self.calib}x{self.calib} calibration centre leaves no room for {top:g}x "
             f"Poisson-disc sampling of {self.size}x{self.size}: lower --calib")
        need(self.device in ("cpu", "cuda"), f"device must be cpu or cuda, not {self.device!r}")

    @classmethod
    def defaults(cls, kind: str, device: str = "cpu") -> ExperimentConfig:
        """The stated defaults of an experiment on a device (see docs/experiments.md)."""
        if kind not in KINDS:
            raise ExperimentError(f"experiment kind {kind!r} not one of {', '.join(KINDS)}")
        if kind == "denoise":
            cpu = cls(kind=kind)
            gpu = replace(cpu, size=256, width=64, epochs=100, n_train=512, n_val=50,
                          n_test=500, batch=8, lr=1e-4)
        else:
            cpu = cls(kind=kind, width=8, levels=2, iterations=4, epochs=12, n_train=64,
                      n_val=12, n_test=48)
            gpu = replace(cpu, size=256, width=64, epochs=100, n_train=2048, n_val=200,
                          n_test=500, batch=8, lr=1e-4, iterations=6, calib=24)
        return gpu if device == "cuda" else cpu

    def with_overrides(self, **changes: Any) -> ExperimentConfig:
        """A copy with the non-None ``changes`` (validated)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if v is not None and k in known})
