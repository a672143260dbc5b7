"""``rankiq bench qa --dicomweb URL``: QA throughput through a PACS next to the folder figure.

The synthetic archive of ``rankiq bench qa`` is stored in the PACS with STOW-RS (not timed),
then scored three times, each into a fresh output directory: from the folder, through DICOMweb
(QIDO-RS + streamed WADO-RS), and through DICOMweb with ``--write-back sr,saliency``. Slices/s
are end to end (query, retrieval, scoring, reports and, for the last, write-back).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rankiq.service.commands.qa_cmd import default_model_dir


def _store_archive(client: Any, archive: Path) -> tuple[set[str], set[str]]:
    """STOW-RS every file of the archive (batches of 32); returns its study and series UIDs."""
    import pydicom
    from rankiq.service.pacs.dicomweb import store

    studies, series, batch = set(), set(), []
    for path in sorted(p for p in archive.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path)
        studies.add(str(ds.StudyInstanceUID))
        series.add(str(ds.SeriesInstanceUID))
        batch.append(ds)
        if len(batch) == 32:
            store(client, batch, "bench archive")
            batch = []
    store(client, batch, "bench archive")
    return studies, series


def bench_qa_dicomweb(args: argparse.Namespace) -> int:
    """Handler of ``rankiq bench qa --dicomweb URL``."""
    from importlib.metadata import version

    from rankiq.service.pacs.dicomweb import SeriesQuery, connect
    from rankiq.service.pacs.qa import run_dicomweb_qa
    from rankiq.service.qa.runner import QAOptions, run_qa
    from rankiq.service.qa.synth import build_archive

    client = connect(args.dicomweb)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rankiq-bench-pacs-") as tmp:
        archive = args.archive or Path(tmp) / "archive"
        if not archive.exists():
            build_archive(archive, args.series, size=args.size, slices=tuple(args.slices),
                          seed=args.seed)
        t0 = time.perf_counter()
        studies, series = _store_archive(client, archive)
        t_store = time.perf_counter() - t0
        query = SeriesQuery(studies=tuple(sorted(studies)), series=tuple(sorted(series)))

        def options() -> QAOptions:
            return QAOptions(model_dir=args.model or default_model_dir(), workers=args.workers,
                             threads=args.threads, progress=False, textfile=False)

        res = run_qa([archive], Path(tmp) / "folder", options())
        rows.append({"mode": "folder", "slices": res.slices_now, "wall_s": res.wall_s})
        for mode, kinds in (("dicomweb", ()), ("dicomweb + write-back sr,saliency",
                                               ("sr", "saliency"))):
            t0 = time.perf_counter()
            pacs = run_dicomweb_qa(args.dicomweb, Path(tmp) / mode.replace(" ", ""), options(),
                                   query, write_back_kinds=kinds, client=client,
                                   software_version=version("rankiq"))
            rows.append({"mode": mode, "slices": pacs.qa.slices_now,
                         "wall_s": time.perf_counter() - t0,
                         "retrieve_s": round(pacs.timings.get("retrieve", 0.0), 3),
                         "write_back_s": round(pacs.timings.get("write_back", 0.0), 3),
                         "written": pacs.written})
    folder_rate = rows[0]["slices"] / rows[0]["wall_s"]
    for r in rows:
        r["slices_per_s"] = round(r["slices"] / r["wall_s"], 1)
        r["vs_folder"] = round(r["slices_per_s"] / folder_rate, 3)
        r["wall_s"] = round(r["wall_s"], 3)
    out = {"series": len(series), "matrix": args.size, "workers": args.workers,
           "threads_per_worker": args.threads, "cpus": os.cpu_count(),
           "store_s": round(t_store, 2), "load_avg_1m": round(os.getloadavg()[0], 2),
           "runs": rows}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"rankiq bench qa --dicomweb: {out['series']} series of {args.size}x{args.size}, "
          f"workers={args.workers} x {args.threads} ONNX threads, {out['cpus']} CPUs (stored "
          f"in the PACS in {t_store:.1f} s, not timed; load average {out['load_avg_1m']})")
    print(f"{'run':<36}{'slices':>8}{'wall s':>9}{'slices/s':>10}{'vs folder':>11}")
    for r in rows:
        print(f"{r['mode']:<36}{r['slices']:>8}{r['wall_s']:>9.2f}{r['slices_per_s']:>10}"
              f"{r['vs_folder']:>11.0%}")
    print("end to end: query + streamed retrieval + scoring + reports (+ the SR and the saliency "
          "map: computed from the scoring pass's features, built and encoded in build processes "
          "and stored by STOW-RS while the next series is scored; the SRs stored once the "
          "reports give the final verdicts)")
    sys.stdout.flush()
    return 0
