"""EfficientNet-b0 scorer (the paper's larger network), built from scratch, never downloaded.

``efficientnet_pytorch.EfficientNet.from_name`` builds the architecture with random weights (no
network access); ImageNet weights cannot be fetched here, so the network is trained from scratch
(the reference fine-tuned ImageNet weights). As in the reference: a 1x1 conv maps the input
channels (1 magnitude, or 2 real/imag) to 3, the input is resized to ``size x size`` (224), and
the head is ``Linear(1280, 1)``.

Input ``x`` float32 ``(N, C, H, W)`` (network input of :func:`rankiq.service.preprocess.prepare`),
output ``(N,)`` scores (lower = better once trained; the sign is learned with the classifier).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_SIZE = 224


class EfficientNetScorer(nn.Module):
    """1x1 conv (C -> 3) -> resize to ``size`` -> EfficientNet-b0 -> Linear(1280, 1).

    Args:
        input_kind: ``"magnitude"`` (1 channel) or ``"complex"`` (2 channels).
        size: side the input is resized to (bilinear); 224 as in the reference.
        variant: efficientnet-pytorch model name.
    """

    def __init__(self, input_kind: Literal["magnitude", "complex"] = "magnitude",
                 size: int = DEFAULT_SIZE, variant: str = "efficientnet-b0") -> None:
        super().__init__()
        from efficientnet_pytorch import EfficientNet

        if input_kind not in ("magnitude", "complex"):
            raise ValueError(f"input_kind must be 'magnitude' or 'complex', not {input_kind!r}")
        self.input_kind = input_kind
        self.size = int(size)
        channels = 1 if input_kind == "magnitude" else 2
        self.inproj = nn.Conv2d(channels, 3, 1)
        # from_name: architecture only, random init, nothing downloaded; num_classes=1 makes
        # the head Linear(1280, 1)
        self.net = EfficientNet.from_name(variant, num_classes=1)
        # plain (traceable) swish so the model exports to ONNX
        self.net.set_swish(memory_efficient=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N,)``."""
        y = self.inproj(x)
        if tuple(y.shape[-2:]) != (self.size, self.size):
            y = F.interpolate(y, size=(self.size, self.size), mode="bilinear",
                              align_corners=False)
        return self.net(y).reshape(-1)
