"""``rankiq train-noref``: build the shipped no-reference model from nothing.

Simulates realistic acquisitions with graded ladders, fits the features scorer
(:mod:`rankiq.training.noref`), derives the QA thresholds and the rank classifier by stated
rules, measures held-out accuracy and rebuild stability, and writes the model directory plus a
JSON report. Deterministic for ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rankiq.service.io.types import CONTRAST_FAMILIES

if TYPE_CHECKING:
    from rankiq.service.cli import Registry
    from rankiq.training.noref import Dataset, FittedScorer

FAMILIES = CONTRAST_FAMILIES
#: bumped whenever the simulated data change (realistic acquisitions, ladders, features):
#: a --cache written by another version is rebuilt, not reused
DATASET_VERSION = "5"
#: a slice is out of distribution beyond this multiple of the largest training distance
DISTANCE_MARGIN = 1.25


def add_commands(reg: Registry) -> None:
    p = reg.command("train-noref", "rankiq.training.commands.noref_cmd:run",
                    "build the no-reference model: realistic simulated acquisitions with graded "
                    "corruption ladders -> features -> ranking fit -> thresholds -> model dir")
    p.add_argument("--out", required=True, help="model directory to write (models/NAME)")
    p.add_argument("--acquisitions", type=int, default=1200,
                   help="simulated acquisitions, 17 images each (default 1200)")
    p.add_argument("--seed", type=int, default=2025, help="default 2025")
    p.add_argument("--members", type=int, default=None, metavar="N",
                   help="members of the fitted ensemble, each on its own draw of the pairs "
                        "across acquisitions (default 15: rankiq.training.noref.MEMBERS)")
    p.add_argument("--fit-seed", type=int, default=None, metavar="SEED",
                   help="seed of the fit alone (default: --seed): another fit of the same "
                        "acquisitions, to measure what a rebuild changes")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--version", default="2.5.0", help="model version (default 2.5.0)")
    p.add_argument("--pairs", help="pairs HDF5 (`rankiq simulate`) whose consensus labels fit "
                                   "the classifier's 'similar' band")
    p.add_argument("--consensus", help="consensus CSV for --pairs (`rankiq panel --consensus`)")
    p.add_argument("--report", help="write the build report (JSON) here too")
    p.add_argument("--cache", help="dataset cache (.npz): reused when it exists and matches "
                                   "--acquisitions/--seed/--no-teacher/--epi, else written")
    p.add_argument("--no-teacher", action="store_true",
                   help="skip the reference IQ-Net's cross-type order (faster; for tests)")
    p.add_argument("--epi", type=float, default=0.2,
                   help="share of the acquisitions read out as EPI with a Nyquist ghost "
                        "(default 0.2, the shipped model's data since 2.5.0; 2.4.0: 0)")


def _progress(done: int, total: int) -> None:
    if done == total or done % 50 == 0:
        print(f"  acquisitions {done}/{total}", file=sys.stderr, flush=True)


def thresholds(scorer: FittedScorer, ds: Dataset) -> tuple[dict[str, float], dict[str, Any]]:
    """The QA threshold (one for every contrast family: one scale) and the flag rates it gives
    on the simulated data (clean, moderately corrupted; overall, per family, per type)."""
    from rankiq.training.noref import CLEAN_QUANTILE, MODERATE

    s = scorer.score(ds.x)
    fam = np.array([_family(ds.info[g]["contrast"]) for g in ds.group])
    clean = ds.kind == "clean"
    limit = float(np.quantile(s[clean], CLEAN_QUANTILE))
    moderate = (~clean) & (ds.level > MODERATE)

    def rate(m: np.ndarray) -> float | None:
        return float((s[m] > limit).mean()) if m.any() else None

    rates = {"clean_flagged": rate(clean), "moderate_flagged": rate(moderate),
             "clean_flagged_by_family": {f: rate(clean & (fam == f)) for f in FAMILIES},
             "moderate_flagged_by_type": {t: rate(moderate & (ds.kind == t))
                                          for t in np.unique(ds.kind[moderate])}}
    rule = (f"the {CLEAN_QUANTILE:.0%} quantile of the scores of the clean realistic simulated "
            "acquisitions (all contrasts: one scale), the same for every family; 'moderate' = "
            f"ladder levels {MODERATE + 1}..4 of 4")
    return {f: limit for f in FAMILIES}, {"rule": rule, "simulated_flag_rates": rates,
                                          "n_clean": int(clean.sum())}


def _family(contrast: str) -> str:
    return contrast if contrast in ("T1", "T1post", "T2", "FLAIR") else "other"


def domain(ds: Dataset) -> dict[str, Any]:
    """Matrix and spacing ranges of the training acquisitions and the feature distribution."""
    from rankiq.service.domain import mahalanobis

    sides = [int(i["side"]) for i in ds.info]
    spacing = [float(i["spacing_mm"]) / (2.0 if i["post"].get("zip2") else 1.0)
               for i in ds.info]
    mu = ds.x.mean(0)
    cov = np.cov(ds.x, rowvar=False) + 1e-6 * np.eye(ds.x.shape[1])
    d: dict[str, Any] = {"matrix": [min(sides), max(sides)],
                         "spacing_mm": [round(min(spacing), 3), round(max(spacing), 3)],
                         "feature_mean": mu.tolist(),
                         "feature_precision": np.linalg.inv(cov).tolist()}
    dist = mahalanobis(ds.x, d)
    d["distance_p99"] = float(np.quantile(dist, 0.99))
    # out of distribution = farther than any training image by a margin: the training images
    # include heavily corrupted ones, which must stay assessable (and flagged)
    d["distance_cut"] = float(DISTANCE_MARGIN * dist.max())
    return d


def classifier(scorer: FittedScorer, pairs: str | None, consensus: str | None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the ordinal classifier's ``beta``/``theta``/``gamma`` on consensus pairs (even pair
    ids) and report calibration on the odd ones; without consensus data, a documented
    default."""
    if not (pairs and consensus):
        return ({"kind": "ordinal", "beta": 4.0, "theta": 1.0},
                {"fitted": False, "note": "no consensus pairs given: default beta 4, theta 1"})
    from rankiq.service.noref import prepare_features
    from rankiq.training.data import read_labels
    from rankiq.training.pairs import PairsFile

    labels = read_labels(consensus)
    pf = PairsFile(pairs)
    ids = pf.meta()["pair_id"]
    rows = []
    for i, pid in enumerate(ids):
        if int(pid) not in labels:
            continue
        ref, a, b = (np.abs(v) for v in pf.images(i))
        fi = prepare_features(np.stack([a, b]))
        if fi.empty.any():
            continue
        sa, sb = scorer.score(fi.features)
        # the MSE baseline (with the reference) on the same pair, images in the reference's
        # robust-max units: its order is the figure the no-reference score is held against
        unit = max(float(np.percentile(ref, 99.5)), 1e-12)
        mse_gap = float(np.mean(((b - ref) / unit) ** 2) - np.mean(((a - ref) / unit) ** 2))
        rows.append((int(pid), sa, sb, labels[int(pid)], mse_gap))
    arr = np.array(rows, dtype=np.float64)
    fit_m, test_m = arr[:, 0] % 2 == 0, arr[:, 0] % 2 == 1
    d = np.log(arr[:, 2]) - np.log(arr[:, 1])  # > 0 when image 1 scores lower (better)
    y = arr[:, 3].astype(int)
    beta, theta, gamma = _fit_ordinal(d[fit_m], y[fit_m])
    p = _ordinal_probs(d[test_m], beta, theta, gamma)
    acc = float((p.argmax(1) == y[test_m]).mean())
    order = float(np.mean((d[test_m] > 0)[y[test_m] != 1] == (y[test_m][y[test_m] != 1] == 0)))
    report = {"fitted": True, "pairs_fit": int(fit_m.sum()), "pairs_test": int(test_m.sum()),
              "test_accuracy_3way": acc, "test_order_accuracy": order,
              "ece": ece(p, y[test_m]), "reliability": reliability(p, y[test_m]),
              **calibration_audit(d, y, arr[:, 4])}
    return {"kind": "ordinal", "beta": beta, "theta": theta, "gamma": gamma}, report


def calibration_audit(d: np.ndarray, y: np.ndarray, mse_gap: np.ndarray, *, folds: int = 5,
                      draws: int = 500, seed: int = 0) -> dict[str, Any]:
    """What the shipped classifier's ECE means, on every consensus pair.

    Args:
        d: ``(N,)`` log score ratios ``log s2 - log s1`` (> 0: image 1 scores better).
        y: ``(N,)`` consensus classes (0 image 1 better, 1 similar, 2 image 2 better).
        mse_gap: ``(N,)`` ``MSE(image 2, ref) - MSE(image 1, ref)`` (> 0: MSE prefers image 1).

    Returns:
        ``cv_ece``: ECE of ``folds``-fold cross-fitted probabilities over all N pairs;
        ``ece_if_calibrated``: mean and 95th percentile of the ECE of the same probabilities
        against labels drawn from them (the ECE a perfectly calibrated classifier shows on N
        pairs); ``accuracy_by_score_gap``: order accuracy (similar pairs left out) per quintile
        of ``|d|`` (a calibrated confidence needs accuracy that grows with the gap);
        ``order_accuracy`` of the no-reference score and ``mse_order_accuracy`` of the MSE
        baseline on the same pairs, with a bootstrap 95 % CI of their difference.
    """
    rng = np.random.default_rng(seed)
    fold = rng.permutation(np.arange(len(y)) % folds)
    p = np.zeros((len(y), 3))
    for k in range(folds):
        p[fold == k] = _ordinal_probs(d[fold == k], *_fit_ordinal(d[fold != k], y[fold != k]))
    null = [ece(p, (rng.random(len(p))[:, None] > np.cumsum(p, 1)).sum(1).clip(0, 2))
            for _ in range(draws)]
    ns = y != 1
    ours = ((d > 0) == (y == 0))[ns].astype(np.float64)
    mse = ((mse_gap > 0) == (y == 0))[ns].astype(np.float64)
    boot = [float(np.mean(ours[i] - mse[i]))
            for i in (rng.integers(0, len(ours), len(ours)) for _ in range(2000))]
    edges = np.quantile(np.abs(d[ns]), np.linspace(0, 1, 6))
    by_gap = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (np.abs(d[ns]) >= lo) & (np.abs(d[ns]) <= hi)
        by_gap.append({"abs_log_ratio": [float(lo), float(hi)], "pairs": int(m.sum()),
                       "order_accuracy": float(ours[m].mean()) if m.any() else None})
    return {"pairs_all": int(len(y)), "cv_ece": ece(p, y),
            "ece_if_calibrated": {"mean": float(np.mean(null)),
                                  "q95": float(np.quantile(null, 0.95))},
            "accuracy_by_score_gap": by_gap,
            "order_accuracy": float(ours.mean()), "mse_order_accuracy": float(mse.mean()),
            "order_minus_mse_ci95": [float(np.quantile(boot, 0.025)),
                                     float(np.quantile(boot, 0.975))]}


def _ordinal_probs(d: np.ndarray, beta: float, theta: float, gamma: float = 1.0
                   ) -> np.ndarray:
    from rankiq.service.models import OrdinalClassifier

    return OrdinalClassifier(beta, theta, gamma=gamma).probabilities(np.ones_like(d),
                                                                     np.exp(d))


#: Nelder-Mead starts for (log beta, log theta, log gamma): the plain logistic, and a flat one
_STARTS = ((0.0, -1.0, 0.0), (0.0, -1.0, -2.0))


def _fit_ordinal(d: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Maximum-likelihood ``beta``, ``theta``, ``gamma`` of the ordinal classifier.

    Args:
        d: ``(N,)`` log score ratios ``log s2 - log s1``.
        y: ``(N,)`` consensus classes (0 image 1 better, 1 similar, 2 image 2 better).
    """
    from scipy.optimize import minimize

    def nll(p: np.ndarray) -> float:
        beta, theta, gamma = (float(v) for v in np.exp(np.clip(p, -30, 5)))
        pr = _ordinal_probs(d, beta, theta, gamma)
        return -float(np.log(np.maximum(pr[np.arange(len(y)), y], 1e-12)).mean())

    best = min((minimize(nll, np.array(s), method="Nelder-Mead",
                         options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000})
                for s in _STARTS), key=lambda r: r.fun)
    beta, theta, gamma = (float(v) for v in np.exp(np.clip(best.x, -30, 5)))
    return beta, theta, gamma


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the top-class probability (equal-width bins)."""
    conf = p.max(1)
    ok = p.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(float(ok[m].mean()) - float(conf[m].mean()))
    return float(total)


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 5) -> list[dict[str, Any]]:
    """Per outcome class and probability bin: mean predicted vs observed frequency."""
    out: list[dict[str, Any]] = []
    edges = np.linspace(0, 1, bins + 1)
    for c in range(3):
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            m = (p[:, c] > lo) & (p[:, c] <= hi)
            if m.sum() >= 5:
                out.append({"class": c, "bin": [float(lo), float(hi)], "n": int(m.sum()),
                            "predicted": float(p[m, c].mean()),
                            "observed": float((y[m] == c).mean())})
    return out


def cached_dataset(args: argparse.Namespace) -> Dataset:
    """The dataset, from ``--cache`` when it was built with the same settings (a long build is
    then not lost to a later failure), else built (and cached)."""
    from rankiq.training.noref import Dataset, build_dataset

    key = f"{DATASET_VERSION}:{args.acquisitions}:{args.seed}:{not args.no_teacher}"
    if args.epi:
        key += f":epi{args.epi:g}"
    if args.cache and Path(args.cache).exists():
        z = np.load(args.cache, allow_pickle=False)
        if str(z["key"]) == key:
            print(f"dataset from {args.cache}", file=sys.stderr)
            return Dataset(z["x"], z["group"], z["kind"], z["level"], z["teacher"],
                           json.loads(str(z["info"])))
    ds = build_dataset(args.acquisitions, args.seed, workers=args.workers,
                       teacher=not args.no_teacher, epi=args.epi, progress=_progress)
    if args.cache:
        tmp = Path(str(args.cache) + ".partial.npz")
        np.savez(tmp, key=key, x=ds.x, group=ds.group, kind=ds.kind, level=ds.level,
                 teacher=ds.teacher, info=json.dumps(ds.info))
        tmp.replace(args.cache)
    return ds


def run(args: argparse.Namespace) -> int:
    from rankiq.training.export.noref_export import export_noref
    from rankiq.training.noref import MEMBERS, fit, pair_accuracy
    from scipy.stats import spearmanr

    if args.acquisitions < 10:
        print("rankiq train-noref: --acquisitions must be at least 10", file=sys.stderr)
        return 2
    if args.members is not None and args.members < 1:
        print("rankiq train-noref: --members must be at least 1", file=sys.stderr)
        return 2
    if bool(args.pairs) != bool(args.consensus):
        print("rankiq train-noref: --pairs and --consensus go together", file=sys.stderr)
        return 2
    print(f"simulating {args.acquisitions} acquisitions (seed {args.seed})", file=sys.stderr)
    ds = cached_dataset(args)
    n_groups = int(ds.group.max()) + 1
    held = np.arange(n_groups) % 5 == 0
    # held-out accuracy and rebuild stability, on acquisitions the fits never saw
    fit_seed = args.seed if args.fit_seed is None else args.fit_seed
    members = MEMBERS if args.members is None else args.members
    a = fit(ds, seed=fit_seed, train=~held, members=members)
    b = fit(ds, seed=fit_seed + 1, train=~held, members=members)
    rows = held[ds.group]
    stability = float(spearmanr(a.raw(ds.x[rows]), b.raw(ds.x[rows]))[0])
    held_acc = pair_accuracy(a, ds, held, seed=args.seed)
    scorer = fit(ds, seed=fit_seed, members=members)
    thr, cal = thresholds(scorer, ds)
    clf, clf_report = classifier(scorer, args.pairs, args.consensus)
    dom = domain(ds)
    training = {"acquisitions": args.acquisitions, "seed": args.seed, "fit_seed": fit_seed,
                "epi_share": args.epi, "images": int(len(ds.x)),
                "held_out_pairs": held_acc, "rebuild_spearman_other_seed": stability,
                "teacher": None if args.no_teacher else "iqnet-ref",
                "classifier": clf_report}
    meta = export_noref(scorer, args.out, name=Path(args.out).name, version=args.version,
                        classifier=clf, domain=dom, thresholds=thr, calibration=cal,
                        training=training, check=ds.x[:256])
    report = {"model": meta["name"], "version": meta["version"],
              "sha256": meta["files"]["score.onnx"], "training": training,
              "qa_thresholds": thr, "qa_calibration": cal,
              "domain": {k: dom[k] for k in ("matrix", "spacing_mm", "distance_p99",
                                             "distance_cut")}}
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")
    return 0
