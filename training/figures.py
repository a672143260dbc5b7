"""Figure 6 of the paper and score-vs-metric scatter plots (matplotlib, Agg backend, PNG).

``figure6``: for each fold, up to ``slices`` distinct held-out references (the fold's
validation slices) get one corruption type at a time at the levels of
:data:`rankiq.training.synthetic.LEVELS`; each image is scored by that fold's best model (through
``rankiq.service.preprocess.prepare`` on the run's grid), and by MSE and 1 - SSIM of the prepared
magnitudes. Curves are means over slices, each divided by its maximum over the levels (the
units differ).

``scatter``: the held-out scores of ``predictions.csv`` against the pairs file's ``/mse`` and
``/ssim`` of the same images, with Pearson r.

``figure3``: the paper's Figure 3, saliency maps of several trained scorers (IQ-Net and
EfficientNet, with and without reference) on one held-out slice with one corruption per row,
and :func:`saliency_alignment`, a number for what the figure shows: how well each map follows
the corruption actually added.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rankiq.training.factory import LoadedRun


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def corruption_curves(run_dir: Path, *, slices: int = 4, seed: int = 0) -> dict:
    """``{kind: {"levels", "score", "mse", "one_minus_ssim"}}`` (raw means over slices)."""
    import torch
    from rankiq.service.preprocess import prepare
    from rankiq.training.baselines import metric_values
    from rankiq.training.data import open_pairs
    from rankiq.training.factory import load_run
    from rankiq.training.runs import available_folds, read_config, read_json
    from rankiq.training.synthetic import LEVELS, single_corruption

    cfg = read_config(run_dir)
    folds = read_json(run_dir / "folds.json")
    grid = tuple(cfg["grid"])
    rng = np.random.default_rng(seed)
    acc: dict[str, dict[str, list[np.ndarray]]] = {
        k: {"score": [], "mse": [], "one_minus_ssim": []} for k in LEVELS}
    with open_pairs(cfg["data"]["pairs"]) as pf:
        meta = pf.meta()
        row_of = {int(p): i for i, p in enumerate(meta["pair_id"])}
        for k in available_folds(run_dir):
            run = load_run(run_dir, fold=k)
            rows = sorted({row_of[p] for p in folds.get(str(k), []) if p in row_of})
            # distinct slices: pairs of one slice share the reference
            seen, picked = set(), []
            for r in rows:
                key = (meta["source_id"][r], int(pf.h5["slice_index"][r]))
                if key not in seen:
                    seen.add(key)
                    picked.append(r)
                if len(picked) >= slices:
                    break
            for r in picked:
                ref = pf.h5["reference"][r]
                for kind, levels in LEVELS.items():
                    imgs = np.stack([single_corruption(ref, kind, float(v), rng) for v in levels])
                    refs = np.broadcast_to(ref, imgs.shape)
                    use_ref = refs if cfg["mode"] == "reference" else None
                    x = prepare(imgs, use_ref, grid=grid,
                                input_kind=cfg["input_kind"]).network_input
                    with torch.no_grad():
                        s = run.scorer(torch.from_numpy(np.ascontiguousarray(x))).numpy()
                    pm = prepare(imgs, refs, grid=grid, input_kind="magnitude")
                    assert pm.reference is not None
                    acc[kind]["score"].append(s)
                    acc[kind]["mse"].append(metric_values("mse", pm.image[:, 0],
                                                          pm.reference[:, 0]))
                    acc[kind]["one_minus_ssim"].append(
                        1 - metric_values("ssim", pm.image[:, 0], pm.reference[:, 0]))
    return {k: {"levels": LEVELS[k].tolist(),
                **{m: np.mean(v, axis=0).tolist() if v else [] for m, v in d.items()}}
            for k, d in acc.items()}


def figure6(run_dir: Path, out: Path, *, slices: int = 4, seed: int = 0) -> Path:
    """Write the Figure 6 PNG of a run; returns ``out``."""
    from rankiq.training.runs import read_config, run_label
    from rankiq.training.synthetic import UNITS

    curves = corruption_curves(run_dir, slices=slices, seed=seed)
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.6))
    for ax, (kind, c) in zip(axes, curves.items(), strict=True):
        for key, name, style in (("score", "score", "-o"), ("mse", "MSE", "--s"),
                                 ("one_minus_ssim", "1 - SSIM", ":^")):
            v = np.asarray(c[key], dtype=np.float64)
            if v.size:
                ax.plot(c["levels"], v / (np.abs(v).max() or 1.0), style, label=name, ms=3)
        ax.set_title(kind)
        ax.set_xlabel(UNITS[kind])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("value / max over levels")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{run_label(read_config(run_dir))}: score vs corruption level "
                 "(held-out slices)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


#: Figure 3's rows (the paper's: Gaussian noise, blurring, undersampling) and the level of each
#: (a middle level of :data:`rankiq.training.synthetic.LEVELS`)
FIGURE3_CORRUPTIONS: dict[str, float] = {"noise": 6.0, "blur": 1.0, "undersample_2d": 0.1}


def held_out_reference(run_dir: Path, fold: int = 0) -> np.ndarray:
    """The reference (complex ``(S, S)``) of the first held-out slice of ``fold`` of a run."""
    from rankiq.training.data import open_pairs
    from rankiq.training.runs import RunError, read_config, read_json

    cfg = read_config(run_dir)
    held = set(read_json(run_dir / "folds.json").get(str(fold), []))
    with open_pairs(cfg["data"]["pairs"]) as pf:
        pids = pf.h5["pair_id"][: pf.n]
        row = next((i for i, p in enumerate(pids) if int(p) in held), None)
        if row is None:
            raise RunError(f"fold {fold} holds out no pair of the pairs file",
                           source=str(run_dir))
        return np.asarray(pf.h5["reference"][row])


def saliency_map(run: LoadedRun, image: np.ndarray, reference: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Gradient magnitude of a loaded run's score with respect to its network input.

    Args:
        run: a trained network run (IQ-Net, EfficientNet, a distilled student) from
            :func:`rankiq.training.factory.load_run`.
        image, reference: complex ``(S, S)``; the reference is used in reference mode only.

    Returns:
        ``(saliency, error)``, float64 ``(H, W)`` on the run's grid: ``|d score / d x|`` summed
        over input channels in quadrature, and ``|image - reference|`` prepared the same way
        (the corruption the map should follow).
    """
    import torch
    from rankiq.service.preprocess import prepare

    cfg = run.config
    grid = tuple(cfg["grid"])
    use_ref = reference[None] if cfg["mode"] == "reference" else None
    x = prepare(image[None], use_ref, grid=grid, input_kind=cfg["input_kind"]).network_input
    xt = torch.from_numpy(np.ascontiguousarray(x)).float().requires_grad_(True)
    run.scorer(xt).sum().backward()
    assert xt.grad is not None
    sal = np.sqrt((xt.grad.double().numpy()[0] ** 2).sum(axis=0))
    # the error map on the same grid and intensity scale: image and reference prepared together
    pm = prepare(image[None], reference[None], grid=grid, input_kind="magnitude")
    assert pm.reference is not None
    err = np.abs(pm.image[0, 0].astype(np.float64) - pm.reference[0, 0])
    return sal, err


def saliency_alignment(saliency: np.ndarray, error: np.ndarray) -> float:
    """Spearman rho between a saliency map and the corruption's error map, pixel by pixel
    (``(H, W)`` each): 1 when the map ranks pixels as the corruption does, ~0 for a map unrelated
    to it. NaN when either map is constant."""
    from scipy.stats import spearmanr

    a, b = np.ravel(saliency), np.ravel(error)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def figure3(run_dirs: list[Path], out: Path, *, seed: int = 0) -> tuple[Path, dict]:
    """Write the paper's Figure 3 for ``run_dirs`` (columns) and :data:`FIGURE3_CORRUPTIONS`
    (rows): the corrupted image, its error map, then each run's saliency map (fold 0's model on
    fold 0's first held-out slice; every run must share that fold). Returns ``(out,
    {run name: {corruption: alignment}})`` (:func:`saliency_alignment`)."""
    from rankiq.training.factory import load_run
    from rankiq.training.runs import run_label
    from rankiq.training.synthetic import single_corruption

    # fold 0's models: the slice of held_out_reference is held out for them
    runs = {Path(r).name: load_run(r, fold=0) for r in run_dirs}
    ref = held_out_reference(run_dirs[0])
    rng = np.random.default_rng(seed)
    plt = _plt()
    rows, cols = len(FIGURE3_CORRUPTIONS), 2 + len(run_dirs)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    align: dict[str, dict[str, float]] = {name: {} for name in runs}
    for i, (kind, level) in enumerate(FIGURE3_CORRUPTIONS.items()):
        img = single_corruption(ref, kind, level, rng)
        panels = []
        err = None
        for name, run in runs.items():
            sal, err = saliency_map(run, img, ref)
            align[name][kind] = saliency_alignment(sal, err)
            panels.append((sal, f"{run_label(run.config)}\nrho {align[name][kind]:.2f}"))
        assert err is not None
        first = [(np.abs(img), f"{kind} {level:g}"), (err, "|image - reference|")]
        for j, (arr, title) in enumerate(first + panels):
            ax = axes[i, j]
            hi = float(np.percentile(arr, 99.5)) or 1.0
            ax.imshow(arr, cmap="gray" if j < 2 else "magma",
                      vmin=0, vmax=hi)
            ax.set_title(title, fontsize=6)
            ax.axis("off")
    fig.suptitle("Saliency |d score / d input| on a held-out slice (rho: Spearman with the "
                 "error map)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out, align


def scatter(run_dir: Path, out: Path) -> Path:
    """Held-out scores vs MSE and SSIM (pairs file values) with Pearson r; returns ``out``."""
    from rankiq.training.data import open_pairs
    from rankiq.training.runs import read_config, read_predictions, run_label
    from scipy.stats import pearsonr

    cfg = read_config(run_dir)
    pred = read_predictions(run_dir)
    with open_pairs(cfg["data"]["pairs"]) as pf:
        pids = pf.h5["pair_id"][: pf.n]
        row_of = {int(p): i for i, p in enumerate(pids)}
        mse, ssim = pf.h5["mse"][: pf.n], pf.h5["ssim"][: pf.n]
    common = [p for p in sorted(pred) if p in row_of]
    s = np.array([[pred[p][0], pred[p][1]] for p in common]).ravel()
    rows = [row_of[p] for p in common]
    m = mse[rows].ravel().astype(np.float64)
    q = ssim[rows].ravel().astype(np.float64)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, v, name in ((axes[0], m, "MSE"), (axes[1], q, "SSIM")):
        r = pearsonr(v, s).statistic if len(s) > 2 else float("nan")
        ax.scatter(v, s, s=4, alpha=0.5)
        ax.set_xlabel(f"{name} to the reference")
        ax.set_ylabel("score (held-out)")
        ax.set_title(f"Pearson r = {r:.3f}")
        ax.grid(alpha=0.3)
    fig.suptitle(run_label(cfg))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
