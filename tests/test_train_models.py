"""Scoring networks, classifier, augmentation and folds: behaviour on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers_pairs import phantom  # noqa: E402
from helpers_train import one_torch_thread  # noqa: E402, F401 (autouse: one torch thread)
from rankiq.service.preprocess import prepare  # noqa: E402
from rankiq.training.augment import apply, draw  # noqa: E402
from rankiq.training.distill import NoRefStudent  # noqa: E402
from rankiq.training.folds import FoldError, assign_folds, split  # noqa: E402
from rankiq.training.models import IQNet, RankClassifier, count_parameters  # noqa: E402
from rankiq.training.train import rank_probabilities  # noqa: E402

pytestmark = pytest.mark.torch


def test_parameter_counts() -> None:
    assert count_parameters(IQNet("magnitude")) == 5562
    assert count_parameters(IQNet("complex")) == 5562
    assert count_parameters(RankClassifier()) == 98
    # student: IQ-Net's convolutions (5,521) + a signed Linear(41, 1) head (42)
    assert count_parameters(NoRefStudent()) == 5521 + 42


def test_classifier_swap_is_exact() -> None:
    torch.manual_seed(0)
    clf = RankClassifier().eval()
    s1, s2 = torch.randn(64) * 3, torch.randn(64) * 3
    a, b = clf(s1, s2), clf(s2, s1)
    assert torch.equal(a, b.flip(1))  # logits swap exactly
    p, q = rank_probabilities(a), rank_probabilities(b)
    assert torch.equal(p[:, 0], q[:, 2]) and torch.equal(p[:, 2], q[:, 0])
    assert torch.equal(p[:, 1], q[:, 1])
    torch.testing.assert_close(p, torch.softmax(a, dim=1))
    assert not torch.allclose(p[:, 0], p[:, 2])


def test_identical_image_and_reference_score_zero() -> None:
    ref = phantom(32, np.random.default_rng(0))
    net = IQNet("complex").eval()
    x_same = prepare(ref, ref, grid=(32, 32), input_kind="complex").network_input
    noisy = ref + 0.05 * np.random.default_rng(1).standard_normal(ref.shape)
    x_noisy = prepare(noisy, ref, grid=(32, 32), input_kind="complex").network_input
    with torch.no_grad():
        s0 = float(net(torch.from_numpy(x_same)))
        s1 = float(net(torch.from_numpy(x_noisy)))
    assert np.abs(x_same).max() < 1e-6
    assert s0 < 1e-3 and s1 > 100 * s0


def test_score_linear_in_difference() -> None:
    torch.manual_seed(0)
    net = IQNet("magnitude").eval()
    with torch.no_grad():
        for p in net.parameters():  # away from the all-ones init
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        s, s2, s5 = net(x), net(2 * x), net(0.5 * x)
    torch.testing.assert_close(s2, 2 * s, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s5, 0.5 * s, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make", [lambda: IQNet("magnitude"), lambda: IQNet("complex"),
                                  lambda: NoRefStudent()])
def test_gradients_reach_every_parameter(make) -> None:
    torch.manual_seed(0)
    net, clf = make(), RankClassifier()
    c = net.parts if hasattr(net, "parts") else 1
    x1, x2 = torch.randn(4, c, 32, 32), torch.randn(4, c, 32, 32)
    loss = torch.nn.functional.cross_entropy(clf(net(x1), net(x2)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    for name, p in [*net.named_parameters(), *clf.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_efficientnet_builds_offline_and_learns() -> None:
    from rankiq.training.models.efficientnet import EfficientNetScorer

    torch.manual_seed(0)
    net = EfficientNetScorer("complex", size=32)
    assert net.net._fc.in_features == 1280 and net.net._fc.out_features == 1
    x = torch.randn(4, 2, 48, 48)
    s = net(x)
    assert s.shape == (4,)
    s.sum().backward()
    assert net.inproj.weight.grad is not None and net.inproj.weight.grad.abs().sum() > 0


def test_augmentation_is_the_same_for_images_and_reference() -> None:
    g = torch.Generator().manual_seed(0)
    img1, img2, ref = (torch.randn(5, 2, 24, 24) for _ in range(3))
    p = draw(5, g)
    # transforming the differences == differences of the transformed images and reference
    torch.testing.assert_close(apply(img1 - ref, p), apply(img1, p) - apply(ref, p),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply(img2 - ref, p), apply(img2, p) - apply(ref, p),
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(apply(img1, p), img1)
    q = draw(5, torch.Generator().manual_seed(0))
    assert torch.equal(apply(img1, q), apply(img1, p))  # seeded


def test_folds_never_split_a_source() -> None:
    rng = np.random.default_rng(3)
    sources = np.array([f"s{i}" for i in rng.integers(0, 17, 300)], dtype=object)
    folds = assign_folds(sources, 5, seed=1)
    for s in set(sources):
        assert len(set(folds[sources == s])) == 1
    sizes = np.bincount(folds, minlength=5)
    assert sizes.min() > 0 and sizes.max() - sizes.min() < 40
    tr, va = split(folds, 2)
    assert not set(sources[tr]) & set(sources[va])
    assert np.array_equal(folds, assign_folds(sources, 5, seed=1))
    with pytest.raises(FoldError):
        assign_folds(["a", "b", "a"], 3, seed=0)
