"""Write a shipped model directory (CONTRACTS.md section 4) from torch modules.

``export_model`` exports the plain graph (``score_naive.onnx``), the exact optimised graph
(``score.onnx``) and the explicit-backward saliency graph (``saliency.onnx``), checks all of them
against torch (:mod:`rankiq.training.export.parity`), then writes ``classifier.json``,
``MODEL_CARD.md`` and ``metadata.json`` (with the SHA-256 of every other file). Everything is
written to a scratch directory next to ``out_dir`` and moved into place only when the parity
check passed, so a failed export never leaves a half-written model behind.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch
from rankiq.service.io.types import CONTRAST_FAMILIES
from rankiq.service.models import sha256_file
from rankiq.service.preprocess import DEFAULT_PERCENTILE, PREPROCESS_VERSION, InputKind, prepare
from rankiq.training.export.iqnet_graphs import (
    STRIP_MIN_SIZE,
    FoldedSaliency,
    FoldedScore,
    NaiveSaliency,
    StudentSaliency,
)
from rankiq.training.export.model_card import model_card
from rankiq.training.export.parity import check_parity, corrupt, parity_inputs, phantom
from rankiq.training.models.classifier import CLASSES, RankClassifier
from rankiq.training.models.efficientnet import EfficientNetScorer
from rankiq.training.models.iqnet import IQBlock, IQNet
from torch import nn

OPSET = 17
#: provisional QA threshold: the model's score of its phantom with this much white noise
PROVISIONAL_NOISE = 0.05


def to_onnx(module: nn.Module, example: torch.Tensor, outputs: list[str], *,
            fold_constants: bool = True) -> bytes:
    """Export ``module(x)`` with a dynamic batch axis; input ``x``, outputs named ``outputs``."""
    f = io.BytesIO()
    axes = {"x": {0: "N"}} | {o: {0: "N"} for o in outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notes
        # f: typed as a path only, but the legacy exporter (dynamo=False) writes file objects too
        torch.onnx.export(module, (example,), f,  # type: ignore[arg-type]
                          input_names=["x"], output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False,
                          do_constant_folding=fold_constants)
    model = onnx.load_from_string(f.getvalue())
    onnx.checker.check_model(model)
    return f.getvalue()


def classifier_params(classifier: RankClassifier) -> dict[str, Any]:
    """RankClassifier -> JSON-able parameters (``f``, ``g``: w1 (16,), b1 (16,), w2 (16,), b2)."""

    def branch(seq: nn.Sequential) -> dict[str, Any]:
        first, last = cast(nn.Linear, seq[0]), cast(nn.Linear, seq[2])
        return {"w1": first.weight.detach().double().reshape(-1).tolist(),
                "b1": first.bias.detach().double().tolist(),
                "w2": last.weight.detach().double().reshape(-1).tolist(),
                "b2": float(last.bias.detach().double()[0])}

    return {"format": "rankiq-classifier-1", "classes": list(CLASSES),
            "logits": "[f(d), g(d) + g(-d), f(-d)], d = s1 - s2; softmax",
            "f": branch(classifier.f), "g": branch(classifier.g)}


def _is_student(m: nn.Module) -> bool:
    """A distilled no-reference IQ-Net student (IQ-Net body + log-linear head)."""
    return (isinstance(getattr(m, "body", None), IQNet) and isinstance(getattr(m, "head", None),
                                                                       nn.Linear))


def _architecture(scorer: nn.Module, input_kind: str) -> dict[str, Any]:
    """``metadata.json``'s ``architecture``: what a loss needs to rebuild the network in torch
    (:func:`rankiq.training.losses.load_scorer`), e.g. an EfficientNet's input ``size`` (px)."""
    if _is_student(scorer):
        body = cast(IQNet, scorer.body)
        return {"model": "iqnet-student", "input_kind": input_kind,
                "channels": int(cast(IQBlock, body.blocks[0]).conv2.weight.shape[0]),
                "blocks": len(body.blocks), "activation": body.activation,
                "parameters": int(sum(p.numel() for p in scorer.parameters()))}
    if isinstance(scorer, IQNet):
        return {"model": "iqnet", "input_kind": input_kind,
                "channels": int(cast(IQBlock, scorer.blocks[0]).conv2.weight.shape[0]),
                "blocks": len(scorer.blocks), "activation": scorer.activation,
                "parameters": int(sum(p.numel() for p in scorer.parameters()))}
    arch: dict[str, Any] = {"model": type(scorer).__name__, "input_kind": input_kind,
                            "parameters": int(sum(p.numel() for p in scorer.parameters()))}
    effnet = next((m for m in scorer.modules() if isinstance(m, EfficientNetScorer)), None)
    if effnet is not None:  # also inside a wrapper (the distilled EfficientNet student)
        arch["size"] = effnet.size
    return arch


def _plain_copy(scorer: nn.Module) -> nn.Module:
    m = copy.deepcopy(scorer).float().eval()
    for sub in m.modules():  # efficientnet_pytorch's memory-efficient swish does not export
        if hasattr(sub, "set_swish"):
            cast(Any, sub).set_swish(memory_efficient=False)
    return m


def provisional_thresholds(scorer: nn.Module, mode: str, input_kind: InputKind,
                           grid: tuple[int, int], seed: int = 0) -> dict[str, float]:
    """Default QA thresholds: the score of a phantom with ``PROVISIONAL_NOISE`` white noise.

    The same value for every contrast family until the QA study ([7/7]) calibrates them.
    """
    rng = np.random.default_rng(seed)
    ref = phantom(grid, rng)
    img = corrupt(ref, rng, noise=PROVISIONAL_NOISE, blur=0.0)
    prep = prepare(img, ref.astype(np.complex64) if mode == "reference" else None, grid=grid,
                   input_kind=input_kind)
    with torch.no_grad():
        s = float(scorer(torch.from_numpy(prep.network_input))[0])
    return {fam: round(s, 6) for fam in CONTRAST_FAMILIES}


def export_model(scorer: nn.Module, classifier: RankClassifier, out_dir: str | Path, *,
                 name: str, version: str, mode: str, input_kind: InputKind,
                 grid: tuple[int, int], extra_metadata: dict[str, Any] | None = None,
                 parity_seed: int = 0) -> dict[str, Any]:
    """Export a scorer and its classifier to a shipped model directory.

    Args:
        scorer: torch module, float32 ``(N, C, H, W)`` network input -> ``(N,)`` scores (lower
            is better); ``C`` = 1 (magnitude) or 2 (complex).
        classifier: the rank classifier trained with it.
        out_dir: the model directory to (re)create.
        name, version: model name (the service's key) and version string.
        mode: ``"reference"`` or ``"no-reference"``.
        input_kind: ``"magnitude"`` or ``"complex"``.
        grid: model grid ``(H, W)``.
        extra_metadata: merged into metadata.json (e.g. ``training``, ``accuracy``,
            ``qa_thresholds``, ``trained``).

    Returns:
        The metadata written.

    Raises:
        ParityError: an ONNX graph disagrees with torch beyond tolerance (nothing is written).
    """
    if mode not in ("reference", "no-reference"):
        raise ValueError(f"mode must be 'reference' or 'no-reference', not {mode!r}")
    grid = (int(grid[0]), int(grid[1]))
    extra = dict(extra_metadata or {})
    return staged_model_dir(Path(out_dir), lambda tmp: _export_into(
        scorer, classifier, tmp, name=name, version=version, mode=mode, input_kind=input_kind,
        grid=grid, extra=extra, seed=parity_seed))


def staged_model_dir(out_dir: Path, fill: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Build a model directory in a scratch folder beside ``out_dir`` (``fill(tmp)`` writes
    it and returns its metadata), then move it into place: a failed export never leaves a
    half-written model behind."""
    tmp = out_dir.parent / f".{out_dir.name}.export-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        meta = fill(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def seal(d: Path, meta: dict[str, Any], card: str) -> dict[str, Any]:
    """Write ``MODEL_CARD.md``, then ``metadata.json`` with the SHA-256 of every other file."""
    (d / "MODEL_CARD.md").write_text(card)
    meta["files"] = {p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file()}
    (d / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _export_into(scorer: nn.Module, classifier: RankClassifier, d: Path, *, name: str,
                 version: str, mode: str, input_kind: InputKind, grid: tuple[int, int],
                 extra: dict[str, Any], seed: int) -> dict[str, Any]:
    plain = _plain_copy(scorer)
    c = 1 if input_kind == "magnitude" else 2
    example = torch.zeros(1, c, *grid)
    graphs = {"score_naive.onnx": d / "score_naive.onnx", "score.onnx": d / "score.onnx"}
    # the plain graph keeps the parameters as named initializers (IQNetLoss rebuilds from them)
    graphs["score_naive.onnx"].write_bytes(to_onnx(plain, example, ["score"],
                                                   fold_constants=False))
    saliency = False
    optimisation: dict[str, Any] = {"score.onnx": "plain export (no exact folding available)"}
    if isinstance(plain, IQNet):
        with torch.no_grad():
            if plain.activation == "identity":
                graphs["score.onnx"].write_bytes(
                    to_onnx(FoldedScore(plain, grid).eval(), example, ["score"]))
                sal_module: nn.Module = FoldedSaliency(plain, grid).eval()
                optimisation = {
                    "score.onnx": "exact fold, dropout removed; blocks with inputs >= "
                                  f"{STRIP_MIN_SIZE} px: conv2*conv1 composed (5x5), 1x1 "
                                  "shortcut in its centre tap, 2x2 average pooling as a "
                                  "stride-2 6x6 conv, border ring recomputed from 4-px strips; "
                                  "smaller blocks: pooling folded into conv2 (4x4 stride 2) and "
                                  "the shortcut (2x2 stride 2); L2 norms as ReduceL2/ReduceL1",
                    "saliency.onnx": "folded forward + its exact adjoint (polyphase convs)"}
            else:
                graphs["score.onnx"].write_bytes(to_onnx(plain, example, ["score"]))
                sal_module = NaiveSaliency(plain, grid).eval()
                optimisation["saliency.onnx"] = "explicit backward with activation masks"
            graphs["saliency.onnx"] = d / "saliency.onnx"
            graphs["saliency.onnx"].write_bytes(
                to_onnx(sal_module, example, ["score", "saliency"]))
        saliency = True
    elif _is_student(plain):
        with torch.no_grad():
            graphs["score.onnx"].write_bytes(to_onnx(plain, example, ["score"]))
            graphs["saliency.onnx"] = d / "saliency.onnx"
            graphs["saliency.onnx"].write_bytes(
                to_onnx(StudentSaliency(plain, grid).eval(), example, ["score", "saliency"]))
        optimisation = {"score.onnx": "plain export with constant folding (ReLU body: no exact "
                                      "linear folding)",
                        "saliency.onnx": "explicit backward with ReLU masks"}
        saliency = True
    else:
        shutil.copyfile(graphs["score_naive.onnx"], graphs["score.onnx"])
    x = parity_inputs(mode, input_kind, grid, seed)
    results = check_parity(plain, graphs, x,
                           saliency_graph="saliency.onnx" if saliency else None)
    (d / "classifier.json").write_text(json.dumps(classifier_params(classifier), indent=1) + "\n")
    trained = bool(extra.pop("trained", True))
    thresholds = extra.pop("qa_thresholds", None)
    provisional = thresholds is None
    if thresholds is None:
        thresholds = provisional_thresholds(plain, mode, input_kind, grid, seed)
    meta: dict[str, Any] = {
        "format": "rankiq-model-1", "name": name, "version": version, "mode": mode,
        "input_kind": input_kind, "grid": list(grid), "percentile": DEFAULT_PERCENTILE,
        "preprocess_version": PREPROCESS_VERSION, "score_direction": "lower_is_better",
        "trained": trained, "saliency": saliency,
        "architecture": _architecture(plain, input_kind),
        "training": extra.pop("training", {}), "accuracy": extra.pop("accuracy", {}),
        "qa_thresholds": thresholds, "qa_thresholds_provisional": provisional,
        "optimisation": optimisation,
        "parity": {r.graph: r.as_dict() for r in results},
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__,
                          "opset": OPSET},
    }
    meta.update(extra)
    return seal(d, meta, model_card(meta))
