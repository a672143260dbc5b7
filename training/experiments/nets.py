"""The paper's image networks: a complex ResUNet denoiser and a model-based unrolled
reconstruction (Landweber data consistency + ResUNet).

Complex tensors are carried as real tensors with the real and imaginary parts stacked along
the batch axis, ``(2N, C, H, W)`` (``[real; imag]``), so one real convolution serves both parts.
A complex convolution ``(Wr + i Wi) * (xr + i xi)`` is two real convolutions of that stack;
ReLU is applied to the real and imaginary parts separately (the paper's choice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def to_stack(x: torch.Tensor) -> torch.Tensor:
    """complex ``(N, H, W)`` -> real ``(2N, 1, H, W)`` ``[real; imag]``."""
    return torch.cat([x.real, x.imag], dim=0)[:, None]


def from_stack(z: torch.Tensor) -> torch.Tensor:
    """real ``(2N, 1, H, W)`` -> complex ``(N, H, W)``."""
    n = z.shape[0] // 2
    return torch.complex(z[:n, 0], z[n:, 0])


class ComplexConv2d(nn.Module):
    """Complex ``k x k`` convolution (``same`` padding) with a complex bias, on ``[real; imag]``
    stacks ``(2N, C_in, H, W)`` -> ``(2N, C_out, H, W)``."""

    def __init__(self, c_in: int, c_out: int, k: int = 3) -> None:
        super().__init__()
        self.re = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
        self.im = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
        self.bias = nn.Parameter(torch.zeros(2, c_out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0] // 2
        a, b = self.re(z), self.im(z)
        real = a[:n] - b[n:] + self.bias[0][:, None, None]
        imag = a[n:] + b[:n] + self.bias[1][:, None, None]
        return torch.cat([real, imag], dim=0)


class _Double(nn.Module):
    """Two complex 3x3 convolutions, each followed by ReLU on the real and imaginary parts."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.c1 = ComplexConv2d(c_in, c_out)
        self.c2 = ComplexConv2d(c_out, c_out)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(self.c2(F.relu(self.c1(z))))


class ResUNet(nn.Module):
    """Complex residual U-Net: ``x + UNet(x)``.

    Args:
        levels: resolution levels (3 for the denoiser, 2 for the unrolled network's denoiser);
            the image side must be divisible by ``2 ** (levels - 1)``.
        width: channels of the first level (the paper's 64), doubled per level (growth 2).

    ``forward``: complex ``(N, H, W)`` -> complex ``(N, H, W)``.
    """

    def __init__(self, levels: int = 3, width: int = 64) -> None:
        super().__init__()
        if levels < 1 or width < 1:
            raise ValueError("levels and width must be positive")
        self.levels = levels
        chans = [width * 2 ** i for i in range(levels)]
        self.down = nn.ModuleList(_Double(1 if i == 0 else chans[i - 1], chans[i])
                                  for i in range(levels))
        self.up = nn.ModuleList(ComplexConv2d(chans[i + 1], chans[i]) for i in range(levels - 1))
        self.merge = nn.ModuleList(_Double(2 * chans[i], chans[i]) for i in range(levels - 1))
        self.out = ComplexConv2d(chans[0], 1, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = 2 ** (self.levels - 1)
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"image side must be divisible by {m}, got {tuple(x.shape[-2:])}")
        z = to_stack(x)
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                z = F.avg_pool2d(z, 2)
            z = block(z)
            skips.append(z)
        for i in reversed(range(self.levels - 1)):
            z = F.relu(self.up[i](F.interpolate(z, scale_factor=2.0, mode="nearest")))
            z = self.merge[i](torch.cat([z, skips[i]], dim=1))
        return x + from_stack(self.out(z))


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two axes."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"),
                              dim=(-2, -1))


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D inverse FFT over the last two axes."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho"),
                              dim=(-2, -1))


def forward_op(x: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SENSE forward model ``A x = M F (S x)``: ``(N, H, W)`` -> k-space ``(N, C, H, W)``."""
    return mask[:, None] * fft2c(maps * x[:, None])


def adjoint_op(k: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``A^H k = sum_c conj(S_c) F^H (M k_c)``: ``(N, C, H, W)`` -> ``(N, H, W)``."""
    return (maps.conj() * ifft2c(mask[:, None] * k)).sum(dim=1)


class UnrolledRecon(nn.Module):
    """Model-based deep-learning reconstruction (the paper's Fig. S2): ``iterations`` rounds of
    a Landweber data-consistency step ``x <- x - a_t A^H (A x - y)`` (learnable step ``a_t``
    per round, initialised to 1: ``||A^H A|| <= 1`` with maps of unit RSS) followed by a shared
    complex ResUNet denoiser; starts from the zero-filled ``A^H y``.

    ``forward(y, maps, mask)``: k-space ``(N, C, H, W)``, maps ``(N, C, H, W)`` complex,
    mask ``(N, H, W)`` real -> complex image ``(N, H, W)``.
    """

    def __init__(self, iterations: int = 4, levels: int = 2, width: int = 64) -> None:
        super().__init__()
        self.iterations = iterations
        self.denoiser = ResUNet(levels, width)
        self.steps = nn.Parameter(torch.ones(iterations))

    def forward(self, y: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = adjoint_op(y, maps, mask)
        for t in range(self.iterations):
            x = x - self.steps[t] * adjoint_op(forward_op(x, maps, mask) - y, maps, mask)
            x = self.denoiser(x)
        return x


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
