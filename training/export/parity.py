"""Parity of exported ONNX graphs against the torch model (run at export and in the tests).

Tolerances (issue 6): scores within 1e-4 relative error of torch, saliency maps within 1e-3 of
torch autograd (max absolute difference relative to the map's max magnitude). The torch
reference is evaluated in float64 where the module allows it, so the check measures the
exported graph's error rather than torch's own float32 round-off.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from rankiq.service.errors import RankIQError
from rankiq.service.fft import fft2c, ifft2c
from rankiq.service.preprocess import InputKind, prepare
from torch import nn

SCORE_RTOL = 1e-4
SALIENCY_RTOL = 1e-3


class ParityError(RankIQError):
    """An exported graph disagrees with torch beyond the stated tolerance (CLI exit 2)."""

    reason = "parity_failed"


@dataclass(frozen=True)
class ParityResult:
    """Worst errors of one graph on the parity inputs."""

    graph: str
    score_rel_err: float
    saliency_rel_err: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"score_rel_err": self.score_rel_err, "saliency_rel_err": self.saliency_rel_err}


def phantom(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A brain-like magnitude phantom: nested random ellipses on a smooth bias field.

    Returns float32 ``(H, W)`` in [0, ~1]; zero background outside the head.
    """
    h, w = shape
    yy, xx = np.mgrid[-1:1:complex(0, h), -1:1:complex(0, w)]
    img = np.zeros(shape)
    img[(xx / 0.75) ** 2 + (yy / 0.9) ** 2 < 1] = 0.8
    img[(xx / 0.68) ** 2 + (yy / 0.83) ** 2 < 1] = 0.3
    for _ in range(6):
        cx, cy = rng.uniform(-0.4, 0.4, 2)
        ax, ay = rng.uniform(0.05, 0.25, 2)
        img[((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1] += rng.uniform(-0.2, 0.5)
    bias = 1 + 0.2 * xx - 0.1 * yy
    return np.clip(img * bias, 0, None).astype(np.float32)


def corrupt(image: np.ndarray, rng: np.random.Generator, *, noise: float, blur: float
            ) -> np.ndarray:
    """Blur in k-space by ``exp(-blur * r)`` and add complex Gaussian noise of std ``noise``.

    Returns complex64 ``(H, W)`` (take ``abs`` for a magnitude image).
    """
    h, w = image.shape
    ky, kx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    k = fft2c(image.astype(np.complex64)) * np.exp(-blur * np.sqrt(kx**2 + ky**2))
    out = ifft2c(k)
    out = out + noise * (rng.standard_normal(out.shape) + 1j * rng.standard_normal(out.shape))
    return out.astype(np.complex64)


def parity_inputs(mode: str, input_kind: InputKind, grid: tuple[int, int], seed: int = 0
                  ) -> np.ndarray:
    """Random and real-looking network inputs, float32 ``(4, C, H, W)``.

    Two are white Gaussian noise; two are prepared (``rankiq.service.preprocess.prepare``) phantoms
    with blur and noise (against the clean phantom in reference mode).
    """
    rng = np.random.default_rng(seed)
    c = 1 if input_kind == "magnitude" else 2
    rand = rng.standard_normal((2, c, *grid)).astype(np.float32)
    ref = phantom(grid, rng)
    imgs = np.stack([corrupt(ref, rng, noise=0.02, blur=0.5), corrupt(ref, rng, noise=0.08,
                                                                        blur=1.5)])
    refs = np.stack([ref, ref]).astype(np.complex64)
    prep = prepare(imgs, refs if mode == "reference" else None, grid=grid, input_kind=input_kind)
    return np.concatenate([rand, prep.network_input]).astype(np.float32)


def _reference(module: nn.Module, x: np.ndarray, saliency: bool
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Torch scores (and autograd saliency), in float64 when the module supports it."""
    ref = copy.deepcopy(module).eval()
    try:
        ref = ref.double()
        xt = torch.from_numpy(x.astype(np.float64))
        ref(xt[:1])
    except (RuntimeError, TypeError):
        ref = copy.deepcopy(module).eval().float()
        xt = torch.from_numpy(x)
    xt = xt.clone().requires_grad_(saliency)
    with torch.set_grad_enabled(saliency):
        s = ref(xt)
        g = torch.autograd.grad(s.sum(), xt)[0].numpy() if saliency else None
    return s.detach().numpy(), g


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _score_err(got: np.ndarray, want: np.ndarray) -> float:
    """Worst relative error; scores within 1e-3 of the largest |score| of zero count against
    that scale (a relative error is meaningless for a score that crosses zero)."""
    floor = max(1e-3 * float(np.max(np.abs(want))), 1e-12)
    return float(np.max(np.abs(got.astype(np.float64) - want) / np.maximum(np.abs(want), floor)))


def check_parity(module: nn.Module, graphs: dict[str, Path], x: np.ndarray, *,
                 saliency_graph: str | None = None) -> list[ParityResult]:
    """Run each ONNX graph on ``x`` and compare with torch; raise :class:`ParityError` on failure.

    Args:
        module: the torch scorer (eval mode), ``(N, C, H, W) -> (N,)``.
        graphs: graph name -> path; score graphs output ``score``, the saliency graph
            (``saliency_graph``) outputs ``score`` and ``saliency``.
        x: float32 ``(N, C, H, W)`` inputs.
    """
    want_s, want_g = _reference(module, x, saliency=saliency_graph is not None)
    results, failures = [], []
    for name, path in graphs.items():
        outs = _session(path).run(None, {"x": x})
        s_err = _score_err(outs[0], want_s)
        g_err = None
        if name == saliency_graph:
            assert want_g is not None
            g_err = float(np.max(np.abs(outs[1] - want_g)) / max(np.max(np.abs(want_g)), 1e-30))
            if not g_err <= SALIENCY_RTOL:
                failures.append(f"{name}: saliency error {g_err:.2e} > {SALIENCY_RTOL:g}")
        if not s_err <= SCORE_RTOL:
            failures.append(f"{name}: score relative error {s_err:.2e} > {SCORE_RTOL:g}")
        results.append(ParityResult(name, s_err, g_err))
    if failures:
        raise ParityError("ONNX/torch parity failed: " + "; ".join(failures))
    return results
