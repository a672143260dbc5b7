"""The reader study's scheduler and export in-process (no server): spaced repeats, coverage,
active-learning orders stated in the export, and a pairs file bound to its database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_pairs import write_synthetic_pairs
from rankiq.service.readers.db import StudyDB
from rankiq.service.readers.pairsource import PairSource
from rankiq.service.readers.settings import Settings, StudyError
from rankiq.service.readers.study import (
    configure,
    export,
    identity_by_token,
    invite,
    next_item,
    read_priorities,
    record_vote,
)


@pytest.fixture
def study(tmp_path: Path):  # noqa: ANN201
    pairs = write_synthetic_pairs(tmp_path / "pairs.h5", n_pairs=6, size=16, seed=2)
    src = PairSource(pairs)
    db = StudyDB(f"sqlite:///{tmp_path / 'study.db'}")
    yield db, src
    db.close()
    src.close()


def _answer_all(db: StudyDB, src: PairSource, token: str, choice: str = "similar") -> list:
    found = identity_by_token(db, token)
    assert found is not None
    who = found[0]
    shown = []
    while (it := next_item(db, who, src.pair_ids)) is not None:
        assert next_item(db, who, src.pair_ids) == it  # unanswered: issued again
        shown.append(it)
        record_vote(db, who, {"presentation": it.id, "nonce": it.nonce, "choice": choice})
    return shown


def test_repeats_are_spaced_and_never_back_to_back(study) -> None:  # noqa: ANN001
    db, src = study
    configure(db, src.fingerprint, src.n, Settings(readers_per_pair=1, repeat_fraction=0.5,
                                                   repeat_gap=2, seed=1))
    shown = _answer_all(db, src, invite(db, "R1", "rank"))
    pairs = [it.pair_id for it in shown]
    assert sorted(set(pairs)) == list(range(6)) and sum(it.is_repeat for it in shown) == 3
    for k, it in enumerate(shown):
        if it.is_repeat:
            first = pairs.index(it.pair_id)
            assert k - first - 1 >= 2  # at least repeat_gap items in between
    assert all(a != b for a, b in zip(pairs, pairs[1:], strict=False))
    # a second reader gets nothing: every pair has its one reader
    assert _answer_all(db, src, invite(db, "R2", "rank")) == []


def test_priority_order_is_followed_and_stated(study, tmp_path: Path) -> None:  # noqa: ANN001
    db, src = study
    csv = tmp_path / "priority.csv"
    csv.write_text("pair_id,priority\n" + "".join(f"{p},{p * 0.1}\n" for p in range(6)))
    s = Settings(readers_per_pair=1, repeat_fraction=0, order="priority",
                 priority_source="the --priority CSV", priorities=read_priorities(csv))
    configure(db, src.fingerprint, src.n, s)
    shown = _answer_all(db, src, invite(db, "R1", "rank"))
    assert [it.pair_id for it in shown] == [5, 4, 3, 2, 1, 0]  # most uncertain first
    info = export(db, tmp_path / "out")
    assert "active learning" in info["order"]
    assert json.loads((tmp_path / "out" / "study.json").read_text())["settings"]["order"] == \
        "priority"


def test_disagreement_order_puts_contested_pairs_first(study) -> None:  # noqa: ANN001
    db, src = study
    configure(db, src.fingerprint, src.n, Settings(readers_per_pair=3, repeat_fraction=0,
                                                   order="disagreement"))
    who = {n: identity_by_token(db, invite(db, n, "rank"))[0] for n in ("A", "B", "C")}
    # A answers everything "left"/"right" by pair parity; B answers pair 4 differently from A
    for name in ("A", "B"):
        while (it := next_item(db, who[name], src.pair_ids)) is not None:
            choice = "similar" if (name == "B" and it.pair_id == 4) else "left"
            if choice == "left" and it.flipped:
                choice = "right"  # always "image 1 better"
            record_vote(db, who[name], {"presentation": it.id, "nonce": it.nonce,
                                        "choice": choice})
    first = next_item(db, who["C"], src.pair_ids)
    assert first is not None and first.pair_id == 4


def test_another_pairs_file_is_refused_once_votes_exist(study, tmp_path: Path) -> None:  # noqa: ANN001
    db, src = study
    configure(db, src.fingerprint, src.n, Settings(repeat_fraction=0))
    _answer_all(db, src, invite(db, "R1", "rank"))
    with pytest.raises(StudyError, match="another pairs file"):
        configure(db, "0" * 32, src.n, Settings())
    with pytest.raises(StudyError, match="repeat-gap"):
        Settings(repeat_gap=0).validate()
