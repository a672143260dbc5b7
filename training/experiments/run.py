"""Run an experiment: data, one network per loss (resumable, a checkpoint per epoch), the test
set evaluation, paired t-tests, figures and the results table.

Run folder (``--out``)::

    config.json                    ExperimentConfig (a rerun with other settings is refused)
    data/{train,val,test...}.npz   the simulated slices (rebuilt identically when missing)
    <loss>/checkpoint.pt           network, optimiser, scheduler, epoch, history (every epoch)
    <loss>/history.json            per epoch: train loss, val MSE / SSIM / IQ-Net score, seconds
    <loss>/<test set>.npz          the network's test outputs (complex64)
    results.json, results.md       the table (mean, SD, 95 % CI per loss) and the t-tests; the
                                   config names the models used (:func:`results_config`)
    figures/panel_<set>.png        input, outputs per loss, reference; error maps; saliency
    figures/curves.png             training curves

Test metrics are computed on magnitudes against the reference (max 1): ``mse`` (raw output),
``mse_fit`` (after the metric's own least-squares scale, which the IQ-Net loss is blind to),
``ssim`` (:mod:`rankiq.training.ssim`) and ``iqnet`` (the served score: ONNX Runtime on
:func:`rankiq.service.preprocess.prepare`). Paired t-tests (``scipy.stats.ttest_rel``) compare
every loss with the MSE- and SSIM-trained networks on the same test slices.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import torch
from rankiq.training.experiments.config import ExperimentConfig, ExperimentError
from torch import nn

METRICS = ("mse", "mse_fit", "ssim", "iqnet")
BASELINES = ("mse", "ssim")


# ------------------------------------------------------------------ data


def test_sets(cfg: ExperimentConfig) -> list[str]:
    """Names of the test sets: ``test`` (denoise) or ``test_8x``, ``test_16x``... (recon)."""
    if cfg.kind == "denoise":
        return ["test"]
    return [f"test_{a:g}x" for a in cfg.accels_test]


def _build_split(cfg: ExperimentConfig, name: str) -> dict[str, np.ndarray]:
    from rankiq.training.experiments.data import denoise_split, recon_split

    split = "test" if name.startswith("test") else name
    n = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}[split]
    if cfg.kind == "denoise":
        return denoise_split(split, n, size=cfg.size, seed=cfg.seed, noise=cfg.noise)
    accel = cfg.accel_train if split != "test" else float(name[5:-1])
    return recon_split(split, n, size=cfg.size, seed=cfg.seed, accel=accel, coils=cfg.coils,
                       calib=cfg.calib, snr=cfg.snr)


def load_split(run: Path, cfg: ExperimentConfig, name: str) -> dict[str, np.ndarray]:
    """A split of the run, simulated on first use and kept in ``data/<name>.npz``."""
    path = run / "data" / f"{name}.npz"
    if not path.exists():
        arrays = _build_split(cfg, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        # cast: numpy's stub reads **kwds as possibly filling savez's allow_pickle: bool
        np.savez(tmp, **cast("dict[str, Any]", arrays))
        os.replace(tmp, path)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# ------------------------------------------------------------------ networks and losses


def make_network(cfg: ExperimentConfig) -> nn.Module:
    """The experiment's network, initialised from ``cfg.seed`` (the same for every loss)."""
    from rankiq.training.experiments.nets import ResUNet, UnrolledRecon

    torch.manual_seed(cfg.seed)
    if cfg.kind == "denoise":
        return ResUNet(cfg.levels, cfg.width)
    return UnrolledRecon(cfg.iterations, cfg.levels, cfg.width)


def _find_model(models_dir: Path, architecture: str, mode: str) -> Path | None:
    for meta_path in sorted(models_dir.glob("*/metadata.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (meta.get("architecture", {}).get("model") == architecture
                and meta.get("mode") == mode):
            return meta_path.parent
    return None


def make_loss(name: str, cfg: ExperimentConfig, models_dir: Path = Path("models")
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``name`` of the experiment (``loss(output, reference)``, complex ``(N, H, W)``).

    Raises:
        ExperimentError: an EfficientNet loss without a trained EfficientNet model.
        ModelIncompatible: the metric model is not a reference IQ-Net (or is corrupt...).
    """
    from rankiq.service.models import ModelIncompatible
    from rankiq.training.losses import (
        EfficientNetLoss,
        IQNetLoss,
        MetricLoss,
        MSELoss,
        SSIMLoss,
    )

    if name == "mse":
        return MSELoss()
    if name == "ssim":
        return SSIMLoss()
    if name == "iqnet":
        loss: MetricLoss = IQNetLoss(cfg.metric)
        if loss.mode != "reference":
            raise ModelIncompatible("the iqnet loss is the paper's IQ-Net *with reference "
                                    f"subtraction*; {loss.metadata.get('name')!r} is a "
                                    f"{loss.mode} model", source=cfg.metric)
        return loss
    mode = "reference" if name == "efficientnet-ref" else "no-reference"
    given = cfg.efficientnet if mode == "reference" else cfg.efficientnet_noref
    path = Path(given) if given else _find_model(models_dir, "EfficientNetScorer", mode)
    if path is None:
        flag = "" if mode == "reference" else " --no-reference"
        option = "--efficientnet" if mode == "reference" else "--efficientnet-noref"
        raise ExperimentError(
            f"the {name} loss needs a trained EfficientNet model ({mode} mode) and {models_dir} "
            f"holds none: build one with `rankiq train --model efficientnet{flag} --data "
            f"PAIRS.h5 --rankings CONSENSUS.csv --out runs/effnet` and `rankiq export "
            f"runs/effnet --out models/effnet-{'ref' if mode == 'reference' else 'noref'}`, "
            f"or pass {option} DIR")
    loss = EfficientNetLoss(path)
    if loss.mode != mode:
        raise ModelIncompatible(f"the {name} loss needs a {mode} EfficientNet model, not "
                                f"{loss.mode}", source=str(path))
    return loss


def _tensors(data: dict[str, np.ndarray], idx: np.ndarray, device: str
             ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Network inputs and the reference of slices ``idx``."""
    ref = torch.from_numpy(data["reference"][idx]).to(device)
    if "input" in data:
        return (torch.from_numpy(data["input"][idx]).to(device),), ref
    return tuple(torch.from_numpy(data[k][idx]).to(device)
                 for k in ("kspace", "maps", "mask")), ref


def network_input(data: dict[str, np.ndarray]) -> np.ndarray:
    """The image the network starts from: the noisy image, or the zero-filled ``A^H y``."""
    if "input" in data:
        return data["input"]
    from rankiq.training.experiments.nets import adjoint_op

    with torch.no_grad():
        return adjoint_op(torch.from_numpy(data["kspace"]), torch.from_numpy(data["maps"]),
                          torch.from_numpy(data["mask"])).numpy()


def infer(net: nn.Module, data: dict[str, np.ndarray], cfg: ExperimentConfig) -> np.ndarray:
    """Outputs complex64 ``(n, S, S)`` of the network on a split (no gradient)."""
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(data["reference"]), cfg.batch):
            args, _ = _tensors(data, np.arange(i, min(i + cfg.batch, len(data["reference"]))),
                               cfg.device)
            out.append(net(*args).cpu().numpy())
    return np.concatenate(out).astype(np.complex64)


# ------------------------------------------------------------------ metrics


class Scorer:
    """The served IQ-Net score of outputs against references (ONNX Runtime), with saliency."""

    def __init__(self, metric: str) -> None:
        from rankiq.service.models import ScoringModel

        self.model = ScoringModel.load(metric)

    def _inputs(self, out: np.ndarray, ref: np.ndarray) -> np.ndarray:
        from rankiq.service.preprocess import prepare

        return prepare(out, ref, grid=self.model.grid,
                       input_kind=self.model.input_kind).network_input  # type: ignore[arg-type]

    def score(self, out: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return self.model.score(self._inputs(out, ref)).astype(np.float64)

    def saliency(self, out: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """``|d score / d network input|`` on the model grid, ``(n, H, W)``."""
        _, maps = self.model.score_and_saliency(self._inputs(out, ref))
        return np.abs(maps).sum(axis=1)


def metrics(out: np.ndarray, ref: np.ndarray, scorer: Scorer) -> dict[str, np.ndarray]:
    """Per-slice ``mse``, ``mse_fit``, ``ssim`` and ``iqnet`` of outputs against references."""
    from rankiq.service.preprocess import least_squares_scale
    from rankiq.training.ssim import mse, ssim_batch

    a, r = np.abs(out).astype(np.float64), np.abs(ref).astype(np.float64)
    fit = a * least_squares_scale(a, r)[:, None, None]
    return {"mse": mse(a, r), "mse_fit": mse(fit, r), "ssim": ssim_batch(a, r),
            "iqnet": scorer.score(out, ref)}


class _Summary(TypedDict):
    """Mean, sd (ddof=1) and normal-approximation 95 % CI of per-slice values."""

    mean: float
    sd: float
    ci95: list[float]


def _summary(v: np.ndarray) -> _Summary:
    n = len(v)
    sd = float(np.std(v, ddof=1)) if n > 1 else 0.0
    half = 1.96 * sd / np.sqrt(n) if n > 1 else 0.0
    return {"mean": float(np.mean(v)), "sd": sd, "ci95": [float(np.mean(v) - half),
                                                          float(np.mean(v) + half)]}


def ttests(per_loss: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Paired t-tests of every loss against the MSE- and SSIM-trained networks."""
    from scipy.stats import ttest_rel

    rows = []
    for base in BASELINES:
        if base not in per_loss:
            continue
        for loss, vals in per_loss.items():
            if loss == base or (loss in BASELINES
                                and BASELINES.index(loss) < BASELINES.index(base)):
                continue  # each pair of baselines once (mse vs ssim)
            for m in METRICS:
                res = ttest_rel(vals[m], per_loss[base][m])
                rows.append({"loss": loss, "versus": base, "metric": m,
                             "mean_difference": float(np.mean(vals[m] - per_loss[base][m])),
                             "t": float(res.statistic), "p": float(res.pvalue),
                             "n": int(len(vals[m]))})
    return rows


# ------------------------------------------------------------------ training


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def train_one(run: Path, cfg: ExperimentConfig, name: str, train: dict[str, np.ndarray],
              val: dict[str, np.ndarray], scorer: Scorer, *, log: Callable[[str], None],
              loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> nn.Module:
    """Train (or resume, or load a finished) network with loss ``name`` (``loss_fn``, as
    :func:`make_loss` builds it); returns it."""
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(cfg.device)
    net = make_network(cfg).to(cfg.device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    d = run / name
    d.mkdir(parents=True, exist_ok=True)
    ckpt = d / "checkpoint.pt"
    history: list[dict[str, Any]] = []
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=cfg.device, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        history, start = state["history"], int(state["epoch"])
        if start < cfg.epochs:
            log(f"{name}: resuming after epoch {start}")
    n = len(train["reference"])
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        net.train()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        total, steps = 0.0, 0
        for i in range(0, n, cfg.batch):
            args, ref = _tensors(train, order[i:i + cfg.batch], cfg.device)
            value = loss_fn(net(*args), ref)
            opt.zero_grad()
            value.backward()
            opt.step()
            total += float(value.detach())
            steps += 1
        sched.step()
        seconds = time.perf_counter() - t0
        m = metrics(infer(net, val, cfg), val["reference"], scorer)
        row = {"epoch": epoch + 1, "train_loss": total / max(steps, 1), "seconds": seconds,
               **{f"val_{k}": float(np.mean(v)) for k, v in m.items()}}
        history.append(row)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "history": history, "epoch": epoch + 1}, tmp)
        os.replace(tmp, ckpt)
        _write_json(d / "history.json", history)
        log(f"{name}: epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4g} val mse "
            f"{row['val_mse']:.3g} ssim {row['val_ssim']:.3f} iqnet {row['val_iqnet']:.3g} "
            f"({seconds:.0f} s)")
    return net


def _open_run(run: Path, cfg: ExperimentConfig) -> None:
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != cfg.to_dict():
            diff = sorted(k for k in set(old) | set(cfg.to_dict())
                          if old.get(k) != cfg.to_dict().get(k))
            raise ExperimentError(f"the run folder holds another experiment (differs in "
                                  f"{', '.join(diff)}): use a new --out or the same settings")
    else:
        _write_json(path, cfg.to_dict())


def model_record(meta: dict[str, Any]) -> dict[str, str]:
    """``name``, ``version`` and ``sha256`` (of ``score.onnx``, as checked at load and reported
    with every served score) of a loaded model's metadata."""
    return {"name": str(meta["name"]), "version": str(meta["version"]),
            "sha256": str(meta["files"]["score.onnx"])}


def results_config(cfg: ExperimentConfig, scorer: Scorer,
                   losses: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
                   ) -> dict[str, Any]:
    """``results.json``'s ``config``: the settings, plus the exact models the run used:
    ``metric_model`` (the test-set score, :class:`Scorer`) and ``loss_models`` (per learned
    loss, e.g. ``iqnet``, ``efficientnet-ref``), each as :func:`model_record`."""
    from rankiq.training.losses import MetricLoss

    return {**cfg.to_dict(), "metric_model": model_record(scorer.model.metadata),
            "loss_models": {name: model_record(loss.metadata) for name, loss in losses.items()
                            if isinstance(loss, MetricLoss)}}


def run_experiment(run: str | Path, cfg: ExperimentConfig, *, figures: bool = True,
                   log: Callable[[str], None] = print, models_dir: str | Path = "models"
                   ) -> dict[str, Any]:
    """Run (or resume) an experiment in ``run`` and return the results (also written there)."""
    run, models_dir = Path(run), Path(models_dir)
    # refuse bad losses (missing EfficientNet, wrong metric) before any data is simulated
    losses = {name: make_loss(name, cfg, models_dir) for name in cfg.losses}
    scorer = Scorer(cfg.metric)
    config = results_config(cfg, scorer, losses)
    _open_run(run, cfg)
    t_data = time.perf_counter()
    train, val = load_split(run, cfg, "train"), load_split(run, cfg, "val")
    tests = {name: load_split(run, cfg, name) for name in test_sets(cfg)}
    data_seconds = time.perf_counter() - t_data
    nets = {name: train_one(run, cfg, name, train, val, scorer, log=log, loss_fn=losses[name])
            for name in cfg.losses}
    results: dict[str, Any] = {"experiment": cfg.kind, "config": config,
                               "data_seconds": data_seconds, "sets": {}, "training": {}}
    for name in cfg.losses:
        hist = json.loads((run / name / "history.json").read_text())
        secs = [h["seconds"] for h in hist]
        results["training"][name] = {"epochs": len(hist), "seconds_per_epoch":
                                     float(np.median(secs)) if secs else None,
                                     "final_train_loss": hist[-1]["train_loss"] if hist else None}
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for set_name, data in tests.items():
        per_loss: dict[str, dict[str, np.ndarray]] = {}
        outs: dict[str, np.ndarray] = {"input": network_input(data)}
        for name, net in nets.items():
            outs[name] = infer(net, data, cfg)
            np.savez(run / name / f"{set_name}.npz", output=outs[name])
            per_loss[name] = metrics(outs[name], data["reference"], scorer)
        base = metrics(outs["input"], data["reference"], scorer)
        results["sets"][set_name] = {
            "n": int(len(data["reference"])),
            "input": {m: _summary(v) for m, v in base.items()},
            "losses": {name: {m: _summary(v) for m, v in vals.items()}
                       for name, vals in per_loss.items()},
            "ttests": ttests(per_loss),
        }
        outputs[set_name] = outs
    _write_json(run / "results.json", results)
    (run / "results.md").write_text(results_markdown(results))
    if figures:
        from rankiq.training.experiments.figures import curves, panel

        (run / "figures").mkdir(exist_ok=True)
        for set_name, outs in outputs.items():
            panel(run / "figures" / f"panel_{set_name}.png", outs, tests[set_name]["reference"],
                  scorer, title=f"{cfg.kind} {set_name}")
        curves(run / "figures" / "curves.png",
               {name: json.loads((run / name / "history.json").read_text())
                for name in cfg.losses})
    return results


def results_markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables (mean +- SD per loss, then the t-tests)."""
    lines = [f"# {results['experiment']} experiment", ""]
    c = results["config"]
    lines.append(f"{c['size']}x{c['size']} px, width {c['width']}, {c['epochs']} epochs, "
                 f"{c['n_train']}/{c['n_val']}/{c['n_test']} train/val/test slices, "
                 f"device {c['device']}.")
    if "metric_model" in c:  # results written before the models were recorded lack it
        used = {"score": c["metric_model"],
                **{f"{k} loss": m for k, m in c.get("loss_models", {}).items()}}
        lines.append("Models: " + "; ".join(
            f"{k} {m['name']} {m['version']} (score.onnx SHA-256 {m['sha256'][:12]})"
            for k, m in used.items()) + ".")
    for set_name, s in results["sets"].items():
        lines += ["", f"## {set_name} (n = {s['n']})", "",
                  "| network | MSE | MSE after LS scale | SSIM | IQ-Net score |",
                  "|---|---|---|---|---|"]
        rows = [("input", s["input"])] + [(f"{k}-trained", v) for k, v in s["losses"].items()]
        for label, v in rows:
            cells = []
            for m in METRICS:
                fmt = ".4f" if m == "ssim" else ".3g"
                cells.append(f"{v[m]['mean']:{fmt}} ± {v[m]['sd']:{fmt}}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if s["ttests"]:
            lines += ["", "| loss | vs | metric | mean difference | t | p |",
                      "|---|---|---|---|---|---|"]
            for t in s["ttests"]:
                lines.append(f"| {t['loss']} | {t['versus']} | {t['metric']} | "
                             f"{t['mean_difference']:.3g} | {t['t']:.2f} | {t['p']:.2g} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ bench


def bench_losses(cfg: ExperimentConfig, *, steps: int = 3, models_dir: str | Path = "models"
                 ) -> list[dict[str, Any]]:
    """Seconds per training step and per epoch (``cfg.n_train`` slices) for each loss:
    ``steps`` timed optimiser steps (median) after one warm-up, on ``cfg.batch`` simulated
    training slices."""
    from rankiq.training.experiments.nets import count_parameters

    batch = _build_split(cfg.with_overrides(n_train=cfg.batch), "train")
    rows = []
    for name in cfg.losses:
        loss_fn = make_loss(name, cfg, Path(models_dir))
        if isinstance(loss_fn, nn.Module):
            loss_fn = loss_fn.to(cfg.device)
        net = make_network(cfg).to(cfg.device)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        args, ref = _tensors(batch, np.arange(cfg.batch), cfg.device)
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            value = loss_fn(net(*args), ref)
            opt.zero_grad()
            value.backward()
            opt.step()
            if cfg.device == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
        sps = float(np.median(times))
        rows.append({"experiment": cfg.kind, "loss": name, "params": count_parameters(net),
                     "seconds_per_step": sps,
                     "seconds_per_epoch": sps * -(-cfg.n_train // cfg.batch)})
    return rows
