"""MODEL_CARD.md text for a shipped model, generated from its metadata."""

from __future__ import annotations

import json
from typing import Any


def _accuracy_lines(acc: dict[str, Any]) -> list[str]:
    if not acc:
        return ["No accuracy measured: this model was not trained on rankings."]
    return ["```json", json.dumps(acc, indent=2), "```"]


def model_card(meta: dict[str, Any]) -> str:
    """Markdown model card: intended use, training data, accuracy, thresholds, known limits."""
    trained = meta.get("trained", True)
    arch = meta.get("architecture", {})
    mode = meta["mode"]
    what = ("the difference `image - reference` of a prepared image and its reference"
            if mode == "reference" else "the prepared image alone (no reference)")
    lines = [f"# Model card: {meta['name']} {meta['version']}", ""]
    if not trained:
        lines += [
            "> **UNTRAINED INTERIM MODEL.** These are IQ-Net's initial weights (random seeded "
            "convolutions, every feature weight 1), not a network trained on rankings. It "
            "behaves sensibly in one narrow way: in reference mode an image equal "
            "to its reference scores ~0 and more noise or blur scores higher. Its accuracy on "
            "rankings is unknown. It exists so the service can be built and tested; `make "
            "models` replaces it with the trained model.", ""]
        if mode == "no-reference":
            lines += [
                "> In no-reference mode an untrained IQ-Net scores image *content* (edges and "
                "energy of the normalised image) as much as artefacts; do not use its scores "
                "for quality decisions.", ""]
    lines += [
        "## Intended use",
        f"Scores the quality of 2D MR magnitude/complex slices ({meta['input_kind']} input) "
        f"from {what}, resampled to {meta['grid'][0]}x{meta['grid'][1]} by "
        f"`rankiq.service.preprocess.prepare` (preprocess version {meta['preprocess_version']}). "
        "Lower score = better (closer to the reference). Intended for research, ranking "
        "reconstructions and batch QA triage; not a diagnostic device.",
        "",
        "## Model",
        f"Architecture: `{json.dumps(arch)}`. Saliency (d score / d input) available: "
        f"{meta.get('saliency', False)}.",
        "",
        "## Training data",
    ]
    tr = meta.get("training") or {}
    if trained:
        lines += ["Trained on the rankings of simulated readers calibrated to the paper's "
                  "agreement (`rankiq panel`: intra-reader 94.9 %, inter-reader 67.5 %) of "
                  "simulated corrupted multi-coil brain slices (`rankiq simulate`; by default "
                  "synthetic subjects built from nilearn's MNI152 template). **No real reader "
                  "votes and no patient data: the model has learned the simulated observer.** "
                  "RankIQ is designed for real radiologists' votes (collected with the reader "
                  "app), which train the same way. Cross-validation folds are grouped by "
                  "subject.",
                  "", "```json", json.dumps(tr, indent=2), "```"]
    else:
        lines += ["None (untrained)."]
    lines += ["", "## Measured accuracy", *_accuracy_lines(meta.get("accuracy") or {}), "",
              "## QA thresholds", ]
    th = meta.get("qa_thresholds", {})
    if meta.get("qa_calibration"):
        cal = meta["qa_calibration"]
        lines += [f"Calibrated on simulated data: {cal.get('rule', '')} (d* = "
                  f"{cal.get('d_star')}). A series is flagged when its median slice score is "
                  "above its family's threshold; tune per site with `rankiq qa --thresholds`."]
    if meta.get("qa_thresholds_provisional", False):
        lines += ["PROVISIONAL defaults (identical for every contrast family): the model's own "
                  "score of a phantom with 5 % white Gaussian noise. Not calibrated on any "
                  "clinical data; replace them once the QA study calibrates them."]
    lines += ["", "| family | score threshold (fail above) |", "|---|---|"]
    lines += [f"| {k} | {v:.6g} |" for k, v in th.items()]
    lines += [
        "", "## Known limits",
        "- Brain MRI only, 2D slices; other anatomy is out of distribution.",
        "- Scores are comparable only between images prepared on the same grid and mode.",
        "- The reference mode needs the reference (ground truth) image; in clinical use that "
        "is normally unavailable, so use the no-reference model there.",
        "- The network is small (IQ-Net, 5,562 parameters in the paper's configuration); "
        "agreement with readers was ~75 % in the paper on its data.",
        "- No-reference scores also depend on anatomy and slice position: compare them within "
        "a contrast family, and calibrate site thresholds on accepted series.",
        "", "## Export",
        "ONNX graphs checked against torch at export: "
        f"`{json.dumps(meta.get('parity', {}))}`. The SHA-256 of every file is in "
        "metadata.json (`files`).", "",
    ]
    return "\n".join(lines)
