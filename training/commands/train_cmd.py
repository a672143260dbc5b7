"""``rankiq train``, ``rankiq evaluate`` and ``rankiq bench train``.

Handlers import torch and the training modules lazily (``rankiq --help`` never needs torch)
and call :func:`rankiq.service.cli.require` first, so a missing torch is a one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry

MODEL_CHOICES = ("iqnet", "efficientnet", "mse", "ssim", "distill")


def add_commands(reg: Registry) -> None:
    """Add ``rankiq train``, ``rankiq evaluate`` and ``rankiq bench train``."""
    t = reg.command("train", "rankiq.training.commands.train_cmd:train",
                    "train a scoring network (or a metric baseline) and its rank classifier "
                    "with k-fold cross-validation")
    t.add_argument("--data", required=True, help="pairs HDF5 file (`rankiq simulate`)")
    t.add_argument("--rankings", required=True,
                   help="consensus CSV (`rankiq agreement --consensus`) or a votes CSV")
    t.add_argument("--model", choices=MODEL_CHOICES, default="iqnet",
                   help="iqnet (default), efficientnet, mse, ssim, or distill (a no-reference "
                        "student of a reference-mode --teacher run)")
    t.add_argument("--no-reference", action="store_true",
                   help="score the image alone (no reference subtraction)")
    t.add_argument("--input", choices=("magnitude", "complex"), default="magnitude",
                   help="network input: magnitude (1 channel, default) or complex (real/imag)")
    t.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    t.add_argument("--fold", type=int, action="append",
                   help="train only this fold (repeatable; default all)")
    t.add_argument("--epochs", type=int, default=30, help="epochs per fold (default 30)")
    t.add_argument("--out", required=True, help="run directory (runs/NAME)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run")
    t.add_argument("--seed", type=int, default=0, help="seed (folds, init, batches; default 0)")
    t.add_argument("--grid", default=None,
                   help="training grid S or HxW (default: the pairs file's size)")
    t.add_argument("--batch-size", type=int, default=24, help="default 24")
    t.add_argument("--lr", type=float, default=1e-4, help="scoring network lr (default 1e-4)")
    t.add_argument("--lr-classifier", type=float, default=1e-3,
                   help="classifier lr (default 1e-3)")
    t.add_argument("--lr-decay", type=float, default=0.999,
                   help="lr multiplier per epoch (default 0.999)")
    t.add_argument("--weight-decay", type=float, default=1e-5, help="default 1e-5")
    t.add_argument("--classifier-warmup", type=int, default=300,
                   help="full-batch steps fitting the classifier to the initial scores before "
                        "epoch 1 (default 300; 0 = off, as in the paper)")
    t.add_argument("--no-augment", action="store_true", help="disable augmentation")
    t.add_argument("--activation", choices=("identity", "relu", "leaky_relu"),
                   default="identity", help="IQ-Net activation (default identity, as run)")
    t.add_argument("--dropout", type=float, default=0.5,
                   help="IQ-Net dropout (channels after every block and the features; "
                        "default 0.5 as in the reference)")
    t.add_argument("--effnet-size", type=int, default=224,
                   help="EfficientNet input side after resizing (default 224)")
    t.add_argument("--teacher", help="distill: the reference-mode run to reproduce")
    t.add_argument("--student", choices=("iqnet-relu", "efficientnet"), default="iqnet-relu",
                   help="distill: student architecture (default iqnet-relu)")
    t.add_argument("--distill-epochs", type=int, default=None,
                   help="distill: regression epochs (default --epochs)")
    t.add_argument("--fresh-fraction", type=float, default=1.0,
                   help="distill: fresh simulated corruptions per epoch, as a fraction of the "
                        "training images (default 1)")
    t.add_argument("--crop", type=int, default=None,
                   help="train on random CROP x CROP windows at native resolution (IQ-Net is "
                        "fully convolutional; scores are put on the whole image's scale); "
                        "selection and evaluation use whole images (default: whole images)")
    t.add_argument("--selection", choices=("inner", "validation"), default="inner",
                   help="choose the epoch on an inner split of the training folds (default) "
                        "or on the held-out fold itself (legacy: biased upward)")
    t.add_argument("--inner-fraction", type=float, default=0.2,
                   help="share of the training folds' groups held for epoch selection "
                        "(default 0.2)")
    t.add_argument("--group-by", choices=("volume", "subject"), default="volume",
                   help="group folds by true source volume (default; falls back to subjects "
                        "when there are fewer volumes than folds) or by subject")
    t.add_argument("--final", action="store_true",
                   help="after the folds, train one model on all labelled pairs for the "
                        "folds' median chosen epoch (final/: what `rankiq export` ships)")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")

    e = reg.command("evaluate", "rankiq.training.commands.train_cmd:evaluate",
                    "compare trained runs: accuracy table (Markdown+JSON), repeated-measures "
                    "ANOVA, paired t-tests vs MSE/SSIM, Figure 6 plots; `rankiq evaluate real`: "
                    "no-reference models vs MRIQC's IQMs on graded corruptions of real MR "
                    "images")
    e.add_argument("runs", nargs="+",
                   help="run directories, or the word `real` (options below)")
    e.add_argument("--out", help="report directory (runs; required), or a Markdown file "
                                 "(real: the table and the command line that made it)")
    e.add_argument("--no-figures", action="store_true", help="table and statistics only")
    e.add_argument("--figure-slices", type=int, default=4,
                   help="held-out slices per fold corrupted for Figure 6 (default 4)")
    e.add_argument("--seed", type=int, default=0,
                   help="seed of the Figure 6 corruptions (real: of the ladders)")
    e.add_argument("--threads", type=int, default=None,
                   help="torch threads (real: ONNX Runtime threads, default 1)")
    from rankiq.training.commands.realeval_cmd import add_real_arguments

    add_real_arguments(e)

    b = reg.bench("train", "rankiq.training.commands.train_cmd:bench_train",
                  "seconds per epoch and pairs per second of each model's training step")
    b.add_argument("--size", type=int, default=396, help="image side (default 396)")
    b.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    b.add_argument("--batch-size", type=int, default=24, help="default 24")
    b.add_argument("--steps", type=int, default=3, help="timed steps per model (default 3)")
    b.add_argument("--pairs", type=int, default=2333,
                   help="training pairs per epoch for the projection (default 2333 = 80 %% "
                        "of the paper's 2916)")
    b.add_argument("--models", default="iqnet,iqnet-complex,efficientnet,distill-student,mse",
                   help="comma-separated subset of iqnet, iqnet-complex, efficientnet, "
                        "distill-student, mse")
    b.add_argument("--experiment", choices=("denoise", "recon"), default=None,
                   help="time the denoising or reconstruction experiment's training step per "
                        "loss instead (its CPU defaults; --losses, --device, --steps, "
                        "--threads apply)")
    b.add_argument("--losses", default=None,
                   help="with --experiment: comma-separated losses (default iqnet,mse,ssim)")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="with --experiment: cpu or cuda defaults")
    b.add_argument("--json", action="store_true", help="print the results as JSON")


def _grid(value: str | None) -> tuple[int, int] | None:
    from rankiq.training.runs import RunError

    if value is None:
        return None
    try:
        parts = [int(v) for v in value.lower().split("x")]
    except ValueError:
        raise RunError(f"--grid {value!r}: expected S or HxW") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 16:
        raise RunError(f"--grid {value!r}: expected S or HxW with sides >= 16")
    return parts[0], parts[1]


def _check_inputs(args: argparse.Namespace) -> None:
    from rankiq.service.readers.rankings import RankingsFormatError
    from rankiq.training.pairs import PairsFileError
    from rankiq.training.runs import RunError

    if not Path(args.data).is_file():
        raise PairsFileError("no such pairs file", source=args.data)
    if not Path(args.rankings).is_file():
        raise RankingsFormatError("no such rankings file", source=args.rankings)
    if args.epochs < 1 or args.folds < 2 or args.batch_size < 1:
        raise RunError("--epochs and --batch-size must be >= 1 and --folds >= 2")
    if args.model == "distill" and not args.teacher:
        raise RunError("--model distill needs --teacher RUN_DIR (a reference-mode run)")
    if args.model in ("mse", "ssim") and args.no_reference:
        raise RunError(f"--model {args.model} compares with the reference; "
                       "--no-reference does not apply")


def train(args: argparse.Namespace) -> int:
    """``rankiq train``."""
    from rankiq.service.commands.registry import require

    require("torch", "train")
    _check_inputs(args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rankiq.training.config import TrainConfig

    config = TrainConfig(
        model=args.model,
        mode="no-reference" if (args.no_reference or args.model == "distill") else "reference",
        input_kind="magnitude" if args.model in ("mse", "ssim") else args.input,
        grid=_grid(args.grid), folds=args.folds, seed=args.seed,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        lr_classifier=args.lr_classifier, lr_decay=args.lr_decay,
        weight_decay=args.weight_decay, augment=not args.no_augment,
        activation=args.activation, dropout=args.dropout,
        effnet_size=args.effnet_size, classifier_warmup=args.classifier_warmup,
        crop=args.crop, selection=args.selection, inner_fraction=args.inner_fraction,
        group_by=args.group_by, final=args.final, created_by="rankiq train")
    progress = not args.quiet and sys.stderr.isatty()
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    if args.model == "distill":
        from rankiq.training.distill import distill_run

        config = config.replace(student=args.student, fresh_fraction=args.fresh_fraction,
                                distill_epochs=args.distill_epochs or args.epochs)
        summary = distill_run(args.data, args.rankings, args.out, config.to_dict(), args.teacher,
                              only=args.fold, resume=args.resume, progress=progress, log=log)
    else:
        from rankiq.training.train import train_run

        summary = train_run(args.data, args.rankings, args.out, config, only=args.fold,
                            resume=args.resume, progress=progress, log=log)
    accs = " ".join(f"{a:.3f}" for a in summary["val_acc"])
    sd = "" if summary["sd"] is None else f" +- {summary['sd']:.3f}"
    pooled = summary.get("held_out") or {}
    ci = pooled.get("ci95_cluster_bootstrap") or pooled.get("ci95_wilson")
    pooled_txt = ("" if not pooled.get("n") else
                  f"; pooled held-out {pooled['accuracy']:.3f} on {pooled['n']} pairs"
                  + ("" if ci is None else f", 95 % CI [{ci[0]:.3f}, {ci[1]:.3f}]"))
    final = summary.get("final")
    final_txt = "" if not final else f"; final model: all pairs, {final['epochs']} epochs"
    print(f"{args.out}: {config.model} ({config.mode}) held-out accuracy per fold "
          f"[{accs}] (epoch chosen on {config.selection} pairs), mean {summary['mean']:.3f}{sd}"
          f"{pooled_txt}{final_txt}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """``rankiq evaluate`` (``rankiq evaluate real``: :mod:`.realeval_cmd`)."""
    from rankiq.service.commands.registry import require

    if args.runs[0] == "real":
        from rankiq.training.commands.realeval_cmd import evaluate_real

        return evaluate_real(args)
    if not args.out:
        from rankiq.training.runs import RunError

        raise RunError("--out DIR is required (the report directory)")
    require("torch", "evaluate")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rankiq.training.evaluate import evaluate_runs

    report = evaluate_runs(args.runs, args.out, figures=not args.no_figures,
                           figure_slices=args.figure_slices, seed=args.seed)
    print(report["markdown"])
    return 0


def bench_train(args: argparse.Namespace) -> int:
    """``rankiq bench train``."""
    from rankiq.service.commands.registry import require

    require("torch", "bench train")
    if args.experiment:  # seconds per epoch per loss of `rankiq experiment`
        from rankiq.training.commands.experiment_cmd import bench_experiment

        return bench_experiment(args)
    from rankiq.training.bench import bench_training, format_bench

    rows = bench_training(size=args.size, threads=args.threads, batch=args.batch_size,
                          steps=args.steps, pairs=args.pairs,
                          models=[m.strip() for m in args.models.split(",") if m.strip()])
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(format_bench(rows, size=args.size, threads=args.threads, batch=args.batch_size,
                       pairs=args.pairs))
    return 0
