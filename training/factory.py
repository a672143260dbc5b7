"""The model factory: a fresh scorer for a run's config, and a trained one loaded from a run
directory (:mod:`rankiq.training.runs` holds the directory's layout and files).

Every scorer takes ``(N, C, H, W)`` network input and returns ``(N,)`` scores, lower = better,
except the ``mse``/``ssim`` baselines whose scorer takes the per-image metric value ``(N,)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rankiq.training.runs import (
    FINAL,
    METRIC_MODELS,
    RunError,
    available_folds,
    fold_dir,
    read_config,
    read_summary,
)
from torch import nn


@dataclass
class LoadedRun:
    """A trained model from a run directory.

    Attributes:
        scorer: ``nn.Module`` in eval mode; ``(N, C, H, W)`` network input -> ``(N,)`` scores,
            lower = better (metric baselines: ``(N,)`` metric values -> scores).
        classifier: :class:`rankiq.training.models.RankClassifier` in eval mode (logits).
        config: the run's config.json.
        summary: the run's summary.json (``{}`` when absent).
        fold: the fold loaded (an int, or ``"final"``).
        epoch: the checkpoint's epoch (1-based); val_acc: its validation accuracy.
        path: the checkpoint file.
    """

    scorer: Any
    classifier: Any
    config: dict
    summary: dict
    fold: int | str
    epoch: int
    val_acc: float | None
    path: Path


class NoRefStudent(nn.Module):
    """IQ-Net body with ReLU (no dropout) -> 41 L2-norm features -> log -> Linear(41, 1) -> exp.

    Input ``(N, C, H, W)`` normalised image (no reference); output ``(N,)`` positive scores in
    the teacher's units (lower = better).
    """

    def __init__(self, input_kind: str = "magnitude", channels: int = 8, blocks: int = 5
                 ) -> None:
        super().__init__()
        from rankiq.training.models.iqnet import IQNet

        self.body = IQNet(input_kind, channels=channels, blocks=blocks,  # type: ignore[arg-type]
                          activation="relu", dropout=0.0)
        del self.body.feature_weights  # the signed head replaces IQ-Net's |w_k| sum
        self.head = nn.Linear(1 + channels * blocks, 1)

    def log_score(self, x: torch.Tensor) -> torch.Tensor:
        """``(N,)`` log score."""
        return self.head(torch.log(self.body.features(x))).reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_score(x))


class ExpScorer(nn.Module):
    """Wrap a scorer regressing a log score so it outputs ``exp`` of it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def log_score(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.inner(x))


def build_student(config: dict) -> NoRefStudent | ExpScorer:
    """The student module named by ``config["student"]``."""
    kind = config.get("input_kind", "magnitude")
    if config.get("student") == "iqnet-relu":
        return NoRefStudent(kind, int(config.get("channels", 8)), int(config.get("blocks", 5)))
    if config.get("student") == "efficientnet":
        from rankiq.training.models.efficientnet import EfficientNetScorer

        return ExpScorer(EfficientNetScorer(kind, size=int(config.get("effnet_size", 224))))
    raise RunError(f"unknown student {config.get('student')!r} (iqnet-relu or efficientnet)")


def build_scorer(config: dict):
    """A fresh (untrained) scorer ``nn.Module`` for a run config."""
    model = config["model"]
    kind = config.get("input_kind", "magnitude")
    if model in METRIC_MODELS:
        from rankiq.training.baselines import MetricScorer

        return MetricScorer(model)
    if model == "distill":
        return build_student(config)
    arch = model
    if arch == "iqnet":
        from rankiq.training.models.iqnet import IQNet

        act = config.get("activation", "identity")
        return IQNet(kind, channels=int(config.get("channels", 8)),
                     blocks=int(config.get("blocks", 5)), activation=act,
                     dropout=float(config.get("dropout", 0.5)))
    if arch == "efficientnet":
        from rankiq.training.models.efficientnet import EfficientNetScorer

        return EfficientNetScorer(kind, size=int(config.get("effnet_size", 224)))
    raise RunError(f"unknown model/student {arch!r}")


def _default_fold(run_dir: Path) -> int | str:
    """``final`` (the model trained on all labelled pairs). Never "the best fold": picking the
    fold with the highest held-out accuracy ships the luckiest split and biases its accuracy
    upward; a single fold is loaded only when asked for by number."""
    if (run_dir / FINAL / "best.pt").exists():
        return FINAL
    if not available_folds(run_dir):
        raise RunError("no trained fold (no fold*/best.pt)", source=str(run_dir))
    raise RunError("no final model (final/best.pt): train with --final (one model on all "
                   "labelled pairs for the folds' median chosen epoch), or name a fold",
                   source=str(run_dir))


def load_checkpoint(path: Path) -> dict:
    """``torch.load`` a checkpoint (tensors and plain Python only)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError("missing checkpoint", source=str(path)) from None
    except Exception as exc:  # noqa: BLE001 - corrupt file: one line, not a traceback
        raise RunError(f"unreadable checkpoint ({type(exc).__name__})", source=str(path)) from None


def load_run(run_dir: str | Path, fold: int | str | None = None) -> LoadedRun:
    """Load a trained scorer and classifier from a run directory.

    Args:
        run_dir: the ``runs/NAME`` directory.
        fold: a fold number, ``"final"``, or None: ``final/`` (a run without one is a
            :class:`RunError`; the best fold is never chosen silently).

    Returns:
        :class:`LoadedRun` with modules in eval mode on the CPU.
    """
    from rankiq.training.models.classifier import RankClassifier

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    summary = read_summary(run_dir)
    if fold is None:
        fold = _default_fold(run_dir)
    path = fold_dir(run_dir, fold) / "best.pt"
    ckpt = load_checkpoint(path)
    scorer = build_scorer(config)
    classifier = RankClassifier()
    try:
        scorer.load_state_dict(ckpt["scorer"])
        classifier.load_state_dict(ckpt["classifier"])
    except (KeyError, RuntimeError) as exc:
        raise RunError(f"checkpoint does not match the run's model ({str(exc)[:120]})",
                       source=str(path)) from None
    scorer.eval()
    classifier.eval()
    return LoadedRun(scorer=scorer, classifier=classifier, config=config, summary=summary,
                     fold=fold, epoch=int(ckpt.get("epoch", 0)),
                     val_acc=None if ckpt.get("val_acc") is None else float(ckpt["val_acc"]),
                     path=path)
