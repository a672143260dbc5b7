"""training.evaluate's statistics, checked against independent computations: the repeated-
measures ANOVA against the paired t-test (two conditions: F = t^2, same p) and against the
F-test of nested linear models fitted by least squares (three or more conditions)."""

from __future__ import annotations

import numpy as np
import pytest
from rankiq.training.evaluate import rm_anova
from scipy import stats


def _nested_model_f(y: np.ndarray) -> tuple[float, int, int, float]:
    """F of conditions in the additive model ``y_ij = mu + subject_i + condition_j + e``: the
    drop in residual sum of squares when the condition terms are added, by lstsq."""
    n, k = y.shape
    subj = np.kron(np.eye(n), np.ones((k, 1)))  # (n*k, n) subject indicators
    cond = np.kron(np.ones((n, 1)), np.eye(k))[:, 1:]  # (n*k, k-1) condition contrasts
    v = y.reshape(-1)

    def rss(x: np.ndarray) -> float:
        beta = np.linalg.lstsq(x, v, rcond=None)[0]
        r = v - x @ beta
        return float(r @ r)

    full, reduced = rss(np.hstack([subj, cond])), rss(subj)
    df1, df2 = k - 1, (n - 1) * (k - 1)
    f = ((reduced - full) / df1) / (full / df2)
    return f, df1, df2, float(stats.f.sf(f, df1, df2))


def test_two_conditions_equal_the_paired_t_test():
    y = np.array([[0.71, 0.64], [0.69, 0.66], [0.75, 0.70], [0.68, 0.69], [0.73, 0.65]])
    t = stats.ttest_rel(y[:, 0], y[:, 1])
    res = rm_anova(y)
    assert (res["df1"], res["df2"]) == (1, 4)
    assert res["F"] == pytest.approx(t.statistic ** 2, rel=1e-10)
    assert res["p"] == pytest.approx(t.pvalue, rel=1e-8)


def test_hand_computed_example():
    # 3 subjects x 3 conditions, by hand: grand mean 5; condition means 4, 5, 6 ->
    # SS_cond = 3 * (1 + 0 + 1) = 6; subject means 4, 5, 6 -> SS_subj = 6; SS_total = 16;
    # SS_err = 4 on (3 - 1) * (3 - 1) = 4 df; F = (6 / 2) / (4 / 4) = 3; for 2 numerator df
    # the F tail is closed-form: p = (1 + 2 F / df2) ** (-df2 / 2) = 2.5 ** -2 = 0.16
    y = np.array([[3.0, 5.0, 4.0], [4.0, 4.0, 7.0], [5.0, 6.0, 7.0]])
    res = rm_anova(y)
    assert (res["df1"], res["df2"]) == (2, 4)
    assert res["F"] == pytest.approx(3.0, rel=1e-12)
    assert res["p"] == pytest.approx(0.16, rel=1e-9)
    f, _, _, p = _nested_model_f(y)
    assert (f, p) == (pytest.approx(3.0), pytest.approx(0.16))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_nested_linear_models_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n, k = 5, 4  # folds x runs
    y = 0.7 + 0.03 * rng.standard_normal((n, 1)) + 0.02 * rng.standard_normal((n, k))
    y[:, 1] += 0.02
    res = rm_anova(y)
    f, df1, df2, p = _nested_model_f(y)
    assert (res["df1"], res["df2"]) == (df1, df2) == (3, 12)
    assert res["F"] == pytest.approx(f, rel=1e-9)
    assert res["p"] == pytest.approx(p, rel=1e-7)


def test_paper_comparison_marks_rows_without_runs_not_run() -> None:
    from rankiq.training.evaluate import format_markdown

    res = {"runs": [{"run": "runs/iq", "label": "IQ-Net", "model": "iqnet", "mode": "reference",
                     "input_kind": "magnitude", "grid": [64, 64], "epochs": 2,
                     "val_acc": [0.7, 0.8], "mean": 0.75, "sd": 0.07,
                     "held_out": {"accuracy": 0.75, "n": 40, "ci95_cluster_bootstrap":
                                  [0.6, 0.9], "ci95_wilson": [0.6, 0.86]}}],
           "anova": None, "ttests": {}, "spearman": {}, "notes": []}
    md = format_markdown(res)
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines()}
    assert "75.2 ± 1.3" in rows["IQ-Net, with reference"]
    assert "75.0 [60.0, 90.0] (40 pairs)" in rows["IQ-Net, with reference"]
    for name in ("EfficientNet-b0, with reference", "EfficientNet-b0, without reference",
                 "MSE", "SSIM"):
        assert "not run" in rows[name] and "rankiq train" in rows[name]


def test_saliency_alignment_follows_the_error_map() -> None:
    """1 for a map ranking pixels as the corruption does (any monotone transform), about 0 for
    an unrelated map, -1 reversed, NaN for a constant map (nothing to rank)."""
    from rankiq.training.figures import saliency_alignment

    rng = np.random.default_rng(0)
    err = rng.random((32, 32))
    assert saliency_alignment(np.sqrt(err) * 5, err) == pytest.approx(1.0)
    assert saliency_alignment(-err, err) == pytest.approx(-1.0)
    assert abs(saliency_alignment(rng.random((32, 32)), err)) < 0.1
    assert np.isnan(saliency_alignment(np.ones((32, 32)), err))
