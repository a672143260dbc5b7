"""The learned metric as a training loss: ``IQNetLoss`` (as the paper used for denoising and
reconstruction networks).

``IQNetLoss(model_dir)`` rebuilds the shipped IQ-Net in torch from the named initializers of
the model's ``score_naive.onnx`` (the exporter keeps every parameter under its state-dict name),
after the same SHA-256 and preprocess-version checks the service does, so the loss is the exact
network the service scores with. No downloads.

``loss(estimate, reference) = score(estimate - reference)`` averaged over the batch (reference
mode). Inputs are float ``(N, C, H, W)`` network-layout tensors (``C`` = 1 magnitude, 2
real/imag) or complex ``(N, H, W)`` tensors, which are converted to the model's input kind
(``|x|`` for magnitude models, so the gradient flows through the magnitude). The score is
positively homogeneous, so scale the images as the model expects (``rankiq.service.preprocess``
normalises references to a robust maximum of 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx
import torch
from onnx import numpy_helper
from rankiq.service.models import ModelIncompatible, ScoringModel
from rankiq.training.models.iqnet import IQNet
from torch import nn

Reduction = Literal["mean", "sum", "none"]


def load_iqnet(model_dir: str | Path) -> tuple[IQNet, dict]:
    """Rebuild the shipped IQ-Net (eval mode, float32) and return it with the model metadata.

    Raises:
        ModelNotFound, ModelCorrupt, ModelIncompatible: as ``ScoringModel.load``; also
            ``ModelIncompatible`` when the model is not an IQ-Net.
    """
    meta = ScoringModel.load(model_dir).metadata  # verifies hashes + preprocess version
    arch = meta.get("architecture", {})
    if arch.get("model") != "iqnet":
        raise ModelIncompatible(f"IQNetLoss needs an IQ-Net model, not {arch.get('model')!r}",
                                source=str(model_dir))
    net = IQNet(meta["input_kind"], channels=int(arch["channels"]), blocks=int(arch["blocks"]),
                activation=arch["activation"])
    graph = onnx.load(str(Path(model_dir) / "score_naive.onnx")).graph
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
               for t in graph.initializer}
    state = net.state_dict()
    missing = [k for k in state if k not in weights]
    if missing:
        raise ModelIncompatible(f"score_naive.onnx lacks parameters {missing[:3]}",
                                source=str(model_dir))
    net.load_state_dict({k: weights[k].reshape(state[k].shape) for k in state})
    return net.eval(), meta


class IQNetLoss(nn.Module):
    """Differentiable IQ-Net score of an estimate against its reference (lower is better).

    Args:
        model_dir: a shipped model directory (e.g. ``models/iqnet-ref``).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-image ``(N,)`` scores).
        trainable: keep the metric's parameters frozen (default) or let them train.
    """

    def __init__(self, model_dir: str | Path, reduction: Reduction = "mean",
                 trainable: bool = False) -> None:
        super().__init__()
        self.net, self.metadata = load_iqnet(model_dir)
        self.reduction = reduction
        for p in self.net.parameters():
            p.requires_grad_(trainable)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_complex(x):
            if x.ndim == 4 and x.shape[1] == 1:
                x = x[:, 0]
            if self.net.input_kind == "magnitude":
                return x.abs()[:, None]
            return torch.stack([x.real, x.imag], dim=1)
        if x.ndim != 4 or x.shape[1] != self.net.parts:
            raise ValueError(f"expected (N, {self.net.parts}, H, W) real or (N, H, W) complex, "
                             f"got {tuple(x.shape)}")
        return x

    def forward(self, estimate: torch.Tensor, reference: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Loss of ``estimate`` (and ``reference`` for reference models); see the module doc."""
        if self.metadata["mode"] == "reference":
            if reference is None:
                raise ValueError("a reference-mode IQ-Net loss needs the reference")
            diff = self._layout(estimate) - self._layout(reference)
        else:
            diff = self._layout(estimate)
        scores = self.net(diff.float())
        if self.reduction == "mean":
            return scores.mean()
        if self.reduction == "sum":
            return scores.sum()
        return scores
