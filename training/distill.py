"""A no-reference scorer by distillation: reproduce the reference-subtracted IQ-Net's score
from the corrupted image alone.

Batch QA of archives has no reference, and the paper's no-reference IQ-Net ranked at chance
(49.8 %): the faithful IQ-Net is a positively weighted sum of norms of linear filters, which
cannot tell an artifact from anatomy without the reference to subtract. The student here sees
the normalised image only (``prepare(image)``), and is trained, per fold, to reproduce the
fold's reference-mode teacher run (``log`` of its score: the scores span orders of magnitude) on

* both images of every training pair (teacher input ``prepare(image, reference)``), and
* as many fresh random corruptions of the training references per epoch
  (:func:`rankiq.training.synthetic.random_corruption`, the simulator's corruption ranges),

with the same augmentation drawn for the teacher's and the student's inputs. Validation pairs
are never seen (the teacher of fold K was trained without them too). Stage 2 trains a rank
classifier (initialised from the teacher's) on the frozen student's scores with the consensus
labels, so the run directory and :func:`rankiq.training.factory.load_run` work as for any run
(config ``model: "distill"``, ``mode: "no-reference"``, ``student``: the architecture).

Students: ``iqnet-relu`` (:class:`NoRefStudent`: IQ-Net's 5 blocks with ReLU, no dropout, its 41
L2-norm features, ``log`` then a signed ``Linear(41, 1)``, output ``exp`` so the score is in the
teacher's units; 5,563 parameters) or ``efficientnet`` (:class:`rankiq.training.models.efficientnet.
EfficientNetScorer` regressing the log score, ``exp`` on output).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rankiq.training.augment import AugmentConfig, apply, draw
from rankiq.training.factory import (  # noqa: F401 - NoRefStudent, ExpScorer: re-exported
    ExpScorer,
    NoRefStudent,
    build_student,
    load_checkpoint,
    load_run,
)
from rankiq.training.runs import RunError, fold_dir, read_config
from torch import nn

LOG_EPS = 1e-3  # relative to the median teacher score: keeps log finite for near-perfect images


def check_teacher(teacher: Path, config: dict) -> dict:
    """The teacher run's config; it must be a reference-mode scorer on the same data, folds and
    seed (else its validation folds would leak into the student's training)."""
    t = read_config(teacher)
    if t["mode"] != "reference" or t["model"] not in ("iqnet", "efficientnet"):
        raise RunError("the teacher must be a reference-mode iqnet/efficientnet run",
                       source=str(teacher))
    for k in ("folds", "seed"):
        if t.get(k) != config.get(k):
            raise RunError(f"teacher {k}={t.get(k)} differs from this run's {config.get(k)}",
                           source=str(teacher))
    if t["data"]["fingerprint"] != config["data"]["fingerprint"]:
        raise RunError("teacher was trained on different data (fingerprint differs)",
                       source=str(teacher))
    return t


def fresh_inputs(references: np.ndarray, n: int, rng: np.random.Generator, *, grid, input_kind,
                 teacher_kind) -> tuple[np.ndarray, np.ndarray]:
    """``n`` fresh corruptions of randomly chosen ``references`` (complex ``(M, S, S)``):
    (teacher inputs, student inputs), float32 ``(n, C, H, W)`` each, via ``prepare``."""
    from rankiq.service.preprocess import prepare
    from rankiq.training.synthetic import random_corruption

    pick = rng.integers(0, len(references), n)
    refs = references[pick]
    imgs = np.stack([random_corruption(r, rng) for r in refs])
    t = prepare(imgs, refs, grid=grid, input_kind=teacher_kind).network_input
    s = prepare(imgs, None, grid=grid, input_kind=input_kind).network_input
    return t.astype(np.float32), s.astype(np.float32)


def distill_fold(teacher: nn.Module, t_x: np.ndarray, s_x: np.ndarray, references: np.ndarray,
                 config: dict, fold: int, *, teacher_kind: str, progress: bool = False,
                 log: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """Stage 1: fit the student to ``log`` teacher scores.

    Args:
        teacher: reference-mode scorer (eval mode).
        t_x, s_x: float32 ``(M, C, H, W)`` teacher and student inputs of the training images.
        references: complex ``(R, S, S)`` training references for fresh corruptions.
        config: run config (``distill_epochs``, ``fresh_fraction``, ``batch_size``,
            ``distill_lr``, ``seed``, ``grid``, ``input_kind``).

    Returns:
        (student state dict, stats: per-epoch loss, Spearman on the training images).
    """
    from rankiq.training.train import derived_seed
    from scipy.stats import spearmanr

    seed = int(config["seed"])
    torch.manual_seed(derived_seed(seed, fold, 0, 7))
    student = build_student(config)
    opt = torch.optim.Adam(student.parameters(), lr=float(config.get("distill_lr", 1e-3)),
                           weight_decay=float(config.get("weight_decay", 1e-5)))
    bs = int(config.get("batch_size", 24))
    n_fresh = int(round(float(config.get("fresh_fraction", 1.0)) * len(t_x)))
    grid = tuple(config["grid"])

    @torch.no_grad()
    def targets(x: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.log(teacher(x) + LOG_EPS * scale)

    with torch.no_grad():
        base = np.concatenate([teacher(torch.from_numpy(t_x[a:a + 64])).numpy()
                               for a in range(0, len(t_x), 64)])
    scale = float(np.median(base))
    hist = []
    for epoch in range(1, int(config.get("distill_epochs", config["epochs"])) + 1):
        t0 = time.perf_counter()
        rng = np.random.default_rng(derived_seed(seed, fold, epoch, 8))
        gen = torch.Generator().manual_seed(derived_seed(seed, fold, epoch, 9))
        if n_fresh:
            ft, fs = fresh_inputs(references, n_fresh, rng, grid=grid,
                                  input_kind=config["input_kind"], teacher_kind=teacher_kind)
            all_t, all_s = np.concatenate([t_x, ft]), np.concatenate([s_x, fs])
        else:
            all_t, all_s = t_x, s_x
        perm = torch.randperm(len(all_t), generator=gen).numpy()
        student.train()
        tot, seen = 0.0, 0
        batches = range(0, len(perm), bs)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"distill fold {fold} epoch {epoch}", leave=False)
        for a in batches:
            idx = perm[a:a + bs]
            xt = torch.from_numpy(all_t[idx])
            xs = torch.from_numpy(all_s[idx])
            if config.get("augment", True):
                p = draw(len(idx), gen, AugmentConfig())
                xt, xs = apply(xt, p), apply(xs, p)
            y = targets(xt, scale)
            loss = torch.mean((student.log_score(xs) - y) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            seen += len(idx)
        student.eval()
        with torch.no_grad():
            pred = np.concatenate([student(torch.from_numpy(s_x[a:a + 64])).numpy()
                                   for a in range(0, len(s_x), 64)])
        rho = float(spearmanr(pred, base).statistic)
        hist.append({"epoch": epoch, "loss": tot / max(seen, 1), "train_spearman": rho,
                     "images": int(len(all_t)), "seconds": round(time.perf_counter() - t0, 2)})
        if log:
            log(f"distill fold {fold} epoch {epoch}: log-score MSE {hist[-1]['loss']:.4f}, "
                f"Spearman vs teacher on training images {rho:.3f} ({hist[-1]['seconds']} s)")
    return student.state_dict(), {"history": hist}


def distill_run(pairs: str | Path, rankings: str | Path, out: str | Path, config: dict,
                teacher: str | Path, *, only: list[int] | None = None, resume: bool = False,
                progress: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """``rankiq train --model distill``: stage 1 (distillation) and stage 2 (classifier) per
    fold. ``config`` as for :func:`rankiq.training.train.train_run` plus ``student``."""
    from rankiq.training.data import load_ranking_data, open_pairs
    from rankiq.training.folds import assign_folds
    from rankiq.training.runs import CONFIG, sha256_files, write_json
    from rankiq.training.train import DEFAULTS, check_resume, run_folds

    out, teacher = Path(out), Path(teacher)
    config = {**DEFAULTS, **config, "model": "distill", "mode": "no-reference"}
    config["data"] = {"pairs": str(Path(pairs).resolve()),
                      "rankings": str(Path(rankings).resolve()),
                      "fingerprint": sha256_files(pairs, rankings)}
    tcfg = check_teacher(teacher, config)
    config["grid"] = list(tcfg["grid"])
    config["teacher"] = {"run": str(teacher.resolve()), "model": tcfg["model"],
                         "input_kind": tcfg["input_kind"]}
    ref_data = load_ranking_data(pairs, rankings, mode="reference",
                                 input_kind=tcfg["input_kind"], grid=tuple(tcfg["grid"]))
    data = load_ranking_data(pairs, rankings, mode="no-reference",
                             input_kind=config["input_kind"], grid=tuple(tcfg["grid"]))
    config["data"].update(n_labelled=len(data), pairs_size=data.size)
    check_resume(out, config, resume)
    fold_of = assign_folds(data.source_id, int(config["folds"]), int(config["seed"]))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG, config)
    with open_pairs(pairs) as pf:
        all_refs = pf.h5["reference"]

        def hook(k: int, tr: np.ndarray, va: np.ndarray) -> dict:
            t = load_run(teacher, fold=k)
            d = fold_dir(out, k)
            d.mkdir(parents=True, exist_ok=True)
            path = d / "student.pt"
            if resume and path.exists():
                state = load_checkpoint(path)["student"]
            else:
                t_x = np.concatenate([ref_data.x1[tr], ref_data.x2[tr]])
                s_x = np.concatenate([data.x1[tr], data.x2[tr]])
                rows = np.unique(data.row[tr])
                refs = all_refs[rows]
                state, stats = distill_fold(t.scorer, t_x, s_x, refs, config, k,
                                            teacher_kind=tcfg["input_kind"], progress=progress,
                                            log=log)
                torch.save({"student": state, **stats}, path)
                write_json(d / "distill.json", stats)
            return {"scorer_init": state, "freeze_scorer": True,
                    "classifier_init": t.classifier.state_dict()}

        return run_folds(data, fold_of, config, out, only=only, resume=resume,
                         progress=progress, log=log, fold_hook=hook)
