"""Exportable IQ-Net graphs: the explicit backward pass (saliency) and the exact folded forward.

torch's ONNX exporters cannot export autograd, so the saliency ``d score / d x`` is written out
as ordinary operators: transposed convolutions with the forward weights, the transpose of the
2x2 average pooling, the masks of the activations and the derivative of the L2 norms
``d/dz sqrt(sum((|z| + eps)^2)) = (z + eps * sign(z)) / norm``.

The faithful IQ-Net (identity activation) is linear up to the norms, so each block
``pool(conv2(conv1(x)) + shortcut(x))`` is one linear map. :class:`FoldedBlock` evaluates it
with one strided 6x6 convolution (conv2 * conv1 composed into a 5x5 kernel, the 1x1 shortcut
added into its centre tap, the 2x2 average pooling folded in as a stride-2 box filter). That
composition is exact everywhere except on the one-pixel ring of output whose receptive field
reads conv1's zero padding (the composed kernel would see conv1's values outside the image,
which the real network replaces by zeros). Those ring rows/columns are recomputed exactly from
thin strips of the input (4 pixels wide) and concatenated with the interior, so the folded
block equals the original one up to float round-off, for every input. Its adjoint (used by the
folded saliency graph) is written term by term: transposed strided convolutions and the
adjoints of the slices, pads and concatenations.

All arrays are float32 ``(batch, channels, rows, cols)``; in complex mode the real and imaginary
parts are stacked along the batch (``N * 2``) exactly as :class:`rankiq.training.models.IQNet` does.
Spatial sizes are fixed when a graph is built (the model's grid); the batch stays dynamic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from rankiq.training.models.iqnet import NORM_EPS, IQBlock, IQNet
from torch import nn

FOLD_MIN_SIZE = 6  # below this the strips overlap
#: blocks whose input is at least this many pixels a side use the fully composed conv + strips;
#: smaller ones use PartialFoldBlock (fewer operators beat fewer multiply-adds there)
STRIP_MIN_SIZE = 128
#: the same choice for the backward pass of the saliency graph (strips only on block 1 at 396)
ADJOINT_STRIP_MIN_SIZE = 256


def _iq_blocks(net: IQNet) -> list[IQBlock]:
    """``net.blocks`` (an ``nn.ModuleList`` of :class:`IQBlock`) as a typed list."""
    return cast(list[IQBlock], list(net.blocks))


def feature_coefficients(net: IQNet) -> torch.Tensor:
    """``(n_features,)`` weights ``c_k`` such that ``score = sum_k c_k * norm_k`` (eval mode)."""
    c = net.feature_weights.detach().abs().clone()
    c[0] = c[0] * net.input_weight.detach()[0]
    return c


def _norms(z: torch.Tensor, parts: int) -> torch.Tensor:
    """``(N * parts, C, h, w)`` -> ``(N, C)``: ``sqrt(sum((|z| + eps)^2))`` over space and parts."""
    c = z.shape[1]
    zz = z.reshape(-1, parts, c, z.shape[2] * z.shape[3])
    return torch.sqrt(((zz.abs() + NORM_EPS) ** 2).sum(dim=(1, 3)))


def _norms_fast(z: torch.Tensor, parts: int) -> torch.Tensor:
    """Same as :func:`_norms` via ``sum((|z| + e)^2) = ||z||_2^2 + 2 e ||z||_1 + n e^2``.

    Exports as ReduceL2/ReduceL1 over the contiguous last axis: no full-size temporaries.
    """
    c, n = z.shape[1], z.shape[2] * z.shape[3]
    zz = z.reshape(-1, parts, c, n)
    l2 = torch.linalg.vector_norm(zz, 2, dim=-1)
    l1 = torch.linalg.vector_norm(zz, 1, dim=-1)
    return torch.sqrt((l2 * l2 + (2 * NORM_EPS) * l1 + n * NORM_EPS**2).sum(dim=1))


def _norm_grad(z: torch.Tensor, norms: torch.Tensor, coef: torch.Tensor, parts: int
               ) -> torch.Tensor:
    """Gradient of ``sum_c coef_c * norm_c`` w.r.t. ``z`` ``(N * parts, C, h, w)``.

    ``d norm / d z = sign(z) (|z| + eps) / norm = (z + eps sign(z)) / norm`` (sign(0) = 0, as
    torch's ``abs`` backward).
    """
    c = z.shape[1]  # coef: (C,) shared by the batch, or (N, C) per image
    scale = (coef / norms)[:, None, :].expand(-1, parts, -1).reshape(-1, c, 1, 1)
    # eps * sign(z) as clamp(z * 1e38, -eps, eps): identical for every float32 except the
    # smallest subnormals (|z| < 1e-44), and ONNX Runtime's Clip is vectorised where Sign is not
    return (z + torch.clamp(z * 1e38, -NORM_EPS, NORM_EPS)) * scale


def _conv_adjoint(g: torch.Tensor, w: torch.Tensor, stride: int, in_hw: tuple[int, int],
                  padding: int = 0, groups: int = 1) -> torch.Tensor:
    """Adjoint of ``conv2d(x, w, stride, padding)`` for an input of spatial size ``in_hw``.

    Written with ordinary convolutions (ONNX Runtime's ConvTranspose is several times slower
    on CPU): stride 1 is a convolution with the transposed, flipped kernel; stride 2 with an
    even kernel ``2M`` is its polyphase form, one convolution with the four ``M x M`` phase
    kernels stacked as output channels followed by a pixel shuffle (DepthToSpace).
    """
    k_h, k_w = w.shape[-2:]
    out_h, out_w = g.shape[-2:]
    op_h = in_hw[0] + 2 * padding - ((out_h - 1) * stride + k_h)
    op_w = in_hw[1] + 2 * padding - ((out_w - 1) * stride + k_w)
    if groups != 1 or k_h != k_w or stride not in (1, 2) or (stride == 2 and k_h % 2):
        return F.conv_transpose2d(g, w, stride=stride, padding=padding,
                                  output_padding=(op_h, op_w), groups=groups)
    wt = w.transpose(0, 1).flip(-2, -1)  # (in, out, k, k): the adjoint's kernel
    if stride == 1 and k_h - 1 >= padding:
        # the "full" correlation (padding k - 1) cropped by ``padding``: pad k - 1 - padding
        return F.conv2d(g, wt, padding=k_h - 1 - padding)
    if stride == 1:
        full = F.conv2d(g, wt, padding=k_h - 1)
    else:
        m = k_h // 2
        # phase (r, s) of the output uses taps w[..., r::2, s::2]; pixel_shuffle wants the
        # channels ordered (in_channel, r, s)
        w_t = w.transpose(0, 1)  # (in, out, k, k)
        phases = torch.stack([w_t[:, :, r::2, s::2].flip(-2, -1)
                              for r in range(2) for s in range(2)], dim=1)
        phases = phases.reshape(-1, w.shape[0], m, m)
        full = F.pixel_shuffle(F.conv2d(g, phases, padding=m - 1), 2)
    h, w_ = in_hw
    if op_h > 0 or op_w > 0:  # output_padding: rows/cols no tap reaches, zero
        full = F.pad(full, (0, max(op_w, 0), 0, max(op_h, 0)))
    return full[:, :, padding:padding + h, padding:padding + w_]


def _activation_mask(pre: torch.Tensor, activation: str) -> torch.Tensor | None:
    """Derivative of the activation at ``pre`` (``None`` for the identity)."""
    if activation == "identity":
        return None
    if activation == "relu":
        return (pre > 0).to(pre.dtype)
    if activation == "leaky_relu":
        return torch.where(pre > 0, torch.ones_like(pre), torch.full_like(pre, 0.2))
    raise ValueError(f"no explicit backward for activation {activation!r}")


class NaiveBlockBackward(nn.Module):
    """One IQ-Net block with its explicit backward (any supported activation)."""

    w1: torch.Tensor
    w2: torch.Tensor
    ws: torch.Tensor
    box: torch.Tensor

    def __init__(self, block: IQBlock, activation: str) -> None:
        super().__init__()
        self.activation = activation
        self.register_buffer("w1", block.conv1.weight.detach().clone())
        self.register_buffer("w2", block.conv2.weight.detach().clone())
        self.register_buffer("ws", block.shortcut.weight.detach().clone())
        c = self.w2.shape[0]
        self.register_buffer("box", torch.full((c, 1, 2, 2), 0.25))
        self.act = block.act1

    def forward_state(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        a = F.conv2d(x, self.w1, padding=1)
        y = F.conv2d(self.act(a), self.w2, padding=1) + F.conv2d(x, self.ws)
        out = F.avg_pool2d(self.act(y), 2)
        return out, (a, y)

    def backward(self, g: torch.Tensor, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        a, y = state
        h, w = y.shape[-2:]
        gy = _conv_adjoint(g, self.box, 2, (h, w), groups=self.box.shape[0])  # pooling transpose
        m2 = _activation_mask(y, self.activation)
        if m2 is not None:
            gy = gy * m2
        gh = _conv_adjoint(gy, self.w2, 1, (h, w), padding=1)
        m1 = _activation_mask(a, self.activation)
        if m1 is not None:
            gh = gh * m1
        return (_conv_adjoint(gh, self.w1, 1, (h, w), padding=1)
                + _conv_adjoint(gy, self.ws, 1, (h, w)))


def _pool_kernel(k: torch.Tensor) -> torch.Tensor:
    """Fold a following 2x2 average pooling into kernel ``k`` (..., s, s) -> (..., s+1, s+1)."""
    return 0.25 * (F.pad(k, (0, 1, 0, 1)) + F.pad(k, (1, 0, 0, 1))
                   + F.pad(k, (0, 1, 1, 0)) + F.pad(k, (1, 0, 1, 0)))


class FoldedBlock(nn.Module):
    """A faithful (identity-activation) IQ-Net block as one strided conv plus exact border strips.

    Args:
        block: the trained block.
        hw: its input's spatial size ``(h, w)``; the output is ``(h // 2, w // 2)``.
    """

    k6: torch.Tensor
    c1: torch.Tensor
    k4: torch.Tensor

    def __init__(self, block: IQBlock, hw: tuple[int, int]) -> None:
        super().__init__()
        h, w = hw
        if min(h, w) < FOLD_MIN_SIZE:
            raise ValueError(f"FoldedBlock needs inputs of at least {FOLD_MIN_SIZE} px, got {hw}")
        w1 = block.conv1.weight.detach().double()  # (m, i, 3, 3)
        w2 = block.conv2.weight.detach().double()  # (o, m, 3, 3)
        ws = block.shortcut.weight.detach().double()[:, :, 0, 0]  # (o, i)
        o, m = w2.shape[:2]
        i = w1.shape[1]
        # conv2(conv1(x)) as one 5x5 cross-correlation: K[t] = sum_{a + b = t} W2[b] @ W1[a]
        k5 = torch.zeros(o, i, 5, 5, dtype=torch.float64)
        for a0 in range(3):
            for a1 in range(3):
                for b0 in range(3):
                    for b1 in range(3):
                        k5[:, :, a0 + b0, a1 + b1] += w2[:, :, b0, b1] @ w1[:, :, a0, a1]
        k5[:, :, 2, 2] += ws  # the 1x1 shortcut is the centre tap
        # strips: conv1' = [conv1; identity centre tap] carries x along for the shortcut, and
        # conv2' = [conv2 | shortcut centre tap], with the pooling folded in (4x4, stride 2)
        eye = torch.zeros(i, i, 3, 3, dtype=torch.float64)
        eye[:, :, 1, 1] = torch.eye(i, dtype=torch.float64)
        c1 = torch.cat([w1, eye], dim=0)
        s3 = torch.zeros(o, i, 3, 3, dtype=torch.float64)
        s3[:, :, 1, 1] = ws
        c2 = torch.cat([w2, s3], dim=1)
        self.register_buffer("k6", _pool_kernel(k5).float())
        self.register_buffer("c1", c1.float())
        self.register_buffer("k4", _pool_kernel(c2).float())
        self.h, self.w = h, w
        self.hp, self.wp = h // 2, w // 2
        self.bottom = h % 2 == 0  # the last pooled row reads conv1's padding only if h is even
        self.right = w % 2 == 0
        self.r_end = self.hp - 1 if self.bottom else self.hp  # interior rows [1, r_end)
        self.c_end = self.wp - 1 if self.right else self.wp

    # -- forward -------------------------------------------------------------------------------
    def _strip(self, xs: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
        u = F.conv2d(F.pad(xs, pad), self.c1)
        return F.conv2d(F.pad(u, pad), self.k4, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, i, h, w)`` -> ``(B, o, h // 2, w // 2)``, equal to the original block."""
        h, w = self.h, self.w
        pb, pr = int(not self.bottom), int(not self.right)
        interior = F.conv2d(F.pad(x, (0, pr, 0, pb)), self.k6, stride=2)
        left = self._strip(x[:, :, :, 0:4], (1, 0, 1, 1))[:, :, 1:self.r_end]
        cols = [left, interior]
        if self.right:
            cols.append(self._strip(x[:, :, :, w - 4:w], (0, 1, 1, 1))[:, :, 1:self.r_end])
        rows = [self._strip(x[:, :, 0:4], (1, 1, 1, 0)), torch.cat(cols, dim=3)]
        if self.bottom:
            rows.append(self._strip(x[:, :, h - 4:h], (1, 1, 0, 1)))
        return torch.cat(rows, dim=2)

    # -- adjoint -------------------------------------------------------------------------------
    def _strip_adjoint(self, g: torch.Tensor, pad: tuple[int, int, int, int],
                       xs_hw: tuple[int, int]) -> torch.Tensor:
        pl, pr, pt, pb = pad
        uh, uw = xs_hw[0] + pt + pb - 2, xs_hw[1] + pl + pr - 2  # conv1' output size
        gu = _conv_adjoint(g, self.k4, 2, (uh + pt + pb, uw + pl + pr))
        gu = gu[:, :, pt:pt + uh, pl:pl + uw]
        gx = _conv_adjoint(gu, self.c1, 1, (xs_hw[0] + pt + pb, xs_hw[1] + pl + pr))
        return gx[:, :, pt:pt + xs_hw[0], pl:pl + xs_hw[1]]

    def adjoint(self, g: torch.Tensor) -> torch.Tensor:
        """Transpose of :meth:`forward`: ``(B, o, h // 2, w // 2)`` -> ``(B, i, h, w)``."""
        h, w, hp, wp = self.h, self.w, self.hp, self.wp
        pb, pr = int(not self.bottom), int(not self.right)
        gmid = g[:, :, 1:self.r_end]
        gx = _conv_adjoint(gmid[:, :, :, 1:self.c_end], self.k6, 2, (h + pb, w + pr))
        gx = gx[:, :, :h, :w]
        n_mid = self.r_end - 1
        # the left/right strips were computed for all pooled rows, then rows [1, r_end) kept
        gl = F.pad(gmid[:, :, :, 0:1], (0, 0, 1, hp - 1 - n_mid))
        gx = gx + F.pad(self._strip_adjoint(gl, (1, 0, 1, 1), (h, 4)), (0, w - 4, 0, 0))
        if self.right:
            gr = F.pad(gmid[:, :, :, wp - 1:wp], (0, 0, 1, hp - 1 - n_mid))
            gx = gx + F.pad(self._strip_adjoint(gr, (0, 1, 1, 1), (h, 4)), (w - 4, 0, 0, 0))
        gx = gx + F.pad(self._strip_adjoint(g[:, :, 0:1], (1, 1, 1, 0), (4, w)), (0, 0, 0, h - 4))
        if self.bottom:
            gb = self._strip_adjoint(g[:, :, hp - 1:hp], (1, 1, 0, 1), (4, w))
            gx = gx + F.pad(gb, (0, 0, h - 4, 0))
        return gx


class PartialFoldBlock(nn.Module):
    """A faithful block folded without border strips (exact for every size >= 2 px).

    ``pool(conv2(u) + S x)`` with ``u = conv1(x)`` becomes a 4x4 stride-2 conv on ``u`` (pooling
    folded into conv2) plus a 2x2 stride-2 conv on ``x`` (pooling folded into the shortcut).
    conv2 still sees ``u``'s true zero padding, so there is no border error to repair; it costs
    more multiply-adds than :class:`FoldedBlock` but far fewer operators, which wins on small
    feature maps.
    """

    w1: torch.Tensor
    k4: torch.Tensor
    k2: torch.Tensor
    k42: torch.Tensor

    def __init__(self, block: IQBlock, hw: tuple[int, int]) -> None:
        super().__init__()
        self.h, self.w = hw
        self.register_buffer("w1", block.conv1.weight.detach().clone())
        self.register_buffer("k4", _pool_kernel(block.conv2.weight.detach().double()).float())
        self.register_buffer("k2", _pool_kernel(block.shortcut.weight.detach().double()).float())
        # conv(x, k2, stride 2) == conv(x, pad(k2 to 4x4 at taps 1..2), stride 2, padding 1)
        k2_4 = F.pad(self.k2, (1, 1, 1, 1))
        self.register_buffer("k42", torch.cat([self.k4, k2_4], dim=1))  # (o, m + i, 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = F.conv2d(x, self.w1, padding=1)
        return F.conv2d(u, self.k4, stride=2, padding=1) + F.conv2d(x, self.k2, stride=2)

    def adjoint(self, g: torch.Tensor) -> torch.Tensor:
        # both stride-2 adjoints read g: one convolution (k2 embedded in a 4x4 kernel at the
        # taps that reproduce its alignment under padding 1), one DepthToSpace, one crop
        m = self.w1.shape[0]
        gux = _conv_adjoint(g, self.k42, 2, (self.h, self.w), padding=1)
        return (_conv_adjoint(gux[:, :m], self.w1, 1, (self.h, self.w), padding=1)
                + gux[:, m:])


def _block_sizes(grid: tuple[int, int], blocks: int) -> list[tuple[int, int]]:
    sizes = [tuple(grid)]
    for _ in range(blocks):
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return sizes  # type: ignore[return-value]


class _Head(nn.Module):
    """Shared parts: input reshaping, the norms and the score's coefficients."""

    coef: torch.Tensor

    def __init__(self, net: IQNet, grid: tuple[int, int]) -> None:
        super().__init__()
        self.parts = net.parts
        self.grid = (int(grid[0]), int(grid[1]))
        self.register_buffer("coef", feature_coefficients(net).float())
        self.channels = _iq_blocks(net)[0].conv2.weight.shape[0]

    def _z0(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, 1, self.grid[0], self.grid[1])

    def _score(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return (torch.cat(feats, dim=1) * self.coef).sum(dim=1)


class NaiveSaliency(_Head):
    """Score and saliency of an IQ-Net with the backward written out block by block (unfolded)."""

    def __init__(self, net: IQNet, grid: tuple[int, int]) -> None:
        super().__init__(net, grid)
        self.blocks = nn.ModuleList(
            NaiveBlockBackward(b, net.activation) for b in _iq_blocks(net))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, C, H, W)`` -> score ``(N,)``, saliency ``(N, C, H, W)``."""
        blocks = cast(Sequence[NaiveBlockBackward], self.blocks)
        z = self._z0(x)
        zs, states, feats = [z], [], [_norms(z, self.parts)]
        for block in blocks:
            z, st = block.forward_state(z)
            zs.append(z)
            states.append(st)
            feats.append(_norms(z, self.parts))
        c = self.channels
        g = _norm_grad(zs[-1], feats[-1], self.coef[-c:], self.parts)
        for k in range(len(self.blocks) - 1, -1, -1):
            g = blocks[k].backward(g, states[k])
            lo = 1 + (k - 1) * c if k > 0 else 0
            coef = self.coef[lo:lo + c] if k > 0 else self.coef[0:1]
            g = g + _norm_grad(zs[k], feats[k], coef, self.parts)
        return self._score(feats), g.reshape(x.shape)


class FoldedScore(_Head):
    """The exact folded forward of a faithful IQ-Net (score only)."""

    def __init__(self, net: IQNet, grid: tuple[int, int],
                 strip_min_size: int = STRIP_MIN_SIZE) -> None:
        super().__init__(net, grid)
        if net.activation != "identity":
            raise ValueError("folding is exact only for the identity activation")
        sizes = _block_sizes(self.grid, len(net.blocks))
        lim = max(strip_min_size, FOLD_MIN_SIZE)
        self.blocks = nn.ModuleList(
            FoldedBlock(b, hw) if min(hw) >= lim else PartialFoldBlock(b, hw)
            for b, hw in zip(_iq_blocks(net), sizes, strict=False)
        )

    def _forward_all(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        z = self._z0(x)
        zs, feats = [z], [_norms_fast(z, self.parts)]
        for block in self.blocks:
            z = block(z)
            zs.append(z)
            feats.append(_norms_fast(z, self.parts))
        return zs, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N,)`` scores."""
        return self._score(self._forward_all(x)[1])


class FoldedSaliency(FoldedScore):
    """Folded forward plus its exact adjoint: score ``(N,)`` and saliency ``(N, C, H, W)``.

    The backward may use another (equally exact) form of each block's adjoint than the forward
    uses: strips pay off only on the largest, single-channel input (``adjoint_strip_min_size``),
    elsewhere the strip adjoints' pads, slices and sums cost more than the convolutions saved.
    """

    def __init__(self, net: IQNet, grid: tuple[int, int],
                 strip_min_size: int = STRIP_MIN_SIZE,
                 adjoint_strip_min_size: int = ADJOINT_STRIP_MIN_SIZE) -> None:
        super().__init__(net, grid, strip_min_size)
        sizes = _block_sizes(self.grid, len(net.blocks))
        lim = max(adjoint_strip_min_size, FOLD_MIN_SIZE)
        self.adjoints = nn.ModuleList(
            fb if isinstance(fb, FoldedBlock) and min(hw) >= lim else PartialFoldBlock(b, hw)
            for fb, b, hw in zip(self.blocks, _iq_blocks(net), sizes, strict=False)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        adjoints = cast(Sequence[FoldedBlock | PartialFoldBlock], self.adjoints)
        zs, feats = self._forward_all(x)
        c = self.channels
        g = _norm_grad(zs[-1], feats[-1], self.coef[-c:], self.parts)
        for k in range(len(self.blocks) - 1, -1, -1):
            g = adjoints[k].adjoint(g)
            coef = self.coef[1 + (k - 1) * c:1 + k * c] if k > 0 else self.coef[0:1]
            g = g + _norm_grad(zs[k], feats[k], coef, self.parts)
        return self._score(feats), g.reshape(x.shape)


class StudentSaliency(nn.Module):
    """Score and saliency of a distilled no-reference student (``rankiq.training.distill
    .NoRefStudent``): ``exp(head(log(features)))`` on an IQ-Net body with any activation.

    ``d score / d norm_k = score * w_k / norm_k`` (the input weight cancels inside the log),
    then the body's explicit backward as in :class:`NaiveSaliency`, with per-image weights.
    """

    input_weight: torch.Tensor
    head_w: torch.Tensor
    head_b: torch.Tensor

    def __init__(self, student: nn.Module, grid: tuple[int, int]) -> None:
        super().__init__()
        body = cast(IQNet, student.body)
        head = cast(nn.Linear, student.head)
        self.parts = body.parts
        self.grid = (int(grid[0]), int(grid[1]))
        self.channels = _iq_blocks(body)[0].conv2.weight.shape[0]
        self.blocks = nn.ModuleList(
            NaiveBlockBackward(b, body.activation) for b in _iq_blocks(body))
        self.register_buffer("input_weight", body.input_weight.detach().clone())
        self.register_buffer("head_w", head.weight.detach().reshape(-1).clone())
        self.register_buffer("head_b", head.bias.detach().reshape(-1).clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, C, H, W)`` -> score ``(N,)``, saliency ``(N, C, H, W)``."""
        blocks = cast(Sequence[NaiveBlockBackward], self.blocks)
        z = x.reshape(-1, 1, self.grid[0], self.grid[1])
        zs, states, norms = [z], [], [_norms(z, self.parts)]
        for block in blocks:
            z, st = block.forward_state(z)
            zs.append(z)
            states.append(st)
            norms.append(_norms(z, self.parts))
        feats = torch.cat(norms, dim=1)
        f_in = torch.cat([feats[:, :1] * self.input_weight, feats[:, 1:]], dim=1)
        score = torch.exp(torch.log(f_in) @ self.head_w + self.head_b)
        coef = score[:, None] * self.head_w / feats  # (N, 41): d score / d norm_k
        c = self.channels
        g = _norm_grad(zs[-1], norms[-1], coef[:, -c:], self.parts)
        for k in range(len(self.blocks) - 1, -1, -1):
            g = blocks[k].backward(g, states[k])
            sl = coef[:, 1 + (k - 1) * c:1 + k * c] if k > 0 else coef[:, 0:1]
            g = g + _norm_grad(zs[k], norms[k], sl, self.parts)
        return score, g.reshape(x.shape)
