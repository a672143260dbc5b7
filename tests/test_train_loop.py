"""Training loop, data loading, run directory and distillation on tiny synthetic data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from helpers_train import easy_data, one_torch_thread, write_consensus  # noqa: E402, F401 (autouse)
from rankiq.training.data import DataError, load_ranking_data, read_labels  # noqa: E402
from rankiq.training.factory import load_run  # noqa: E402
from rankiq.training.train import train_run  # noqa: E402

pytestmark = pytest.mark.torch

TINY = {"model": "iqnet", "mode": "reference", "input_kind": "magnitude", "folds": 2,
        "seed": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    return easy_data(tmp_path_factory.mktemp("train"), n_pairs=40, size=32)


@pytest.fixture(scope="module")
def ref_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ref"
    train_run(*data, out, {**TINY, "epochs": 2})
    return out


def test_easy_ranking_beats_chance(data, tmp_path) -> None:
    # classifier warm-up off: the loop itself must learn the sign of the score difference
    s = train_run(*data, tmp_path / "r", {**TINY, "epochs": 4, "classifier_warmup": 0,
                                          "batch_size": 4, "lr_classifier": 1e-2})
    assert s["mean"] > 0.7  # 2 classes in the labels: chance is ~0.5
    hist = json.loads((tmp_path / "r" / "fold0" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    with (tmp_path / "r" / "fold0" / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and float(rows[0]["lr"]) == pytest.approx(1e-4)
    assert float(rows[1]["lr"]) == pytest.approx(1e-4 * 0.999)


def test_resume_reproduces_uninterrupted_run(data, tmp_path) -> None:
    cfg = {**TINY, "model": "iqnet", "input_kind": "complex"}
    train_run(*data, tmp_path / "full", {**cfg, "epochs": 3}, only=[0])
    train_run(*data, tmp_path / "part", {**cfg, "epochs": 1}, only=[0])
    train_run(*data, tmp_path / "part", {**cfg, "epochs": 3}, only=[0], resume=True)
    a = torch.load(tmp_path / "full/fold0/last.pt", weights_only=True)
    b = torch.load(tmp_path / "part/fold0/last.pt", weights_only=True)
    for part in ("scorer", "classifier"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in b["history"]]
    # a second run into the same directory without --resume is refused
    from rankiq.training.runs import RunError

    with pytest.raises(RunError, match="resume"):
        train_run(*data, tmp_path / "part", {**cfg, "epochs": 3}, only=[0])


def test_load_run_contract(ref_run, data) -> None:
    from rankiq.training.runs import RunError

    with pytest.raises(RunError, match="no final model"):  # never the best fold by default
        load_run(ref_run)
    run = load_run(ref_run, fold=0)
    assert run.config["mode"] == "reference" and run.config["grid"] == [32, 32]
    assert not run.scorer.training and not run.classifier.training
    d = load_ranking_data(*data)
    with torch.no_grad():
        s = run.scorer(torch.from_numpy(d.x1[:5]))
    assert s.shape == (5,)
    assert run.fold == 0
    folds = json.loads((ref_run / "folds.json").read_text())
    ids = sorted(p for v in folds.values() for p in v)
    assert ids == sorted(d.pair_id.tolist())
    src = dict(zip(d.pair_id.tolist(), d.source_id, strict=True))
    assert not {src[p] for p in folds["0"]} & {src[p] for p in folds["1"]}
    assert load_run(ref_run, fold=1).fold == 1


def test_metric_baselines_train(data, tmp_path) -> None:
    for m in ("mse", "ssim"):
        s = train_run(*data, tmp_path / m, {**TINY, "model": m, "epochs": 2})
        assert s["mean"] > 0.6  # labels are MSE order; SSIM correlates
        run = load_run(tmp_path / m, fold=0)
        assert run.scorer(torch.tensor([0.5, 0.9])).shape == (2,)


def test_distilled_no_reference_run(ref_run, data, tmp_path) -> None:
    from rankiq.training.distill import distill_run

    cfg = {**TINY, "input_kind": "magnitude", "student": "iqnet-relu", "epochs": 1,
           "distill_epochs": 2, "fresh_fraction": 0.5}
    distill_run(*data, tmp_path / "d", cfg, ref_run)
    run = load_run(tmp_path / "d", fold=0)
    assert run.config["mode"] == "no-reference" and run.config["model"] == "distill"
    d = load_ranking_data(*data, mode="no-reference")
    with torch.no_grad():
        s = run.scorer(torch.from_numpy(d.x1[:4]))
    assert s.shape == (4,) and bool((s > 0).all())
    stats = json.loads((tmp_path / "d/fold0/distill.json").read_text())
    assert len(stats["history"]) == 2


def test_skipped_votes_never_reach_training(data, tmp_path) -> None:
    pairs, _ = data
    votes = tmp_path / "votes.csv"
    rows = [("R1", 0, "skip"), ("R2", 0, "skip"), ("R1", 1, "skip"), ("R2", 1, "2"),
            ("R1", 2, "1"), ("R2", 2, "1"), ("R1", 3, "similar")]
    with votes.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["reader", "pair_id", "outcome"])
        w.writerows(rows)
    assert read_labels(votes) == {1: 2, 2: 0, 3: 1}
    cons = tmp_path / "cons.csv"
    write_consensus(cons, {0: "skip", 1: "2", 2: "1"})
    assert read_labels(cons) == {1: 2, 2: 0}
    d = load_ranking_data(pairs, votes)
    assert d.pair_id.tolist() == [1, 2, 3] and d.label.tolist() == [2, 0, 1]


def test_labels_for_unknown_pairs_are_an_error(data, tmp_path) -> None:
    pairs, _ = data
    bad = write_consensus(tmp_path / "bad.csv", {0: "1", 9001: "2"})
    with pytest.raises(DataError, match="9001"):
        load_ranking_data(pairs, bad)


def test_epoch_chosen_on_inner_split_and_final_model(data, tmp_path) -> None:
    """The held-out fold never chooses the epoch; the final model is trained on all pairs and
    is what load_run (and so export) picks by default; pooled accuracy has 95 % CIs."""
    s = train_run(*data, tmp_path / "r", {**TINY, "epochs": 2, "final": True})
    for f in s["folds"].values():
        assert f["selection"] == "inner" and f["n_select"] > 0
        assert f["n_train"] + f["n_select"] + f["n_val"] == 40
    folds = json.loads((tmp_path / "r" / "folds.json").read_text())
    hist = json.loads((tmp_path / "r" / "fold0" / "history.json").read_text())
    assert all(h["sel_acc"] is not None and h["val_acc"] is not None for h in hist)
    assert sorted(len(v) for v in folds.values()) == sorted(f["n_val"] for f in
                                                            s["folds"].values())
    pooled = s["held_out"]
    assert pooled["n"] == 40 and 0 <= pooled["accuracy"] <= 1
    lo, hi = pooled["ci95_wilson"]
    assert lo <= pooled["accuracy"] <= hi
    assert s["grouping"]["by"] == "subject" and s["grouping"]["n_volumes"] == 1  # one phantom
    assert s["final"]["n_train"] == 40 and 1 <= s["final"]["epochs"] <= 2
    run = load_run(tmp_path / "r")
    assert run.fold == "final"


def test_crop_training_runs_on_whole_image_scale(data, tmp_path) -> None:
    s = train_run(*data, tmp_path / "c", {**TINY, "epochs": 1, "crop": 16,
                                                        "blocks": 4}, only=[0])
    assert s["folds"]["0"]["epochs_run"] == 1
    assert json.loads((tmp_path / "c" / "config.json").read_text())["crop"] == 16
