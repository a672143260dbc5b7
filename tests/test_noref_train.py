"""`rankiq train-noref` end to end on a tiny dataset, and the realistic acquisitions it uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rankiq

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_realistic_acquisitions_are_deterministic_and_noisy() -> None:
    from rankiq.training.realistic import MATRIX, acquire

    a = acquire(np.random.default_rng(11), corrupt=True)
    b = acquire(np.random.default_rng(11), corrupt=True)
    np.testing.assert_array_equal(a.truth, b.truth)
    np.testing.assert_array_equal(a.image, b.image)
    assert MATRIX[0] <= a.info["matrix"] <= MATRIX[1]
    side = a.truth.shape[0]
    corner = a.truth[: side // 10, : side // 10]
    if a.info["post"]["mask"] == 0:
        assert corner.mean() > 0  # the truth carries its own thermal noise floor


def test_ladder_images_are_graded() -> None:
    from rankiq.training.noref import LEVELS, TYPES, ladder_images
    from rankiq.training.realistic import acquire

    rng = np.random.default_rng(4)
    truth = acquire(rng, corrupt=False).truth
    imgs = ladder_images(truth, rng)
    assert len(imgs) == 1 + LEVELS * len(TYPES)
    for kind in TYPES:
        ladder = [im for k, _, im in imgs if k == kind]
        err = [float(np.sqrt(np.mean((im - truth) ** 2))) for im in ladder]
        assert err[-1] > err[0], kind  # the last level is farther from the truth


def test_train_noref_builds_a_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "noref"
    report = tmp_path / "report.json"
    cache = tmp_path / "ds.npz"
    cmd = [sys.executable, "-m", "rankiq.service.cli", "train-noref", "--out", str(out),
           "--acquisitions", "10", "--no-teacher", "--workers", "1", "--report", str(report),
           "--cache", str(cache), "--members", "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(report.read_text())
    assert set(rep["qa_thresholds"]) >= {"T1", "T2", "other"}
    assert 0 <= rep["qa_calibration"]["simulated_flag_rates"]["clean_flagged"] <= 1
    model = rankiq.load_model(out)
    assert model.kind == "features" and model.mode == "no-reference"
    assert model.metadata["architecture"]["members"] == 3
    stack = np.stack([np.pad(np.ones((40, 40), np.float32), 12),
                      np.pad(np.ones((50, 44), np.float32), ((7, 7), (10, 10)))])
    res = rankiq.score(stack + 0.01, model=model)  # slices whose grids differ are fine
    assert res.scores.shape == (2,) and np.isfinite(res.scores).all()
    # the cache is reused: a second build gives the same model bytes
    out2 = tmp_path / "noref2"
    cmd2 = [*cmd[:cmd.index("--out") + 1], str(out2), *cmd[cmd.index("--out") + 2:]]
    r2 = subprocess.run(cmd2, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0 and "dataset from" in r2.stderr
    m1 = json.loads((out / "metadata.json").read_text())["files"]["score.onnx"]
    m2 = json.loads((out2 / "metadata.json").read_text())["files"]["score.onnx"]
    assert m1 == m2


def test_train_noref_refuses_bad_arguments(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "rankiq.service.cli", "train-noref", "--out",
                        str(tmp_path / "m"), "--acquisitions", "3"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "rankiq.service.cli", "train-noref", "--out",
                        str(tmp_path / "m"), "--members", "0"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "--members" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


def test_calibration_audit_separates_calibrated_from_overconfident() -> None:
    """Labels drawn from the ordinal model itself: cross-fitted ECE within the noise floor;
    the same gaps with labels that ignore the gap: accuracy flat over the gap quintiles; the
    MSE comparison counts the same pairs."""
    from rankiq.service.models import OrdinalClassifier
    from rankiq.training.commands.noref_cmd import calibration_audit

    rng = np.random.default_rng(0)
    d = rng.normal(0, 1.5, 600)
    p = OrdinalClassifier(2.0, 0.3).probabilities(np.ones_like(d), np.exp(d))
    y = (rng.random(len(d))[:, None] > np.cumsum(p, 1)).sum(1).clip(0, 2)
    mse_gap = np.where(y == 0, 1.0, -1.0)  # MSE agrees with every non-similar label
    a = calibration_audit(d, y, mse_gap, draws=100)
    assert a["cv_ece"] <= a["ece_if_calibrated"]["q95"] + 0.02
    assert a["mse_order_accuracy"] == 1.0 and a["order_minus_mse_ci95"][1] < 0
    gaps = [g["order_accuracy"] for g in a["accuracy_by_score_gap"]]
    assert gaps[-1] > gaps[0] + 0.2  # confident where the gap is large
    flat = calibration_audit(d, rng.choice([0, 2], len(d)), mse_gap, draws=100)
    assert all(0.35 < g["order_accuracy"] < 0.65 for g in flat["accuracy_by_score_gap"])


def test_fitted_classifier_is_calibrated_when_only_the_sign_of_the_gap_informs() -> None:
    """Labels that follow the sign of the score gap 70 % of the time whatever its size (what
    reader consensus on similar corruptions looks like): the plain logistic (gamma 1) is
    under-confident at small gaps and over-confident at large ones; the fitted gamma is small
    and the cross-fitted ECE stays within the noise floor of a calibrated classifier."""
    from rankiq.training.commands.noref_cmd import _fit_ordinal, _ordinal_probs, ece

    rng = np.random.default_rng(1)
    d = rng.normal(0, 0.6, 800)
    right = rng.random(len(d)) < 0.7
    y = np.where(right == (d > 0), 0, 2)
    y[rng.random(len(d)) < 0.05] = 1
    fit = rng.random(len(d)) < 0.5
    beta, theta, gamma = _fit_ordinal(d[fit], y[fit])
    assert gamma < 0.3
    p = _ordinal_probs(d[~fit], beta, theta, gamma)
    assert ece(p, y[~fit]) < 0.05
    b1, t1 = _fit_ordinal_plain(d[fit], y[fit])
    assert ece(_ordinal_probs(d[~fit], b1, t1), y[~fit]) > ece(p, y[~fit])


def _fit_ordinal_plain(d: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The two-parameter fit (gamma 1), by grid search: the baseline the test compares with."""
    from rankiq.training.commands.noref_cmd import _ordinal_probs

    best = (np.inf, 1.0, 0.1)
    for beta in np.geomspace(0.05, 20, 60):
        for theta in np.geomspace(1e-3, 3, 40):
            pr = _ordinal_probs(d, float(beta), float(theta))
            nll = -float(np.log(np.maximum(pr[np.arange(len(y)), y], 1e-12)).mean())
            best = min(best, (nll, float(beta), float(theta)))
    return best[1], best[2]



def test_an_epi_acquisition_carries_its_nyquist_ghost(monkeypatch) -> None:
    """An EPI draw: the odd/even echo phase mismatch puts a copy of the object half the field
    of view away along the phase-encode (last) axis, of about sin(phi / 2) of it."""
    from rankiq.training import realistic

    monkeypatch.setattr(realistic, "PARTIAL_FOV", 0.0)  # a whole head in air
    monkeypatch.setattr(realistic, "EPI_PHASE", (0.0, 0.0))
    plain = realistic.acquire(np.random.default_rng(5), corrupt=False, epi=1.0)
    monkeypatch.setattr(realistic, "EPI_PHASE", (0.3, 0.3))
    epi = realistic.acquire(np.random.default_rng(5), corrupt=False, epi=1.0)
    assert epi.info["epi_phase"] == pytest.approx(0.3) and plain.info["epi_phase"] == 0.0
    # without EPI nothing is drawn for it: the acquisition is the one drawn before the option
    default = realistic.acquire(np.random.default_rng(5), corrupt=False)
    assert default.info["epi_phase"] == 0.0
    if plain.info["post"]["mask"] > 0:
        pytest.skip("this draw masks its air")
    side = plain.truth.shape[-1]
    ghost = epi.truth - plain.truth
    shifted = np.roll(plain.truth, side // 2, axis=-1)
    assert np.corrcoef(np.abs(ghost).ravel(), shifted.ravel())[0, 1] > 0.5
    # the ghost is about sin(0.15) = 15 % of the object, where the object is not
    air = plain.truth < 0.1 * plain.truth.max()
    bright = shifted > 0.5 * shifted.max()
    ratio = float(np.median(epi.truth[air & bright]) / np.median(shifted[air & bright]))
    assert 0.08 < ratio < 0.3


def _toy_dataset(groups: int = 24, seed: int = 0):
    """Features of ``groups`` toy acquisitions: a clean row and noise/blur ladders whose
    first feature grows with the level (plus acquisition-to-acquisition spread)."""
    from rankiq.service.noref import FEATURES
    from rankiq.training.noref import Dataset

    rng = np.random.default_rng(seed)
    x, g, k, lv = [], [], [], []
    for i in range(groups):
        base = rng.normal(0, 0.3, len(FEATURES))
        for kind, levels in (("clean", [0]), ("noise", [1, 2, 3, 4]), ("blur", [1, 2, 3, 4])):
            for level in levels:
                f = base + rng.normal(0, 0.05, len(FEATURES))
                f[0 if kind == "noise" else 1] += level
                x.append(f)
                g.append(i)
                k.append(kind)
                lv.append(level)
    return Dataset(np.asarray(x), np.asarray(g), np.asarray(k), np.asarray(lv),
                   np.full(len(x), np.nan), [{} for _ in range(groups)])


def test_each_member_of_the_ensemble_draws_its_own_across_pairs() -> None:
    from rankiq.training.noref import across_pairs, fit, ranking_pairs, within_pairs

    ds = _toy_dataset()
    wa, wb, ww = within_pairs(ds)
    # within an acquisition: clean < each of its 8 copies, and 6 level pairs per ladder
    assert len(wa) == 24 * (8 + 2 * 6) and (ds.group[wa] == ds.group[wb]).all()
    assert (ww == 1.0).all()
    d1 = across_pairs(ds, np.random.default_rng([7, 0]))
    d2 = across_pairs(ds, np.random.default_rng([7, 1]))
    assert (ds.group[d1[0]] != ds.group[d1[1]]).all() and (ds.kind[d1[0]] == "clean").all()
    assert (ds.level[d1[1]] > 2).all() and not np.array_equal(d1[0], d2[0])
    a, b, w = ranking_pairs(ds, 7)  # the within pairs and the draw of default_rng(7)
    assert np.array_equal(a[:len(wa)], wa) and len(a) > len(wa) and set(w) == {1.0, 0.5}
    s1 = fit(ds, seed=3, members=2)
    s2 = fit(ds, seed=3, members=2)
    assert len(s1.layers) == 2
    assert np.array_equal(s1.raw(ds.x), s2.raw(ds.x))  # deterministic for its seed
    # the members differ (their own draws and starts), and the ensemble learnt the ladders
    one = [fit(ds, seed=3, members=1).raw(ds.x)]
    assert not np.allclose(one[0], s1.raw(ds.x))
    sc = s1.score(ds.x)
    for kind in ("noise", "blur"):
        rows = ds.kind == kind
        up = [np.median(sc[rows & (ds.level == lv)]) for lv in (1, 2, 3, 4)]
        assert up == sorted(up) and np.median(sc[ds.kind == "clean"]) < up[0]
