"""``rankiq bench train``: training-step speed of each model, measured side by side.

Each model runs ``steps`` full training steps (forward of both images, classifier,
cross-entropy, backward, Adam step; augmentation included for the networks) on random
``(batch, C, size, size)`` inputs after one warm-up step; seconds per epoch are projected for
``pairs`` training pairs. The distillation student's step is the stage-1 regression (student
forward/backward plus a frozen teacher forward). ``mse`` is the classifier alone on precomputed
metric values (computing SSIM itself is numpy, once per image, outside the loop).
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
from torch import nn

BENCH_MODELS = ("iqnet", "iqnet-complex", "efficientnet", "distill-student", "mse")


def _step_fn(name: str, size: int, batch: int):
    from rankiq.training.augment import apply, draw
    from rankiq.training.baselines import MetricScorer
    from rankiq.training.distill import NoRefStudent
    from rankiq.training.models import IQNet, RankClassifier
    from rankiq.training.models.efficientnet import EfficientNetScorer

    gen = torch.Generator().manual_seed(0)
    clf = RankClassifier()
    y = torch.randint(0, 3, (batch,), generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    if name == "mse":
        scorer: nn.Module = MetricScorer("mse")
        x1, x2 = torch.rand(batch, 1, generator=gen), torch.rand(batch, 1, generator=gen)
        opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
        params = 0
    elif name == "distill-student":
        teacher = IQNet("magnitude").eval()
        student = NoRefStudent("magnitude")
        x1 = torch.randn(batch, 1, size, size, generator=gen)
        opt = torch.optim.Adam(student.parameters(), lr=1e-3)

        def student_step() -> None:
            p = draw(batch, gen)
            xt, xs = apply(x1, p), apply(x1, p)
            with torch.no_grad():
                t = torch.log(teacher(xt) + 1e-3)
            loss = torch.mean((student.log_score(xs) - t) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return student_step, sum(p.numel() for p in student.parameters()), 1
    else:
        kind: Literal["magnitude", "complex"] = (
            "complex" if name == "iqnet-complex" else "magnitude")
        scorer = EfficientNetScorer(kind) if name == "efficientnet" else IQNet(kind)
        c = 2 if kind == "complex" else 1
        x1 = torch.randn(batch, c, size, size, generator=gen)
        x2 = torch.randn(batch, c, size, size, generator=gen)
        opt = torch.optim.Adam([{"params": scorer.parameters(), "lr": 1e-4},
                                {"params": clf.parameters(), "lr": 1e-3}])
        params = sum(p.numel() for p in scorer.parameters())
    scorer.train()
    is_metric = name == "mse"

    def step() -> None:
        a, b = x1, x2
        if not is_metric:
            p = draw(batch, gen)
            a, b = apply(a, p), apply(b, p)
        s = scorer(torch.cat([a, b]))
        loss = loss_fn(clf(s[:batch], s[batch:]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, params, 2


def bench_training(*, size: int = 396, threads: int = 2, batch: int = 24, steps: int = 3,
                   pairs: int = 2333, models: list[str] | None = None) -> list[dict]:
    """Time ``steps`` training steps per model; returns rows with ``seconds_per_step``,
    ``pairs_per_s`` (images/s / 2 for the student, which sees one image per sample) and
    ``seconds_per_epoch`` for ``pairs`` pairs."""
    torch.set_num_threads(threads)
    rows = []
    for name in models or BENCH_MODELS:
        if name not in BENCH_MODELS:
            raise ValueError(f"unknown bench model {name!r} (expected {BENCH_MODELS})")
        step, params, images = _step_fn(name, size, batch)
        step()  # warm-up (allocations, lazy init)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        sps = float(np.median(times))
        per_s = batch / sps * images / 2
        rows.append({"model": name, "params": params, "seconds_per_step": sps,
                     "pairs_per_s": per_s, "seconds_per_epoch": pairs / per_s})
    return rows


def format_bench(rows: list[dict], *, size: int, threads: int, batch: int, pairs: int) -> str:
    """The printed table."""
    out = [f"rankiq bench train: {size}x{size}, batch {batch}, {threads} thread(s), "
           f"epoch = {pairs} training pairs (median of the timed steps)",
           f"{'model':<16} {'params':>9} {'s/step':>8} {'pairs/s':>9} {'s/epoch':>9}"]
    for r in rows:
        out.append(f"{r['model']:<16} {r['params']:>9,} {r['seconds_per_step']:>8.3f} "
                   f"{r['pairs_per_s']:>9.1f} {r['seconds_per_epoch']:>9.1f}")
    out.append("distill-student: pairs/s counts two student images as one pair (stage 1 sees "
               "single images)")
    return "\n".join(out)
