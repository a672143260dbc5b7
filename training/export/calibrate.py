"""QA thresholds per contrast family, calibrated on simulated data with the model's own classifier.

Rule (what a flag means): a series is flagged when readers, as modelled by the trained rank
classifier, would more likely than not prefer a reference-quality image of the same contrast
over it. With ``d*`` the smallest score excess for which the classifier's probability of
"the lower-scored image is better" reaches ``p_prefer`` (0.5), the threshold of family ``f`` is

    threshold_f = typical score of a reference-quality image of family f + d*

where the typical reference score is 0 for a reference-mode model (an image identical to its
reference scores 0) and, for a no-reference model, the ``REFERENCE_QUANTILE`` (95th percentile)
of the scores of the clean truth images of that family in the pairs file: a no-reference score
also varies with anatomy and slice position, far more than the margin readers notice, so a
median would flag half of all clean slices; the 95th percentile bounds that to ~5 % per slice
(fewer per series, which is flagged on its median). Families absent from the data get the
pooled value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from rankiq.service.io.types import CONTRAST_FAMILIES
from rankiq.service.preprocess import InputKind, prepare
from rankiq.training.models.classifier import RankClassifier
from rankiq.training.pairs import PairsFile
from torch import nn

P_PREFER = 0.5
REFERENCE_QUANTILE = 95.0


def preference_margin(classifier: RankClassifier, scale: float, p_prefer: float = P_PREFER,
                      steps: int = 4000) -> float | None:
    """Smallest score excess ``d >= 0`` at which P(lower-scored image better) >= ``p_prefer``.

    Args:
        classifier: trained classifier (class 0 = image 1 better).
        scale: largest excess searched (score units), e.g. the largest score in the data.

    Returns:
        ``d*`` in score units, or ``None`` when the probability never reaches ``p_prefer``.
    """
    d = torch.linspace(0.0, float(scale), steps, dtype=torch.float32)
    with torch.no_grad():
        # image 1 scores 0 (reference quality), image 2 scores d (worse by d)
        p = torch.softmax(classifier(torch.zeros_like(d), d), dim=1)[:, 0].numpy()
    hit = np.nonzero(p >= p_prefer)[0]
    return float(d[hit[0]]) if hit.size else None


def _clean_references(pf: PairsFile, max_per_family: int) -> dict[str, list[np.ndarray]]:
    """Distinct truth images ``(S, S)`` complex64 per contrast family (one per source slice)."""
    meta = pf.meta()
    seen: set[tuple[str, int]] = set()
    refs: dict[str, list[np.ndarray]] = {}
    for i in range(len(pf)):
        key = (str(meta["source_id"][i]), int(meta["slice_index"][i]))
        fam = str(meta["contrast"][i])
        if key in seen or len(refs.get(fam, [])) >= max_per_family:
            continue
        seen.add(key)
        refs.setdefault(fam, []).append(pf.images(i)[0])
    return refs


def _score(scorer: nn.Module, images: np.ndarray, references: np.ndarray, mode: str,
           input_kind: InputKind, grid: tuple[int, int]) -> np.ndarray:
    """Scores ``(N,)`` of images ``(N, S, S)`` as the service would score them (``references``
    are used in reference mode only)."""
    prep = prepare(images, references if mode == "reference" else None, grid=grid,
                   input_kind=input_kind)
    with torch.no_grad():
        return scorer(torch.from_numpy(prep.network_input)).numpy().astype(np.float64)


def calibrate_thresholds(scorer: nn.Module, classifier: RankClassifier, pairs: str | Path, *,
                         mode: str, input_kind: InputKind, grid: tuple[int, int],
                         max_per_family: int = 64) -> dict[str, Any]:
    """Per-family QA thresholds and how they were obtained.

    Returns:
        ``{"qa_thresholds": {family: score}, "qa_calibration": {...}}`` for the metadata.

    Raises:
        ValueError: the classifier never prefers the lower score at ``P_PREFER`` (an untrained
            or inverted model cannot be calibrated this way).
    """
    scorer = scorer.eval()
    with PairsFile(pairs) as pf:
        refs = _clean_references(pf, max_per_family)
        # corrupted images bound the search range of the preference margin
        probe = [pf.images(i) for i in range(min(len(pf), 16))]
    corrupted = _score(scorer, np.stack([p[1] for p in probe]), np.stack([p[0] for p in probe]),
                       mode, input_kind, grid)
    ref_scores = {}
    for fam, imgs in refs.items():
        stack = np.stack(imgs)
        ref_scores[fam] = _score(scorer, stack, stack, mode, input_kind, grid)
    pooled = np.concatenate(list(ref_scores.values()))
    scale = 4 * max(float(np.abs(corrupted).max()), float(np.abs(pooled).max()), 1e-6)
    margin = preference_margin(classifier, scale)
    if margin is None:
        raise ValueError("the classifier never prefers the lower-scored image at p >= "
                         f"{P_PREFER}; cannot calibrate QA thresholds")
    def typical_of(scores: np.ndarray) -> float:
        return 0.0 if mode == "reference" else float(np.percentile(scores, REFERENCE_QUANTILE))

    typical = {fam: typical_of(s) for fam, s in ref_scores.items()}
    pooled_typical = typical_of(pooled)
    thresholds = {fam: round(typical.get(fam, pooled_typical) + margin, 6)
                  for fam in CONTRAST_FAMILIES}
    return {
        "qa_thresholds": thresholds,
        "qa_calibration": {
            "rule": "reference-quality score of the family (0 with a reference, else the "
                    f"{REFERENCE_QUANTILE:g}th percentile of clean truth images) + d*, d* = the "
                    "score excess at which the classifier prefers the better image with "
                    f"p >= {P_PREFER}",
            "d_star": round(margin, 6),
            "reference_score": {k: round(v, 6) for k, v in typical.items()},
            "n_reference_images": {k: int(len(v)) for k, v in ref_scores.items()},
            "pairs_file": Path(pairs).name,
        },
    }
