"""``rankiq export RUN --out DIR`` on a run directory in the CONTRACTS.md section 3 layout, and
``rankiq bench score``'s table."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from helpers_export import random_classifier, random_iqnet
from rankiq.service.models import ScoringModel
from rankiq.training.export.bench import bench_score, format_table

pytestmark = pytest.mark.torch


def _make_run(run, grid=(48, 48)) -> None:
    net, clf = random_iqnet(seed=5), random_classifier(seed=6)
    config = {"model": "iqnet", "mode": "reference", "input_kind": "magnitude",
              "grid": list(grid), "folds": 2, "seed": 3, "epochs": 1,
              "data": {"fingerprint": "f" * 64, "n_labelled": 10}}
    (run / "fold1").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    (run / "summary.json").write_text(json.dumps(
        {"folds": {"1": {"best_val_acc": 0.61}}, "mean": 0.61, "sd": None}))
    torch.save({"scorer": net.state_dict(), "classifier": clf.state_dict(), "epoch": 1,
                "val_acc": 0.61}, run / "fold1" / "best.pt")


@pytest.mark.slow
def test_export_command_from_run(tmp_path, rankiq_exe) -> None:
    run = tmp_path / "runs" / "r1"
    _make_run(run)
    out = tmp_path / "models" / "iqnet-test"
    res = subprocess.run([str(rankiq_exe), "export", str(run), "--out", str(out),
                          "--version", "1.2.3", "--fold", "1"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "exported iqnet-test 1.2.3" in res.stdout
    m = ScoringModel.load(out)
    assert m.version == "1.2.3" and m.grid == (48, 48)
    meta = m.metadata
    assert meta["trained"] is True and meta["training"]["data_fingerprint"] == "f" * 64
    assert meta["training"]["fold"] == 1 and meta["accuracy"]["mean"] == 0.61

    bad = subprocess.run([str(rankiq_exe), "export", str(tmp_path / "missing"), "--out",
                          str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_bench_prints_every_variant() -> None:
    rows = bench_score(grid=(32, 32), threads=1, batches=(1, 2), min_time=0.0, min_reps=1)
    whats = {r["what"] for r in rows}
    assert {"torch eager", "onnx naive", "onnx opt", "onnx opt+sal", "onnx naive+sal"} <= whats
    assert all(float(r["ms_per_image"]) > 0 for r in rows)
    table = format_table(rows, (32, 32), 1)
    assert "naive ONNX / optimised" in table and "| 2 |" in table
