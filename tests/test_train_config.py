"""The typed training configuration: validation, JSON round trip, old run folders."""

from __future__ import annotations

import json

import pytest
from rankiq.training.config import TrainConfig
from rankiq.training.runs import RunError, read_config


def test_round_trip_through_json() -> None:
    c = TrainConfig(grid=(64, 48), crop=32, final=True, data={"fingerprint": "f" * 64})
    back = TrainConfig.coerce(json.loads(json.dumps(c.to_dict())))
    assert back == c and back.grid == (64, 48)


@pytest.mark.parametrize("bad", [{"lr": 0}, {"dropout": 1.0}, {"folds": 1}, {"model": "x"},
                                 {"selection": "best"}, {"crop": 8}, {"epochs": 0},
                                 {"grid": (64, 64), "crop": 128}])
def test_invalid_values_are_one_line_errors(bad) -> None:
    with pytest.raises(RunError, match="training config"):
        TrainConfig(**bad)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(RunError, match="unknown key"):
        TrainConfig.coerce({"model": "iqnet", "learning_rate": 1e-3})


def test_old_run_folder_loads_as_trained(tmp_path) -> None:
    old = {"model": "iqnet", "mode": "reference", "input_kind": "magnitude", "grid": [128, 128],
           "folds": 5, "seed": 2025, "epochs": 10, "lr": 1e-3, "dropout": 0.0,
           "created_by": "rankiq train", "data": {"fingerprint": "a" * 64}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = read_config(tmp_path)
    # older runs chose the epoch on the validation fold and grouped by subject
    assert cfg["selection"] == "validation" and cfg["group_by"] == "subject"
    assert cfg["lr"] == 1e-3 and cfg["grid"] == [128, 128]
    (tmp_path / "config.json").write_text(json.dumps({**old, "mystery": 1}))
    with pytest.raises(RunError, match="unknown key"):
        read_config(tmp_path)
