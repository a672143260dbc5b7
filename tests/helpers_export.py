"""Helpers for the export/models/losses tests: small exported models (48 px grids)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rankiq.training.export import export_model
from rankiq.training.models import IQNet, RankClassifier

GRID = (48, 48)


def random_iqnet(input_kind: str = "magnitude", activation: str = "identity",
                 seed: int = 0) -> IQNet:
    """A seeded IQ-Net with non-trivial feature weights (as after training), eval mode."""
    torch.manual_seed(seed)
    net = IQNet(input_kind, activation=activation)  # type: ignore[arg-type]
    with torch.no_grad():
        net.feature_weights.uniform_(-2, 2)
        net.input_weight.fill_(0.7)
    return net.eval()


def random_classifier(seed: int = 1) -> RankClassifier:
    torch.manual_seed(seed)
    clf = RankClassifier()
    with torch.no_grad():
        for p in clf.parameters():
            p.normal_(0, 1)
    return clf.eval()


def export_small(out: Path, *, input_kind: str = "magnitude", mode: str = "reference",
                 activation: str = "identity", grid: tuple[int, int] = GRID, seed: int = 0
                 ) -> tuple[Path, IQNet, RankClassifier]:
    """Export a seeded IQ-Net to ``out``; returns the directory and the torch modules."""
    net, clf = random_iqnet(input_kind, activation, seed), random_classifier(seed + 1)
    export_model(net, clf, out, name=out.name, version="test", mode=mode,
                 input_kind=input_kind, grid=grid, extra_metadata={"trained": False})
    return out, net, clf


def torch_scores(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """float64 torch scores of float32 inputs."""
    import copy

    with torch.no_grad():
        return copy.deepcopy(net).double()(torch.from_numpy(x.astype(np.float64))).numpy()


def torch_saliency(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """float64 autograd d score / d x."""
    import copy

    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    s = copy.deepcopy(net).double()(xt)
    return torch.autograd.grad(s.sum(), xt)[0].numpy()
