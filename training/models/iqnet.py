"""IQ-Net: the paper's 5,562-parameter scoring network (see docs/paper.md).

Input ``x`` is what :func:`rankiq.service.preprocess.prepare` calls the network input: the
reference-subtracted difference (reference mode) or the normalised image (no-reference mode),
float32 ``(N, C, H, W)`` with ``C = 1`` (magnitude) or ``C = 2`` (real, imag). In complex mode
one real kernel is applied to the real and the imaginary part separately (weights shared), so
both modes have the same parameters.

Output: one score per image, ``(N,)``; lower is closer to the reference (better). Each feature is
a per-channel L2 norm ``sqrt(sum((|z| + 1e-6)^2))`` over space (and over the real/imag parts), 41
in all: the input itself and 8 per block, combined as ``sum_k |w_k| * feature_k``. With the
faithful identity activation everything before the norms is linear, so the score is (up to the
1e-6 offset) positively homogeneous: doubling the difference doubles the score.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Activation = Literal["identity", "relu", "leaky_relu"]
NORM_EPS = 1e-6


def _activation(name: Activation) -> nn.Module:
    if name == "identity":
        return nn.Identity()
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    raise ValueError(f"unknown activation {name!r}")


def channel_norm(z: torch.Tensor, parts: int) -> torch.Tensor:
    """Per-channel L2 norm over space and the complex parts.

    Args:
        z: ``(N * parts, C, h, w)`` feature maps, parts stacked along the batch.
        parts: 1 (magnitude) or 2 (real, imag).

    Returns:
        ``(N, C)`` norms ``sqrt(sum((|z| + 1e-6)^2))``.
    """
    n = z.shape[0] // parts
    z = z.reshape(n, parts, z.shape[1], -1)
    return torch.sqrt(((z.abs() + NORM_EPS) ** 2).sum(dim=(1, 3)))


class IQBlock(nn.Module):
    """1x1 shortcut + (3x3 conv -> act -> 3x3 conv), added, act, 2x2 average pool. No bias."""

    def __init__(self, in_ch: int, out_ch: int, activation: Activation = "identity") -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.act1 = _activation(activation)
        self.act2 = _activation(activation)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_ch, h, w)`` -> ``(B, out_ch, h // 2, w // 2)``."""
        y = self.conv2(self.act1(self.conv1(x))) + self.shortcut(x)
        return self.pool(self.act2(y))


class IQNet(nn.Module):
    """The faithful IQ-Net (5 blocks, 8 channels, identity activation: 5,562 parameters).

    Args:
        input_kind: ``"magnitude"`` (1 input channel) or ``"complex"`` (2: real, imag).
        channels: feature channels per block (8 in the paper).
        blocks: number of blocks (5 in the paper: 396 -> 12 pixels).
        activation: ``"identity"`` as run by the authors; ``"relu"``/``"leaky_relu"`` optional.
        dropout: channel dropout after every block and on the features (training only).
    """

    def __init__(
        self,
        input_kind: Literal["magnitude", "complex"] = "magnitude",
        channels: int = 8,
        blocks: int = 5,
        activation: Activation = "identity",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if input_kind not in ("magnitude", "complex"):
            raise ValueError(f"input_kind must be 'magnitude' or 'complex', not {input_kind!r}")
        self.input_kind = input_kind
        self.parts = 1 if input_kind == "magnitude" else 2
        self.activation = activation
        self.blocks = nn.ModuleList(
            IQBlock(1 if i == 0 else channels, channels, activation) for i in range(blocks)
        )
        self.dropout = nn.Dropout2d(dropout)
        self.feature_dropout = nn.Dropout(dropout)
        self.input_weight = nn.Parameter(torch.ones(1))
        self.feature_weights = nn.Parameter(torch.ones(1 + channels * blocks))

    @property
    def n_features(self) -> int:
        return self.feature_weights.numel()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, 1 + 8 * blocks)`` L2-norm features (before |w_k|)."""
        if x.ndim != 4 or x.shape[1] != self.parts:
            raise ValueError(
                f"IQNet({self.input_kind}) expects (N, {self.parts}, H, W), got {tuple(x.shape)}"
            )
        n = x.shape[0]
        # (N, parts, H, W) -> (N * parts, 1, H, W): shared real kernels for the real/imag parts
        z = x.reshape(n * self.parts, 1, *x.shape[2:])
        feats = [channel_norm(z, self.parts) * self.input_weight]
        for block in self.blocks:
            z = self.dropout(block(z))
            feats.append(channel_norm(z, self.parts))
        return torch.cat(feats, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``(N,)`` for network inputs ``(N, C, H, W)``; lower is better."""
        f = self.feature_dropout(self.features(x))
        return (f * self.feature_weights.abs()).sum(dim=1)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
