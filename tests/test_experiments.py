"""rankiq experiment denoise / recon: tiny end-to-end runs (data, one network per loss, test
metrics, paired t-tests, figures, resume) and clear refusals of bad settings."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from rankiq.service.models import sha256_file
from rankiq.training.experiments.config import ExperimentConfig, ExperimentError
from rankiq.training.experiments.nets import ResUNet, UnrolledRecon, adjoint_op, forward_op
from rankiq.training.experiments.run import run_experiment

pytestmark = pytest.mark.torch

TINY = {"size": 32, "width": 2, "epochs": 2, "n_train": 4, "n_val": 2, "n_test": 3,
        "batch": 2}


def test_networks_shapes_and_adjoint() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 16, dtype=torch.complex64)
    assert ResUNet(3, 2)(x).shape == x.shape
    with pytest.raises(ValueError, match="divisible by 4"):
        ResUNet(3, 2)(torch.randn(1, 18, 18, dtype=torch.complex64))
    maps = torch.randn(2, 3, 16, 16, dtype=torch.complex64)
    mask = (torch.rand(2, 16, 16) < 0.4).float()
    y = torch.randn(2, 3, 16, 16, dtype=torch.complex64)
    # <A x, y> == <x, A^H y>: the data-consistency step uses the true adjoint
    lhs = (forward_op(x, maps, mask).conj() * y).sum()
    rhs = (x.conj() * adjoint_op(y, maps, mask)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-4)
    out = UnrolledRecon(2, 2, 2)(y * mask[:, None], maps, mask)
    assert out.shape == (2, 16, 16) and out.is_complex()


@pytest.mark.slow
def test_tiny_denoise_runs_resumes_and_reports(tmp_path) -> None:
    cfg = ExperimentConfig.defaults("denoise").with_overrides(**TINY)
    run = tmp_path / "dn"
    res = run_experiment(run, cfg, log=lambda _: None)
    s = res["sets"]["test"]
    assert s["n"] == 3 and set(s["losses"]) == {"iqnet", "mse", "ssim"}
    for loss in s["losses"].values():
        assert set(loss) == {"mse", "mse_fit", "ssim", "iqnet"}
        assert loss["iqnet"]["sd"] >= 0 and loss["mse"]["mean"] > 0
    pairs = {(t["loss"], t["versus"]) for t in s["ttests"]}
    assert pairs == {("iqnet", "mse"), ("ssim", "mse"), ("iqnet", "ssim")}
    assert all(0 <= t["p"] <= 1 for t in s["ttests"])
    for f in ("results.json", "results.md", "figures/panel_test.png", "figures/curves.png",
              "iqnet/checkpoint.pt", "iqnet/history.json", "data/train.npz"):
        assert (run / f).is_file(), f
    assert len(json.loads((run / "mse" / "history.json").read_text())) == 2
    # the exact metric model is recorded: name, version, SHA-256 of the score.onnx scored with
    written = json.loads((run / "results.json").read_text())["config"]
    meta = json.loads((Path(cfg.metric) / "metadata.json").read_text())
    used = {"name": meta["name"], "version": meta["version"],
            "sha256": sha256_file(Path(cfg.metric) / "score.onnx")}
    assert written["metric_model"] == used and written["loss_models"] == {"iqnet": used}
    assert f"score {used['name']} {used['version']}" in (run / "results.md").read_text()
    # rerun: every loss is finished, nothing retrains, the same numbers come back
    again = run_experiment(run, cfg, figures=False, log=lambda _: None)
    assert again["sets"] == json.loads(json.dumps(res["sets"]))
    # more epochs on the same folder is another experiment: refused
    with pytest.raises(ExperimentError, match="another experiment.*epochs"):
        run_experiment(run, cfg.with_overrides(epochs=3), log=lambda _: None)


@pytest.mark.slow
def test_tiny_recon_runs_per_acceleration(tmp_path) -> None:
    cfg = ExperimentConfig.defaults("recon").with_overrides(
        **TINY, calib=6, accel_train=8.0, accels_test=(4.0, 8.0), losses=("iqnet", "mse"))
    res = run_experiment(tmp_path / "rc", cfg, figures=False, log=lambda _: None)
    assert set(res["sets"]) == {"test_4x", "test_8x"}
    with np.load(tmp_path / "rc" / "data" / "test_8x.npz") as f:
        assert f["kspace"].shape == (3, cfg.coils, 32, 32)
        assert 6 < 32 * 32 / f["mask"][0].sum() < 10  # about 8x Poisson-disc
    # the zero-filled input is worse at 8x than at 4x
    assert (res["sets"]["test_8x"]["input"]["mse"]["mean"]
            > res["sets"]["test_4x"]["input"]["mse"]["mean"])


def test_bad_settings_are_refused_before_any_work(tmp_path) -> None:
    with pytest.raises(ExperimentError, match="size"):
        ExperimentConfig.defaults("denoise").with_overrides(size=30)
    with pytest.raises(ExperimentError, match="not valid for recon"):
        ExperimentConfig.defaults("recon").with_overrides(losses=("efficientnet-ref",))
    with pytest.raises(ExperimentError, match="calibration"):
        ExperimentConfig.defaults("recon").with_overrides(size=32, calib=12)


@pytest.mark.parametrize(("args", "message"), [
    (["denoise", "--losses", "efficientnet-ref"], "needs a trained EfficientNet model"),
    (["denoise", "--metric", "models/iqnet-noref"], "features"),
    (["recon", "--size", "30"], "--size must be"),
    (["recon", "--losses", "iqnet,perceptual"], "not valid for recon"),
])
def test_cli_bad_input_exits_2_with_one_line(rankiq_exe, tmp_path, args, message) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([str(rankiq_exe), "experiment", *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()  # refused before a run folder or data is written


def test_poisson_mask_redraws_when_a_seed_misses_the_acceleration() -> None:
    """SigPy refuses some seeds at 8x on 128x128 (a 500-slice test set met one); the mask then
    comes from the next seed, and a seed SigPy accepts gives SigPy's own mask."""
    import sigpy.mri
    from rankiq.training.experiments.data import poisson_mask

    refused = []
    for seed in range(200):
        try:
            sigpy.mri.poisson((128, 128), 8.0, calib=(16, 16), dtype=np.float32, seed=seed, tol=0.4)
        except ValueError:
            refused.append(seed)
    assert refused, "expected SigPy to refuse at least one of 200 seeds"
    mask = poisson_mask(128, 8.0, 16, refused[0])
    assert abs(mask.size / mask.sum() - 8.0) <= 0.4
    assert np.all(mask[56:72, 56:72] == 1)  # fully sampled centre
    ok = next(s for s in range(200) if s not in refused)
    direct = sigpy.mri.poisson((128, 128), 8.0, calib=(16, 16), dtype=np.float32, seed=ok,
                               tol=0.4).real.astype(np.float32)
    assert np.array_equal(poisson_mask(128, 8.0, 16, ok), direct)
