"""``rankiq calibrate``: site QA thresholds per contrast family from known-good series.

The stated rule: for each contrast family with at least :data:`MIN_SERIES` assessable series,

    threshold = quantile_q(series medians) x margin

(``numpy.quantile`` with linear interpolation; defaults q = 0.99, margin = 1.1); a family with
fewer series keeps the model's own threshold, and the output says so. The series are read,
selected and scored exactly as ``rankiq qa`` does (the same runner, so localisers and derived maps
are left out and out-of-range series are not calibrated on). The file is the format
``rankiq qa --thresholds`` reads, plus a ``provenance`` block::

    {"statistic": "median",
     "thresholds": {"T2": 14.9, "FLAIR": 12.1},
     "provenance": {"model": {"name", "version", "sha256"}, "rule", "quantile", "margin",
                    "min_series", "families": {"T2": {"n": 12, "source": "site",
                                                      "threshold": 14.9}, ...},
                    "series", "not_assessable", "skipped", "failed_inputs", "created"}}

``rankiq qa`` refuses a file whose provenance names another model (scores of different models are
on different scales).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry

#: Fewest known-good series of a family that get a site threshold.
MIN_SERIES = 3
STATISTIC = "median"


def add_commands(reg: Registry) -> None:
    """Add ``rankiq calibrate``."""
    p = reg.command("calibrate", "rankiq.service.commands.calibrate_cmd:calibrate",
                    "site QA thresholds per contrast family from known-good series")
    p.add_argument("paths", nargs="+", metavar="SERIES_OR_DIR",
                   help="known-good DICOM series: files, directories, zips")
    p.add_argument("--out", required=True, type=Path, metavar="FILE",
                   help="site thresholds file to write (JSON; for rankiq qa --thresholds)")
    p.add_argument("--model", default="iqnet-noref", metavar="NAME_OR_DIR",
                   help="no-reference model: a name under the models directory or a directory")
    p.add_argument("--quantile", type=float, default=0.99, metavar="Q",
                   help="quantile of the clean series' medians, in (0, 1] (default 0.99)")
    p.add_argument("--margin", type=float, default=1.1, metavar="M",
                   help="factor on that quantile, >= 1 (default 1.1)")
    p.add_argument("--rules", type=Path, metavar="FILE",
                   help="series selection rules (JSON/YAML) replacing the built-in ones")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes (default: one per usable CPU, at most 8)")
    p.add_argument("--threads", type=int, default=0, metavar="T",
                   help="ONNX Runtime threads per worker (default: cores / workers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def resolve_model(name_or_dir: str) -> Path:
    """A model directory from a directory path or a model name under the models directory."""
    from rankiq.service.commands.qa_cmd import default_model_dir

    p = Path(name_or_dir)
    if (p / "metadata.json").is_file():
        return p
    return default_model_dir().parent / name_or_dir


def family_thresholds(values: dict[str, list[float]], model_thresholds: dict[str, float], *,
                      quantile: float, margin: float, min_series: int = MIN_SERIES
                      ) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Apply the rule to the statistic of each family's known-good series.

    Args:
        values: family -> the series statistic (model score units) of its clean series.
        model_thresholds: the model's ``qa_thresholds`` (fallbacks).
        quantile, margin: the rule's parameters.
        min_series: fewest series for a site threshold.

    Returns:
        ``(thresholds, families)``: the site thresholds (calibrated families only) and, for
        every family, ``{"n", "source": "site"|"model"|"none", "threshold"}``.
    """
    import numpy as np
    from rankiq.service.io.types import CONTRAST_FAMILIES

    site: dict[str, float] = {}
    families: dict[str, dict[str, Any]] = {}
    for fam in CONTRAST_FAMILIES:
        vals = values.get(fam, [])
        if len(vals) >= min_series:
            t = float(np.quantile(np.asarray(vals, np.float64), quantile)) * margin
            site[fam] = round(t, 6)
            families[fam] = {"n": len(vals), "source": "site", "threshold": site[fam]}
        elif fam in model_thresholds:
            families[fam] = {"n": len(vals), "source": "model",
                             "threshold": model_thresholds[fam]}
        else:
            families[fam] = {"n": len(vals), "source": "none", "threshold": None}
    return site, families


def calibrate(args: argparse.Namespace) -> int:
    """Handler of ``rankiq calibrate``."""
    from rankiq.service.atomic import write_json
    from rankiq.service.commands.qa_cmd import _check_workers
    from rankiq.service.errors import RankIQError
    from rankiq.service.qa.runner import QAOptions, read_model_metadata, run_qa
    from rankiq.service.settings import MAX_DEFAULT_QA_WORKERS, default_workers

    if not 0 < args.quantile <= 1:
        raise RankIQError(f"--quantile must be in (0, 1], not {args.quantile}")
    if not args.margin >= 1:
        raise RankIQError(f"--margin must be a number >= 1, not {args.margin}")
    if args.workers is None:
        args.workers = default_workers(MAX_DEFAULT_QA_WORKERS)
    _check_workers(args.workers, args.threads)
    for p in args.paths:
        if not Path(p).exists():
            raise RankIQError("no such file or directory", source=str(p))
    model_dir = resolve_model(args.model)
    meta = read_model_metadata(model_dir)
    if meta.get("mode") != "no-reference":
        raise RankIQError(f"{meta.get('name')} is a {meta.get('mode')} model: site thresholds "
                          "are for the no-reference model QA uses")
    model_thresholds = {k: float(v) for k, v in (meta.get("qa_thresholds") or {}).items()}
    with tempfile.TemporaryDirectory(prefix="rankiq-calibrate-") as tmp:
        placeholder = None
        if not model_thresholds:  # QA needs some thresholds to run; they do not matter here
            placeholder = Path(tmp) / "placeholder.json"
            placeholder.write_text(json.dumps({"other": 1.0}))
        opts = QAOptions(model_dir=model_dir, thresholds_file=placeholder,
                         rules_file=args.rules, workers=args.workers, threads=args.threads,
                         progress=not args.no_progress, textfile=False, outlier_z=0.0,
                         render=False)
        doc = run_qa(args.paths, Path(tmp) / "qa", opts).doc
    values: dict[str, list[float]] = {}
    for r in doc["series"]:
        v = r.get(STATISTIC)
        if r["status"] != "not_assessable" and v is not None:
            values.setdefault(r["contrast"], []).append(float(v))
    s = doc["summary"]
    if not values:
        raise RankIQError(f"no scorable series in the inputs ({s['series']} scored, "
                          f"{s.get('not_assessable', 0)} not assessable, {s['skipped']} skipped, "
                          f"{s['failed_inputs']} unreadable)")
    site, families = family_thresholds(values, model_thresholds, quantile=args.quantile,
                                       margin=args.margin)
    if not site:
        raise RankIQError(f"no contrast family has {MIN_SERIES} assessable series ("
                          + ", ".join(f"{f}: {len(v)}" for f, v in sorted(values.items()))
                          + "): nothing to calibrate")
    rule = (f"threshold = {args.quantile:g}-quantile (linear interpolation) of the known-good "
            f"series' {STATISTIC} x {args.margin:g}, per contrast family with at least "
            f"{MIN_SERIES} assessable series; other families keep the model's threshold")
    out_doc = {
        "statistic": STATISTIC,
        "thresholds": site,
        "provenance": {
            "model": {"name": meta.get("name"), "version": meta.get("version"),
                      "sha256": (meta.get("files") or {}).get("score.onnx")},
            "rule": rule, "quantile": args.quantile, "margin": args.margin,
            "min_series": MIN_SERIES, "families": families,
            "series": s["series"], "not_assessable": s.get("not_assessable", 0),
            "skipped": s["skipped"], "failed_inputs": s["failed_inputs"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, out_doc)
    if args.json:
        print(json.dumps({"out": str(args.out), "rule": rule, "families": {
            f: {**info, "values": sorted(values.get(f, []))} for f, info in families.items()}}))
        return 0
    print(f"rankiq calibrate: {s['series']} series scored by {meta.get('name')} "
          f"{meta.get('version')} ({s['skipped']} skipped, {s.get('not_assessable', 0)} not "
          f"assessable, {s['failed_inputs']} unreadable); rule: {rule}")
    print(f"{'family':<8}{'series':>7}{'threshold':>12}  source")
    for fam, info in families.items():
        t = "-" if info["threshold"] is None else f"{info['threshold']:.4g}"
        src = {"site": "site (calibrated)", "model": "model (too few series)",
               "none": "none (too few series, the model has none)"}[info["source"]]
        print(f"{fam:<8}{info['n']:>7}{t:>12}  {src}")
    print(f"written to {args.out} (use: rankiq qa ... --thresholds {args.out})")
    return 0
