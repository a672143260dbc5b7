"""``rankiq train`` / ``evaluate`` / ``bench train`` through the CLI entry point (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from helpers_train import easy_data, write_consensus  # noqa: E402
from rankiq.service.cli import main  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.torch]


@pytest.fixture(autouse=True)
def _restore_threads():
    """``--threads`` sets torch's global thread count in this process: put it back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    return easy_data(tmp_path_factory.mktemp("cli"), n_pairs=32, size=32, n_sources=8)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    return err


def test_missing_files_exit_2(data, tmp_path, capsys) -> None:
    pairs, cons = data
    rc = main(["train", "--data", str(tmp_path / "nope.h5"), "--rankings", str(cons),
               "--out", str(tmp_path / "r")])
    assert rc == 2 and "nope.h5" in _one_line_error(capsys)
    rc = main(["train", "--data", str(pairs), "--rankings", str(tmp_path / "nope.csv"),
               "--out", str(tmp_path / "r")])
    assert rc == 2 and "nope.csv" in _one_line_error(capsys)
    assert main(["evaluate", str(tmp_path / "norun"), "--out", str(tmp_path / "rep")]) == 2
    _one_line_error(capsys)


def test_rankings_for_other_pairs_exit_2(data, tmp_path, capsys) -> None:
    pairs, _ = data
    bad = write_consensus(tmp_path / "bad.csv", {1: "1", 4242: "2", 4243: "similar"})
    rc = main(["train", "--data", str(pairs), "--rankings", str(bad), "--out",
               str(tmp_path / "r"), "--quiet"])
    err = _one_line_error(capsys)
    assert rc == 2 and "4242" in err and "not in" in err
    assert not (tmp_path / "r").exists()


def test_distill_needs_teacher_exit_2(data, tmp_path, capsys) -> None:
    pairs, cons = data
    rc = main(["train", "--data", str(pairs), "--rankings", str(cons), "--model", "distill",
               "--out", str(tmp_path / "d")])
    assert rc == 2 and "--teacher" in _one_line_error(capsys)


def test_train_and_evaluate(data, tmp_path, capsys) -> None:
    pairs, cons = data
    common = ["--data", str(pairs), "--rankings", str(cons), "--folds", "2", "--epochs", "1",
              "--quiet", "--threads", "1"]
    assert main(["train", *common, "--model", "iqnet", "--out", str(tmp_path / "iq")]) == 0
    assert main(["train", *common, "--model", "mse", "--out", str(tmp_path / "mse")]) == 0
    assert main(["train", *common, "--model", "iqnet", "--no-reference",
                 "--out", str(tmp_path / "noref")]) == 0
    cfg = json.loads((tmp_path / "noref" / "config.json").read_text())
    assert cfg["mode"] == "no-reference" and len(cfg["data"]["fingerprint"]) == 64
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "iq"), str(tmp_path / "mse"),
                 str(tmp_path / "noref"), "--out", str(tmp_path / "rep"),
                 "--figure-slices", "1"]) == 0
    out = capsys.readouterr().out
    assert "IQ-Net (reference, magnitude)" in out and "MSE" in out
    res = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert res["anova"]["df1"] == 2 and "iq vs mse" in res["ttests"]
    assert res["spearman"]["noref"]["n_images"] == 64
    for f in ("table.md", "fig6_iq.png", "scatter_iq.png", "fig6_noref.png", "fig3_saliency.png"):
        assert (tmp_path / "rep" / f).stat().st_size > 0
    # Figure 3: one alignment per network run (the metric baseline has no saliency) and row
    align = res["saliency_alignment"]
    assert set(align) == {"iq", "noref"}
    assert all(set(row) == {"noise", "blur", "undersample_2d"} for row in align.values())
    assert all(-1.0 <= v <= 1.0 for row in align.values() for v in row.values())
    assert "Spearman rho between each run's saliency map" in res["markdown"]


def test_bench_train_prints_table(capsys) -> None:
    assert main(["bench", "train", "--size", "32", "--threads", "1", "--steps", "1",
                 "--batch-size", "2", "--models", "iqnet,mse,distill-student"]) == 0
    out = capsys.readouterr().out
    assert "pairs/s" in out and "distill-student" in out


def test_bench_train_json(capsys) -> None:
    assert main(["bench", "train", "--size", "32", "--threads", "1", "--steps", "1",
                 "--batch-size", "2", "--models", "iqnet,mse", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["iqnet", "mse"]
    assert all(r["seconds_per_step"] > 0 and r["pairs_per_s"] > 0 for r in rows)
    # the experiments' per-loss timing prints its rows the same way
    assert main(["bench", "train", "--experiment", "denoise", "--losses", "mse", "--threads",
                 "1", "--steps", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["experiment"], r["loss"]) for r in rows] == [("denoise", "mse")]
    assert rows[0]["seconds_per_epoch"] >= rows[0]["seconds_per_step"] > 0
