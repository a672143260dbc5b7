"""The run directory written by ``rankiq train`` and :func:`load_run` (docs/CONTRACTS.md §3).

Layout::

    runs/NAME/config.json       model, mode ("reference" | "no-reference"), input_kind, grid,
                                folds, seed, epochs, hyper-parameters, data {pairs, rankings,
                                fingerprint (sha256 of the pairs file + rankings file)}
    runs/NAME/folds.json        pair ids of each validation fold (so runs can be compared)
    runs/NAME/fold{K}/best.pt   {"scorer": state_dict, "classifier": state_dict, "epoch",
                                 "val_acc"}
    runs/NAME/fold{K}/last.pt   the same + "optimizer", "history", "best" (for --resume)
    runs/NAME/fold{K}/history.csv / history.json   per-epoch loss, accuracy, lr, seconds
    runs/NAME/fold{K}/predictions.csv  validation pairs scored by best.pt:
                                pair_id,label,score1,score2,p1,psimilar,p2,pred
    runs/NAME/summary.json      per-fold best validation accuracy, mean, sd (ddof=1)

``model`` is one of ``iqnet``, ``efficientnet``, ``mse``, ``ssim`` or ``distill`` (a
no-reference student trained to reproduce a reference-mode run's scores; ``student`` names its
architecture). Every scorer takes ``(N, C, H, W)`` network input (``prepare(...).network_input``
on the run's ``grid`` and ``input_kind``) and returns ``(N,)`` scores, lower = better, except
the ``mse``/``ssim`` baselines whose scorer takes the per-image metric value ``(N,)``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankiq.service.errors import RankIQError

MODELS = ("iqnet", "efficientnet", "mse", "ssim", "distill")
METRIC_MODELS = ("mse", "ssim")
STUDENTS = ("iqnet-relu", "efficientnet")
MODES = ("reference", "no-reference")
CONFIG = "config.json"
SUMMARY = "summary.json"
FOLDS = "folds.json"
FINAL = "final"


class RunError(RankIQError):
    """A run directory that cannot be created, resumed or loaded."""

    reason = "bad_run"


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


def fold_dir(run_dir: str | Path, fold: int | str) -> Path:
    """``run_dir/fold{K}`` (or ``run_dir/final``)."""
    return Path(run_dir) / (FINAL if fold == FINAL else f"fold{int(fold)}")


def sha256_files(*paths: str | Path, chunk: int = 1 << 22) -> str:
    """One sha256 over the bytes of the files in order (the data fingerprint)."""
    h = hashlib.sha256()
    for p in paths:
        try:
            with Path(p).open("rb") as fh:
                while block := fh.read(chunk):
                    h.update(block)
        except OSError as exc:
            raise RunError(f"cannot read ({exc.strerror})", source=str(p)) from None
        h.update(b"\0")
    return h.hexdigest()


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError("missing", source=str(path)) from None
    except (OSError, ValueError) as exc:
        raise RunError(f"unreadable JSON ({exc})", source=str(path)) from None


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename) so a killed run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_config(run_dir: str | Path) -> dict:
    """The run's config.json (:class:`RunError` if missing or not a run)."""
    cfg = read_json(Path(run_dir) / CONFIG)
    if cfg.get("model") not in MODELS or cfg.get("mode") not in MODES:
        raise RunError("not a rankiq run config (model/mode missing or unknown)",
                       source=str(Path(run_dir) / CONFIG))
    return cfg


def read_summary(run_dir: str | Path) -> dict:
    """The run's summary.json, ``{}`` when the run has not finished a fold yet."""
    p = Path(run_dir) / SUMMARY
    return read_json(p) if p.exists() else {}


def build_scorer(config: dict):
    """A fresh (untrained) scorer ``nn.Module`` for a run config."""
    model = config["model"]
    kind = config.get("input_kind", "magnitude")
    if model in METRIC_MODELS:
        from rankiq.training.baselines import MetricScorer

        return MetricScorer(model)
    if model == "distill":
        from rankiq.training.distill import build_student

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


def available_folds(run_dir: str | Path) -> list[int]:
    """Folds with a best.pt, ascending."""
    out = []
    for d in Path(run_dir).glob("fold*"):
        if d.name[4:].isdigit() and (d / "best.pt").exists():
            out.append(int(d.name[4:]))
    return sorted(out)


def _best_fold(run_dir: Path, summary: dict) -> int | str:
    if (run_dir / FINAL / "best.pt").exists():
        return FINAL
    folds = available_folds(run_dir)
    if not folds:
        raise RunError("no trained fold (no fold*/best.pt)", source=str(run_dir))
    accs = {int(k): v.get("best_val_acc") for k, v in summary.get("folds", {}).items()}
    if all(accs.get(k) is not None for k in folds):
        return max(folds, key=lambda k: (accs[k], -k))
    return folds[0]


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
        fold: a fold number, ``"final"``, or None: ``final/`` when present, else the fold with
            the best validation accuracy in summary.json.

    Returns:
        :class:`LoadedRun` with modules in eval mode on the CPU.
    """
    from rankiq.training.models.classifier import RankClassifier

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    summary = read_summary(run_dir)
    if fold is None:
        fold = _best_fold(run_dir, summary)
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
