"""The training loop: scorer + rank classifier on consensus labels, k folds, checkpoints.

Per fold: Adam with two parameter groups (scoring network ``lr`` 1e-4, classifier
``lr_classifier`` 1e-3), weight decay 1e-5, the learning rates multiplied by ``lr_decay``
(0.999) every epoch; cross-entropy on the classifier's logits; batch 24; dropout in the scorer
during training only; augmentation (``rankiq.training.augment``) drawn per pair and applied to both
network inputs; optional random native-resolution crops (``crop``). The epoch is chosen on an
inner split of the training folds (``selection="inner"``, grouped like the folds), never on the
held-out fold, whose accuracy at the chosen epoch is reported (with a 95 % CI pooled over folds
in summary.json); that epoch is kept as ``best.pt``; ``last.pt`` holds everything needed to
continue (model, optimiser, history, best so far). ``final=True`` then trains one model on all
labelled pairs for the folds' median chosen epoch (``final/``: what ``rankiq export`` ships).

Reproducibility: every random draw of epoch ``e`` of fold ``k`` (shuffle, augmentation, dropout)
comes from seeds derived from ``(seed, k, e)``, and the initial weights from ``(seed, k, 0)``, so
a run stopped after any epoch and continued with ``--resume`` gives bit-for-bit the weights of
an uninterrupted run (same machine and thread count; tested).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rankiq.service.atomic import atomic_path, atomic_write
from rankiq.training.augment import AugmentConfig, apply, draw
from rankiq.training.config import TrainConfig
from rankiq.training.data import RankingData
from rankiq.training.factory import build_scorer, load_checkpoint
from rankiq.training.folds import inner_split, split
from rankiq.training.runs import (
    FINAL,
    FOLDS,
    METRIC_MODELS,
    SUMMARY,
    RunError,
    fold_dir,
    write_json,
)
from torch import nn

HISTORY_FIELDS = ("epoch", "lr", "lr_classifier", "train_loss", "train_acc", "sel_acc",
                  "val_loss", "val_acc", "seconds")
#: every field of :class:`TrainConfig` at its default (for callers that build dict configs)
DEFAULTS: dict = TrainConfig().to_dict()


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
            w.writerow({k: h.get(k) for k in HISTORY_FIELDS})


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


def random_crops(x1: torch.Tensor, x2: torch.Tensor, size: int, gen: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``size`` x ``size`` window of both ``(N, C, H, W)`` inputs of each pair
    (native resolution: no resampling)."""
    n, _, h, w = x1.shape
    oy = torch.randint(0, h - size + 1, (n,), generator=gen)
    ox = torch.randint(0, w - size + 1, (n,), generator=gen)
    a = torch.stack([x1[i, :, y:y + size, x:x + size] for i, (y, x)
                     in enumerate(zip(oy.tolist(), ox.tolist(), strict=True))])
    b = torch.stack([x2[i, :, y:y + size, x:x + size] for i, (y, x)
                     in enumerate(zip(oy.tolist(), ox.tolist(), strict=True))])
    return a, b


def _accuracy(scorer: nn.Module, classifier: nn.Module, data: RankingData, idx: np.ndarray,
              loss_fn: nn.Module) -> tuple[float | None, float | None]:
    """Eval-mode (loss, accuracy) on whole images of pairs ``idx`` (None, None when empty)."""
    if len(idx) == 0:
        return None, None
    _, _, lg = predict(scorer, classifier, data.x1[idx], data.x2[idx])
    y = data.label[idx]
    return (float(loss_fn(torch.from_numpy(lg), torch.from_numpy(y))),
            float((lg.argmax(1) == y).mean()))


@dataclass
class _Step:
    """What one optimisation step of a fold needs (see :func:`train_fold`)."""

    scorer: nn.Module
    classifier: nn.Module
    opt: torch.optim.Optimizer
    loss_fn: nn.Module
    freeze_scorer: bool
    aug_cfg: AugmentConfig | None  # None: no augmentation
    crop: int | None


def _train_epoch(step: _Step, data: RankingData, perm: np.ndarray, batches: Iterable[int],
                 bs: int, y_all: torch.Tensor, gen: torch.Generator) -> tuple[float, int, int]:
    """One pass over ``perm`` in batches of ``bs`` (augmentation and crops drawn from ``gen``,
    in the same order as before the split): ``(summed loss, correct, pairs seen)``."""
    scorer, classifier, opt, loss_fn = step.scorer, step.classifier, step.opt, step.loss_fn
    freeze_scorer, crop = step.freeze_scorer, step.crop
    scorer.train(not freeze_scorer)
    classifier.train()
    tot_loss, tot_ok, seen = 0.0, 0, 0
    for a in batches:
        idx = perm[a:a + bs]
        x1 = torch.from_numpy(data.x1[idx]).float()
        x2 = torch.from_numpy(data.x2[idx]).float()
        if step.aug_cfg is not None:
            p = draw(len(idx), gen, step.aug_cfg)
            x1, x2 = apply(x1, p), apply(x2, p)
        scale = 1.0
        if crop is not None and crop < min(x1.shape[-2:]):
            # IQ-Net's L2-norm features grow with sqrt(area): a crop's score times
            # sqrt(whole / crop area) is on the whole image's scale, which the classifier
            # sees at selection, evaluation and export
            scale = float(np.sqrt(x1.shape[-2] * x1.shape[-1] / crop**2))
            x1, x2 = random_crops(x1, x2, crop, gen)
        y = y_all[idx]
        if freeze_scorer:
            with torch.no_grad():
                s1, s2 = score_pairs(scorer, x1, x2)
        else:
            s1, s2 = score_pairs(scorer, x1, x2)
        logits = classifier(s1 * scale, s2 * scale)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot_loss += float(loss.detach()) * len(idx)
        tot_ok += int((logits.detach().argmax(1) == y).sum())
        seen += len(idx)
    return tot_loss, tot_ok, seen


def _fold_models(cfg: TrainConfig, data: RankingData, train_idx: np.ndarray, k_seed: int,
                 scorer_init: dict | None, classifier_init: dict | None
                 ) -> tuple[nn.Module, nn.Module]:
    """A fold's scorer and classifier, initialised from the fold's seed (a metric's scale
    fitted on the training pairs), then from the given state dicts when any."""
    from rankiq.training.models.classifier import RankClassifier

    torch.manual_seed(derived_seed(cfg.seed, k_seed, 0))
    scorer = build_scorer(cfg.to_dict())
    classifier = RankClassifier()
    if cfg.model in METRIC_MODELS:
        from rankiq.training.baselines import fit_scale

        vals = np.concatenate([data.x1[train_idx, 0], data.x2[train_idx, 0]])
        scorer.scale.fill_(fit_scale(cfg.model, vals))
    if scorer_init is not None:
        scorer.load_state_dict(scorer_init)
    if classifier_init is not None:
        classifier.load_state_dict(classifier_init)
    return scorer, classifier


def _fold_step(cfg: TrainConfig, scorer: nn.Module, classifier: nn.Module,
               freeze_scorer: bool) -> _Step:
    """The optimiser (Adam; a parameter group per model, each with its ``base_lr``, the
    scorer's left out when frozen or parameterless), loss, augmentation and crop of a fold."""
    groups = []
    if not freeze_scorer and any(True for _ in scorer.parameters()):
        groups.append({"params": list(scorer.parameters()), "lr": cfg.lr, "base_lr": cfg.lr})
    groups.append({"params": list(classifier.parameters()), "lr": cfg.lr_classifier,
                   "base_lr": cfg.lr_classifier})
    opt = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
    is_metric = cfg.model in METRIC_MODELS
    crop = cfg.crop if (cfg.crop and not is_metric and cfg.model != "efficientnet") else None
    return _Step(scorer, classifier, opt, nn.CrossEntropyLoss(), freeze_scorer,
                 AugmentConfig() if cfg.augment and not is_metric else None, crop)


def _resume_state(last: Path, resume: bool, step: _Step) -> tuple[list[dict], dict, int]:
    """``(history, best, last finished epoch)``: loaded from ``last`` (models and optimiser
    too) when resuming from an existing checkpoint, else a fresh start."""
    if not (resume and last.exists()):
        return [], {"val_acc": None, "epoch": 0, "sel_acc": None}, 0
    ck = load_checkpoint(last)
    step.scorer.load_state_dict(ck["scorer"])
    step.classifier.load_state_dict(ck["classifier"])
    step.opt.load_state_dict(ck["optimizer"])
    return list(ck["history"]), dict(ck["best"]), int(ck["epoch"])


def _selection(cfg: TrainConfig, select_idx: np.ndarray | None, val_idx: np.ndarray
               ) -> tuple[np.ndarray, str]:
    """The pairs an epoch is chosen on and the rule's name: ``inner`` (``select_idx``),
    ``validation`` (legacy: the held-out fold) or ``last`` (no pairs: the last epoch)."""
    if select_idx is None and cfg.selection == "validation":
        return val_idx, "validation"
    if select_idx is not None:
        return select_idx, "inner"
    return np.zeros(0, np.int64), "last"


@dataclass
class _Fold:
    """One fold being trained (see :func:`train_fold`): its pairs, its step and the state its
    ``last.pt`` holds (``history`` rows, ``best`` epoch so far)."""

    cfg: TrainConfig
    fold: int | str
    k_seed: int  # the fold's key in :func:`derived_seed` (``cfg.folds`` for the final model)
    d: Path  # the fold's directory
    data: RankingData
    train_idx: np.ndarray
    val_idx: np.ndarray
    sel_idx: np.ndarray
    sel_name: str
    step: _Step
    history: list[dict]
    best: dict

    def epoch(self, epoch: int, progress: bool) -> dict:
        """Train epoch ``epoch`` (1-based; learning rates decayed, shuffle, augmentation and
        dropout seeded by fold and epoch), evaluate it and checkpoint; returns its history
        row."""
        t0 = time.perf_counter()
        cfg, step = self.cfg, self.step
        for g in step.opt.param_groups:
            g["lr"] = g["base_lr"] * cfg.lr_decay ** (epoch - 1)
        gen = torch.Generator().manual_seed(derived_seed(cfg.seed, self.k_seed, epoch, 1))
        torch.manual_seed(derived_seed(cfg.seed, self.k_seed, epoch, 2))  # dropout masks
        perm = self.train_idx[torch.randperm(len(self.train_idx), generator=gen).numpy()]
        batches: Iterable[int] = range(0, len(perm), cfg.batch_size)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"fold {self.fold} epoch {epoch}/{cfg.epochs}",
                           leave=False, unit="batch")
        tot_loss, tot_ok, seen = _train_epoch(step, self.data, perm, batches, cfg.batch_size,
                                              torch.from_numpy(self.data.label), gen)
        val_loss, val_acc = _accuracy(step.scorer, step.classifier, self.data, self.val_idx,
                                      step.loss_fn)
        _, sel_acc = ((None, val_acc) if self.sel_name == "validation" else
                      _accuracy(step.scorer, step.classifier, self.data, self.sel_idx,
                                step.loss_fn))
        lrs = [g["lr"] for g in step.opt.param_groups]
        row = {"epoch": epoch, "lr": lrs[0] if len(lrs) > 1 else 0.0, "lr_classifier": lrs[-1],
               "train_loss": tot_loss / max(seen, 1), "train_acc": tot_ok / max(seen, 1),
               "sel_acc": sel_acc, "val_loss": val_loss, "val_acc": val_acc,
               "seconds": round(time.perf_counter() - t0, 3)}
        self.checkpoint(row)
        return row

    def checkpoint(self, row: dict) -> None:
        """Record an epoch's row: ``best.pt`` when the selection rule prefers it, then
        ``last.pt`` (with optimiser, history and best) and the history files."""
        step, sel_acc = self.step, row["sel_acc"]
        self.history.append(row)
        state = {"scorer": step.scorer.state_dict(), "classifier": step.classifier.state_dict(),
                 "epoch": row["epoch"], "val_acc": row["val_acc"], "sel_acc": sel_acc}
        if self.sel_name == "last" or self.best["epoch"] == 0 or (
                sel_acc is not None and (self.best["sel_acc"] is None
                                         or sel_acc > self.best["sel_acc"])):
            self.best = {"val_acc": row["val_acc"], "epoch": row["epoch"], "sel_acc": sel_acc}
            _save(self.d / "best.pt", state)
        _save(self.d / "last.pt", {**state, "optimizer": step.opt.state_dict(),
                                   "history": self.history, "best": self.best})
        _history_write(self.d, self.history)

    def predict_held_out(self) -> None:
        """``predictions.csv`` of the held-out pairs by the chosen epoch's models (loaded)."""
        ck = load_checkpoint(self.d / "best.pt")
        self.step.scorer.load_state_dict(ck["scorer"])
        self.step.classifier.load_state_dict(ck["classifier"])
        x1, x2 = self.data.x1[self.val_idx], self.data.x2[self.val_idx]
        s1v, s2v, lv = predict(self.step.scorer, self.step.classifier, x1, x2)
        write_predictions(self.d / "predictions.csv", self.data, self.val_idx, s1v, s2v, lv)

    def summary(self) -> dict:
        """The fold's summary (see :func:`train_fold`)."""
        return {"best_val_acc": self.best["val_acc"], "best_epoch": self.best["epoch"],
                "selection_acc": self.best.get("sel_acc"), "selection": self.sel_name,
                "epochs_run": len(self.history), "n_train": int(len(self.train_idx)),
                "n_select": int(len(self.sel_idx)) if self.sel_name == "inner" else 0,
                "n_val": int(len(self.val_idx))}


def _epoch_line(fold: int | str, epochs: int, row: dict) -> str:
    """One epoch's log line."""
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    return (f"fold {fold} epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.3f}, selection acc {fmt(row['sel_acc'])}, held-out acc "
            f"{fmt(row['val_acc'])} ({row['seconds']:.1f} s)")


def train_fold(data: RankingData, train_idx: np.ndarray, val_idx: np.ndarray,
               config: TrainConfig | dict, fold: int | str, out: Path, *,
               select_idx: np.ndarray | None = None, resume: bool = False,
               progress: bool = False, scorer_init: dict | None = None,
               freeze_scorer: bool = False, classifier_init: dict | None = None,
               log: Callable[[str], None] | None = None) -> dict:
    """Train one fold (or ``fold="final"``); writes ``out/fold{K}/`` and returns its summary.

    Args:
        data: labelled pairs (network inputs or metric values).
        train_idx: indices into ``data`` the model is fitted on.
        val_idx: the held-out fold (may be empty: the final model); never used to choose.
        config: the run's :class:`TrainConfig` (or a dict of its fields).
        fold: fold number K, or ``"final"``.
        out: run directory.
        select_idx: pairs the epoch is chosen on (inner split); None: the held-out fold when
            ``config.selection == "validation"`` (legacy), else the last epoch.
        resume: continue from ``last.pt`` when present (a finished fold is not retrained).
        progress: show a tqdm bar per epoch.
        scorer_init: state dict to start the scorer from (distillation student).
        classifier_init: state dict to start the classifier from.
        freeze_scorer: train the classifier only (scorer kept in eval mode).

    Returns:
        ``{"best_val_acc" (held-out accuracy at the chosen epoch), "best_epoch",
        "selection_acc", "selection", "epochs_run", "n_train", "n_select", "n_val"}``.
    """
    cfg = TrainConfig.coerce(config)
    k_seed = cfg.folds if fold == FINAL else int(fold)
    d = fold_dir(out, fold)
    d.mkdir(parents=True, exist_ok=True)
    scorer, classifier = _fold_models(cfg, data, train_idx, k_seed, scorer_init, classifier_init)
    step = _fold_step(cfg, scorer, classifier, freeze_scorer)
    history, best, start = _resume_state(d / "last.pt", resume, step)
    run = _Fold(cfg, fold, k_seed, d, data, train_idx, val_idx,
                *_selection(cfg, select_idx, val_idx), step, history, best)
    if start == 0 and cfg.classifier_warmup > 0:
        warmup_classifier(scorer, classifier, data.x1[train_idx], data.x2[train_idx],
                          torch.from_numpy(data.label)[train_idx], cfg.classifier_warmup,
                          cfg.classifier_warmup_lr)
    for epoch in range(start + 1, cfg.epochs + 1):
        row = run.epoch(epoch, progress)
        if log:
            log(_epoch_line(fold, cfg.epochs, row))
    if not (d / "best.pt").exists():
        raise RunError(f"fold {fold} has no trained epoch (epochs={cfg.epochs})", source=str(d))
    if len(val_idx):
        run.predict_held_out()
    return run.summary()


def summarise_folds(folds: dict[int, dict], config: TrainConfig | dict,
                    pooled: dict | None = None) -> dict:
    """summary.json: per-fold entries, ``val_acc`` list (held-out accuracy at each fold's chosen
    epoch), ``mean`` and ``sd`` (ddof=1, across folds) and ``held_out`` (pooled over the
    held-out pairs of all folds, with 95 % CIs, see :mod:`rankiq.training.stats`)."""
    cfg = TrainConfig.coerce(config)
    accs = [folds[k]["best_val_acc"] for k in sorted(folds)]
    arr = np.asarray(accs, dtype=np.float64)
    return {"model": cfg.model, "mode": cfg.mode, "input_kind": cfg.input_kind,
            "student": cfg.student, "selection": cfg.selection,
            "folds": {str(k): folds[k] for k in sorted(folds)}, "val_acc": accs,
            "mean": float(arr.mean()) if len(arr) else None,
            "sd": float(arr.std(ddof=1)) if len(arr) > 1 else None,
            "held_out": pooled, "complete": len(folds) == cfg.folds}


def pooled_held_out(out: Path, data: RankingData, groups: np.ndarray, seed: int) -> dict | None:
    """Held-out accuracy over every fold's predictions.csv with 95 % CIs (cluster bootstrap
    over ``groups``, Wilson over pairs); None before any fold finished."""
    from rankiq.training.runs import read_predictions
    from rankiq.training.stats import held_out_accuracy

    pred = read_predictions(out)
    if not pred:
        return None
    group_of = dict(zip(data.pair_id.tolist(), np.asarray(groups).astype(str).tolist(),
                        strict=True))
    ids = [p for p in sorted(pred) if p in group_of]
    correct = np.array([pred[p][2] == pred[p][3] for p in ids], dtype=bool)
    return held_out_accuracy(correct, np.array([group_of[p] for p in ids]), seed=seed)


def run_folds(data: RankingData, fold_of: np.ndarray, config: TrainConfig | dict, out: Path,
              *, groups: np.ndarray | None = None, only: list[int] | None = None,
              resume: bool = False, progress: bool = False,
              log: Callable[[str], None] | None = None,
              fold_hook: Callable[[int, np.ndarray, np.ndarray], dict] | None = None) -> dict:
    """Train every fold (or ``only`` those), updating summary.json after each.

    ``groups`` ``(N,)`` keys the folds were grouped by (default ``data.source_id``): the inner
    epoch-selection split and the CI's bootstrap use them too. ``fold_hook(k, train_idx,
    val_idx)`` may return extra keyword arguments for :func:`train_fold` (used by distillation
    to pass the student's weights).
    """
    cfg = TrainConfig.coerce(config)
    groups = data.source_id if groups is None else groups
    k_total = cfg.folds
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
        sel = None
        if cfg.selection == "inner":
            tr, sel = inner_split(tr, groups, cfg.inner_fraction,
                                  derived_seed(cfg.seed, k, 0, 3))
        results[k] = train_fold(data, tr, va, cfg, k, out, select_idx=sel, resume=resume,
                                progress=progress, log=log, **extra)
        write_json(out / SUMMARY, summarise_folds(
            results, cfg, pooled_held_out(out, data, groups, cfg.seed)))
    return summarise_folds(results, cfg, pooled_held_out(out, data, groups, cfg.seed))


def check_resume(out: Path, config: TrainConfig | dict, resume: bool) -> None:
    """Refuse to mix runs: an existing run directory needs ``resume`` and the same config
    (except ``epochs``, which may grow, and the fold list). A config.json this version cannot
    read is a one-line :class:`RunError`."""
    from rankiq.training.runs import CONFIG, read_json

    p = out / CONFIG
    if not p.exists():
        return
    if not resume:
        raise RunError("already holds a run; use --resume to continue it or another --out",
                       source=str(out))
    old = TrainConfig.from_run_dict(read_json(p)).to_dict()
    new = TrainConfig.coerce(config).to_dict()
    free = {"epochs", "fold", "created_by"}
    diff = sorted(k for k in set(old) | set(new) if k not in free and old.get(k) != new.get(k))
    if diff:
        raise RunError(f"cannot resume: the run was made with different {', '.join(diff)}",
                       source=str(out))


def train_run(pairs: str | Path, rankings: str | Path, out: str | Path,
              config: TrainConfig | dict, *, only: list[int] | None = None,
              resume: bool = False, progress: bool = False,
              log: Callable[[str], None] | None = None) -> dict:
    """Train a run end to end (the body of ``rankiq train`` for non-distilled models).

    Args:
        pairs, rankings: the data.
        out: run directory (created; an existing one needs ``resume``).
        config: :class:`TrainConfig` (or a dict of its fields; ``grid`` None = pairs size).
        only: train these folds only (no final model).

    Returns:
        The summary dict (also in ``out/summary.json``), with ``grouping`` (what the folds are
        grouped by, how many source volumes and subjects) and, with ``final``, ``final``.
    """
    from rankiq.training.data import load_ranking_data
    from rankiq.training.folds import assign_folds, fold_groups
    from rankiq.training.runs import CONFIG, sha256_files

    out = Path(out)
    cfg = TrainConfig.coerce(config)
    metric = cfg.model if cfg.model in METRIC_MODELS else None
    data = load_ranking_data(pairs, rankings, mode=cfg.mode, input_kind=cfg.input_kind,
                             grid=cfg.grid, metric=metric)
    cfg = cfg.replace(grid=tuple(data.grid), data={
        "pairs": str(Path(pairs).resolve()), "rankings": str(Path(rankings).resolve()),
        "fingerprint": sha256_files(pairs, rankings), "n_labelled": len(data),
        "pairs_size": data.size})
    check_resume(out, cfg, resume)
    groups, grouping = fold_groups(data.source_id, cfg.group_by, cfg.folds)
    fold_of = assign_folds(groups, cfg.folds, cfg.seed)
    if only is not None and any(not 0 <= k < cfg.folds for k in only):
        raise RunError(f"--fold must be in 0..{cfg.folds - 1}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG, cfg.to_dict())
    summary = run_folds(data, fold_of, cfg, out, groups=groups, only=only, resume=resume,
                        progress=progress, log=log)
    summary["grouping"] = grouping
    if cfg.final and only is None and summary["complete"]:
        chosen = [int(f["best_epoch"]) for f in summary["folds"].values()]
        n_epochs = max(1, int(np.median(chosen)))
        everything = np.arange(len(data))
        res = train_fold(data, everything, np.zeros(0, np.int64), cfg.replace(epochs=n_epochs),
                         FINAL, out, resume=resume, progress=progress, log=log)
        summary["final"] = {"epochs": n_epochs, "chosen_epochs": chosen,
                            "n_train": res["n_train"]}
    write_json(out / SUMMARY, summary)
    return summary
