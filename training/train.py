"""The training loop: scorer + rank classifier on consensus labels, k folds, checkpoints.

Per fold: Adam with two parameter groups (scoring network ``lr`` 1e-4, classifier
``lr_classifier`` 1e-3), weight decay 1e-5, the learning rates multiplied by ``lr_decay``
(0.999) every epoch; cross-entropy on the classifier's logits; batch 24; dropout in the scorer
during training only; augmentation (``rankiq.training.augment``) drawn per pair and applied to both
network inputs. The epoch with the best validation accuracy is kept as ``best.pt``; ``last.pt``
holds everything needed to continue (model, optimiser, history, best so far).

Reproducibility: every random draw of epoch ``e`` of fold ``k`` (shuffle, augmentation, dropout)
comes from seeds derived from ``(seed, k, e)``, and the initial weights from ``(seed, k, 0)``, so
a run stopped after any epoch and continued with ``--resume`` gives bit-for-bit the weights of
an uninterrupted run (same machine and thread count; tested).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rankiq.service.atomic import atomic_path, atomic_write
from rankiq.training.augment import AugmentConfig, apply, draw
from rankiq.training.data import RankingData
from rankiq.training.factory import build_scorer, load_checkpoint
from rankiq.training.folds import split
from rankiq.training.runs import (
    FOLDS,
    METRIC_MODELS,
    SUMMARY,
    RunError,
    fold_dir,
    write_json,
)
from torch import nn

HISTORY_FIELDS = ("epoch", "lr", "lr_classifier", "train_loss", "train_acc", "val_loss",
                  "val_acc", "seconds")
DEFAULTS: dict = {
    "batch_size": 24, "lr": 1e-4, "lr_classifier": 1e-3, "lr_decay": 0.999,
    "weight_decay": 1e-5, "augment": True, "activation": "identity", "dropout": 0.5,
    "effnet_size": 224, "channels": 8, "blocks": 5,
    "classifier_warmup": 300, "classifier_warmup_lr": 1e-2,
}


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from ``(seed, *keys)`` (numpy SeedSequence)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0] >> 1)


def rank_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax of ``(N, 3)`` classifier logits summed as ``(e0 + e2) + e1``, so swapping the
    images (which swaps logits 0 and 2 exactly) swaps the outer probabilities bit for bit
    (``torch.softmax`` sums in index order and can differ by one ulp)."""
    m = logits.max(dim=1, keepdim=True).values
    e = torch.exp(logits - m)
    total = (e[:, :1] + e[:, 2:]) + e[:, 1:2]
    return e / total


def score_pairs(scorer: nn.Module, x1: torch.Tensor, x2: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of both images in one forward pass: ``(B,)`` twice."""
    s = scorer(torch.cat([x1, x2]))
    return s[: len(x1)], s[len(x1):]


@torch.no_grad()
def predict(scorer: nn.Module, classifier: nn.Module, x1: np.ndarray, x2: np.ndarray,
            batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eval-mode scores and logits of pairs: ``s1 (N,)``, ``s2 (N,)``, ``logits (N, 3)``."""
    scorer.eval()
    classifier.eval()
    s1, s2, lg = [], [], []
    for a in range(0, len(x1), batch):
        b1 = torch.from_numpy(np.ascontiguousarray(x1[a:a + batch])).float()
        b2 = torch.from_numpy(np.ascontiguousarray(x2[a:a + batch])).float()
        u, v = score_pairs(scorer, b1, b2)
        s1.append(u)
        s2.append(v)
        lg.append(classifier(u, v))
    if not s1:
        return np.zeros(0), np.zeros(0), np.zeros((0, 3))
    return (torch.cat(s1).numpy(), torch.cat(s2).numpy(), torch.cat(lg).numpy())


def warmup_classifier(scorer: nn.Module, classifier: nn.Module, x1: np.ndarray, x2: np.ndarray,
                      y: torch.Tensor, steps: int, lr: float) -> None:
    """Fit the classifier alone to the untrained scorer's training scores (full batch, its own
    Adam, ``steps`` steps), before epoch 1.

    With the paper's classifier lr (1e-3) and a few CPU epochs, most of the budget would go into
    learning the sign and scale of the score difference; the warm-up starts every model
    (networks and metric baselines alike) from a calibrated classifier. Deterministic.
    """
    s1, s2, _ = predict(scorer, classifier, x1, x2)
    a, b = torch.from_numpy(s1).float(), torch.from_numpy(s2).float()
    opt = torch.optim.Adam(classifier.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    classifier.train()
    for _ in range(steps):
        loss = loss_fn(classifier(a, b), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _history_write(d: Path, history: list[dict]) -> None:
    write_json(d / "history.json", history)
    with atomic_write(d / "history.csv", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        w.writeheader()
        for h in history:
            w.writerow({k: h[k] for k in HISTORY_FIELDS})


def _save(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_predictions(path: Path, data: RankingData, idx: np.ndarray, s1: np.ndarray,
                      s2: np.ndarray, logits: np.ndarray) -> None:
    """``pair_id,label,score1,score2,p1,psimilar,p2,pred`` of the validation pairs."""
    p = rank_probabilities(torch.from_numpy(logits)).numpy()
    with atomic_write(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["pair_id", "label", "score1", "score2", "p1", "psimilar", "p2", "pred"])
        for j, i in enumerate(idx):
            w.writerow([int(data.pair_id[i]), int(data.label[i]), f"{s1[j]:.8g}", f"{s2[j]:.8g}",
                        f"{p[j, 0]:.6f}", f"{p[j, 1]:.6f}", f"{p[j, 2]:.6f}",
                        int(np.argmax(logits[j]))])


def train_fold(data: RankingData, train_idx: np.ndarray, val_idx: np.ndarray, config: dict,
               fold: int, out: Path, *, resume: bool = False, progress: bool = False,
               scorer_init: dict | None = None, freeze_scorer: bool = False,
               classifier_init: dict | None = None,
               log: Callable[[str], None] | None = None) -> dict:
    """Train one fold; writes ``out/fold{K}/`` and returns its summary entry.

    Args:
        data: labelled pairs (network inputs or metric values).
        train_idx, val_idx: indices into ``data``.
        config: run config (model, mode, input_kind, seed, epochs + :data:`DEFAULTS` keys).
        fold: fold number K.
        out: run directory.
        resume: continue from ``last.pt`` when present (a finished fold is not retrained).
        progress: show a tqdm bar per epoch.
        scorer_init: state dict to start the scorer from (distillation student).
        classifier_init: state dict to start the classifier from.
        freeze_scorer: train the classifier only (scorer kept in eval mode).

    Returns:
        ``{"best_val_acc", "best_epoch", "epochs_run", "n_train", "n_val"}``.
    """
    cfg = {**DEFAULTS, **config}
    seed, epochs, bs = int(cfg["seed"]), int(cfg["epochs"]), int(cfg["batch_size"])
    d = fold_dir(out, fold)
    d.mkdir(parents=True, exist_ok=True)
    from rankiq.training.models.classifier import RankClassifier

    torch.manual_seed(derived_seed(seed, fold, 0))
    scorer = build_scorer(cfg)
    classifier = RankClassifier()
    is_metric = cfg["model"] in METRIC_MODELS
    if is_metric:
        from rankiq.training.baselines import fit_scale

        vals = np.concatenate([data.x1[train_idx, 0], data.x2[train_idx, 0]])
        scorer.scale.fill_(fit_scale(cfg["model"], vals))
    if scorer_init is not None:
        scorer.load_state_dict(scorer_init)
    if classifier_init is not None:
        classifier.load_state_dict(classifier_init)
    groups = []
    if not freeze_scorer and any(True for _ in scorer.parameters()):
        groups.append({"params": list(scorer.parameters()), "lr": float(cfg["lr"]),
                       "base_lr": float(cfg["lr"])})
    groups.append({"params": list(classifier.parameters()), "lr": float(cfg["lr_classifier"]),
                   "base_lr": float(cfg["lr_classifier"])})
    opt = torch.optim.Adam(groups, weight_decay=float(cfg["weight_decay"]))
    history: list[dict] = []
    best = {"val_acc": None, "epoch": 0}
    start = 0
    last = d / "last.pt"
    if resume and last.exists():
        ck = load_checkpoint(last)
        scorer.load_state_dict(ck["scorer"])
        classifier.load_state_dict(ck["classifier"])
        opt.load_state_dict(ck["optimizer"])
        history, best, start = list(ck["history"]), dict(ck["best"]), int(ck["epoch"])
    loss_fn = nn.CrossEntropyLoss()
    y_all = torch.from_numpy(data.label)
    if start == 0 and int(cfg["classifier_warmup"]) > 0:
        warmup_classifier(scorer, classifier, data.x1[train_idx], data.x2[train_idx],
                          y_all[train_idx], int(cfg["classifier_warmup"]),
                          float(cfg["classifier_warmup_lr"]))
    aug = bool(cfg["augment"]) and not is_metric
    aug_cfg = AugmentConfig()
    for epoch in range(start + 1, epochs + 1):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * float(cfg["lr_decay"]) ** (epoch - 1)
        gen = torch.Generator().manual_seed(derived_seed(seed, fold, epoch, 1))
        torch.manual_seed(derived_seed(seed, fold, epoch, 2))  # dropout masks
        perm = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        scorer.train(not freeze_scorer)
        classifier.train()
        tot_loss, tot_ok, seen = 0.0, 0, 0
        batches = range(0, len(perm), bs)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"fold {fold} epoch {epoch}/{epochs}", leave=False,
                           unit="batch")
        for a in batches:
            idx = perm[a:a + bs]
            x1 = torch.from_numpy(data.x1[idx]).float()
            x2 = torch.from_numpy(data.x2[idx]).float()
            if aug:
                p = draw(len(idx), gen, aug_cfg)
                x1, x2 = apply(x1, p), apply(x2, p)
            y = y_all[idx]
            if freeze_scorer:
                with torch.no_grad():
                    s1, s2 = score_pairs(scorer, x1, x2)
            else:
                s1, s2 = score_pairs(scorer, x1, x2)
            logits = classifier(s1, s2)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += float(loss.detach()) * len(idx)
            tot_ok += int((logits.detach().argmax(1) == y).sum())
            seen += len(idx)
        s1v, s2v, lv = predict(scorer, classifier, data.x1[val_idx], data.x2[val_idx])
        yv = data.label[val_idx]
        val_loss = float(loss_fn(torch.from_numpy(lv), torch.from_numpy(yv))) if len(yv) else 0.0
        val_acc = float((lv.argmax(1) == yv).mean()) if len(yv) else 0.0
        lrs = [g["lr"] for g in opt.param_groups]
        row = {"epoch": epoch, "lr": lrs[0] if len(lrs) > 1 else 0.0, "lr_classifier": lrs[-1],
               "train_loss": tot_loss / max(seen, 1), "train_acc": tot_ok / max(seen, 1),
               "val_loss": val_loss, "val_acc": val_acc,
               "seconds": round(time.perf_counter() - t0, 3)}
        history.append(row)
        state = {"scorer": scorer.state_dict(), "classifier": classifier.state_dict(),
                 "epoch": epoch, "val_acc": val_acc}
        if best["val_acc"] is None or val_acc > best["val_acc"]:
            best = {"val_acc": val_acc, "epoch": epoch}
            _save(d / "best.pt", state)
        _save(last, {**state, "optimizer": opt.state_dict(), "history": history, "best": best})
        _history_write(d, history)
        if log:
            log(f"fold {fold} epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.3f}, val loss {val_loss:.4f} acc {val_acc:.3f} "
                f"({row['seconds']:.1f} s)")
    if not (d / "best.pt").exists():
        raise RunError(f"fold {fold} has no trained epoch (epochs={epochs})", source=str(d))
    ck = load_checkpoint(d / "best.pt")
    scorer.load_state_dict(ck["scorer"])
    classifier.load_state_dict(ck["classifier"])
    s1v, s2v, lv = predict(scorer, classifier, data.x1[val_idx], data.x2[val_idx])
    write_predictions(d / "predictions.csv", data, val_idx, s1v, s2v, lv)
    return {"best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
            "epochs_run": len(history), "n_train": int(len(train_idx)),
            "n_val": int(len(val_idx))}


def summarise_folds(folds: dict[int, dict], config: dict) -> dict:
    """summary.json: per-fold entries, ``val_acc`` list, ``mean`` and ``sd`` (ddof=1)."""
    accs = [folds[k]["best_val_acc"] for k in sorted(folds)]
    arr = np.asarray(accs, dtype=np.float64)
    return {"model": config["model"], "mode": config["mode"],
            "input_kind": config["input_kind"], "student": config.get("student"),
            "folds": {str(k): folds[k] for k in sorted(folds)}, "val_acc": accs,
            "mean": float(arr.mean()) if len(arr) else None,
            "sd": float(arr.std(ddof=1)) if len(arr) > 1 else None,
            "complete": len(folds) == int(config["folds"])}


def run_folds(data: RankingData, fold_of: np.ndarray, config: dict, out: Path, *,
              only: list[int] | None = None, resume: bool = False, progress: bool = False,
              log: Callable[[str], None] | None = None,
              fold_hook: Callable[[int, np.ndarray, np.ndarray], dict] | None = None) -> dict:
    """Train every fold (or ``only`` those), updating summary.json after each.

    ``fold_hook(k, train_idx, val_idx)`` may return extra keyword arguments for
    :func:`train_fold` (used by distillation to pass the student's weights).
    """
    k_total = int(config["folds"])
    write_json(out / FOLDS, {str(k): [int(p) for p in data.pair_id[fold_of == k]]
                             for k in range(k_total)})
    prev = {}
    if (out / SUMMARY).exists():
        from rankiq.training.runs import read_summary

        prev = {int(k): v for k, v in read_summary(out).get("folds", {}).items()}
    results = dict(prev)
    for k in (only if only is not None else range(k_total)):
        tr, va = split(fold_of, k)
        extra = fold_hook(k, tr, va) if fold_hook else {}
        results[k] = train_fold(data, tr, va, config, k, out, resume=resume, progress=progress,
                                log=log, **extra)
        write_json(out / SUMMARY, summarise_folds(results, config))
    return summarise_folds(results, config)


def check_resume(out: Path, config: dict, resume: bool) -> None:
    """Refuse to mix runs: an existing run directory needs ``resume`` and the same config
    (except ``epochs``, which may grow, and the fold list)."""
    from rankiq.training.runs import CONFIG, read_json

    p = out / CONFIG
    if not p.exists():
        return
    if not resume:
        raise RunError("already holds a run; use --resume to continue it or another --out",
                       source=str(out))
    old = read_json(p)
    free = {"epochs", "fold", "created_by"}
    diff = sorted(k for k in set(old) | set(config) if k not in free and old.get(k)
                  != config.get(k))
    if diff:
        raise RunError(f"cannot resume: the run was made with different {', '.join(diff)}",
                       source=str(out))


def train_run(pairs: str | Path, rankings: str | Path, out: str | Path, config: dict, *,
              only: list[int] | None = None, resume: bool = False, progress: bool = False,
              log: Callable[[str], None] | None = None) -> dict:
    """Train a run end to end (the body of ``rankiq train`` for non-distilled models).

    Args:
        pairs, rankings: the data.
        out: run directory (created; an existing one needs ``resume``).
        config: model, mode, input_kind, grid (None = pairs size), folds, seed, epochs and
            optional :data:`DEFAULTS` overrides.
        only: train these folds only.

    Returns:
        The summary dict (also in ``out/summary.json``).
    """
    from rankiq.training.data import load_ranking_data
    from rankiq.training.folds import assign_folds
    from rankiq.training.runs import CONFIG, sha256_files

    out = Path(out)
    config = {**DEFAULTS, **config}
    metric = config["model"] if config["model"] in METRIC_MODELS else None
    data = load_ranking_data(pairs, rankings, mode=config["mode"],
                             input_kind=config["input_kind"], grid=config.get("grid"),
                             metric=metric)
    config["grid"] = list(data.grid)
    config["data"] = {"pairs": str(Path(pairs).resolve()),
                      "rankings": str(Path(rankings).resolve()),
                      "fingerprint": sha256_files(pairs, rankings),
                      "n_labelled": len(data), "pairs_size": data.size}
    check_resume(out, config, resume)
    fold_of = assign_folds(data.source_id, int(config["folds"]), int(config["seed"]))
    if only is not None and any(not 0 <= k < int(config["folds"]) for k in only):
        raise RunError(f"--fold must be in 0..{int(config['folds']) - 1}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG, config)
    return run_folds(data, fold_of, config, out, only=only, resume=resume, progress=progress,
                     log=log)
