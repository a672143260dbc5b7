"""rankiq.training.losses.IQNetLoss: the shipped metric as a differentiable training loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_export import export_small
from rankiq.service.models import ScoringModel
from rankiq.training.export.parity import corrupt, phantom
from rankiq.training.losses import IQNetLoss

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_small(tmp_path_factory.mktemp("loss") / "iq")[0]


def _pair(noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    ref = phantom((48, 48), rng)
    est = np.abs(corrupt(ref, rng, noise=noise, blur=0.3))
    return torch.from_numpy(est)[None, None], torch.from_numpy(ref)[None, None]


def test_gradients_flow_to_the_estimate(model_dir) -> None:
    loss = IQNetLoss(model_dir)
    est, ref = _pair(0.05)
    est.requires_grad_(True)
    value = loss(est, ref)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert est.grad is not None and est.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())  # the metric itself stays frozen


def test_less_corrupted_estimate_has_lower_loss(model_dir) -> None:
    loss = IQNetLoss(model_dir)
    low = loss(*_pair(0.01, seed=1))
    high = loss(*_pair(0.08, seed=1))
    assert float(low) < float(high)
    # a gradient step on the estimate lowers the loss (it is usable for training)
    est, ref = _pair(0.05, seed=2)
    est.requires_grad_(True)
    before = loss(est, ref)
    before.backward()
    with torch.no_grad():
        stepped = est - 1e-3 * est.grad / est.grad.abs().max()
    assert float(loss(stepped, ref)) < float(before.detach())


def test_matches_the_onnx_score(model_dir) -> None:
    loss = IQNetLoss(model_dir, reduction="none")
    ests, refs = zip(*(_pair(n, seed=k) for k, n in enumerate((0.01, 0.03, 0.1))), strict=True)
    est, ref = torch.cat(ests), torch.cat(refs)
    with torch.no_grad():
        got = loss(est, ref).numpy()
    want = ScoringModel.load(model_dir).score((est - ref).numpy())
    assert got.shape == (3,)
    assert np.max(np.abs(got - want) / np.abs(want)) <= 1e-4
    # complex inputs go through |.| for a magnitude model
    with torch.no_grad():
        got_c = loss(est[:, 0].to(torch.complex64), ref[:, 0].to(torch.complex64)).numpy()
    assert np.allclose(got_c, got, rtol=1e-6)
