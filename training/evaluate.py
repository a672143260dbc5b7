"""``rankiq evaluate``: the paper's comparison of trained runs.

Writes to the report directory:

* ``table.md`` / ``results.json``: the paper's accuracy beside RankIQ's for each of its rows
  (IQ-Net / EfficientNet with and without reference, MSE, SSIM; rows without a run say "not
  run" and the command that fills them), with the pooled held-out 95 % CI; then held-out
  ranking accuracy (at the epoch chosen on the inner split) mean ± sd
  (ddof=1) over the folds for every run, per-fold values; a repeated-measures ANOVA over the
  runs (folds are the repeated "subjects"; implemented with numpy, p from scipy's F
  distribution); paired t-tests (``scipy.stats.ttest_rel``) of every run against the MSE and
  SSIM runs; for no-reference runs, the Spearman correlation of their held-out scores with a
  reference-mode run's scores of the same images (a distilled run's own teacher, else the
  first reference-mode IQ-Net run).
* ``fig6_<run>.png``: the paper's Figure 6: mean score vs corruption level for each corruption
  type, on held-out references (each fold's validation slices, scored by that fold's model),
  with MSE and 1 - SSIM; every curve divided by its maximum.
* ``scatter_<run>.png``: held-out scores against the pairs file's MSE and SSIM, Pearson r.

Statistics need every run to use the same folds (``folds.json``); runs whose folds differ
from the first run's are reported but left out of the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import numpy as np
from rankiq.training.runs import (  # noqa: F401 - run_label, read_predictions: re-exported
    METRIC_MODELS,
    RunError,
    read_config,
    read_json,
    read_predictions,
    read_summary,
    run_label,
    write_json,
)


class _Run(TypedDict):
    """One run as :func:`evaluate_runs` reads it."""

    dir: Path
    name: str
    config: dict
    summary: dict
    folds: dict
    label: str
    acc: np.ndarray


def rm_anova(y: np.ndarray) -> dict:
    """One-way repeated-measures ANOVA.

    Args:
        y: ``(n_subjects, k_conditions)`` (here folds x runs).

    Returns:
        ``{"F", "df1", "df2", "p"}`` (F = MS_conditions / MS_error).
    """
    from scipy.stats import f as f_dist

    n, k = y.shape
    grand = y.mean()
    ss_cond = n * np.sum((y.mean(axis=0) - grand) ** 2)
    ss_subj = k * np.sum((y.mean(axis=1) - grand) ** 2)
    ss_err = np.sum((y - grand) ** 2) - ss_cond - ss_subj
    df1, df2 = k - 1, (k - 1) * (n - 1)
    ms_err = ss_err / df2 if df2 else float("nan")
    F = (ss_cond / df1) / ms_err if ms_err > 0 else float("inf")
    p = float(f_dist.sf(F, df1, df2)) if np.isfinite(F) else 0.0
    return {"F": float(F), "df1": int(df1), "df2": int(df2), "p": p}


def spearman_with(a: dict, b: dict) -> dict:
    """Spearman rho of the image scores of two runs over their common pairs."""
    from scipy.stats import spearmanr

    common = sorted(set(a) & set(b))
    if len(common) < 3:
        return {"rho": None, "n_images": 0}
    x = np.array([[a[p][0], a[p][1]] for p in common]).ravel()
    y = np.array([[b[p][0], b[p][1]] for p in common]).ravel()
    return {"rho": float(spearmanr(x, y).statistic), "n_images": int(len(x))}


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.3g}"


def evaluate_runs(run_dirs: list[str], out: str | Path, *, figures: bool = True,
                  figure_slices: int = 4, seed: int = 0) -> dict:
    """Compare runs; writes table.md, results.json and figures into ``out``."""
    from scipy.stats import ttest_rel

    out = Path(out)
    runs: list[_Run] = []
    for run_dir in run_dirs:
        p = Path(run_dir)
        cfg, summ = read_config(p), read_summary(p)
        if not summ.get("val_acc"):
            raise RunError("has no finished fold (summary.json missing)", source=str(p))
        folds = read_json(p / "folds.json") if (p / "folds.json").exists() else {}
        runs.append({"dir": p, "name": p.name, "config": cfg, "summary": summ, "folds": folds,
                     "label": run_label(cfg),
                     "acc": np.array(summ["val_acc"], dtype=np.float64)})
    out.mkdir(parents=True, exist_ok=True)
    ref_folds = runs[0]["folds"]
    same = [r for r in runs if r["folds"] == ref_folds and r["summary"].get("complete")]
    result: dict = {"runs": [], "anova": None, "ttests": {}, "spearman": {}, "notes": []}
    for r in runs:
        result["runs"].append({
            "run": str(r["dir"]), "label": r["label"], "model": r["config"]["model"],
            "mode": r["config"]["mode"], "input_kind": r["config"]["input_kind"],
            "grid": r["config"].get("grid"), "epochs": r["config"].get("epochs"),
            "val_acc": r["acc"].tolist(), "mean": float(r["acc"].mean()),
            "sd": float(r["acc"].std(ddof=1)) if len(r["acc"]) > 1 else None,
            "held_out": r["summary"].get("held_out"),
            "selection": r["config"].get("selection"), "same_folds": r in same})
    left_out = [r["name"] for r in runs if r not in same]
    if left_out:
        result["notes"].append(f"left out of the tests (incomplete or different folds): "
                               f"{', '.join(left_out)}")
    if len(same) >= 2 and len(same[0]["acc"]) >= 2:
        result["anova"] = rm_anova(np.stack([r["acc"] for r in same], axis=1))
        result["anova"]["runs"] = [r["name"] for r in same]
    for base in ("mse", "ssim"):
        b = next((r for r in same if r["config"]["model"] == base), None)
        if b is None:
            continue
        for r in same:
            if r is b:
                continue
            t = ttest_rel(r["acc"], b["acc"])
            result["ttests"][f"{r['name']} vs {b['name']}"] = {
                "mean_diff": float((r["acc"] - b["acc"]).mean()), "t": float(t.statistic),
                "p": float(t.pvalue), "baseline": base}
    # no-reference runs vs a reference-mode run: a distilled run's own teacher, else the first
    # reference-mode IQ-Net run given
    ref = next((r for r in runs if r["config"]["model"] == "iqnet"
                and r["config"]["mode"] == "reference"), None)
    for r in runs:
        if r["config"]["mode"] != "no-reference":
            continue
        teacher = Path((r["config"].get("teacher") or {}).get("run", ""))
        if r["config"]["model"] == "distill" and (teacher / "folds.json").exists():
            other, name = teacher, teacher.name
        elif ref is not None:
            other, name = ref["dir"], ref["name"]
        else:
            continue
        result["spearman"][r["name"]] = {"reference_run": name,
                                         **spearman_with(read_predictions(r["dir"]),
                                                         read_predictions(other))}
    md = format_markdown(result)
    result["markdown"] = md
    result["figures"] = []
    if figures:
        from rankiq.training.figures import figure6, scatter

        for r in runs:
            if r["config"]["model"] in METRIC_MODELS:
                continue
            result["figures"].append(str(figure6(r["dir"], out / f"fig6_{r['name']}.png",
                                                 slices=figure_slices, seed=seed)))
            result["figures"].append(str(scatter(r["dir"], out / f"scatter_{r['name']}.png")))
        nets = [r for r in runs if r["config"]["model"] not in METRIC_MODELS
                and r["folds"].get("0") == ref_folds.get("0")]
        if nets:
            from rankiq.training.figures import figure3

            path, align = figure3([r["dir"] for r in nets], out / "fig3_saliency.png",
                                  seed=seed)
            result["figures"].append(str(path))
            result["saliency_alignment"] = align
            md += "\n\n" + format_alignment(align)
            result["markdown"] = md
    (out / "table.md").write_text(md + "\n", encoding="utf-8")
    write_json(out / "results.json", result)
    return result


#: the paper's Results (consensus accuracy, mean ± SD over its 5 folds), by (model, mode)
PAPER_ACCURACY = {("iqnet", "reference"): (75.2, 1.3), ("iqnet", "no-reference"): (49.8, 10.0),
                  ("efficientnet", "reference"): (79.2, 1.7),
                  ("efficientnet", "no-reference"): (79.4, 1.2),
                  ("mse", "reference"): (70.3, 2.3), ("ssim", "reference"): (66.7, 2.3)}
PAPER_ROWS = {("iqnet", "reference"): "IQ-Net, with reference",
              ("iqnet", "no-reference"): "IQ-Net, without reference",
              ("efficientnet", "reference"): "EfficientNet-b0, with reference",
              ("efficientnet", "no-reference"): "EfficientNet-b0, without reference",
              ("mse", "reference"): "MSE", ("ssim", "reference"): "SSIM"}
#: how to fill a row that was not run (same data and folds as the other runs)
NOT_RUN_COMMAND = {
    ("iqnet", "reference"): "rankiq train --model iqnet --final ... --out runs/iqnet-ref",
    ("iqnet", "no-reference"): "rankiq train --model iqnet --no-reference ... --out "
                               "runs/iqnet-noref",
    ("efficientnet", "reference"): "rankiq train --model efficientnet --input complex "
                                   "--effnet-size 224 ... --out runs/effnet-ref",
    ("efficientnet", "no-reference"): "rankiq train --model efficientnet --no-reference "
                                      "--input complex --effnet-size 224 ... --out "
                                      "runs/effnet-noref",
    ("mse", "reference"): "rankiq train --model mse ... --out runs/mse",
    ("ssim", "reference"): "rankiq train --model ssim ... --out runs/ssim"}


def paper_comparison(res: dict) -> list[str]:
    """Markdown lines: the paper's accuracy beside RankIQ's for each of the paper's rows (the
    first run of that model and mode), with the pooled held-out 95 % CI; rows without a run are
    marked "not run" with the command that fills them (never a number)."""
    lines = ["| paper row | paper % (mean ± SD) | RankIQ % (mean ± SD over folds) | "
             "RankIQ pooled held-out % [95 % CI] | run |", "|---|---|---|---|---|"]
    for key, name in PAPER_ROWS.items():
        pm, psd = PAPER_ACCURACY[key]
        r = next((r for r in res["runs"] if (r["model"], r["mode"]) == key), None)
        if r is None:
            lines.append(f"| {name} | {pm} ± {psd} | not run | not run | "
                         f"`{NOT_RUN_COMMAND[key]}` |")
            continue
        sd = "" if r["sd"] is None else f" ± {100 * r['sd']:.1f}"
        h = r.get("held_out") or {}
        ci = h.get("ci95_cluster_bootstrap") or h.get("ci95_wilson")
        pooled = ("-" if not h.get("n") else f"{100 * h['accuracy']:.1f}"
                  + ("" if ci is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]")
                  + f" ({h['n']} pairs)")
        lines.append(f"| {name} | {pm} ± {psd} | {100 * r['mean']:.1f}{sd} | {pooled} | "
                     f"{Path(r['run']).name} |")
    return lines


def format_alignment(align: dict[str, dict[str, float]]) -> str:
    """Markdown table of Figure 3's saliency alignment (run x corruption, Spearman rho of the
    saliency map with the error map of the added corruption)."""
    kinds = list(next(iter(align.values()), {}))
    lines = ["Figure 3 (fig3_saliency.png): Spearman rho between each run's saliency map and the "
             "added corruption's error map on a held-out slice (1: the map follows the "
             "corruption; ~0: unrelated)", "",
             "| run | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, row in align.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.2f}" for k in kinds) + " |")
    return "\n".join(lines)


def format_markdown(res: dict) -> str:
    """The comparison table and statistics as Markdown."""
    lines = [*paper_comparison(res), "",
             "| model | run | grid | epochs | accuracy % (mean ± sd) | per fold % |",
             "|---|---|---|---|---|---|"]
    for r in res["runs"]:
        sd = "" if r["sd"] is None else f" ± {100 * r['sd']:.1f}"
        grid = "x".join(str(g) for g in r["grid"]) if r["grid"] else "-"
        per = ", ".join(f"{100 * a:.1f}" for a in r["val_acc"])
        lines.append(f"| {r['label']} | {Path(r['run']).name} | {grid} | {r['epochs']} | "
                     f"{100 * r['mean']:.1f}{sd} | {per} |")
    a = res.get("anova")
    if a:
        lines += ["", f"Repeated-measures ANOVA over {len(a['runs'])} runs (folds as subjects): "
                      f"F({a['df1']}, {a['df2']}) = {a['F']:.2f}, p = {a['p']:.3g}"]
    if res["ttests"]:
        lines += ["", "| paired t-test | mean difference (points) | t | p |", "|---|---|---|---|"]
        for k, t in res["ttests"].items():
            lines.append(f"| {k} | {100 * t['mean_diff']:+.1f} | {t['t']:.2f} | {t['p']:.3g} |")
    if res["spearman"]:
        lines += ["", "| no-reference run | Spearman rho with the reference run's scores | "
                      "images |", "|---|---|---|"]
        for k, s in res["spearman"].items():
            rho = "-" if s["rho"] is None else f"{s['rho']:.3f}"
            lines.append(f"| {k} (vs {s['reference_run']}) | {rho} | {s['n_images']} |")
    for n in res.get("notes", []):
        lines += ["", f"Note: {n}"]
    return "\n".join(lines)
