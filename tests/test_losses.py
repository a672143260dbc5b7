"""rankiq.training.losses: the shipped metric as the paper's training loss |S(I) - S(I_ref)|^2,
through the metric's own preprocessing, with the exported saliency as its gradient."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_export import export_small, random_classifier
from helpers_train import one_torch_thread  # noqa: F401 (autouse: one torch thread)
from rankiq.service.errors import GeometryMismatch, InvalidImage
from rankiq.service.models import ModelIncompatible, ScoringModel
from rankiq.service.preprocess import prepare
from rankiq.training.export.parity import corrupt, phantom
from rankiq.training.losses import (
    EfficientNetLoss,
    IQNetLoss,
    MetricLoss,
    SSIMLoss,
    ssim_t,
)
from rankiq.training.ssim import ssim_batch
from torch import nn

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_small(tmp_path_factory.mktemp("loss") / "iq")[0]


@pytest.fixture(scope="module")
def noref_dir(tmp_path_factory):
    return export_small(tmp_path_factory.mktemp("loss") / "nr", mode="no-reference")[0]


def _pair(noise: float, seed: int = 0, shape: tuple[int, int] = (48, 48)
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """A complex estimate (corrupted phantom with a smooth phase) and its complex reference."""
    rng = np.random.default_rng(seed)
    ref = phantom(shape, rng).astype(np.complex64)
    yy, xx = np.mgrid[: shape[0], : shape[1]] / max(shape)
    ref = ref * np.exp(1j * (1.5 * xx - 0.7 * yy)).astype(np.complex64)
    est = corrupt(ref, rng, noise=noise, blur=0.3).astype(np.complex64)
    return torch.from_numpy(est)[None], torch.from_numpy(ref)[None]


def test_network_input_is_the_services_preprocessing() -> None:
    # the shipped model: grid 128, so a 72x60 image is padded to square and Fourier-resampled
    loss = IQNetLoss("models/iqnet-ref", reduction="none")
    est, ref = _pair(0.05, seed=3, shape=(72, 60))
    est = est * 7.0  # any scale: the least-squares fit removes it
    with torch.no_grad():
        got = loss.network_input(est, ref).numpy()
    want = prepare(est.numpy(), ref.numpy(), grid=(128, 128), input_kind="magnitude")
    assert got.shape == want.network_input.shape == (1, 1, 128, 128)
    err = np.abs(got - want.network_input).max() / np.abs(want.network_input).max()
    assert err < 1e-4
    # and the score is the served score of that input
    model = ScoringModel.load("models/iqnet-ref")
    with torch.no_grad():
        s, s_ref = loss.scores(est, ref)
    assert np.allclose(s.numpy(), model.score(want.network_input), rtol=1e-4)
    assert float(s_ref[0]) < 1e-3 * float(s[0])  # Score(I_ref) = net(0): the norm offset only


def test_complex_model_keeps_the_phase(tmp_path) -> None:
    d = export_small(tmp_path / "cx", input_kind="complex")[0]
    loss = IQNetLoss(d, reduction="none")
    est, ref = _pair(0.04, seed=4, shape=(40, 56))
    with torch.no_grad():
        got = loss.network_input(est, ref).numpy()
    want = prepare(est.numpy(), ref.numpy(), grid=(48, 48), input_kind="complex")
    assert got.shape == (1, 2, 48, 48)
    assert np.abs(got - want.network_input).max() <= 1e-4 * np.abs(want.network_input).max()
    # a global phase on the estimate is fitted away (complex least-squares scale)
    with torch.no_grad():
        rotated = loss(est * torch.tensor(np.exp(1j * 0.8), dtype=torch.complex64), ref)
        assert torch.allclose(rotated, loss(est, ref), rtol=1e-3)


def test_gradient_is_the_exported_saliency(model_dir) -> None:
    loss = IQNetLoss(model_dir, reduction="none")
    model = ScoringModel.load(model_dir)
    ests, refs = zip(*(_pair(n, seed=k) for k, n in enumerate((0.01, 0.03, 0.1))), strict=True)
    est, ref = torch.cat(ests), torch.cat(refs)
    with torch.no_grad():
        x = loss.network_input(est, ref)
    x.requires_grad_(True)
    s = loss.net(x)
    (grad,) = torch.autograd.grad(s.sum(), x)
    onnx_s, onnx_sal = model.score_and_saliency(x.detach().numpy())
    assert np.allclose(s.detach().numpy(), onnx_s, rtol=1e-4)
    rel = np.abs(grad.numpy() - onnx_sal).max() / np.abs(onnx_sal).max()
    assert rel < 1e-4
    # the loss's gradient at the network input is 2 (S(I) - S(I_ref)) * saliency
    s0 = loss.net(torch.zeros_like(x[:1]))
    (g_loss,) = torch.autograd.grad(((loss.net(x) - s0) ** 2).sum(), x)
    want = 2 * (onnx_s - float(s0))[:, None, None, None] * onnx_sal
    assert np.abs(g_loss.numpy() - want).max() / np.abs(want).max() < 1e-4


def test_full_gradient_matches_finite_differences(model_dir) -> None:
    loss = IQNetLoss(model_dir).double()
    est, ref = _pair(0.05, seed=5, shape=(40, 40))  # resampled 40 -> 48
    est = est.to(torch.complex128).requires_grad_(True)
    value = loss(est, ref.to(torch.complex128))
    (g,) = torch.autograd.grad(value, est)
    assert torch.isfinite(value) and g.abs().sum() > 0
    assert g.imag.abs().sum() > 0  # a complex estimate gets a phase gradient through |x|
    rng = np.random.default_rng(0)
    v = torch.from_numpy(rng.standard_normal((1, 40, 40)) + 1j * rng.standard_normal((1, 40, 40)))
    h = 1e-6
    with torch.no_grad():
        fd = (loss(est + h * v, ref.to(torch.complex128))
              - loss(est - h * v, ref.to(torch.complex128))) / (2 * h)
    # d/dh L(x + h v) = Re<g, v> for the conjugate (Wirtinger) gradient torch returns
    analytic = float((g.conj() * v).real.sum())
    assert abs(float(fd) - analytic) <= 1e-4 * abs(analytic)


def test_loss_is_the_squared_score_difference_and_usable(model_dir) -> None:
    loss = IQNetLoss(model_dir)
    plain = IQNetLoss(model_dir, squared=False, reduction="none")
    est, ref = _pair(0.05, seed=2)
    with torch.no_grad():
        s, s_ref = plain.scores(est, ref)
        assert float(loss(est, ref)) == pytest.approx(float((s - s_ref) ** 2), rel=1e-5)
        assert float(plain(est, ref)[0]) == pytest.approx(float((s - s_ref).abs()), rel=1e-5)
    low = loss(*_pair(0.01, seed=1))
    high = loss(*_pair(0.08, seed=1))
    assert float(low) < float(high)
    est.requires_grad_(True)
    before = loss(est, ref)
    before.backward()
    assert all(p.grad is None for p in loss.parameters())  # the metric stays frozen
    with torch.no_grad():
        stepped = est - 1e-3 * est.grad / est.grad.abs().max()
        assert float(loss(stepped, ref)) < float(before)


def test_no_reference_iqnet_scores_each_image_alone(noref_dir) -> None:
    loss = IQNetLoss(noref_dir, reduction="none", squared=False)
    model = ScoringModel.load(noref_dir)
    est, ref = _pair(0.05, seed=6)
    with torch.no_grad():
        s, s_ref = loss.scores(est, ref)
    want = model.score(prepare(est.numpy(), grid=(48, 48)).network_input)
    want_ref = model.score(prepare(ref.numpy(), grid=(48, 48)).network_input)
    assert np.allclose(s.numpy(), want, rtol=1e-4)
    assert np.allclose(s_ref.numpy(), want_ref, rtol=1e-4)
    x = est.clone().requires_grad_(True)
    IQNetLoss(noref_dir)(x, ref).backward()
    assert x.grad is not None and torch.isfinite(x.grad.abs()).all()


def test_bad_models_and_inputs_are_refused(model_dir) -> None:
    with pytest.raises(ModelIncompatible, match="features.*no gradient"):
        MetricLoss("models/iqnet-noref")
    with pytest.raises(ModelIncompatible, match="EfficientNet model.*IQ-Net"):
        EfficientNetLoss(model_dir)
    loss = IQNetLoss(model_dir)
    est, ref = _pair(0.05)
    with pytest.raises(InvalidImage, match="needs the reference"):
        loss(est)
    with pytest.raises(GeometryMismatch, match="differs"):
        loss(est, ref[:, :40])
    with pytest.raises(InvalidImage, match="shape"):
        loss(est[0, 0], ref[0, 0])
    with pytest.raises(InvalidImage, match="outside"):
        loss(est[:, :8, :8], ref[:, :8, :8])


def test_torch_ssim_is_the_numpy_ssim() -> None:
    est, ref = _pair(0.05, seed=7, shape=(40, 44))
    ref = ref / ref.abs().max()
    est = est / ref.abs().max()
    got = ssim_t(est.to(torch.complex128), ref.to(torch.complex128)).numpy()
    assert np.allclose(got, ssim_batch(est.numpy(), ref.numpy()), atol=1e-10)
    x = est.clone().requires_grad_(True)
    SSIMLoss()(x, ref).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ------------------------------------------------------------------ EfficientNet scorers

EFFNET_SIZE = 32  # not the default 224: a rebuild at another size scores differently


def _effnet_run(run: Path, mode: str) -> None:
    """A run directory in the layout ``rankiq export`` reads (fold 1) holding a seeded
    EfficientNet scorer at input size 32 whose BatchNorm running statistics come from
    train-mode passes over network inputs of ``mode`` (as after training: away from the
    defaults, so the scores depend on the image; with the defaults a random EfficientNet
    scores every image alike)."""
    from rankiq.training.export.parity import parity_inputs
    from rankiq.training.models.efficientnet import EfficientNetScorer

    torch.manual_seed(11)
    net = EfficientNetScorer("magnitude", size=EFFNET_SIZE).train()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # the plain average over the passes
    with torch.no_grad():
        for seed in (0, 1, 2):  # the export's parity inputs among them: well conditioned
            net(torch.from_numpy(parity_inputs(mode, "magnitude", (48, 48), seed)))
    config = {"model": "efficientnet", "mode": mode, "input_kind": "magnitude",
              "grid": [48, 48], "effnet_size": EFFNET_SIZE, "folds": 2, "seed": 3, "epochs": 1,
              "data": {"fingerprint": "e" * 64, "n_labelled": 10}}
    (run / "fold1").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    torch.save({"scorer": net.state_dict(), "classifier": random_classifier().state_dict(),
                "epoch": 1, "val_acc": 0.6}, run / "fold1" / "best.pt")


@pytest.fixture(scope="module")
def effnet_dirs(tmp_path_factory) -> dict[str, Path]:
    """Both modes exported by ``rankiq export``'s own function (``export_run``)."""
    from rankiq.training.export import export_run

    base = tmp_path_factory.mktemp("effnet")
    out = {}
    for mode in ("reference", "no-reference"):
        _effnet_run(base / "runs" / mode, mode)
        out[mode] = base / "models" / mode
        export_run(base / "runs" / mode, out[mode], fold=1)
    return out


@pytest.mark.parametrize("mode", ["reference", "no-reference"])
def test_efficientnet_loss_scores_are_the_served_scores(effnet_dirs, mode) -> None:
    d = effnet_dirs[mode]
    model = ScoringModel.load(d)
    assert model.metadata["architecture"]["size"] == EFFNET_SIZE
    loss = EfficientNetLoss(d, reduction="none", squared=False)
    pairs = [_pair(n, seed=k, shape=(40, 56)) for k, n in enumerate((0.01, 0.04, 0.1))]
    est, ref = torch.cat([e for e, _ in pairs]), torch.cat([r for _, r in pairs])
    with torch.no_grad():
        s, s_ref = loss.scores(est, ref)
    if mode == "reference":
        want = model.score(prepare(est.numpy(), ref.numpy(), grid=(48, 48)).network_input)
        want_ref = model.score(np.zeros((1, 1, 48, 48), np.float32))  # I_ref - I_ref = 0
    else:
        want = model.score(prepare(est.numpy(), grid=(48, 48)).network_input)
        want_ref = model.score(prepare(ref.numpy(), grid=(48, 48)).network_input)
    scale = np.abs(want).max()
    assert np.ptp(want) > 0.05 * scale  # the three images score differently
    assert np.abs(s.numpy() - want).max() <= 1e-4 * scale
    assert np.abs(s_ref.numpy() - want_ref).max() <= 1e-4 * np.abs(want_ref).max()


def test_efficientnet_export_without_its_size_is_refused_not_guessed(effnet_dirs, tmp_path
                                                                    ) -> None:
    # metadata as written before architecture.size was recorded: 224 would be a guess
    d = tmp_path / "old"
    shutil.copytree(effnet_dirs["reference"], d)
    meta = json.loads((d / "metadata.json").read_text())
    del meta["architecture"]["size"]
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelIncompatible, match="input size.*cannot be known"):
        EfficientNetLoss(d)


def test_efficientnet_export_without_its_size_loads_when_it_is_224(tmp_path) -> None:
    # the size is then proven, not assumed: the 224 network reproduces score_naive.onnx
    from rankiq.training.export import export_model
    from rankiq.training.models.efficientnet import DEFAULT_SIZE, EfficientNetScorer

    torch.manual_seed(1)
    net = EfficientNetScorer("magnitude").eval()
    d = tmp_path / "old224"
    export_model(net, random_classifier(), d, name="old224", version="0", mode="no-reference",
                 input_kind="magnitude", grid=(32, 32), extra_metadata={"trained": False})
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["architecture"].pop("size") == DEFAULT_SIZE
    (d / "metadata.json").write_text(json.dumps(meta))
    loss = EfficientNetLoss(d)
    assert isinstance(loss.net, EfficientNetScorer) and loss.net.size == DEFAULT_SIZE


def test_untrained_efficientnet_export_loads(tmp_path) -> None:
    """Default BatchNorm statistics everywhere: the exporter keeps one initializer per distinct
    tensor and names the other parameters as its Identity outputs."""
    import onnx
    from rankiq.training.export import export_model
    from rankiq.training.models.efficientnet import EfficientNetScorer

    torch.manual_seed(0)
    net = EfficientNetScorer("magnitude", size=EFFNET_SIZE).eval()
    d = tmp_path / "untrained"
    export_model(net, random_classifier(), d, name="untrained", version="0", mode="reference",
                 input_kind="magnitude", grid=(48, 48), extra_metadata={"trained": False})
    graph = onnx.load(str(d / "score_naive.onnx")).graph
    stored = {t.name for t in graph.initializer}
    assert "net._bn0.running_mean" not in stored  # the case this test is about
    loss = EfficientNetLoss(d, reduction="none")
    for k, v in net.state_dict().items():
        assert torch.equal(loss.net.state_dict()[k], v) or k.endswith("num_batches_tracked"), k
    est, ref = _pair(0.05, seed=8)
    with torch.no_grad():
        s, _ = loss.scores(est, ref)
    want = ScoringModel.load(d).score(prepare(est.numpy(), ref.numpy(),
                                              grid=(48, 48)).network_input)
    assert np.abs(s.numpy() - want).max() <= 1e-4 * np.abs(want).max()


def test_iqnet_experiment_loss_refuses_a_no_reference_iqnet(noref_dir) -> None:
    from rankiq.training.experiments.config import ExperimentConfig
    from rankiq.training.experiments.run import make_loss

    cfg = ExperimentConfig.defaults("denoise").with_overrides(metric=str(noref_dir))
    with pytest.raises(ModelIncompatible, match="with reference.*no-reference model"):
        make_loss("iqnet", cfg)
