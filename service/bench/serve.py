"""``rankiq bench serve``: HTTP service throughput, latency and memory.

It starts a live server (or uses ``--url``), drives it with N concurrent
closed-loop clients for a fixed number of requests per scenario and prints requests/s and p50/p99
latency for ``POST /score`` on a 256x256 DICOM slice (no reference; no reference + saliency;
with reference), each beside the in-process scorer's rate on the same bytes in the same run
(``read_upload`` + ``score_series`` + the JSON answer: the ratio is the HTTP overhead); then
slices/s for a 20-slice series zip over HTTP vs in-process; and the server's resident memory
(workers summed) before and after, optionally over a ``--soak`` of extra requests.

Then the peak worker memory per input class (a normal slice, the 20-slice zip and each bomb of
:mod:`rankiq.service.bombs`): ``--memory-requests`` sequential requests of each, the RSS of every
worker process sampled with psutil every 10 ms while they run; each peak is set beside the
largest allowed decoded series (``RANKIQ_MAX_SERIES_BYTES``) and the goal of at most 4x that,
and the worker RSS after the classes and after the soak shows whether memory comes back.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry
    from rankiq.service.liveserver import LiveServer


def add_commands(reg: Registry) -> None:
    """Add ``rankiq bench serve``."""
    b = reg.bench("serve", "rankiq.service.bench.serve:run_bench",
                  "HTTP service throughput/latency vs the in-process scorer, and memory")
    b.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    b.add_argument("--requests", type=int, default=200,
                   help="requests per single-slice scenario (default 200)")
    b.add_argument("--series-requests", type=int, default=20,
                   help="requests of the 20-slice zip (default 20)")
    b.add_argument("--soak", type=int, default=0,
                   help="extra single-slice requests before the final memory reading")
    b.add_argument("--memory-requests", type=int, default=3,
                   help="requests per input class for the peak-RSS table (default 3; 0 skips)")
    b.add_argument("--workers", type=int, default=None,
                   help="server workers (default: the service's, one per usable CPU, at most 4)")
    b.add_argument("--url", default=None,
                   help="bench a running server instead of starting one (no RSS then)")
    b.add_argument("--token", default=None, help="bearer token for --url")


def bench_inputs(rng_seed: int = 0) -> dict[str, bytes]:
    """The bench's uploads: 256x256 DICOM slices (clean, noisier) and a 20-slice series zip."""
    import io
    import tempfile
    import zipfile
    from pathlib import Path

    import numpy as np
    from rankiq.service.qa.synth import corrupt, phantom, write_series

    rng = np.random.default_rng(rng_seed)
    vol = phantom(20, 256, "T2", rng)
    noisy = corrupt(vol[:1], "noise", 0.5, rng)
    with tempfile.TemporaryDirectory() as tmp:
        clean_files = write_series(Path(tmp) / "clean", vol, description="AX T2", rng=rng)
        noisy_files = write_series(Path(tmp) / "noisy", noisy, description="AX T2", rng=rng)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in clean_files:
                zf.write(f, arcname=Path(f).name)
        return {"slice": Path(clean_files[0]).read_bytes(),
                "noisy": Path(noisy_files[0]).read_bytes(), "zip": buf.getvalue()}


def _closed_loop(url: str, files: dict[str, bytes], data: dict[str, str], *, clients: int,
                 requests_total: int, headers: dict[str, str]) -> dict[str, Any]:
    """``clients`` threads, each posting back to back until ``requests_total`` are done."""
    import threading
    import time

    import numpy as np
    import requests

    lat: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    counter = iter(range(requests_total))

    def client() -> None:
        with requests.Session() as s:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                t = time.perf_counter()
                r = s.post(url, files={k: (k, v) for k, v in files.items()}, data=data,
                           headers=headers, timeout=300)
                dt = time.perf_counter() - t
                with lock:
                    lat.append(dt)
                    if r.status_code != 200:
                        errors.append(r.status_code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {"rps": len(lat) / wall, "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)), "errors": len(errors), "n": len(lat)}


def _in_process_rate(models: dict[str, Any], image: bytes, reference: bytes | None, *,
                     saliency: bool, n: int) -> float:
    """Requests/s of read_upload + score_series + series_json (the same answer, saliency PNGs
    included) on the same bytes, sequentially: what a request costs without HTTP."""
    import json
    import time

    from rankiq.service.io import read_upload
    from rankiq.service.scoring import score_series, select_model, series_json

    model = select_model(models, reference=reference is not None)

    def once() -> None:
        img = read_upload(image, "image")[0]
        ref = read_upload(reference, "reference")[0] if reference is not None else None
        json.dumps(series_json(score_series(model, img, ref, saliency=saliency)))

    once()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        once()
    return n / (time.perf_counter() - t0)


class PeakRss:
    """Samples the resident memory of processes every ``interval_s`` s in a thread while open
    (context manager); ``peak`` is the largest RSS of any one of them seen (bytes)."""

    def __init__(self, pids: list[int], interval_s: float = 0.01) -> None:
        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.interval_s = interval_s
        self.peak = 0
        self.samples = 0
        self._stop = False
        self._thread: Any = None

    def sample(self) -> int:
        """The largest RSS of the processes now (bytes; a process gone counts 0)."""
        import contextlib

        import psutil

        best = 0
        for p in self.procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                best = max(best, p.memory_info().rss)
        return best

    def _run(self) -> None:
        import time

        while not self._stop:
            self.peak = max(self.peak, self.sample())
            self.samples += 1
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRss:
        import threading

        self.peak = self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, self.sample())


def memory_classes(inputs: dict[str, bytes]) -> dict[str, bytes]:
    """The uploads of the peak-RSS table: a normal slice, the 20-slice zip, each bomb kind."""
    from rankiq.service.bombs import bombs

    return {"DICOM slice 256x256": inputs["slice"], "20-slice zip": inputs["zip"],
            **{f"bomb: {k}": v for k, v in bombs().items()}}


def measure_peaks(base: str, pids: list[int], uploads: dict[str, bytes], *, repeats: int,
                  headers: dict[str, str]) -> list[dict[str, Any]]:
    """For each upload, ``repeats`` sequential ``POST /score`` with the worker RSS sampled every
    10 ms; rows of name, upload bytes, statuses, worker RSS before and peak (bytes)."""
    import requests

    rows = []
    for name, data in uploads.items():
        statuses: set[int] = set()
        with PeakRss(pids) as rss:
            before = rss.peak
            for _ in range(repeats):
                r = requests.post(base + "/score", files={"image": ("image", data)},
                                  headers=headers, timeout=300)
                statuses.add(r.status_code)
        rows.append({"name": name, "bytes": len(data), "statuses": sorted(statuses),
                     "before": before, "peak": rss.peak, "samples": rss.samples})
    return rows


@dataclass
class ServeBench:
    """What one ``rankiq bench serve`` run measured (rates per second, RSS in bytes)."""

    rows: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    zip_http: dict[str, Any] = field(default_factory=dict)
    zip_in_process: float = 0.0
    peaks: list[dict[str, Any]] = field(default_factory=list)
    rss_warm: int = 0
    rss_classes: int = 0
    rss_mid_soak: int = 0
    rss_end: int = 0


def _warm_up(base: str, inputs: dict[str, bytes], workers: int,
             headers: dict[str, str]) -> None:
    """Every code path in every worker once or more (a new connection per request)."""
    import requests

    for files, data in 4 * workers * (({"image": inputs["slice"]}, {}),
                                      ({"image": inputs["slice"]}, {"saliency": "true"}),
                                      ({"image": inputs["noisy"], "reference": inputs["slice"]},
                                       {}),
                                      ({"image": inputs["zip"]}, {})):
        requests.post(base + "/score", files={k: (k, v) for k, v in files.items()},
                      data=data, headers=headers, timeout=300).raise_for_status()


def _measure_rates(base: str, inputs: dict[str, bytes], models: dict[str, Any],
                   args: argparse.Namespace, headers: dict[str, str], out: ServeBench) -> None:
    """HTTP closed-loop rates beside the in-process scorer's, per scenario and for the zip."""
    scenarios = [
        ("256x256 slice, no reference", {"image": inputs["slice"]}, {}, None, False),
        ("256x256 slice, no reference, saliency", {"image": inputs["slice"]},
         {"saliency": "true"}, None, True),
        ("256x256 slice, with reference", {"image": inputs["noisy"],
                                           "reference": inputs["slice"]}, {},
         inputs["slice"], False),
    ]
    for name, files, data, ref, sal in scenarios:
        r = _closed_loop(base + "/score", files, data, clients=args.clients,
                         requests_total=args.requests, headers=headers)
        ip = _in_process_rate(models, files["image"], ref, saliency=sal,
                              n=max(10, args.requests // 4))
        out.rows.append((name, r, ip))
    out.zip_http = _closed_loop(base + "/score", {"image": inputs["zip"]}, {},
                                clients=args.clients, requests_total=args.series_requests,
                                headers=headers)
    out.zip_in_process = _in_process_rate(models, inputs["zip"], None, saliency=False,
                                          n=max(3, args.series_requests // 4))


def _soak(base: str, inputs: dict[str, bytes], args: argparse.Namespace,
          headers: dict[str, str], server: LiveServer | None, out: ServeBench) -> None:
    """``--soak`` extra requests in two halves, RSS read after the first."""
    for half in (args.soak // 2, args.soak - args.soak // 2) if args.soak else ():
        _closed_loop(base + "/score", {"image": inputs["slice"]}, {}, clients=args.clients,
                     requests_total=half, headers=headers)
        if not out.rss_mid_soak and server:
            out.rss_mid_soak = server.rss_bytes()


def run_bench(args: argparse.Namespace) -> int:
    """Handler of ``rankiq bench serve``: warm up, rates, memory per input class, soak, table."""
    import contextlib
    import platform

    import requests
    from rankiq.service.liveserver import LiveServer
    from rankiq.service.models import load_models
    from rankiq.service.settings import ServiceSettings

    settings = ServiceSettings.from_env()
    if args.workers is None:
        args.workers = settings.workers
    inputs = bench_inputs()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    models = load_models(settings.models_dir, threads=settings.ort_threads)
    res = ServeBench()
    with contextlib.ExitStack() as stack:
        server = None
        if args.url:
            base = args.url.rstrip("/")
        else:
            server = stack.enter_context(LiveServer(workers=args.workers))
            base = server.url
        info = requests.get(base + "/models", headers=headers, timeout=30).json()
        workers = args.workers if server else "?"
        print(f"rankiq bench serve: {args.clients} clients, workers={workers}, "
              f"ORT threads/worker={info.get('ort_threads')}, "
              f"provider={info['models'][0]['provider'] if info.get('models') else '?'}, "
              f"{os.cpu_count()} CPUs ({platform.machine()})")
        _warm_up(base, inputs, args.workers, headers)
        res.rss_warm = server.rss_bytes() if server else 0
        _measure_rates(base, inputs, models, args, headers, res)
        if server and args.memory_requests > 0:
            res.peaks = measure_peaks(base, server.pids(), memory_classes(inputs),
                                      repeats=args.memory_requests, headers=headers)
        res.rss_classes = server.rss_bytes() if server else 0
        _soak(base, inputs, args, headers, server, res)
        res.rss_end = server.rss_bytes() if server else 0
    series = int(info.get("limits", {}).get("max_series_bytes") or settings.max_series_bytes)
    _print_report(res, args, series)
    bad = sum(r["errors"] for _, r, _ in res.rows) + res.zip_http["errors"]
    return 0 if bad == 0 else 1


def _print_report(res: ServeBench, args: argparse.Namespace, series: int) -> None:
    """The rates table, the RSS lines and the peak-RSS table (``series``: the largest allowed
    decoded series in bytes)."""
    rows, zr, zip_ip = res.rows, res.zip_http, res.zip_in_process
    rss0, rss1, rss_mid, rss_classes = res.rss_warm, res.rss_end, res.rss_mid_soak, \
        res.rss_classes
    peaks = res.peaks
    print()
    print(f"{'scenario':42s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'in-proc/s':>10s} "
          f"{'HTTP/in-proc':>12s} {'errors':>6s}")
    for name, r, ip in rows:
        print(f"{name:42s} {r['rps']:8.1f} {r['p50']:8.1f} {r['p99']:8.1f} {ip:10.1f} "
              f"{r['rps'] / ip:12.2f} {r['errors']:6d}")
    http_sps, ip_sps = zr["rps"] * 20, zip_ip * 20
    print(f"{'20-slice zip (slices/s)':42s} {http_sps:8.1f} {zr['p50']:8.1f} {zr['p99']:8.1f} "
          f"{ip_sps:10.1f} {http_sps / ip_sps:12.2f} {zr['errors']:6d}")
    if rss0:
        total = (args.requests * len(rows) + args.series_requests + args.soak
                 + args.memory_requests * len(peaks))
        print(f"\nserver RSS (workers summed): {rss0 / 2**20:.1f} MiB before, "
              f"{rss1 / 2**20:.1f} MiB after {total} requests "
              f"({100 * (rss1 - rss0) / rss0:+.1f} %)")
        if rss_mid:
            print(f"soak: {rss_mid / 2**20:.1f} MiB after its first {args.soak // 2} requests, "
                  f"{rss1 / 2**20:.1f} MiB after the second {args.soak - args.soak // 2} "
                  f"({100 * (rss1 - rss_mid) / rss_mid:+.1f} %; BentoML keeps each request's "
                  f"context for RANKIQ_REQUEST_TIMEOUT s, so RSS first rises, then levels off)")
    if peaks:
        goal = 4 * series
        print(f"\npeak worker RSS per input class ({args.memory_requests} requests each, "
              f"sampled every 10 ms); largest allowed decoded series "
              f"(RANKIQ_MAX_SERIES_BYTES) {series / 2**20:.0f} MiB, goal <= 4x = "
              f"{goal / 2**20:.0f} MiB")
        print(f"{'input class':28s} {'upload KiB':>10s} {'status':>8s} {'before MiB':>10s} "
              f"{'peak MiB':>9s} {'+MiB':>7s} {'peak/series':>11s} {'<= 4x':>6s}")
        for p in peaks:
            st = "/".join(str(c) for c in p["statuses"])
            print(f"{p['name']:28s} {p['bytes'] / 1024:10.1f} {st:>8s} "
                  f"{p['before'] / 2**20:10.1f} {p['peak'] / 2**20:9.1f} "
                  f"{(p['peak'] - p['before']) / 2**20:+7.1f} {p['peak'] / series:11.2f} "
                  f"{'yes' if p['peak'] <= goal else 'NO':>6s}")
        print(f"worker RSS (workers summed): {rss0 / 2**20:.1f} MiB after warm-up, "
              f"{rss_classes / 2**20:.1f} MiB after the input classes, "
              f"{rss1 / 2**20:.1f} MiB after the soak ({args.soak} requests)")
