"""service.models without torch: the ordinal classifier against its formula, its validation,
and the input checks of the shipped models."""

from __future__ import annotations

import numpy as np
import pytest
from rankiq.service.errors import InvalidImage
from rankiq.service.models import OrdinalClassifier, load_classifier


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + np.exp(-z))


def test_ordinal_classifier_matches_its_formula():
    clf = load_classifier({"kind": "ordinal", "beta": 2.0, "theta": 0.5})
    assert isinstance(clf, OrdinalClassifier)
    p = clf.probabilities(np.array([1.0, 4.0, 2.0]), np.array([2.0, 1.0, 2.0]))
    for (s1, s2), row in zip([(1.0, 2.0), (4.0, 1.0), (2.0, 2.0)], p, strict=True):
        d = np.log(s2) - np.log(s1)
        p1, p2 = _sigmoid(2.0 * d - 0.5), _sigmoid(-2.0 * d - 0.5)
        assert row == pytest.approx([p1, 1.0 - p1 - p2, p2], rel=1e-12)
    assert p[0, 0] > p[0, 2] and p[1, 2] > p[1, 0] and p[2, 0] == pytest.approx(p[2, 2])
    # scores at or below the floor are compared at the floor (no log of zero)
    z = clf.probabilities(np.array([0.0, -1.0]), np.array([1e-6, 1e-6]))
    assert np.allclose(z[0], z[1]) and np.isfinite(z).all()
    assert clf.to_json() == {"kind": "ordinal", "beta": 2.0, "theta": 0.5, "floor": 1e-6}


@pytest.mark.parametrize(("beta", "theta", "ok"), [(1.0, 0.0, True), (1e-9, 2.0, True),
                                                   (0.0, 1.0, False), (-1.0, 1.0, False),
                                                   (1.0, -1e-9, False),
                                                   (float("inf"), 1.0, False),
                                                   (1.0, float("nan"), False)])
def test_ordinal_classifier_parameters_are_validated(beta, theta, ok):
    doc = {"kind": "ordinal", "beta": beta, "theta": theta}
    if ok:
        assert load_classifier(doc).beta == beta
    else:
        with pytest.raises(ValueError, match="beta > 0 and theta >= 0"):
            load_classifier(doc)


def test_network_input_shape_and_values_are_checked(repo_root):
    from rankiq.service.models import ScoringModel

    model = ScoringModel.load(repo_root / "models" / "iqnet-ref")
    good = np.zeros((2, model.channels, *model.grid), np.float32)
    assert model.score(good).shape == (2,)
    for bad in (good[0], good[:, :, :-1], np.zeros((2, model.channels + 1, *model.grid))):
        with pytest.raises(InvalidImage, match="expects network input"):
            model.score(bad)
    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidImage, match="NaN"):
        model.score(nan)
