"""QA threshold calibration: classifier preference margin above reference-quality scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rankiq.service.cli import main
from rankiq.training.build_models import monotone_classifier
from rankiq.training.export.calibrate import calibrate_thresholds, preference_margin
from rankiq.training.models import IQNet

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "pairs.h5"
    assert main(["simulate", "--source", "phantom", "--pairs", "6", "--size", "32", "--seed", "3",
                 "--workers", "1", "--out", str(out)]) == 0
    return out


def _net() -> IQNet:
    torch.manual_seed(0)
    return IQNet("magnitude", blocks=3).eval()


def test_margin_is_where_the_better_image_becomes_preferred():
    clf = monotone_classifier(2.0)
    d = preference_margin(clf, scale=50.0)
    assert d is not None and d > 0
    with torch.no_grad():
        below = torch.softmax(clf(torch.zeros(1), torch.tensor([d * 0.9])), 1)[0, 0]
        at = torch.softmax(clf(torch.zeros(1), torch.tensor([d])), 1)[0, 0]
    assert below < 0.5 <= at
    # a classifier that needs larger score differences gives a larger margin
    assert preference_margin(monotone_classifier(8.0), scale=50.0) > d


@pytest.mark.slow
def test_inverted_classifier_cannot_be_calibrated(pairs):
    clf = monotone_classifier(2.0)
    with torch.no_grad():
        clf.f[0].weight.neg_()  # now the higher score wins
    assert preference_margin(clf, scale=50.0) is None
    with pytest.raises(ValueError, match="cannot calibrate"):
        calibrate_thresholds(_net(), clf, pairs, mode="reference", input_kind="magnitude",
                             grid=(32, 32))


def test_reference_mode_threshold_is_the_margin(pairs):
    clf = monotone_classifier(1.0)
    out = calibrate_thresholds(_net(), clf, pairs, mode="reference", input_kind="magnitude",
                               grid=(32, 32))
    d = out["qa_calibration"]["d_star"]
    assert set(out["qa_thresholds"]) == {"T1", "T1post", "T2", "FLAIR", "other"}
    assert all(v == pytest.approx(d, abs=1e-6) for v in out["qa_thresholds"].values())
    assert set(out["qa_calibration"]["reference_score"].values()) == {0.0}


def test_no_reference_thresholds_sit_above_clean_scores(pairs):
    clf = monotone_classifier(1.0)
    out = calibrate_thresholds(_net(), clf, pairs, mode="no-reference", input_kind="magnitude",
                               grid=(32, 32))
    med = out["qa_calibration"]["reference_score"]
    d = out["qa_calibration"]["d_star"]
    assert med and all(v > 0 for v in med.values())
    # clean reference images of a family score below its threshold (95th percentile + margin)
    from rankiq.service.preprocess import prepare
    from rankiq.training.pairs import PairsFile

    with PairsFile(pairs) as pf:
        meta = pf.meta()
        refs = np.stack([pf.images(i)[0] for i in range(len(pf))])
    with torch.no_grad():
        clean = _net()(torch.from_numpy(prepare(refs, grid=(32, 32)).network_input)).numpy()
    below = [c <= out["qa_thresholds"][str(f)] for c, f in zip(clean, meta["contrast"],
                                                                 strict=True)]
    assert np.mean(below) >= 0.9
    for fam, m in med.items():
        assert out["qa_thresholds"][fam] == pytest.approx(m + d, rel=1e-5)
    # families without data get the pooled value, never nothing
    assert all(np.isfinite(v) for v in out["qa_thresholds"].values())
