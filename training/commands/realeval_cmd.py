"""``rankiq evaluate real``: no-reference metrics on graded corruptions of real MR images.

Its options live on the ``rankiq evaluate`` parser (``evaluate`` takes run directories, or the
word ``real``); :func:`rankiq.training.commands.train_cmd.evaluate` dispatches here. Needs no
torch: models run on ONNX Runtime, IQMs in NumPy.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any


def default_models_dir() -> Path:
    """``$RANKIQ_MODELS_DIR``, else the repository's ``models/``."""
    from rankiq.service.settings import models_dir

    return models_dir()


def add_real_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``rankiq evaluate real`` (a group of the ``evaluate`` parser)."""
    g = p.add_argument_group(
        "rankiq evaluate real",
        "adjacent-pair accuracy and Spearman rho of every no-reference model and of MRIQC's "
        "IQMs (EFC, FBER, SNR, CJV) on 4 corruption types x 6 levels of real MR images shipped "
        "in installed packages (evaluation only)")
    g.add_argument("--models", default=None, metavar="DIR",
                   help="models directory: every no-reference model in it is evaluated "
                        "(default: $RANKIQ_MODELS_DIR or the repository's models/)")
    g.add_argument("--no-models", action="store_true", help="IQMs only")
    g.add_argument("--images", default=None, metavar="NAMES",
                   help="comma-separated real image names (default: all available; "
                        "see rankiq.training.realdata)")
    g.add_argument("--iqms", default=None, metavar="NAMES",
                   help="comma-separated IQMs (default: efc,fber,snr,cjv)")
    g.add_argument("--json", default=None, metavar="PATH", help="write everything as JSON")
    g.add_argument("--archive", action="store_true",
                   help="also build a DICOM archive from the real images and report batch QA "
                        "flag rates of clean and corrupted series (default thresholds)")
    g.add_argument("--resampling", action="store_true",
                   help="also report how much each model's score moves when a slice is "
                        "resampled (zero-filled 2x with and without its DICOM header, linear and "
                        "cubic 2x, 2x2 block mean)")
    g.add_argument("--explain", action="store_true",
                   help="also attribute every ladder a features model misorders to its "
                        "features (change of log score when one feature takes the level's value)")
    g.add_argument("--no-compare", action="store_true",
                   help="skip the compare-consistency check (faster)")


def _names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _finite(obj: Any) -> Any:
    """Strict-JSON copy (no NaN/Infinity literals): NaN becomes null, an infinity the string
    ``"inf"`` or ``"-inf"`` (FBER is infinite over a zero background, and ranks as such)."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        return obj if math.isfinite(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def evaluate_real(args: argparse.Namespace) -> int:
    """Handler of ``rankiq evaluate real``."""
    from rankiq.service.errors import RankIQError
    from rankiq.service.iqm import IQMS
    from rankiq.training.realdata import available_names
    from rankiq.training.realeval import markdown, run

    if len(args.runs) > 1:
        raise RankIQError("`rankiq evaluate real` takes no run directories "
                          f"(got {len(args.runs) - 1} more arguments)")
    images, iqms = _names(args.images), _names(args.iqms)
    known = available_names()
    if images:
        unknown = [n for n in images if n not in known]
        if unknown:
            raise RankIQError(f"unknown or unavailable real image(s) {', '.join(unknown)} "
                              f"(available: {', '.join(known) or 'none'})")
    if iqms:
        bad = [n for n in iqms if n not in IQMS]
        if bad:
            raise RankIQError(f"unknown IQM(s) {', '.join(bad)} (known: {', '.join(IQMS)})")
    if not known:
        raise RankIQError("no real MR image is available: install pydicom, matplotlib or "
                          "nibabel (their sample data hold the images)")
    models_dir = None if args.no_models else Path(args.models or default_models_dir())
    threads = args.threads or 1
    report = run(models_dir, images=images, seed=args.seed, iqms=iqms, archive=args.archive,
                 compare=not args.no_compare, threads=threads, resampling=args.resampling,
                 explain=args.explain)
    command = "rankiq evaluate " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 2 and sys.argv[1] == "evaluate" else "rankiq evaluate real"
    report["command"] = command
    table = markdown(report)
    print(table)
    print(f"\n({report['wall_s']:.1f} s)", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"```\n{command}\n```\n\n{table}\n")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_finite(report), indent=1, allow_nan=False) + "\n")
    return 0
