"""``rankiq export`` (training run -> shipped model directory) and ``rankiq bench score``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry


def add_commands(reg: Registry) -> None:
    """Add ``rankiq export`` and ``rankiq bench score``."""
    p = reg.command("export", "rankiq.training.commands.export_cmd:export",
                    "export a training run to a shipped model directory (ONNX + metadata), "
                    "parity-checked against torch")
    p.add_argument("run", help="training run directory (runs/NAME)")
    p.add_argument("--out", required=True, help="model directory to write (models/NAME)")
    p.add_argument("--name", help="model name (default: the --out folder name)")
    p.add_argument("--version", default="0.1.0", help="model version (default 0.1.0)")
    p.add_argument("--fold", type=int, default=None,
                   help="export this fold's model instead of final/ (the model trained on all "
                        "labelled pairs with --final; default); the best fold is never chosen")
    p.add_argument("--seed", type=int, default=0, help="seed of the parity inputs (default 0)")
    p.add_argument("--calibrate", metavar="PAIRS",
                   help="calibrate the QA thresholds per contrast family on this pairs file "
                        "(default: provisional thresholds)")

    b = reg.bench("score", "rankiq.training.commands.export_cmd:bench",
                  "IQ-Net scoring speed: torch eager vs naive vs optimised ONNX, with and "
                  "without saliency")
    b.add_argument("--grid", type=int, default=396, help="square input size (default 396)")
    b.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    b.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    b.add_argument("--min-time", type=float, default=1.0,
                   help="seconds of repeats per measurement (default 1.0)")
    b.add_argument("--model", help="measure this shipped IQ-Net model's weights "
                                   "(default: the seeded initial IQ-Net)")


def export(args: argparse.Namespace) -> int:
    """Handler of ``rankiq export``."""
    from rankiq.service.commands.registry import require

    require("torch", "export")
    require("onnx", "export")
    from rankiq.training.export import export_run

    # a failed parity check raises ParityError (a RankIQError): one line on stderr, exit 2
    meta = export_run(args.run, args.out, name=args.name, version=args.version,
                      fold=args.fold, parity_seed=args.seed, calibrate=args.calibrate)
    worst = max(v["score_rel_err"] for v in meta["parity"].values())
    print(f"exported {meta['name']} {meta['version']} ({meta['mode']}, {meta['input_kind']}, "
          f"grid {meta['grid'][0]}x{meta['grid'][1]}) to {args.out}: "
          f"{len(meta['files'])} files, worst score parity {worst:.1e}, "
          f"saliency {'yes' if meta['saliency'] else 'no'}")
    return 0


def bench(args: argparse.Namespace) -> int:
    """Handler of ``rankiq bench score``."""
    from rankiq.service.commands.registry import require

    require("torch", "bench score")
    from rankiq.training.export.bench import bench_score, format_table

    net = None
    if args.model:
        from rankiq.training.losses import load_iqnet

        net, _ = load_iqnet(args.model)
    batches = tuple(int(b) for b in args.batches.split(",") if b.strip())
    grid = (args.grid, args.grid)
    rows = bench_score(net, grid=grid, threads=args.threads, batches=batches,
                       min_time=args.min_time)
    print(format_table(rows, grid, args.threads))
    return 0
