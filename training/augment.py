"""Data augmentation applied identically to both images of a pair and their reference.

One random transform per pair: a rotation, a translation, a first-order phase ramp
``exp(i (a + b x + c y))`` (complex input only: a magnitude image has no phase) and
left-right / up-down flips. Every step is linear in the image, so transforming the
reference-subtracted network input ``image - reference`` equals subtracting the transformed
reference from the transformed image: applying the pair's transform to both network inputs is
exactly "the same augmentation for both images and the reference" (tested).

Arrays are torch float32 ``(N, C, H, W)``, ``C = 1`` (magnitude) or 2 (real, imag); coordinates
are normalised to ``[-1, 1]`` across the field of view. Draws come from an explicit
``torch.Generator`` so a seed reproduces them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges: rotation ``U(-deg, deg)``; translation ``U(-t, t)`` of the half field of view;
    phase ramp constant ``U(-pi, pi)`` and slopes ``U(-s, s)`` radians per half field of view;
    flips with probability ``flip`` per axis."""

    rotation_deg: float = 10.0
    translation: float = 0.08
    phase_slope: float = math.pi
    flip: float = 0.5


@dataclass(frozen=True)
class AugmentParams:
    """Per-pair transform, tensors of shape ``(N,)`` (flips bool)."""

    angle: torch.Tensor  # radians
    shift_x: torch.Tensor
    shift_y: torch.Tensor
    phase0: torch.Tensor
    phase_x: torch.Tensor
    phase_y: torch.Tensor
    flip_x: torch.Tensor
    flip_y: torch.Tensor


def draw(n: int, generator: torch.Generator, cfg: AugmentConfig = AugmentConfig()
         ) -> AugmentParams:
    """Draw ``n`` transforms."""
    def u(lim: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * lim

    angle = u(math.radians(cfg.rotation_deg))
    sx, sy = u(cfg.translation), u(cfg.translation)
    p0, px, py = u(math.pi), u(cfg.phase_slope), u(cfg.phase_slope)
    fx = torch.rand(n, generator=generator) < cfg.flip
    fy = torch.rand(n, generator=generator) < cfg.flip
    return AugmentParams(angle, sx, sy, p0, px, py, fx, fy)


def apply(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Apply the transforms ``p`` to ``x`` ``(N, C, H, W)`` (C = 1 or 2); returns a new tensor.

    Order: phase ramp (complex only), rotation + translation (bilinear, zeros outside), flips.
    """
    n, c, h, w = x.shape
    if c == 2:
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w),
                                indexing="ij")
        phi = (p.phase0[:, None, None] + p.phase_x[:, None, None] * xx
               + p.phase_y[:, None, None] * yy)
        cos, sin = torch.cos(phi), torch.sin(phi)
        re, im = x[:, 0], x[:, 1]
        x = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=1)
    cos_a, sin_a = torch.cos(p.angle), torch.sin(p.angle)
    theta = torch.stack([torch.stack([cos_a, -sin_a, p.shift_x], dim=1),
                         torch.stack([sin_a, cos_a, p.shift_y], dim=1)], dim=1)
    grid = F.affine_grid(theta.to(x.dtype), [n, c, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = torch.where(p.flip_x[:, None, None, None], x.flip(-1), x)
    return torch.where(p.flip_y[:, None, None, None], x.flip(-2), x)
