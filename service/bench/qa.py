"""``rankiq bench qa``: end-to-end batch QA throughput on a synthetic DICOM archive.

The archive (:func:`rankiq.service.qa.synth.build_archive`: half clean series, half with noise,
blur or motion, ground truth beside it) is scored by the same pipeline as ``rankiq qa``; the
bench prints slices/s end to end, the split by stage, CPU milliseconds per slice and the flag
rate per true corruption. ``--engine ray`` measures 1..N local Ray nodes
(:func:`bench_qa_ray`), ``--dicomweb URL`` the PACS path (:mod:`rankiq.service.bench.pacs`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rankiq.service.commands.qa_cmd import _check_workers, _cpu_seconds, default_model_dir

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry


def add_commands(reg: Registry) -> None:
    """Add ``rankiq bench qa``."""
    b = reg.bench("qa", "rankiq.service.bench.qa:bench_qa",
                  "end-to-end QA throughput on a synthetic DICOM archive (slices/s, stage split)")
    b.add_argument("--series", type=int, default=24, metavar="N", help="series in the archive")
    b.add_argument("--size", type=int, default=256, help="matrix size (pixels)")
    b.add_argument("--slices", type=int, nargs=2, default=(20, 40), metavar=("MIN", "MAX"))
    b.add_argument("--workers", type=int, default=2, metavar="N")
    b.add_argument("--threads", type=int, default=1, metavar="T",
                   help="ONNX Runtime threads per worker")
    b.add_argument("--clean-fraction", type=float, default=0.5, metavar="F",
                   help="probability that a series of the archive is clean (0.9: a realistic "
                        "flag rate, where few series need saliency maps and PNGs)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--archive", type=Path, default=None, metavar="DIR",
                   help="build (or reuse) the archive here instead of a temporary directory")
    b.add_argument("--model", type=Path, default=None, metavar="DIR")
    b.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: QA on a Ray cluster of local node processes with 1, then 2 "
                        "nodes of --threads CPUs each (slices/s and scaling efficiency)")
    b.add_argument("--nodes", type=int, default=2, metavar="N",
                   help="with --engine ray: measure 1..N nodes")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    b.add_argument("--dicomweb", metavar="URL",
                   help="also measure QA through this DICOMweb service (the archive is stored "
                        "there first with STOW-RS), with and without write-back")



def bench_qa(args: argparse.Namespace) -> int:
    """Handler of ``rankiq bench qa``: build a synthetic archive, run QA, print a table."""
    from rankiq.service.qa.runner import QAOptions, run_qa

    _check_workers(args.workers, args.threads)
    if args.dicomweb:
        from rankiq.service.bench.pacs import bench_qa_dicomweb

        return bench_qa_dicomweb(args)
    if args.engine == "ray":
        return bench_qa_ray(args)
    with tempfile.TemporaryDirectory(prefix="rankiq-bench-qa-") as tmp:
        t0 = time.perf_counter()
        archive, truth = _archive_for_bench(args, Path(tmp))
        t_build = time.perf_counter() - t0
        opts = QAOptions(model_dir=args.model or default_model_dir(), workers=args.workers,
                         threads=args.threads, progress=False)
        cpu0 = _cpu_seconds()
        res = run_qa([archive], Path(tmp) / "out", opts)
        cpu = _cpu_seconds() - cpu0
        flags = _flag_rates(truth, res.doc)  # reads the archive: before it is removed
    t = res.timings
    work = {k: t[k] for k in ("decode", "preprocess", "score")}
    work["report"] = t["render"] + t["report"]
    summed = sum(work.values()) or 1.0
    out = {
        "series": res.doc["summary"]["series"], "slices": res.slices_now,
        "matrix": args.size, "workers": args.workers, "threads_per_worker": args.threads,
        "cpus": os.cpu_count(), "wall_s": round(res.wall_s, 3),
        "slices_per_s": round(res.slices_now / res.wall_s, 1) if res.wall_s else None,
        "scan_s": round(t["scan"], 3),
        "stage_s": {k: round(v, 3) for k, v in work.items()},
        "stage_share": {k: round(v / summed, 3) for k, v in work.items()},
        "build_archive_s": round(t_build, 1),
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_slice": round(1000 * cpu / max(res.slices_now, 1), 2),
        # what the measured CPU work would give on idle cores (the machine may be shared)
        "cpu_bound_slices_per_s_on_2_idle_cores": round(2 * res.slices_now / cpu, 1)
        if cpu else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "flag_rate": flags,
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"rankiq bench qa: {out['series']} series, {out['slices']} slices of "
          f"{args.size}x{args.size}, workers={args.workers} x {args.threads} ONNX threads, "
          f"{out['cpus']} CPUs (archive built in {t_build:.1f} s, not timed)")
    print(f"{'stage':<22}{'seconds':>10}{'share':>8}")
    print(f"{'scan (headers)':<22}{t['scan']:>10.2f}{'(wall)':>8}")
    for k, v in work.items():
        print(f"{k:<22}{v:>10.2f}{v / summed:>8.0%}")
    print(f"{'end to end (wall)':<22}{res.wall_s:>10.2f}")
    flagged = sum(1 for r in res.doc["series"] if r.get("flagged"))
    print(f"throughput: {out['slices_per_s']} slices/s end to end, {flagged} of "
          f"{out['series']} series flagged (goal >= 500 on 2 cores at a realistic flag rate)")
    print(f"CPU: {out['cpu_s']} s in all processes = {out['cpu_ms_per_slice']} ms/slice -> "
          f"{out['cpu_bound_slices_per_s_on_2_idle_cores']} slices/s if 2 idle cores did only "
          f"this (load average now {out['load_avg_1m']})")
    print("stage seconds are summed over workers; report = saliency+PNGs of flagged series + "
          "writing the reports")
    print_flag_rates(flags)
    return 0


def _flag_rates(truth: list[dict], doc: dict) -> dict[str, dict[str, int]]:
    """Flagged/total per true corruption, matching series by their first file's directory."""
    by_key = {r["series_key"]: r for r in doc["series"]}
    from rankiq.service.qa.synth import series_key_of

    rates: dict[str, dict[str, int]] = {}
    for t in truth:
        row = by_key.get(series_key_of(t["files"][0]))
        if row is None:
            continue
        r = rates.setdefault(t["corruption"], {"series": 0, "flagged": 0})
        r["series"] += 1
        r["flagged"] += int(row["flagged"])
    return rates


def _archive_for_bench(args: argparse.Namespace, tmp: Path) -> tuple[Path, list[dict]]:
    """The bench archive (built, or reused from ``--archive``) and its ground truth."""
    from rankiq.service.qa.synth import build_archive

    archive = args.archive or tmp / "archive"
    truth_file = archive.with_name(archive.name + ".truth.json")
    if truth_file.exists() and archive.exists():
        return archive, json.loads(truth_file.read_text())
    return archive, [t.__dict__ for t in build_archive(archive, args.series, size=args.size,
                                                       slices=tuple(args.slices),
                                                       clean_fraction=args.clean_fraction,
                                                       seed=args.seed, truth_path=truth_file)]


def bench_qa_ray(args: argparse.Namespace) -> int:
    """``rankiq bench qa --engine ray``: the same archive on a Ray cluster of 1..N local node
    processes (``--threads`` CPUs each, one actor per CPU); slices/s per cluster size, the
    scaling efficiency (rate with n nodes / (n x rate with 1)) and CPU seconds per slice.

    Each size gets a fresh output directory. ``slices_per_s`` is end to end (driver start to
    reports written: Ray connect and model loading included); ``scoring_slices_per_s`` counts
    from the first ready actor to the last result.
    """
    from rankiq.service.errors import RankIQError
    from rankiq.service.qa import ray_engine
    from rankiq.service.qa.runner import QAOptions, run_qa

    if args.nodes < 1 or args.nodes > 16:
        raise RankIQError(f"--nodes must be between 1 and 16, not {args.nodes}")
    import signal

    # a SIGTERM ends the bench through its cleanup (the Ray nodes it started are stopped)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cpus = max(1, args.threads)
    rows: list[dict] = []
    flags: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="rankiq-bench-qa-") as tmp:
        archive, truth = _archive_for_bench(args, Path(tmp))
        with ray_engine.LocalRayCluster(cpus=cpus) as cluster:
            # this process drives the cluster: its token must be set before Ray is imported
            os.environ.update(cluster.driver_env)
            ray_engine.import_ray()
            cluster.start(1)
            for n in range(1, args.nodes + 1):
                if n > 1:
                    cluster.add_node()
                opts = QAOptions(model_dir=args.model or default_model_dir(), threads=1,
                                 progress=False, engine="ray", address=cluster.address)
                own0 = _own_cpu_seconds()
                res = run_qa([archive], Path(tmp) / f"out-{n}", opts)
                driver_cpu = _own_cpu_seconds() - own0
                st = ray_engine.LAST_STATS
                cpu = st.actor_cpu_s + driver_cpu
                scored = max(res.slices_now, 1)
                rows.append({
                    "nodes": n, "cpus": n * cpus, "actors": st.actors,
                    "actor_nodes": len(st.nodes), "slices": res.slices_now,
                    "wall_s": round(res.wall_s, 3),
                    "slices_per_s": round(res.slices_now / res.wall_s, 1),
                    "scoring_s": round(st.score_wall_s, 3),
                    "scoring_slices_per_s": round(res.slices_now / st.score_wall_s, 1)
                    if st.score_wall_s else None,
                    "startup_s": round(st.startup_s, 3),
                    "cpu_s": round(cpu, 2), "cpu_ms_per_slice": round(1000 * cpu / scored, 2),
                    "flagged": res.doc["summary"]["flagged"],
                    "series": res.doc["summary"]["series"],
                })
                if n == 1:
                    flags = _flag_rates(truth, res.doc)
    base = rows[0]
    for r in rows:
        r["efficiency"] = round(r["slices_per_s"] / (r["nodes"] * base["slices_per_s"]), 3)
        if base["scoring_slices_per_s"] and r["scoring_slices_per_s"]:
            r["scoring_efficiency"] = round(
                r["scoring_slices_per_s"] / (r["nodes"] * base["scoring_slices_per_s"]), 3)
    out = {"engine": "ray", "series": rows[0]["series"], "matrix": args.size,
           "cpus_per_node": cpus, "machine_cpus": os.cpu_count(),
           "load_avg_1m": round(os.getloadavg()[0], 2), "runs": rows, "flag_rate": flags}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"rankiq bench qa --engine ray: {out['series']} series, {rows[0]['slices']} slices of "
          f"{args.size}x{args.size}; Ray nodes of {cpus} CPU each on this machine "
          f"({out['machine_cpus']} CPUs, load average {out['load_avg_1m']})")
    print(f"{'nodes':>5}{'actors':>8}{'slices/s':>10}{'scoring/s':>11}{'efficiency':>12}"
          f"{'startup s':>11}{'CPU ms/slice':>14}")
    for r in rows:
        print(f"{r['nodes']:>5}{r['actors']:>8}{r['slices_per_s']:>10}"
              f"{r['scoring_slices_per_s'] or '-':>11}{r['efficiency']:>12.0%}"
              f"{r['startup_s']:>11}{r['cpu_ms_per_slice']:>14}")
    print("efficiency = slices/s with n nodes / (n x slices/s with 1 node), end to end; "
          "CPU = actors (model load included) + driver")
    print_flag_rates(flags)
    return 0


def _own_cpu_seconds() -> float:
    """User + system CPU seconds of this process (the Ray driver)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def print_flag_rates(flags: dict[str, dict[str, int]]) -> None:
    """The last line of every ``rankiq bench qa`` table: flagged / series per corruption."""
    print("flag rate by corruption: " + ", ".join(
        f"{k} {v['flagged']}/{v['series']}" for k, v in flags.items()))
    sys.stdout.flush()
