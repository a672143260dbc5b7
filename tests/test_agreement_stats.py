"""Reader agreement: which confusion matrices a summary carries, how the text report lays out
its table and matrices, and the kappa standard error at its numerical edge."""

from __future__ import annotations

import pytest
from rankiq.service.readers.agreement import format_summary, summarize, weighted_kappa_se
from rankiq.service.readers.rankings import LikertScore, Vote


def _votes() -> list[Vote]:
    # A sees pair 1 twice (agrees with itself), B once; both rank pair 2
    return [Vote("A", 1, "1"), Vote("A", 1, "1"), Vote("A", 2, "2"),
            Vote("B", 1, "similar"), Vote("B", 2, "2"), Vote("B", 3, "skip")]


def _likert(complete: bool = True) -> list[LikertScore]:
    out = []
    for reader, s in (("A", (5, 2, 1, 4)), ("B", (4, 4, 2, 3))):
        out += [LikertScore(reader, 1, 1, s[0]), LikertScore(reader, 2, 1, s[2])]
        if complete or reader == "A":
            out += [LikertScore(reader, 1, 2, s[1]), LikertScore(reader, 2, 2, s[3])]
    return out


def test_a_summary_carries_every_confusion_where_readers_overlap():
    s = summarize(_votes(), _likert())
    assert set(s["confusion"]) == {"rank:A|B", "likert:A|B", "likert_rank:A|B",
                                   "rank_on_likert:A|B", "likert_vs_rank:A",
                                   "likert_vs_rank:B"}
    e = s["likert"]["A|B"]
    assert (e["n_images"], e["n_pairs"]) == (4, 2)
    # Likert ranks: A (5>2: "1", 1<4: "2"), B (4=4: similar, 2<3: "2")
    assert s["confusion"]["likert_rank:A|B"] == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert e["rank_agreement"] == pytest.approx(0.5)
    # direct ranks on those pairs: A (1, 2), B (similar, 2)
    assert s["confusion"]["rank_on_likert:A|B"] == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert e["direct_rank_agreement"] == pytest.approx(0.5)
    assert s["likert_vs_rank"] == {"A": 1.0, "B": 1.0}
    assert s["n_skips"] == 1 and s["n_votes"] == 5 and s["intra"] == {"A": 1.0}
    assert s["readers"] == {"A": {"n_votes": 3, "n_pairs": 2, "n_repeated_pairs": 1},
                            "B": {"n_votes": 2, "n_pairs": 2, "n_repeated_pairs": 0}}


def test_without_complete_likert_pairs_there_are_no_likert_rank_matrices():
    s = summarize(_votes(), _likert(complete=False))
    assert "likert:A|B" in s["confusion"]  # the images both scored still compare
    assert "likert_rank:A|B" not in s["confusion"]
    assert "rank_on_likert:A|B" not in s["confusion"]
    e = s["likert"]["A|B"]
    assert e["n_pairs"] == 0 and e["rank_agreement"] is None
    assert e["direct_rank_agreement"] is None


def test_the_text_report_puts_intra_on_the_diagonal_and_prints_the_matrices():
    s = summarize(_votes(), _likert())
    text = format_summary(s)
    lines = text.splitlines()
    row_a = next(line for line in lines if line.startswith("     A "))
    row_b = next(line for line in lines if line.startswith("     B "))
    inter = f"{100 * s['inter']['A|B']:6.2f}"
    assert row_a.split() == ["A", "100.00", inter.strip()]
    assert row_b.split() == ["B", "-"]  # B has no repeated pair; below the diagonal: blank
    for name in ("likert:A|B", "likert_rank:A|B", "rank_on_likert:A|B",
                 "likert_vs_rank:A", "likert_vs_rank:B"):
        assert f"  {name} (rows first, columns second)" in lines
    assert "Likert A|B: 4 images" in text
    without = format_summary(summarize(_votes(), _likert(complete=False)))
    assert "likert:A|B (rows first" in without and "likert_rank:A|B" not in without


def test_kappa_se_is_zero_where_rounding_makes_the_variance_negative():
    # the variance formula gives about -2.6e-13 here: the SE is clipped to 0, not an error
    assert weighted_kappa_se([4, 4, 4], [5, 4, 4]) == 0.0
    assert weighted_kappa_se([1, 2, 2], [2, 2, 2]) == 0.0


def test_matrix_labels_ci_bounds_and_readers_without_votes():
    scores = _likert() + [LikertScore("C", 1, 1, 3), LikertScore("C", 1, 2, 3)]
    s = summarize(_votes(), scores)
    assert "C" not in s["likert_vs_rank"]  # C scored but never ranked
    lines = format_summary(s).splitlines()
    head = lines.index("  likert:A|B (rows first, columns second)")
    assert lines[head + 1].split() == ["1", "2", "3", "4", "5"]
    head = lines.index("  likert_rank:A|B (rows first, columns second)")
    assert lines[head + 1].split() == ["1", "similar", "2"]
    lo, hi = s["likert"]["A|B"]["kappa_ci"]
    assert lo < hi and f"[{lo:.3f}, {hi:.3f}] (asymptotic)" in "\n".join(lines)


def test_the_bootstrap_ci_is_seeded_with_zero_by_default():
    votes, scores = _votes(), _likert() * 2
    boot = summarize(votes, scores, kappa_ci_method="bootstrap")["likert"]["A|B"]["kappa_ci"]
    assert boot == summarize(votes, scores, kappa_ci_method="bootstrap",
                             seed=0)["likert"]["A|B"]["kappa_ci"]
