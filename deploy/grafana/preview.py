"""Render the Grafana dashboard's queries from a real Prometheus into one PNG (no Grafana needed).

``make dashboard-preview`` (or ``python deploy/grafana/preview.py --out docs/img/dashboard.png``)
starts the service with two workers and a Prometheus (the Debian package) on 127.0.0.1, drives
mixed traffic for ``--seconds`` (scores, compares, rejected uploads, two batch QA jobs), then
runs every panel's PromQL from ``deploy/grafana/dashboards/rankiq.json`` as a range query and
draws the panels in the dashboard's own layout, with its threshold lines. ``$instance`` becomes
``.*``; because the run lasts minutes, not hours, rate windows are shortened (``[5m]`` -> ``[20s]``,
``[1h]`` -> ``[1m]``), as the figure says. Everything is stopped afterwards.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import requests
from rankiq.service.liveserver import LiveServer, free_port

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "rankiq.json"
WINDOWS = {"[5m]": "[20s]", "[1h]": "[1m]"}


def promql(expr: str) -> str:
    """A panel expression as run here: all instances, short windows."""
    expr = expr.replace("$instance", ".*")
    for long, short in WINDOWS.items():
        expr = expr.replace(long, short)
    return expr


def _dicom_slices(n: int, seed: int) -> list[bytes]:
    """``n`` single-slice MR DICOM files of the synthetic phantom, with growing noise."""
    from rankiq.service.qa.synth import build_archive

    with tempfile.TemporaryDirectory() as tmp:
        build_archive(tmp, 4, size=128, slices=(4, 6), seed=seed)
        files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        return [f.read_bytes() for f in files][: max(n, 1)]


def _archive_zip(seed: int) -> bytes:
    from rankiq.service.qa.synth import build_archive

    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(buf, "w") as z:
        build_archive(tmp, 6, size=128, slices=(6, 10), seed=seed)
        for f in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            z.write(f, f.relative_to(tmp).as_posix())
    return buf.getvalue()


def traffic(url: str, seconds: float, stop: threading.Event) -> dict[str, int]:
    """Scores, compares and rejected uploads for ``seconds``, plus two QA jobs."""
    slices = _dicom_slices(16, seed=3)
    archives = [_archive_zip(seed) for seed in (5, 6)]
    counts = {"score": 0, "compare": 0, "rejected": 0, "qa_jobs": 0}
    t0 = time.monotonic()
    end = t0 + seconds
    i = 0
    while time.monotonic() < end and not stop.is_set():
        # QA jobs a third and two thirds of the way in: counters that change between scrapes
        if archives and time.monotonic() - t0 > seconds * (3 - len(archives)) / 3:
            r = requests.post(f"{url}/qa/submit", files=[("files", ("a.zip", archives.pop()))],
                              timeout=60)
            counts["qa_jobs"] += int(r.ok)
        s = slices[i % len(slices)]
        requests.post(f"{url}/score", files={"image": ("x", s)}, timeout=60)
        counts["score"] += 1
        if i % 4 == 0:
            requests.post(f"{url}/compare", files={"image_a": ("a", s),
                                                   "image_b": ("b", slices[(i + 1) % len(slices)])},
                          timeout=60)
            counts["compare"] += 1
        if i % 9 == 0:
            requests.post(f"{url}/score", files={"image": ("x", b"not a dicom")}, timeout=60)
            counts["rejected"] += 1
        i += 1
        time.sleep(0.05)
    return counts


def query_range(api: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    r = requests.get(f"{api}/api/v1/query_range",
                     params={"query": promql(expr), "start": start, "end": end, "step": 2},
                     timeout=30)
    body = r.json()
    if body.get("status") != "success":
        raise RuntimeError(f"PromQL failed: {promql(expr)}: {body.get('error')}")
    return list(body["data"]["result"])


def _label(metric: dict[str, str], legend: str | None) -> str:
    if legend:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), legend)
    return ",".join(f"{k}={v}" for k, v in metric.items() if k not in ("__name__",)) or "value"


def render(panels: list[dict[str, Any]], api: str, start: float, end: float, out: Path,
           counts: dict[str, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(16, rows * 0.42))
    grid = fig.add_gridspec(rows, 24, hspace=3.2, wspace=1.2, top=0.96, bottom=0.02)
    for p in panels:
        g = p["gridPos"]
        ax = fig.add_subplot(grid[g["y"]:g["y"] + g["h"] - 1, g["x"]:g["x"] + g["w"]])
        ax.set_title(p["title"], fontsize=9, loc="left")
        results = [(t, s) for t in p.get("targets", [])
                   for s in query_range(api, t["expr"], start, end)]
        if p["type"] == "table":
            ax.axis("off")
            lines = [", ".join(f"{k}={v}" for k, v in s["metric"].items()
                               if k in ("model", "version", "mode", "provider"))
                     for _, s in results]
            ax.text(0, 1, "\n".join(lines) or "no data", va="top", family="monospace",
                    fontsize=8, transform=ax.transAxes)
            continue
        drawn = 0
        for t, s in results:
            v = np.array(s["values"], dtype=float)
            if v.size and np.isfinite(v[:, 1]).any():
                drawn += 1
                ax.plot(v[:, 0] - start, v[:, 1], lw=1.2,
                        label=_label(s["metric"], t.get("legendFormat")))
        steps = (p.get("fieldConfig", {}).get("defaults", {}).get("thresholds") or {}).get(
            "steps", [])
        for step in steps:
            if step.get("value") is not None:
                ax.axhline(float(step["value"]), color=step.get("color", "red"), ls="--", lw=1)
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("s since start", fontsize=7)
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if unit:
            ax.set_ylabel(unit, fontsize=7)
        if drawn and len(results) <= 8:
            ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("RankIQ dashboard queries rendered from a real Prometheus (2 workers; windows "
                 f"[5m]->[20s], [1h]->[1m]; traffic: {counts})", fontsize=10, y=0.99)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "dashboard.png")
    ap.add_argument("--seconds", type=float, default=90.0)
    args = ap.parse_args(argv)
    panels = json.loads(DASHBOARD.read_text())["panels"]
    with tempfile.TemporaryDirectory(prefix="rankiq-dash-") as tmp, \
            LiveServer(workers=2, env={"RANKIQ_STATE_DIR": str(Path(tmp) / "state")}) as server:
        port = free_port()
        target = server.url.removeprefix("http://")
        cfg = Path(tmp) / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: rankiq\n"
                       f"    static_configs:\n      - targets: [\"{target}\"]\n")
        prom = subprocess.Popen(["prometheus", f"--config.file={cfg}",
                                 f"--storage.tsdb.path={Path(tmp) / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            api = f"http://127.0.0.1:{port}"
            start = time.time()
            counts = traffic(server.url, args.seconds, threading.Event())
            time.sleep(5)  # the last scrapes
            render(panels, api, start, time.time(), args.out, counts)
        finally:
            prom.terminate()
            prom.wait(timeout=20)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
