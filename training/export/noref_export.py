"""Write the no-reference features model directory (``kind: "features"``).

``score.onnx`` maps features ``(N, F)`` (:data:`rankiq.service.noref.FEATURES`, computed by
the service in NumPy) to positive scores ``(N,)``: the standardisation, the MLP members, their
mean and ``exp(raw - offset)``, checked against the NumPy scorer before anything is moved into
place. ``classifier.json`` is the ordinal classifier (:class:`rankiq.service.models.
OrdinalClassifier`); ``metadata.json`` carries the feature order, the training domain, the QA
thresholds and how they were derived.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from rankiq.service.noref import AIR_FEATURES, AIR_GATE, ANALYSIS_MAX, FEATURES, FEATURES_VERSION
from rankiq.service.preprocess import PREPROCESS_VERSION
from rankiq.training.export.writer import OPSET, seal, staged_model_dir, to_onnx
from rankiq.training.noref import CLEAN_QUANTILE, FittedScorer
from torch import nn


class FeatureScore(nn.Module):
    """torch twin of :meth:`FittedScorer.score` for export."""

    mu: torch.Tensor
    sd: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    lin: torch.Tensor

    def __init__(self, s: FittedScorer) -> None:
        super().__init__()
        t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        self.register_buffer("mu", t(s.mu))
        self.register_buffer("sd", t(s.sd))
        self.register_buffer("w1", t(np.stack([m[0] for m in s.layers])))  # (M, H, F)
        self.register_buffer("b1", t(np.stack([m[1] for m in s.layers])))  # (M, H)
        self.register_buffer("w2", t(np.stack([m[2] for m in s.layers])))  # (M, H)
        self.register_buffer("b2", t([m[3] for m in s.layers]))  # (M,)
        lin = s.linear if s.linear is not None else np.zeros(len(s.mu))
        self.register_buffer("lin", t(lin))  # (F,)
        self.offset = float(s.offset)
        self.scale = float(s.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mu) / self.sd  # (N, F)
        h = nn.functional.softplus(torch.einsum("nf,mhf->nmh", z, self.w1) + self.b1)
        raw = ((h * self.w2).sum(-1) + self.b2).mean(-1) + z @ self.lin  # (N,)
        return torch.exp(self.scale * (raw - self.offset))


def export_noref(scorer: FittedScorer, out_dir: str | Path, *, name: str, version: str,
                 classifier: dict[str, Any], domain: dict[str, Any],
                 thresholds: dict[str, float], calibration: dict[str, Any],
                 training: dict[str, Any], check: np.ndarray) -> dict[str, Any]:
    """Write the model directory; ``check``: feature rows ``(N, F)`` for the parity check.

    Raises:
        RuntimeError: ONNX Runtime disagrees with the NumPy scorer (nothing is written).
    """
    return staged_model_dir(Path(out_dir), lambda d: _write(
        d, scorer, name=name, version=version, classifier=classifier, domain=domain,
        thresholds=thresholds, calibration=calibration, training=training, check=check))


def _write(d: Path, scorer: FittedScorer, *, name: str, version: str,
           classifier: dict[str, Any], domain: dict[str, Any], thresholds: dict[str, float],
           calibration: dict[str, Any], training: dict[str, Any], check: np.ndarray
           ) -> dict[str, Any]:
    module = FeatureScore(scorer).eval()
    with torch.no_grad():
        (d / "score.onnx").write_bytes(to_onnx(module, torch.zeros(1, len(FEATURES)), ["score"]))
    sess = ort.InferenceSession(str(d / "score.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["score"], {"x": check.astype(np.float32)})[0].astype(np.float64)
    want = scorer.score(check.astype(np.float32))
    rel = float(np.max(np.abs(got - want) / np.maximum(want, 1e-12)))
    if not rel < 1e-4:
        raise RuntimeError(f"score.onnx differs from the NumPy scorer (max rel {rel:.2e})")
    (d / "classifier.json").write_text(json.dumps(classifier, indent=1) + "\n")
    meta: dict[str, Any] = {
        "format": "rankiq-model-1", "name": name, "version": version,
        "mode": "no-reference", "kind": "features", "input_kind": "magnitude",
        "features": list(FEATURES), "features_version": FEATURES_VERSION,
        "grid": [ANALYSIS_MAX, ANALYSIS_MAX],
        "preprocess_version": PREPROCESS_VERSION, "score_direction": "lower_is_better",
        "trained": True, "saliency": True,
        "architecture": {"model": "noref-features", "members": len(scorer.layers),
                         "hidden": int(scorer.layers[0][0].shape[0]),
                         "parameters": int(sum(m[0].size + m[1].size + m[2].size + 1
                                               for m in scorer.layers) + len(scorer.mu))},
        "training": training, "domain": domain,
        "qa_thresholds": thresholds, "qa_thresholds_provisional": False,
        "qa_calibration": calibration,
        "parity": {"score.onnx": {"max_relative_error": rel, "n": int(len(check))}},
        "exported_with": {"torch": torch.__version__, "opset": OPSET},
    }
    return seal(d, meta, model_card(meta))


def model_card(meta: dict[str, Any]) -> str:
    """A short model card for the features model."""
    t = meta["training"]
    cal = meta["qa_calibration"]
    lines = [
        f"# {meta['name']} {meta['version']}", "",
        "No-reference MRI quality score: lower is better; about 1 for a clean realistic "
        "acquisition, a ratio scale above it.", "",
        "## What it computes",
        f"Features ({', '.join(meta['features'])}; version {meta['features_version']} of "
        "rankiq.service.noref) of each slice on an analysis grid of at most "
        f"{meta['grid'][0]} px (never upsampled), then a mean of "
        f"{meta['architecture']['members']} MLPs ({meta['architecture']['hidden']} softplus "
        "units) and `exp(scale * (raw - offset))`: clean realistic acquisitions score 1 at "
        f"the median and 2 at the {CLEAN_QUANTILE:.0%} quantile. The air features "
        f"({', '.join(AIR_FEATURES)}) count fully while `border` is below {AIR_GATE[0]:g} "
        f"and not at all above {AIR_GATE[1]:g} (a field of view inside the anatomy has no "
        "air: what lies below the foreground cut there is dark tissue).", "",
        "## Training",
        f"{t.get('acquisitions')} realistic simulated acquisitions (seed {t.get('seed')}; "
        f"a share of {t.get('epi_share', 0):g} read out as EPI with a Nyquist ghost), "
        "each with graded ladders of noise, blur, motion and undersampling; pairwise ranking "
        "loss (see rankiq.training.noref). No real scan was used for training or "
        "calibration.", "",
        f"Held-out pair accuracy: {json.dumps(t.get('held_out_pairs', {}))}", "",
        "## QA thresholds",
        f"Rule: {cal.get('rule')}", "",
        "| family | threshold |", "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in sorted(meta["qa_thresholds"].items())], "",
        "## Domain",
        f"Matrix {meta['domain'].get('matrix')}, pixel spacing {meta['domain'].get('spacing_mm')}"
        " mm; inputs outside it, or with features farther from the training features than 99 % "
        "of the training slices, are scored and labelled `in_range: false`.", "",
    ]
    return "\n".join(lines)
