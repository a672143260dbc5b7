"""``rankiq bench score``: torch eager vs naive ONNX vs optimised ONNX, side by side in one run.

Times ms per image for the score alone and score + saliency (torch: autograd; naive ONNX: the
unfolded explicit-backward graph; optimised: the shipped ``saliency.onnx`` construction) at
batch sizes 1 and 8, on a fixed number of threads. Nothing here asserts a speed: it prints.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from rankiq.training.export.iqnet_graphs import FoldedSaliency, FoldedScore, NaiveSaliency
from rankiq.training.export.writer import to_onnx
from rankiq.training.models.iqnet import IQNet


def _time(fn: Callable[[], object], min_time: float, min_reps: int,
          clock: Callable[[], float] = time.perf_counter) -> tuple[float, float]:
    """(median, best) seconds of one call after a warm-up, repeated for >= ``min_time`` s."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t = clock()
        fn()
        times.append(clock() - t)
    return float(np.median(times)), float(np.min(times))


def _session(data: bytes, threads: int) -> ort.InferenceSession:
    from rankiq.service.models import session_options

    return ort.InferenceSession(data, session_options(threads),
                                providers=["CPUExecutionProvider"])


def _eager(net: IQNet, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


def _eager_saliency(net: IQNet, x: torch.Tensor) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    return torch.autograd.grad(net(xg).sum(), xg)[0]


def bench_score(net: IQNet | None = None, *, grid: tuple[int, int] = (396, 396),
                threads: int = 2, batches: tuple[int, ...] = (1, 8), min_time: float = 1.0,
                min_reps: int = 5, seed: int = 0, save_dir: Path | None = None
                ) -> list[dict[str, float | int | str]]:
    """Measure the five variants; returns rows ``{batch, what, ms_per_image}``.

    Args:
        net: the IQ-Net to measure (default: the faithful seeded initial network).
        grid: input size ``(H, W)``.
        threads: torch and ONNX Runtime intra-op threads.
    """
    if net is None:
        torch.manual_seed(seed)
        net = IQNet("magnitude")
    net = net.float().eval()
    c = net.parts
    example = torch.zeros(1, c, *grid)
    torch.set_num_threads(threads)
    with torch.no_grad():
        graphs = {"naive": to_onnx(net, example, ["score"]),
                  "naive+sal": to_onnx(NaiveSaliency(net, grid).eval(), example,
                                       ["score", "saliency"])}
        if net.activation == "identity":
            graphs["opt"] = to_onnx(FoldedScore(net, grid).eval(), example, ["score"])
            graphs["opt+sal"] = to_onnx(FoldedSaliency(net, grid).eval(), example,
                                        ["score", "saliency"])
    if save_dir is not None:
        for k, v in graphs.items():
            Path(save_dir, f"{k}.onnx").write_bytes(v)
    sessions = {k: _session(v, threads) for k, v in graphs.items()}
    # single-threaded CPU time: robust to other processes sharing the machine
    sessions1 = {k: _session(v, 1) for k, v in graphs.items()}
    rng = np.random.default_rng(seed)
    rows: list[dict[str, float | int | str]] = []
    for b in batches:
        x = rng.standard_normal((b, c, *grid)).astype(np.float32)
        xt = torch.from_numpy(x)

        fns: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
            "torch eager": (lambda xt=xt: _eager(net, xt),) * 2,
            "torch eager+sal (autograd)": (lambda xt=xt: _eager_saliency(net, xt),) * 2}
        for k, s in sessions.items():
            # named first: against the dict's Callable[[], object] as context, mypy cannot
            # type lambdas whose parameters have defaults (it checks the bound pair fine)
            pair = (lambda s=s, x=x: s.run(None, {"x": x}),
                    lambda s=sessions1[k], x=x: s.run(None, {"x": x}))
            fns[f"onnx {k}"] = pair
        for what, (fn, fn1) in fns.items():
            torch.set_num_threads(threads)
            med, best = _time(fn, min_time, min_reps)
            torch.set_num_threads(1)
            cpu = _time(fn1, min_time / 2, min_reps, time.process_time)[1]
            rows.append({"batch": b, "what": what, "ms_per_image": 1e3 * med / b,
                         "best_ms_per_image": 1e3 * best / b, "cpu_ms_per_image": 1e3 * cpu / b})
    torch.set_num_threads(threads)
    return rows


def format_table(rows: list[dict[str, float | int | str]], grid: tuple[int, int],
                 threads: int) -> str:
    """Markdown table with ratios (naive/opt for the score, opt+sal/opt for the saliency)."""
    out = [f"IQ-Net at {grid[0]}x{grid[1]} (ms per image): wall clock on {threads} threads "
           "(median, best) and CPU time on 1 thread (best)", "",
           f"| batch | variant | {threads} threads median | {threads} threads best "
           "| 1-thread CPU |", "|---:|---|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['batch']} | {r['what']} | {float(r['ms_per_image']):.2f} | "
                   f"{float(r['best_ms_per_image']):.2f} | {float(r['cpu_ms_per_image']):.2f} |")
    out.append("")
    for key, label in (("ms_per_image", f"{threads}-thread median"),
                       ("best_ms_per_image", f"{threads}-thread best"),
                       ("cpu_ms_per_image", "1-thread CPU")):
        by = {(r["batch"], r["what"]): float(r[key]) for r in rows}
        for b in sorted({int(r["batch"]) for r in rows}):
            opt, naive = by.get((b, "onnx opt")), by.get((b, "onnx naive"))
            sal, eager = by.get((b, "onnx opt+sal")), by.get((b, "torch eager"))
            if opt and naive and sal and eager:
                out.append(f"{label}, batch {b}: naive ONNX / optimised = {naive / opt:.2f}x; "
                           f"torch eager / optimised = {eager / opt:.2f}x; optimised "
                           f"score+saliency / optimised score = {sal / opt:.2f}x")
    return "\n".join(out)


def main_bench(grid: int = 396, threads: int = 2, min_time: float = 1.0) -> str:
    """Run the bench with the defaults of ``rankiq bench score``; returns the table text."""
    with tempfile.TemporaryDirectory():
        rows = bench_score(grid=(grid, grid), threads=threads, min_time=min_time)
    return format_table(rows, (grid, grid), threads)
