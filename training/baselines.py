"""The paper's baselines: MSE and SSIM of each image to the reference, each fed to its own
trained :class:`rankiq.training.models.RankClassifier`.

The metric is computed once per image on the prepared magnitude images (the same
:func:`rankiq.service.preprocess.prepare` path as the networks: reference scaled to a unit robust
maximum, image least-squares fitted to it), so ``data_range = 1`` for SSIM. A
:class:`MetricScorer` turns the metric into a score with the RankIQ direction (lower = better:
``mse`` itself, ``1 - ssim``) divided by a fixed scale (the standard deviation of the training
scores), so the classifier sees differences of order 1 whatever the metric's units. The
scale is a buffer, not a parameter: only the classifier is trained, as in the paper.
"""

from __future__ import annotations

import numpy as np
import torch
from rankiq.training.ssim import mse, ssim_batch
from torch import nn

METRICS = ("mse", "ssim")


def metric_values(metric: str, images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-image metric of prepared magnitude images against their reference.

    Args:
        metric: ``"mse"`` or ``"ssim"``.
        images: float32 ``(N, H, W)`` magnitudes (prepared, fitted to the reference).
        reference: float32 ``(N, H, W)`` prepared reference magnitudes (robust max 1).

    Returns:
        float64 ``(N,)`` raw metric values (MSE: lower better; SSIM: higher better).
    """
    if metric == "mse":
        return np.asarray(mse(images, reference), dtype=np.float64)
    if metric == "ssim":
        return np.asarray(ssim_batch(images, reference, data_range=1.0), dtype=np.float64)
    raise ValueError(f"unknown metric {metric!r} (expected one of {METRICS})")


def metric_score(metric: str, values: np.ndarray) -> np.ndarray:
    """Raw metric -> score with lower = better (``mse``; ``1 - ssim``), float64."""
    values = np.asarray(values, dtype=np.float64)
    return values if metric == "mse" else 1.0 - values


class MetricScorer(nn.Module):
    """Score of a precomputed metric: input ``(N,)`` or ``(N, 1)`` raw metric values, output
    ``(N,)`` = :func:`metric_score` / ``scale``. No trainable parameters.

    Unlike the networks, a metric run's scorer takes metric values, not the network input
    (SSIM needs the image and the reference, not their difference).
    """

    scale: torch.Tensor

    def __init__(self, metric: str, scale: float = 1.0) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r} (expected one of {METRICS})")
        self.metric = metric
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float32))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        v = values.reshape(values.shape[0], -1)[:, 0].to(torch.float32)
        s = v if self.metric == "mse" else 1.0 - v
        return s / self.scale


def fit_scale(metric: str, train_values: np.ndarray) -> float:
    """Standard deviation of the training scores (1 when degenerate)."""
    sd = float(np.std(metric_score(metric, train_values)))
    return sd if sd > 0 and np.isfinite(sd) else 1.0
