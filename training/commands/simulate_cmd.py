"""``rankiq simulate`` (paired training set) and ``rankiq bench simulate`` (its speed).

Registration imports nothing heavy; handlers import the simulator when they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def _add_common(p: argparse.ArgumentParser, *, size: int, pairs: int | None) -> None:
    p.add_argument("--source", default="brain",
                   help="brain (synthetic, default), phantom, nifti:PATH (file or directory) or "
                        "fastmri:DIR (multicoil .h5 files)")
    p.add_argument("--size", type=int, default=size, help=f"image side S (even; default {size})")
    p.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="worker processes (default: one per usable CPU)")
    p.add_argument("--pairs-per-slice", type=_positive_int, default=None,
                   help="pairs generated from each slice (default 2)")
    p.add_argument("--config", default=None,
                   help="JSON file overriding simulation settings (keys of config_json, e.g. "
                        '{"corruption": {"noise_level": [0, 6]}})')
    if pairs is None:
        p.add_argument("--pairs", type=int, required=True, help="number of pairs (total)")
    else:
        p.add_argument("--pairs", type=int, default=pairs, help=f"pairs (default {pairs})")


def add_commands(reg: Registry) -> None:
    """Add ``rankiq simulate`` and ``rankiq bench simulate``."""
    p = reg.command("simulate", "rankiq.training.commands.simulate_cmd:simulate",
                    "generate corrupted image pairs (k-space corruption + SigPy reconstruction) "
                    "into an HDF5 pairs file; an interrupted run resumes when rerun")
    _add_common(p, size=396, pairs=None)
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--png", default=None, metavar="DIR",
                   help="also write reference|image1|image2 PNGs of new pairs to DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out instead of resuming it")
    p.add_argument("--json", action="store_true", help="print one JSON summary to stdout")

    b = reg.bench("simulate", "rankiq.training.commands.simulate_cmd:bench",
                  "seconds per pair, per reconstruction method and overall, with a projection "
                  "for the paper's 2,916 pairs")
    _add_common(b, size=396, pairs=8)
    b.add_argument("--json", action="store_true", help="print the results as JSON")


def _config(args: argparse.Namespace):
    from rankiq.training.simulate import SimConfig, SimulationError

    cfg = SimConfig()
    if args.config:
        try:
            with open(args.config) as f:
                override = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise SimulationError(f"cannot read the config: {exc}", source=args.config) from exc
        base = json.loads(cfg.to_json())
        for k, v in override.items():
            if k not in base:
                raise SimulationError(f"unknown config key {k!r}", source=args.config)
            if isinstance(v, dict):
                unknown = set(v) - set(base[k])
                if unknown:
                    raise SimulationError(f"unknown {k} keys {sorted(unknown)}",
                                          source=args.config)
                base[k].update(v)
            else:
                base[k] = v
        try:
            cfg = SimConfig.from_json(json.dumps(base))
        except (TypeError, ValueError, KeyError) as exc:
            raise SimulationError(f"invalid config: {exc}", source=args.config) from exc
    if args.pairs_per_slice:
        cfg = SimConfig.from_json(json.dumps({**json.loads(cfg.to_json()),
                                              "pairs_per_slice": args.pairs_per_slice}))
    return cfg


def simulate(args: argparse.Namespace) -> int:
    """Handler of ``rankiq simulate``."""
    from rankiq.service.commands.registry import require

    require("sigpy", "simulate")
    from rankiq.service.settings import usable_cpus
    from rankiq.training.simulate import run

    cfg = _config(args)
    progress = (not args.json) and sys.stderr.isatty()
    try:
        summary = run(args.source, args.pairs, args.size, args.seed, args.out,
                      workers=args.workers or usable_cpus(), cfg=cfg,
                      overwrite=args.overwrite, progress=progress, png_dir=args.png)
    except KeyboardInterrupt:
        from rankiq.training.pairs import PairsFile

        try:
            with PairsFile(args.out) as pf:
                n = len(pf)
            print(f"rankiq simulate: interrupted with {n} pairs in {args.out}; rerun the same "
                  "command to resume", file=sys.stderr)
        except Exception:  # noqa: BLE001 - best effort message only
            pass
        raise
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"{summary['pairs']} pairs in {args.out} ({summary['new_pairs']} new, "
              f"{summary['seconds']:.1f} s); max |SSIM1-SSIM2| {summary['max_ssim_diff']:.3f}; "
              f"{summary['retries']} retries")
        print("  corruptions (images): " + ", ".join(f"{k} {v}" for k, v in
                                                     summary["corruptions"].items()))
        print("  reconstructions (images): " + ", ".join(f"{k} {v}" for k, v in
                                                         summary["recon"].items()))
    return 0


def bench(args: argparse.Namespace) -> int:
    """Handler of ``rankiq bench simulate``: runs the real pipeline into a temporary file."""
    import os
    import tempfile

    import numpy as np
    from rankiq.service.commands.registry import require

    require("sigpy", "bench simulate")
    from rankiq.service.settings import usable_cpus
    from rankiq.training.simulate import projected_minutes, run

    cfg = _config(args)
    workers = args.workers or usable_cpus()
    timings: list = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.h5")
        summary = run(args.source, args.pairs, args.size, args.seed, out, workers=workers,
                      cfg=cfg, progress=False, collect_timings=timings)
    per_method: dict[str, list[float]] = {}
    prep: dict[str, list[float]] = {}
    for unit_prep, recs, _retries in timings:
        for k, v in unit_prep.items():
            prep.setdefault(k, []).append(v)
        for t in recs:
            for m, secs in t["images"].items():
                per_method.setdefault(m, []).extend(secs)
    n = summary["pairs"]
    images = sum(len(v) for v in per_method.values())
    wall = summary["seconds"] / n
    cpu = (sum(sum(v) for v in per_method.values()) + sum(sum(v) for v in prep.values())) / n
    prep_per_pair = sum(sum(v) for v in prep.values()) / n
    rows = []
    for m in ("rss", "combine", "sense", "cs_l1", "cs_tv"):
        v = per_method.get(m, [])
        per_image = float(np.mean(v)) if v else None
        # CPU seconds per pair if every image (retries included) used this method
        per_pair = None if per_image is None else images / n * per_image + prep_per_pair
        rows.append({"method": m, "images": len(v), "seconds_per_image": per_image,
                     "cpu_seconds_per_pair": per_pair})
    result = {
        "size": args.size, "source": args.source, "pairs": n, "workers": workers,
        "images_reconstructed": images, "images_per_pair": images / n,
        "retries": summary["retries"],
        "per_method": rows,
        "slice_prep_seconds": {k: float(np.mean(v)) for k, v in prep.items()},
        "pairs_per_slice": cfg.pairs_per_slice,
        "max_ssim_diff": summary["max_ssim_diff"],
        "corruptions": summary["corruptions"],
        "recon": summary["recon"],
        "cpu_seconds_per_pair": cpu,
        "wall_seconds_per_pair": wall,
        "projected_minutes_2916_pairs": projected_minutes(wall),
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    print(f"rankiq bench simulate: source {args.source}, {args.size}x{args.size}, {n} pairs, "
          f"{workers} worker(s), {cfg.pairs_per_slice} pairs per slice")
    print(f"{'method':<10}{'images':>8}{'s/image':>10}{'CPU s/pair if all images used it':>34}")
    for r in rows:
        a = "-" if r["seconds_per_image"] is None else f"{r['seconds_per_image']:.3f}"
        b = "-" if r["cpu_seconds_per_pair"] is None else f"{r['cpu_seconds_per_pair']:.2f}"
        print(f"{r['method']:<10}{r['images']:>8}{a:>10}{b:>34}")
    print("slice preparation (s/slice): " + ", ".join(
        f"{k} {v:.3f}" for k, v in result["slice_prep_seconds"].items()))
    print(f"images reconstructed per pair (incl. retries): {images / n:.2f}")
    print(f"overall: {cpu:.2f} CPU s/pair (one core), {wall:.2f} wall s/pair with {workers} "
          f"worker(s)")
    print(f"projection for 2,916 pairs at this rate: {result['projected_minutes_2916_pairs']:.1f}"
          " min")
    return 0
