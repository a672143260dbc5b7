"""The run directory written by ``rankiq train`` (docs/CONTRACTS.md §3): paths, JSON files and
checksums only (building and loading the models is :mod:`rankiq.training.factory`).

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

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from rankiq.service import atomic
from rankiq.training.config import (  # the run vocabulary is the config's (no import cycle)
    METRIC_MODELS,
    MODELS,
    MODES,
    STUDENTS,
    RunError,
    TrainConfig,
)

__all__ = ["METRIC_MODELS", "MODELS", "MODES", "STUDENTS", "RunError", "TrainConfig"]

CONFIG = "config.json"
SUMMARY = "summary.json"
FOLDS = "folds.json"
FINAL = "final"


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
    """A run's JSON file, atomically (a killed run never leaves half a file): sorted keys,
    NaN allowed (run files are read back by RankIQ only)."""
    atomic.write_json(path, obj, indent=2, sort_keys=True, allow_nan=True)


def read_config(run_dir: str | Path) -> dict:
    """The run's config.json as a dict of :class:`rankiq.training.config.TrainConfig` fields
    (:class:`RunError` if missing, not a run, or invalid)."""
    cfg = read_json(Path(run_dir) / CONFIG)
    if cfg.get("model") not in MODELS or cfg.get("mode") not in MODES:
        raise RunError("not a rankiq run config (model/mode missing or unknown)",
                       source=str(Path(run_dir) / CONFIG))

    try:  # validated; runs from older versions get the values they were trained with
        return TrainConfig.from_run_dict(cfg).to_dict()
    except RunError as exc:
        raise RunError(str(exc), source=str(Path(run_dir) / CONFIG)) from None
    except TypeError as exc:
        raise RunError(f"training config: {exc}", source=str(Path(run_dir) / CONFIG)) from None


def read_summary(run_dir: str | Path) -> dict:
    """The run's summary.json, ``{}`` when the run has not finished a fold yet."""
    p = Path(run_dir) / SUMMARY
    return read_json(p) if p.exists() else {}


def available_folds(run_dir: str | Path) -> list[int]:
    """Folds with a best.pt, ascending."""
    out = []
    for d in Path(run_dir).glob("fold*"):
        if d.name[4:].isdigit() and (d / "best.pt").exists():
            out.append(int(d.name[4:]))
    return sorted(out)


NAMES = {"iqnet": "IQ-Net", "efficientnet": "EfficientNet", "mse": "MSE", "ssim": "SSIM"}


def run_label(cfg: dict) -> str:
    """Human name of a run, e.g. ``IQ-Net (reference, magnitude)``."""
    if cfg["model"] in METRIC_MODELS:
        return NAMES[cfg["model"]]
    if cfg["model"] == "distill":
        return f"Distilled {cfg.get('student')} (no reference, {cfg['input_kind']})"
    mode = "reference" if cfg["mode"] == "reference" else "no reference"
    act = "" if cfg.get("activation", "identity") == "identity" else f", {cfg['activation']}"
    return f"{NAMES[cfg['model']]} ({mode}, {cfg['input_kind']}{act})"


def read_predictions(run: str | Path) -> dict[int, tuple[float, float, int, int]]:
    """``{pair_id: (score1, score2, label, pred)}`` over all folds' predictions.csv."""
    out = {}
    for p in sorted(Path(run).glob("fold*/predictions.csv")):
        with p.open(newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                out[int(r["pair_id"])] = (float(r["score1"]), float(r["score2"]),
                                          int(r["label"]), int(r["pred"]))
    return out
