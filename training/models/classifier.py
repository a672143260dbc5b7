"""The symmetric 3-way rank classifier on two scores.

Classes, in this order everywhere in RankIQ: 0 = image 1 better, 1 = similar, 2 = image 2
better. With ``d = s1 - s2`` the logits are ``[f(d), g(d) + g(-d), f(-d)]``: swapping the images
negates ``d``, which swaps the outer logits exactly and leaves "similar" unchanged. The module
returns logits; train it with ``nn.CrossEntropyLoss`` (the reference applied softmax twice).

``f`` and ``g`` are each Linear(1, 16) -> Sigmoid -> Linear(16, 1): 98 parameters (the paper
quotes 196; the reference code's modules have 98, and so do ours).
"""

from __future__ import annotations

import torch
from torch import nn

CLASSES = ("image1_better", "similar", "image2_better")


def _branch(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(1, hidden), nn.Sigmoid(), nn.Linear(hidden, 1))


class RankClassifier(nn.Module):
    """Scores ``(N,)``, ``(N,)`` -> logits ``(N, 3)`` (image 1 better, similar, image 2 better)."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.f = _branch(hidden)
        self.g = _branch(hidden)

    def forward(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        d = (s1 - s2).reshape(-1, 1)
        return torch.cat([self.f(d), self.g(d) + self.g(-d), self.f(-d)], dim=1)
