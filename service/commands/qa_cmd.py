"""``rankiq qa``: batch QA of scan archives (its benchmark, ``rankiq bench qa``, lives in
:mod:`rankiq.service.bench.qa`)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry
    from rankiq.service.pacs.qa import DicomwebResult
    from rankiq.service.qa.runner import QAOptions


def default_model_dir() -> Path:
    """``$RANKIQ_MODELS_DIR/iqnet-noref``, else the repository's ``models/iqnet-noref``."""
    from rankiq.service.settings import models_dir

    return models_dir() / "iqnet-noref"


def add_commands(reg: Registry) -> None:
    """Add ``rankiq qa``."""
    p = reg.command("qa", "rankiq.service.commands.qa_cmd:qa",
                    "batch QA of scan archives: flag low-quality MR series, write reports")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="DICOM files, directories, zips (or --dicomweb)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output directory (qa.csv, qa.json, failed.csv, report.html, journal)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes (default: one per usable CPU, at most 8; with "
                        "--engine ray: one actor per cluster CPU)")
    p.add_argument("--threads", type=int, default=0, metavar="T",
                   help="ONNX Runtime threads per worker (default: cores / workers)")
    p.add_argument("--thresholds", type=Path, metavar="FILE",
                   help="per-site flag thresholds (JSON/YAML) overriding the model's")
    p.add_argument("--rules", type=Path, metavar="FILE",
                   help="series selection rules (JSON/YAML) replacing the built-in ones")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (nothing is rescored)")
    p.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="no-reference model directory (default: models/iqnet-noref)")
    p.add_argument("--references", type=Path, metavar="FILE",
                   help="map series (series key or path) to reference series (JSON/YAML): "
                        "those are scored against their reference by the reference model")
    p.add_argument("--reference-model", type=Path, default=None, metavar="DIR",
                   help="reference-mode model for mapped series (default: iqnet-ref beside "
                        "--model)")
    # defaults (None) are the runner's: 3.5 and 512, as in QAOptions and rankiq score
    p.add_argument("--outlier-z", type=float, default=None, metavar="Z",
                   help="archive-relative rule: flag a series whose robust z of log(median) "
                        "among the series of its protocol in this run is above Z (groups of "
                        ">= 5; default 3.5; 0 turns it off)")
    p.add_argument("--max-slices", type=int, default=None, metavar="N",
                   help="series with more slices fail as too_large (default 512, as rankiq "
                        "score)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where series are scored: local processes (default) or Ray actors "
                        "(the ray extra; every node must see the inputs at the same path)")
    p.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="with --engine ray: the cluster to use (default: start a local Ray "
                        "instance); --workers N > 1 then sets the actors, else one per CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_dicomweb_options(p)


def add_dicomweb_options(p: argparse.ArgumentParser) -> None:
    """``rankiq qa`` options of a PACS run (credentials come from the environment only)."""
    g = p.add_argument_group("PACS over DICOMweb (credentials from RANKIQ_DICOMWEB_TOKEN, or "
                             "RANKIQ_DICOMWEB_USER and RANKIQ_DICOMWEB_PASSWORD)")
    g.add_argument("--dicomweb", metavar="URL",
                   help="query (QIDO-RS) and retrieve (WADO-RS) series from this DICOMweb "
                        "service instead of PATHs")
    g.add_argument("--study", action="append", default=[], metavar="UID",
                   help="only this StudyInstanceUID (repeatable)")
    g.add_argument("--series", action="append", default=[], metavar="UID",
                   help="only this SeriesInstanceUID (repeatable)")
    g.add_argument("--since", metavar="DATE", help="only studies from DATE on (YYYY-MM-DD)")
    g.add_argument("--modality", default="MR", metavar="M",
                   help="only series of this modality (default MR; '' for any)")
    g.add_argument("--write-back", metavar="KINDS",
                   help="store results in the PACS with STOW-RS: sr (TID 1500 measurement "
                        "report), saliency (parametric map), or sr,saliency")


def _check_workers(n: int, threads: int = 0) -> None:
    """Validate ``--workers`` and size native thread pools (FFT, OpenMP) to cores / workers
    before anything reads them, so N workers do not oversubscribe the cores."""
    from rankiq.service.errors import RankIQError
    from rankiq.service.settings import usable_cpus

    if n < 1 or n > 256:
        raise RankIQError(f"--workers must be between 1 and 256, not {n}")
    per_worker = threads or max(1, usable_cpus() // n)
    os.environ.setdefault("RANKIQ_FFT_WORKERS", str(per_worker))
    os.environ.setdefault("OMP_NUM_THREADS", str(per_worker))


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (the QA workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def qa(args: argparse.Namespace) -> int:
    """Handler of ``rankiq qa``."""
    from rankiq.service.errors import RankIQError
    from rankiq.service.qa.runner import QAOptions, run_qa
    from rankiq.service.settings import MAX_DEFAULT_QA_WORKERS, default_workers

    if args.workers is None:  # Ray's default (1) means one actor per cluster CPU
        args.workers = 1 if args.engine == "ray" else default_workers(MAX_DEFAULT_QA_WORKERS)
    _check_workers(args.workers, args.threads)
    if args.address is not None and args.engine != "ray":
        raise RankIQError("--address needs --engine ray")
    if args.engine == "ray" and args.dicomweb:
        raise RankIQError("--engine ray reads archives by path: give PATHs, not --dicomweb")
    if bool(args.paths) == bool(args.dicomweb):
        raise RankIQError("give PATHs or --dicomweb URL (one of the two)")
    if not args.dicomweb and (args.write_back or args.study or args.series or args.since):
        raise RankIQError("--write-back, --study, --series and --since need --dicomweb")
    for p in args.paths:
        if not Path(p).exists():
            raise RankIQError("no such file or directory", source=str(p))
    opts = QAOptions(model_dir=args.model or default_model_dir(),
                     thresholds_file=args.thresholds, rules_file=args.rules,
                     workers=args.workers, threads=args.threads, resume=args.resume,
                     progress=not args.no_progress, references_file=args.references,
                     reference_model_dir=args.reference_model, engine=args.engine,
                     address=args.address)
    if args.outlier_z is not None:
        opts.outlier_z = args.outlier_z
    if args.max_slices is not None:
        if args.max_slices < 1:
            raise RankIQError(f"--max-slices must be at least 1, not {args.max_slices}")
        opts.max_slices = args.max_slices
    pacs = None
    if args.dicomweb:
        pacs = _qa_dicomweb(args, opts)
        res = pacs.qa
    else:
        res = run_qa(args.paths, args.out, opts)
    s = res.doc["summary"]
    summary = {**s, "scored_now": res.scored_now, "scored_before": res.scored_before,
               "slices_now": res.slices_now, "wall_s": round(res.wall_s, 3),
               "out": str(res.out_dir), "engine": args.engine}
    if args.engine == "ray":
        from rankiq.service.qa.ray_engine import LAST_STATS

        summary["ray"] = LAST_STATS.to_json()
    if pacs is not None:
        summary["dicomweb"] = {"found": pacs.found, "retrieved": pacs.retrieved,
                               "instances": pacs.instances, "gone": pacs.gone,
                               "written": pacs.written, "unsupported": pacs.unsupported,
                               "timings_s": {k: round(v, 3) for k, v in pacs.timings.items()}}
    if args.json:
        print(json.dumps(summary))
    else:
        rules = ", ".join(f"{k} {v}" for k, v in s.get("rules", {}).items())
        print(f"rankiq qa: {s['series']} series scored ({s['flagged']} flagged"
              f"{': ' + rules if rules else ''}; {s.get('not_assessable', 0)} not assessable), "
              f"{s['skipped']} skipped, {s['failed_inputs']} unreadable inputs; "
              f"{res.scored_now} scored in this run ({res.slices_now} slices, "
              f"{res.wall_s:.1f} s); reports in {res.out_dir}/ (qa.csv, qa.json, failed.csv, "
              "report.html)")
        if pacs is not None:
            wrote = ", ".join(f"{n} {k}" for k, n in pacs.written.items())
            print(f"rankiq qa: DICOMweb: {pacs.found} series found, {pacs.retrieved} retrieved "
                  f"({pacs.instances} instances), {pacs.gone} gone"
                  + (f"; written back: {wrote}" if pacs.written else ""))
    return 0


def _qa_dicomweb(args: argparse.Namespace, opts: QAOptions) -> DicomwebResult:
    """``rankiq qa --dicomweb``: see :mod:`rankiq.service.pacs.qa`."""
    from importlib.metadata import version

    from rankiq.service.pacs.dicomweb import SeriesQuery, check_uid, parse_date
    from rankiq.service.pacs.qa import parse_write_back, run_dicomweb_qa

    kinds = parse_write_back(args.write_back)
    query = SeriesQuery(studies=tuple(check_uid(u, "--study") for u in args.study),
                        series=tuple(check_uid(u, "--series") for u in args.series),
                        since=parse_date(args.since) if args.since else None,
                        modality=args.modality.strip())
    return run_dicomweb_qa(args.dicomweb, args.out, opts, query, write_back_kinds=kinds,
                           software_version=version("rankiq"))
