"""The public API: ``import rankiq`` reaches a first score in three lines."""

from __future__ import annotations

import numpy as np
import pydicom.data
import pytest
from rankiq.service.errors import RankIQError

import rankiq


def test_score_a_dicom_file_an_array_and_a_series_alike() -> None:
    path = pydicom.data.get_testdata_file("MR_small.dcm")
    series = rankiq.read_series(path)
    by_series = rankiq.score(series)
    by_path = rankiq.score(path)
    by_array = rankiq.score(series.pixels)
    assert by_series.model["mode"] == "no-reference"
    assert by_series.median == pytest.approx(by_path.median)
    assert by_series.median == pytest.approx(by_array.median, rel=1e-6)


def test_reference_mode_and_compare() -> None:
    rng = np.random.default_rng(0)
    truth = np.abs(rankiq.read_series(pydicom.data.get_testdata_file("MR_small.dcm")).pixels[0])
    noisy = truth + rng.normal(0, 0.2 * truth.std(), truth.shape)
    r_same = rankiq.score(truth, reference=truth)
    r_noisy = rankiq.score(noisy, reference=truth)
    assert r_same.model["mode"] == "reference"
    assert r_same.median < r_noisy.median
    cmp = rankiq.compare(truth, noisy, reference=truth)
    assert cmp.probabilities.shape == (3,)
    assert cmp.probabilities[0] > cmp.probabilities[2]  # a (the truth) is better


def test_load_model_is_cached_and_unknown_names_fail_clearly() -> None:
    assert rankiq.load_model("iqnet-ref") is rankiq.load_model("iqnet-ref")
    with pytest.raises(RankIQError):
        rankiq.load_model("no-such-model")
    with pytest.raises(AttributeError):
        rankiq.no_such_function  # noqa: B018


@pytest.mark.torch
def test_iqnet_loss_is_exposed_lazily() -> None:
    from rankiq.training.losses import IQNetLoss

    assert rankiq.IQNetLoss is IQNetLoss
