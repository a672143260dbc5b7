"""Figure 6 of the paper and score-vs-metric scatter plots (matplotlib, Agg backend, PNG).

``figure6``: for each fold, up to ``slices`` distinct held-out references (the fold's
validation slices) get one corruption type at a time at the levels of
:data:`rankiq.training.synthetic.LEVELS`; each image is scored by that fold's best model (through
``rankiq.service.preprocess.prepare`` on the run's grid), and by MSE and 1 - SSIM of the prepared
magnitudes. Curves are means over slices, each divided by its maximum over the levels (the
units differ).

``scatter``: the held-out scores of ``predictions.csv`` against the pairs file's ``/mse`` and
``/ssim`` of the same images, with Pearson r.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
    acc = {k: {"score": [], "mse": [], "one_minus_ssim": []} for k in LEVELS}
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
