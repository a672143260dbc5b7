"""``rankiq experiment denoise|recon``: the learned metric as a training loss (the paper's
denoising and reconstruction experiments), and the per-loss timing for ``rankiq bench train
--experiment``.

Registration imports nothing heavy; handlers import torch when they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry

_HANDLER = "rankiq.training.commands.experiment_cmd:experiment"


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers"
                                         ) from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by ``rankiq experiment`` and ``rankiq bench train --experiment``; None
    keeps the device's default (docs/experiments.md)."""
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (the reduced defaults) or cuda (the paper's width, 64)")
    p.add_argument("--size", type=int, help="image side in pixels (CPU default 128)")
    p.add_argument("--width", type=int, help="first-level ResUNet channels (CPU default: 16 "
                                             "denoise, 8 recon; CUDA 64)")
    p.add_argument("--epochs", type=int, help="epochs per loss")
    p.add_argument("--train", dest="n_train", type=int, help="training slices")
    p.add_argument("--val", dest="n_val", type=int, help="validation slices")
    p.add_argument("--test", dest="n_test", type=int, help="test slices (per acceleration)")
    p.add_argument("--batch", type=int, help="slices per step (default 4 CPU, 8 CUDA)")
    p.add_argument("--lr", type=float, help="Adam learning rate (CPU 1e-3, CUDA 1e-4)")
    p.add_argument("--iterations", type=int, help="recon: unrolled rounds (default 4)")
    p.add_argument("--losses", type=_names,
                   help="comma-separated: iqnet, mse, ssim (default all three); denoise also "
                        "efficientnet-ref, efficientnet-noref (need trained EfficientNet models)")
    p.add_argument("--metric", help="reference IQ-Net model directory (default "
                                    "models/iqnet-ref)")
    p.add_argument("--efficientnet", help="EfficientNet reference-mode model directory "
                                          "(default: found in models/)")
    p.add_argument("--efficientnet-noref", help="EfficientNet no-reference model directory")
    p.add_argument("--accel-train", type=float, help="recon: training acceleration (16)")
    p.add_argument("--accels-test", type=_floats, help="recon: test accelerations (8,16)")
    p.add_argument("--calib", type=int, help="recon: fully sampled centre side (16)")
    p.add_argument("--seed", type=int, help="data, initialisation and batch seed (0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def add_commands(reg: Registry) -> None:
    """Add ``rankiq experiment denoise`` and ``rankiq experiment recon``."""
    p = reg.command("experiment", _HANDLER,
                    "the paper's denoising and reconstruction experiments: one network per "
                    "loss (IQ-Net, MSE, SSIM...), test-set MSE/SSIM/IQ-Net score, paired "
                    "t-tests, figures; an interrupted run resumes when rerun")
    sub = p.add_subparsers(dest="experiment_kind", metavar="{denoise,recon}", required=True)
    for kind, text in (("denoise", "complex ResUNet removing complex Gaussian noise added to "
                                   "fully sampled k-space"),
                       ("recon", "unrolled Landweber + ResUNet reconstruction of Poisson-disc "
                                 "undersampled multi-coil k-space (ESPIRiT maps)")):
        s = sub.add_parser(kind, help=text, description=text)
        s.set_defaults(handler=_HANDLER)
        s.add_argument("--out", required=True, help="run folder (runs/NAME); rerun to resume")
        add_scale_arguments(s)
        s.add_argument("--models", default="models",
                       help="where EfficientNet models are looked for (default models)")
        s.add_argument("--no-figures", action="store_true", help="tables and statistics only")
        s.add_argument("--json", action="store_true", help="print the results JSON to stdout")
        s.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def config_from_args(kind: str, args: argparse.Namespace):
    """The :class:`ExperimentConfig` the options ask for (device defaults + overrides)."""
    from rankiq.training.experiments.config import ExperimentConfig

    cfg = ExperimentConfig.defaults(kind, args.device)
    return cfg.with_overrides(**{k: getattr(args, k, None) for k in (
        "size", "width", "epochs", "n_train", "n_val", "n_test", "batch", "lr", "iterations",
        "losses", "metric", "efficientnet", "efficientnet_noref", "accel_train", "accels_test",
        "calib", "seed")})


def _torch(args: argparse.Namespace, command: str):
    from rankiq.service.commands.registry import require
    from rankiq.training.experiments.config import ExperimentError

    require("torch", command)
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise ExperimentError(f"--threads must be >= 1, not {args.threads}")
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ExperimentError("--device cuda: torch sees no CUDA device here")
    return torch


def experiment(args: argparse.Namespace) -> int:
    """``rankiq experiment denoise|recon``."""
    _torch(args, f"experiment {args.experiment_kind}")
    from rankiq.training.experiments.run import run_experiment

    cfg = config_from_args(args.experiment_kind, args)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    results = run_experiment(args.out, cfg, figures=not args.no_figures, log=log,
                             models_dir=args.models)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        from rankiq.training.experiments.run import results_markdown

        print(results_markdown(results))
    return 0


def bench_experiment(args: argparse.Namespace) -> int:
    """``rankiq bench train --experiment denoise|recon``: seconds per epoch per loss."""
    _torch(args, "bench train")
    from rankiq.training.experiments.run import bench_losses

    # the experiment's own defaults: bench train's --size/--batch-size describe the ranking nets
    losses = _names(args.losses) if args.losses else None
    cfg = config_from_args(args.experiment, argparse.Namespace(device=args.device,
                                                               losses=losses))
    rows = bench_losses(cfg, steps=args.steps)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"rankiq bench train --experiment {cfg.kind}: {cfg.size}x{cfg.size}, width "
          f"{cfg.width}, batch {cfg.batch}, {args.threads} thread(s), {cfg.device}, epoch = "
          f"{cfg.n_train} training slices (median of {args.steps} steps)")
    print(f"{'loss':<20} {'params':>9} {'s/step':>8} {'s/epoch':>9}")
    for r in rows:
        print(f"{r['loss']:<20} {r['params']:>9,} {r['seconds_per_step']:>8.3f} "
              f"{r['seconds_per_epoch']:>9.1f}")
    return 0
