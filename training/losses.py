"""The learned metric as a training loss (the paper's denoising and reconstruction loss).

The paper (Methods, "image denoising and reconstruction"; the formula is given inline and is not
numbered) trains a denoiser with::

    loss = |Score(I) - Score(I_reference)|^2                                          (paper)

where ``I`` is the network's output. :class:`MetricLoss` computes exactly that with the shipped
metric, through the metric's own preprocessing (:mod:`rankiq.service.preprocess`), re-written
in torch so that gradients flow:

1. magnitude models take ``|x|`` first (complex input gives a gradient to the phase through
   ``|x|``); complex models keep ``(real, imag)``;
2. geometry: centred zero-padding to a square, then Fourier resampling to the model grid
   (the same spectrum map as :func:`rankiq.service.preprocess.to_grid`);
3. intensity: the reference is divided by its robust maximum (99.5th percentile of ``|ref|``,
   a constant for the loss) and the estimate is multiplied by the least-squares scale that fits
   it to that reference (differentiable in the estimate); no-reference models divide each image
   by its own robust maximum (differentiable through ``torch.quantile``).

For a **reference-subtracted** model (``mode: "reference"``), the network scores the difference
image: ``Score(I) = net(prep(I) - prep(I_ref))``, and the reference's own input is
``I_ref - I_ref = 0``, so ``loss = (net(prep(I) - prep(I_ref)) - net(0))^2``. ``net(0)`` is the
constant left by the IQ-Net's norm offset (``1e-6`` per pixel, see ``models/iqnet.py``), kept so
the formula is the paper's to the letter. For a **no-reference** model each image is scored
alone: ``loss = (net(prep(I)) - net(prep(I_ref)))^2`` with ``Score(I_ref)`` a constant.

The forward network input matches ``prepare(...).network_input`` of the service to float32
round-off, and d score / d network input is the exported ``saliency.onnx`` map (both tested), so
the loss's gradient is ``2 (Score(I) - Score(I_ref)) J_prep^T saliency``.

Models: IQ-Net (``architecture.model == "iqnet"``) and EfficientNet scorers
(``"EfficientNetScorer"``, at the input size ``architecture.size`` it was trained at) are
rebuilt in torch from the named parameters of the model's ``score_naive.onnx`` (initializers,
and the names the exporter gives as ``Identity`` outputs of an identical initializer), after
the service's SHA-256 and preprocess-version checks, so the loss is the exact network the
service scores with. No downloads. The no-reference *features* model
(``kind: "features"``, ``iqnet-noref`` 2.x) is refused: see :data:`FEATURES_REFUSAL`.

Inputs: complex ``(N, H, W)`` tensors, real magnitude ``(N, H, W)`` or ``(N, 1, H, W)``, or
real ``(N, 2, H, W)`` (real, imag) channels; any matrix of 16..4096 per side (resampled to the
model grid). Scale does not matter (every step above is invariant to a positive factor).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from rankiq.service.errors import GeometryMismatch, InvalidImage
from rankiq.service.models import ModelIncompatible, ScoringModel
from rankiq.service.preprocess import MAX_MATRIX, MIN_MATRIX, _spectrum_map, robust_max
from rankiq.training.models.iqnet import IQNet
from torch import nn

Reduction = Literal["mean", "sum", "none"]

#: why a features model cannot be a loss (the error message and the docs say the same)
FEATURES_REFUSAL = (
    "is a no-reference *features* model: its score is a small network on 16 hand-made "
    "measurements (noise MAD, air masks from thresholds, edge autocorrelation peaks, entropy) "
    "computed in NumPy with hard masks, medians and arg-maxima, so it has no gradient to give "
    "a denoiser (a differentiable copy would differ from the metric where it matters); train "
    "with a reference IQ-Net model (e.g. models/iqnet-ref) instead")

#: architecture names (metadata ``architecture.model``) each loss class accepts
ARCHITECTURES = {"iqnet": "IQ-Net", "EfficientNetScorer": "EfficientNet"}


# ------------------------------------------------------------------ preprocessing in torch


def to_grid_t(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Torch twin of :func:`rankiq.service.preprocess.to_grid` (differentiable).

    Args:
        x: real or complex ``(N, h, w)``.
        grid: model grid ``(H, W)``.

    Returns:
        ``(N, H, W)``: complex for complex input, real for real input; intensities preserved.
    """
    h, w = x.shape[-2:]
    side = max(h, w)
    if (h, w) != (side, side):
        top, left = (side - h) // 2, (side - w) // 2
        padded = x.new_zeros(x.shape[:-2] + (side, side))
        padded[..., top:top + h, left:left + w] = x
        x = padded
    th, tw = int(grid[0]), int(grid[1])
    if (side, side) == (th, tw):
        return x
    is_complex = torch.is_complex(x)
    k = torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho")
    (src_r, dst_r), (src_c, dst_c) = _spectrum_map(side, th), _spectrum_map(side, tw)
    sr, dr = torch.from_numpy(src_r), torch.from_numpy(dst_r)
    sc, dc = torch.from_numpy(src_c), torch.from_numpy(dst_c)
    z = k.new_zeros(k.shape[:-2] + (th, tw))
    z[..., dr[:, None], dc[None, :]] = k[..., sr[:, None], sc[None, :]]
    y = torch.fft.ifft2(z, norm="ortho")
    if not is_complex:
        y = y.real
    return torch.fft.fftshift(y, dim=(-2, -1)) * math.sqrt(th * tw / (side * side))


def _channels(x: torch.Tensor, input_kind: str) -> torch.Tensor:
    """``(N, H, W)`` -> ``(N, C, H, W)`` (|x| or real/imag), the service's layout; float32 for
    float32/complex64 input (float64 input stays float64, for gradient checks)."""
    if input_kind == "magnitude":
        return x.abs()[:, None]
    if not torch.is_complex(x):
        x = torch.complex(x, torch.zeros_like(x))
    return torch.stack([x.real, x.imag], dim=1)


def as_images(x: torch.Tensor, name: str = "estimate") -> torch.Tensor:
    """Normalise an input layout to ``(N, H, W)`` (real magnitude or complex).

    Accepts complex ``(N, H, W)``/``(N, 1, H, W)``, real ``(N, H, W)``/``(N, 1, H, W)``
    (magnitude) and real ``(N, 2, H, W)`` (real, imag).

    Raises:
        InvalidImage: another rank or channel count, or a matrix outside 16..4096.
    """
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    elif x.ndim == 4 and x.shape[1] == 2 and not torch.is_complex(x):
        x = torch.complex(x[:, 0].float(), x[:, 1].float())
    if x.ndim != 3:
        raise InvalidImage(f"{name} must be (N, H, W) complex or magnitude, (N, 1, H, W) or "
                           f"(N, 2, H, W) real/imag channels, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if min(h, w) < MIN_MATRIX or max(h, w) > MAX_MATRIX:
        raise InvalidImage(f"{name} matrix {h}x{w} outside the supported "
                           f"{MIN_MATRIX}..{MAX_MATRIX} range")
    return x


def network_input_t(estimate: torch.Tensor, reference: torch.Tensor | None, *,
                    grid: tuple[int, int], input_kind: str, percentile: float = 99.5
                    ) -> torch.Tensor:
    """Torch twin of ``rankiq.service.preprocess.prepare(...).network_input``.

    Args:
        estimate: ``(N, H, W)`` real or complex (see :func:`as_images`); gradients flow.
        reference: same geometry, or ``None`` for no-reference scoring (treated as constant).
        grid, input_kind, percentile: the model's metadata.

    Returns:
        float32 ``(N, C, grid_H, grid_W)``: ``fit(estimate) - reference_n`` (reference mode)
        or the self-normalised estimate (no-reference mode).
    """
    img = estimate
    if input_kind == "magnitude":
        img = img.abs()
    img = to_grid_t(img, grid)
    if reference is None:
        mag = img.abs().reshape(img.shape[0], -1)
        p = torch.quantile(mag.double(), percentile / 100.0, dim=1)
        m = torch.where(p > 0, p, mag.double().amax(dim=1))
        m = torch.where(m > 0, m, torch.ones_like(m)).to(mag.dtype)
        return _channels(img / m[:, None, None], input_kind)
    ref = reference.detach()
    if input_kind == "magnitude":
        ref = ref.abs()
    ref = to_grid_t(ref, grid)
    peak = robust_max(ref.cpu().numpy(), percentile)  # the service's own code (a constant here)
    peak = np.where(peak <= 0, 1.0, peak)
    ref_n = ref / torch.from_numpy(peak).to(device=ref.device, dtype=ref.real.dtype)[:, None, None]
    # least-squares scale of the estimate onto the normalised reference (float64, as served)
    wide = torch.complex128 if torch.is_complex(img) else torch.float64
    fi, ft = img.reshape(img.shape[0], -1).to(wide), ref_n.reshape(img.shape[0], -1).to(wide)
    num = (fi.conj() * ft).sum(dim=1) if torch.is_complex(fi) else (fi * ft).sum(dim=1)
    den = (fi.abs() ** 2).sum(dim=1)
    a = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                    torch.zeros_like(num))
    img_fit = img * a.to(img.dtype)[:, None, None]
    return _channels(img_fit, input_kind) - _channels(ref_n, input_kind)


# ------------------------------------------------------------------ rebuilding the metric


def _graph_weights(graph: onnx.GraphProto) -> dict[str, torch.Tensor]:
    """Every named parameter of a plain export: its initializers, and the names that reach the
    graph through ``Identity`` nodes of them (chains included).

    The torch exporter stores identical tensors once (e.g. the default BatchNorm statistics, or
    zeros) and gives the other parameter names as ``Identity`` outputs of that one initializer.
    """
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
               for t in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and len(n.input) == 1 and len(n.output) == 1}
    for name in alias:
        src, hops = name, 0
        while src not in weights and src in alias and hops <= len(alias):  # a chain, no cycle
            src, hops = alias[src], hops + 1
        if name not in weights and src in weights:
            weights[name] = weights[src]
    return weights


def _rebuild(module: nn.Module, graph_path: Path, source: str) -> nn.Module:
    """Load ``module``'s state from the named parameters of a plain ONNX export (initializers
    and their ``Identity`` aliases, see :func:`_graph_weights`).

    Raises:
        ModelIncompatible: a parameter is absent or has another number of elements.
    """
    weights = _graph_weights(onnx.load(str(graph_path)).graph)
    state = module.state_dict()
    missing = [k for k in state if k not in weights and not k.endswith("num_batches_tracked")]
    if missing:
        raise ModelIncompatible(f"score_naive.onnx lacks parameters {missing[:3]}", source=source)
    wrong = [k for k in state if k in weights and weights[k].numel() != state[k].numel()]
    if wrong:
        raise ModelIncompatible(f"score_naive.onnx parameters {wrong[:3]} have other shapes "
                                f"than the architecture in metadata.json", source=source)
    module.load_state_dict({k: (weights[k].reshape(state[k].shape) if k in weights else state[k])
                            for k in state})
    return module.eval()


def _rebuild_effnet(arch: dict, meta: dict, graph: Path, source: str) -> nn.Module:
    """An EfficientNet scorer at the input size it was trained at (``architecture.size``).

    Exports made before the size was recorded are rebuilt at the default 224 only when that
    network reproduces the model's own ``score_naive.onnx`` on the export's parity inputs (the
    export's tolerance); otherwise the size cannot be known and the model is refused.
    """
    from rankiq.training.export.parity import ParityError, check_parity, parity_inputs
    from rankiq.training.models.efficientnet import DEFAULT_SIZE, EfficientNetScorer

    if "size" in arch:
        return _rebuild(EfficientNetScorer(meta["input_kind"], size=int(arch["size"])), graph,
                        source)
    net = _rebuild(EfficientNetScorer(meta["input_kind"], size=DEFAULT_SIZE), graph, source)
    grid = (int(meta["grid"][0]), int(meta["grid"][1]))
    try:
        check_parity(net, {"score_naive.onnx": graph},
                     parity_inputs(str(meta["mode"]), meta["input_kind"], grid))
    except ParityError:
        raise ModelIncompatible(
            f"{meta.get('name')} {meta.get('version')}: metadata.json does not record the "
            f"EfficientNet input size (architecture.size; older exports) and the default "
            f"{DEFAULT_SIZE} does not reproduce score_naive.onnx, so the size the model was "
            "trained at cannot be known: re-export the training run with `rankiq export`",
            source=source) from None
    return net


def load_scorer(model_dir: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a shipped scoring network (eval mode, float32) with its metadata.

    Raises:
        ModelNotFound, ModelCorrupt, ModelIncompatible: as ``ScoringModel.load``; also
            ``ModelIncompatible`` for a features model (:data:`FEATURES_REFUSAL`), an
            architecture other than IQ-Net and EfficientNet, a model without
            ``score_naive.onnx``, or an EfficientNet export whose input size is not recorded
            and is not the default 224.
    """
    source = str(model_dir)
    meta = ScoringModel.load(model_dir).metadata  # verifies hashes + preprocess version
    if meta.get("kind", "iqnet") == "features":
        raise ModelIncompatible(f"{meta.get('name')} {meta.get('version')} {FEATURES_REFUSAL}",
                                source=source)
    arch = meta.get("architecture", {})
    graph = Path(model_dir) / "score_naive.onnx"
    if "score_naive.onnx" not in meta["files"]:
        raise ModelIncompatible("no score_naive.onnx (the parameter graph a loss rebuilds "
                                "from): re-export the model with `rankiq export`", source=source)
    model = arch.get("model")
    if model == "EfficientNetScorer":
        return _rebuild_effnet(arch, meta, graph, source), meta
    if model != "iqnet":
        raise ModelIncompatible(f"a loss needs an IQ-Net or EfficientNet scorer, not "
                                f"{model!r}", source=source)
    net = IQNet(meta["input_kind"], channels=int(arch["channels"]), blocks=int(arch["blocks"]),
                activation=arch["activation"])
    return _rebuild(net, graph, source), meta


def load_iqnet(model_dir: str | Path) -> tuple[IQNet, dict]:
    """Rebuild a shipped IQ-Net (eval mode, float32) with its metadata.

    Raises:
        ModelIncompatible: the model is not an IQ-Net (and as :func:`load_scorer`).
    """
    net, meta = load_scorer(model_dir)
    if not isinstance(net, IQNet):
        raise ModelIncompatible(f"an IQ-Net model is needed, not "
                                f"{meta.get('architecture', {}).get('model')!r}",
                                source=str(model_dir))
    return net, meta


# ------------------------------------------------------------------ the losses


class MetricLoss(nn.Module):
    """``|Score(I) - Score(I_ref)|^2`` with a shipped scoring model (see the module doc).

    Args:
        model_dir: a shipped model directory (e.g. ``models/iqnet-ref``).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-image ``(N,)``).
        trainable: keep the metric's parameters frozen (default) or let them train.
        squared: the paper's square (default); ``False`` gives ``|Score(I) - Score(I_ref)|``.

    Raises:
        ModelIncompatible: a features model, another architecture, or (subclasses) a model of
            the wrong architecture for the class.
    """

    #: architecture this class accepts (``None``: any of :data:`ARCHITECTURES`)
    architecture: str | None = None

    def __init__(self, model_dir: str | Path, reduction: Reduction = "mean",
                 trainable: bool = False, squared: bool = True) -> None:
        super().__init__()
        self.net, self.metadata = load_scorer(model_dir)
        got = self.metadata.get("architecture", {}).get("model")
        if self.architecture is not None and got != self.architecture:
            raise ModelIncompatible(
                f"{type(self).__name__} needs an {ARCHITECTURES[self.architecture]} model, but "
                f"{self.metadata.get('name')!r} is {ARCHITECTURES.get(got, got)!r}: use "
                f"{_class_for(got)} or another model directory", source=str(model_dir))
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be mean, sum or none, not {reduction!r}")
        self.reduction = reduction
        self.squared = squared
        self.grid = (int(self.metadata["grid"][0]), int(self.metadata["grid"][1]))
        self.input_kind = str(self.metadata["input_kind"])
        self.mode = str(self.metadata["mode"])
        self.percentile = float(self.metadata.get("percentile", 99.5))
        for p in self.net.parameters():
            p.requires_grad_(trainable)

    def _pair(self, estimate: torch.Tensor, reference: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        if reference is None:
            raise InvalidImage(f"{type(self).__name__} needs the reference image: the paper's "
                               "loss is |Score(I) - Score(I_ref)|^2")
        est, ref = as_images(estimate, "estimate"), as_images(reference, "reference")
        if est.shape != ref.shape:
            raise GeometryMismatch(f"reference geometry {tuple(ref.shape)} (N, H, W) differs "
                                   f"from the estimate's {tuple(est.shape)}")
        return est, ref

    def network_input(self, estimate: torch.Tensor, reference: torch.Tensor | None
                      ) -> torch.Tensor:
        """What the scoring network sees for ``estimate`` (float32 ``(N, C, H, W)``)."""
        est, ref = self._pair(estimate, reference)
        return network_input_t(est, ref if self.mode == "reference" else None, grid=self.grid,
                               input_kind=self.input_kind, percentile=self.percentile)

    def scores(self, estimate: torch.Tensor, reference: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Score(I), Score(I_ref))``, each ``(N,)`` (the second without gradient)."""
        est, ref = self._pair(estimate, reference)
        x = network_input_t(est, ref if self.mode == "reference" else None, grid=self.grid,
                            input_kind=self.input_kind, percentile=self.percentile)
        x = x.to(next(self.net.parameters()).dtype)
        s = self.net(x)
        with torch.no_grad():
            if self.mode == "reference":  # the reference's own input: I_ref - I_ref = 0
                s_ref = self.net(torch.zeros_like(x[:1])).expand(x.shape[0])
            else:
                s_ref = self.net(network_input_t(ref, None, grid=self.grid,
                                                 input_kind=self.input_kind,
                                                 percentile=self.percentile).to(x.dtype))
        return s, s_ref

    def forward(self, estimate: torch.Tensor, reference: torch.Tensor | None = None
                ) -> torch.Tensor:
        """The loss of ``estimate`` against ``reference`` (see the class doc)."""
        s, s_ref = self.scores(estimate, reference)
        d = (s - s_ref).abs()
        values = d * d if self.squared else d
        if self.reduction == "mean":
            return values.mean()
        if self.reduction == "sum":
            return values.sum()
        return values


def _class_for(model: str | None) -> str:
    return {"iqnet": "IQNetLoss", "EfficientNetScorer": "EfficientNetLoss"}.get(
        model or "", "MetricLoss")


class IQNetLoss(MetricLoss):
    """:class:`MetricLoss` with an IQ-Net model (reference or no-reference mode)."""

    architecture = "iqnet"


class EfficientNetLoss(MetricLoss):
    """:class:`MetricLoss` with an exported EfficientNet scorer (``rankiq train --model
    efficientnet`` then ``rankiq export``); reference or no-reference mode."""

    architecture = "EfficientNetScorer"


# ------------------------------------------------------------------ SSIM and MSE in torch


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim_t(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image of ``|a|`` and ``|b|`` (``(N, H, W)``), differentiable.

    The definition of :mod:`rankiq.training.ssim` (Gaussian window sigma 1.5 truncated to
    11x11, K1 = 0.01, K2 = 0.03, population statistics, mean over the pixels whose window lies
    inside the image), so the padding mode never matters: a valid convolution gives exactly the
    interior that :func:`rankiq.training.ssim.ssim_batch` averages.
    """
    from rankiq.training.ssim import K1, K2, SIGMA, TRUNCATE

    x, y = a.abs()[:, None], b.abs()[:, None]
    g = _gaussian_window(SIGMA, TRUNCATE).to(device=x.device, dtype=x.dtype)
    gr, gc = g.reshape(1, 1, -1, 1), g.reshape(1, 1, 1, -1)

    def filt(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(z, gr), gc)

    ux, uy = filt(x), filt(y)
    vx, vy, vxy = filt(x * x) - ux * ux, filt(y * y) - uy * uy, filt(x * y) - ux * uy
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    m = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return m.mean(dim=(1, 2, 3))


class SSIMLoss(nn.Module):
    """``1 - SSIM(|estimate|, |reference|)`` averaged over the batch (``data_range`` 1)."""

    def __init__(self, data_range: float = 1.0) -> None:
        super().__init__()
        self.data_range = data_range

    def forward(self, estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return 1.0 - ssim_t(estimate, reference, self.data_range).mean()


class MSELoss(nn.Module):
    """Mean squared error of the complex (or real) images: ``mean(|estimate - reference|^2)``."""

    def forward(self, estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        d = estimate - reference
        return (d.abs() ** 2).mean() if torch.is_complex(d) else (d * d).mean()
