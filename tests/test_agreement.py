"""Agreement statistics on hand-computed cases (and the paper's own tables)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from rankiq.service.readers.agreement import (
    Consensus,
    agreement_tables,
    agreement_with_labels,
    confusion,
    consensus,
    inter_agreement,
    intra_agreement,
    intra_agreement_pairwise,
    likert_ranks,
    likert_to_rank,
    metric_outcome,
    outcome_probabilities,
    overall_agreement,
    quadratic_weights,
    summarize,
    vote_counts,
    weighted_kappa,
    weighted_kappa_ci,
    weighted_kappa_se,
    write_consensus,
)
from rankiq.service.readers.rankings import LikertScore, Vote


def vt(reader: str, pid: int, outcome: str) -> Vote:
    return Vote(reader, pid, outcome)


# A: pair 1 twice the same (1,1), pair 2 twice different (1,2), pair 3 once.
# B: pair 1 "1", pair 2 "similar", pair 4 "2".  C: pair 4 "2" only (no repeats).
VOTES = [vt("A", 1, "1"), vt("A", 1, "1"), vt("A", 2, "1"), vt("A", 2, "2"), vt("A", 3, "similar"),
         vt("B", 1, "1"), vt("B", 2, "similar"), vt("B", 4, "2"), vt("B", 4, "skip"),
         vt("C", 4, "2")]


def test_counts_and_probabilities_exclude_skips():
    c = vote_counts(VOTES)
    assert c["A"][1].tolist() == [2, 0, 0] and c["A"][2].tolist() == [1, 0, 1]
    assert c["B"][4].tolist() == [0, 0, 1]  # the skip is not counted
    p = outcome_probabilities(c)
    assert p["A"][2].tolist() == [0.5, 0.0, 0.5]


def test_intra_counts_repeated_pairs_only():
    c = vote_counts(VOTES)
    # pair 1: 1^2 = 1; pair 2: 0.5^2 + 0.5^2 = 0.5; pair 3 (seen once) excluded
    assert intra_agreement(c["A"]) == pytest.approx(0.75)
    # two distinct presentations agree: pair 1 yes (1), pair 2 no (0)
    assert intra_agreement_pairwise(c["A"]) == pytest.approx(0.5)
    assert intra_agreement(c["B"]) is None  # no repeats: no value, not 1.0
    intra, _ = agreement_tables(c)
    assert intra == {"A": pytest.approx(0.75)}


def test_intra_three_presentations():
    c = vote_counts([vt("A", 1, "1"), vt("A", 1, "1"), vt("A", 1, "similar")])
    assert intra_agreement(c["A"]) == pytest.approx((2 / 3) ** 2 + (1 / 3) ** 2)
    assert intra_agreement_pairwise(c["A"]) == pytest.approx(2 / 6)


def test_inter_agreement_hand_case():
    c = vote_counts(VOTES)
    # common pairs of A and B: 1 -> 1*1 = 1; 2 -> pA=(.5,0,.5), pB=(0,1,0) -> 0
    assert inter_agreement(c["A"], c["B"]) == pytest.approx(0.5)
    assert inter_agreement(c["B"], c["C"]) == pytest.approx(1.0)  # pair 4: both "2"
    assert inter_agreement(c["A"], c["C"]) is None  # nothing in common
    _, inter = agreement_tables(c)
    assert inter == {"A|B": pytest.approx(0.5), "B|C": pytest.approx(1.0)}


def test_inter_with_fractional_probabilities():
    a = {1: np.array([1, 0, 1])}
    b = {1: np.array([3, 1, 0])}
    assert inter_agreement(a, b) == pytest.approx(0.5 * 0.75)


def test_confusion_trace_equals_agreement():
    c = vote_counts(VOTES)
    m = confusion(c["A"], c["B"])
    assert m.sum() == pytest.approx(2)  # two common pairs
    assert m.tolist() == [[1.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.0]]
    assert np.trace(m) / m.sum() == pytest.approx(inter_agreement(c["A"], c["B"]))


def test_overall_agreement():
    c = vote_counts(VOTES)
    # pairs with >= 2 readers: 1 -> votes 1,1,1 (3/3); 2 -> 1,2,similar (1/3); 4 -> 2,2 (2/2)
    assert overall_agreement(c) == pytest.approx((3 + 1 + 2) / (3 + 3 + 2))
    # with single-reader pairs too: pair 3 adds 1/1
    assert overall_agreement(c, min_readers=1) == pytest.approx(7 / 9)
    assert overall_agreement(vote_counts([vt("A", 1, "1")])) is None


def test_consensus_with_ties(tmp_path):
    votes = [
        # pair 10: A's own votes tie (1, 2) -> A abstains; B and C say 2 -> "2", agreement 1
        vt("A", 10, "1"), vt("A", 10, "2"), vt("B", 10, "2"), vt("C", 10, "2"),
        # pair 11: A "1" (mode of 1,1,similar), B "similar" -> tie across readers -> none
        vt("A", 11, "1"), vt("A", 11, "1"), vt("A", 11, "similar"), vt("B", 11, "similar"),
        # pair 12: A "similar", B "similar", C "1" -> similar, agreement 2/3
        vt("A", 12, "similar"), vt("B", 12, "similar"), vt("C", 12, "1"),
        # pair 13: only skips -> no counts at all, not listed
        vt("A", 13, "skip"),
    ]
    rows = consensus(vote_counts(votes))
    assert rows == [Consensus(10, "2", 4, 3, 1.0), Consensus(11, None, 4, 2, None),
                    Consensus(12, "similar", 3, 3, pytest.approx(2 / 3))]
    n = write_consensus(tmp_path / "c.csv", rows)
    with (tmp_path / "c.csv").open() as fh:
        out = list(csv.DictReader(fh))
    assert n == 2 and [r["pair_id"] for r in out] == ["10", "12"]
    assert list(out[0]) == ["pair_id", "outcome", "n_votes", "n_readers", "agreement"]
    assert out[1]["outcome"] == "similar" and float(out[1]["agreement"]) == pytest.approx(2 / 3,
                                                                                           abs=1e-4)


def test_metric_outcome_and_label_agreement():
    assert metric_outcome(0.1, 0.2, lower_is_better=True) == "1"
    assert metric_outcome(0.9, 0.8, lower_is_better=False) == "1"
    assert metric_outcome(0.9, 0.95, lower_is_better=False) == "2"
    assert metric_outcome(0.5, 0.5, lower_is_better=True) == "similar"
    cons = [Consensus(1, "1", 2, 2, 1.0), Consensus(2, "similar", 2, 2, 1.0),
            Consensus(3, "2", 2, 2, 1.0), Consensus(4, None, 2, 2, None)]
    r = agreement_with_labels(cons, {1: "1", 2: "1", 3: "1", 4: "1"})
    assert r == {"all": pytest.approx(1 / 3), "directional": pytest.approx(1 / 2), "n": 3,
                 "n_directional": 2}


# --- Likert -----------------------------------------------------------------------------------

def _direct_kappa(x, y, k=5):
    """Textbook form: 1 - sum(v * observed) / sum(v * expected), disagreement v = (i-j)^2."""
    x, y = np.asarray(x) - 1, np.asarray(y) - 1
    obs = np.zeros((k, k))
    for a, b in zip(x, y, strict=True):
        obs[a, b] += 1
    exp = np.outer(obs.sum(1), obs.sum(0)) / obs.sum()
    i = np.arange(k)
    v = (i[:, None] - i[None, :]) ** 2
    return 1 - (v * obs).sum() / (v * exp).sum()


def test_quadratic_weights():
    w = quadratic_weights()
    assert w[0, 0] == 1 and w[0, 4] == 0 and w[1, 3] == pytest.approx(1 - 4 / 16)


def test_weighted_kappa_hand_cases():
    assert weighted_kappa([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == pytest.approx(1)
    # raters independent by construction: po = pe -> 0
    assert weighted_kappa([1, 1, 2, 2], [1, 2, 1, 2]) == pytest.approx(0)
    # every pair off by one: po = 15/16, pe = 123/144 -> 4/7 (hand computed)
    assert weighted_kappa([1, 2, 3], [2, 3, 4]) == pytest.approx(4 / 7)
    assert weighted_kappa([3, 3, 3], [3, 3, 3]) is None  # chance agreement 1: undefined


def test_weighted_kappa_matches_direct_formula():
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.integers(1, 6, 40)
        y = np.clip(x + rng.integers(-2, 3, 40), 1, 5)
        assert weighted_kappa(x, y) == pytest.approx(_direct_kappa(x, y))


def _table_2a():
    """The paper's Table 2a (readers 5 x 7 Likert scores)."""
    m = [[0, 4, 2, 3, 1], [0, 2, 13, 10, 0], [0, 0, 3, 14, 4], [0, 0, 1, 11, 24],
         [0, 0, 1, 1, 10]]
    x, y = [], []
    for i in range(5):
        for j in range(5):
            x += [i + 1] * m[i][j]
            y += [j + 1] * m[i][j]
    return x, y


def test_kappa_reproduces_paper_table_2a():
    x, y = _table_2a()
    assert weighted_kappa(x, y) == pytest.approx(0.47, abs=0.005)  # paper: k_w = 0.47
    assert np.mean(np.asarray(x) == np.asarray(y)) == pytest.approx(0.25)  # paper: a = 25 %


def test_kappa_ci():
    x, y = _table_2a()
    kw = weighted_kappa(x, y)
    lo, hi = weighted_kappa_ci(x, y)
    se = weighted_kappa_se(x, y)
    assert lo < kw < hi and (hi - lo) == pytest.approx(2 * 1.96 * se, rel=1e-3)
    # the asymptotic SE agrees with the bootstrap spread of the same data
    rng = np.random.default_rng(0)
    xa, ya = np.asarray(x), np.asarray(y)
    boot = [weighted_kappa(xa[i], ya[i]) for i in rng.integers(0, len(x), (1500, len(x)))]
    assert se == pytest.approx(np.std(boot), rel=0.15)
    blo, bhi = weighted_kappa_ci(x, y, method="bootstrap", n_boot=500, seed=1)
    assert blo < kw < bhi
    assert weighted_kappa_ci(x, y, method="bootstrap", n_boot=500, seed=1) == (blo, bhi)
    assert weighted_kappa_se([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == pytest.approx(0)
    with pytest.raises(ValueError):
        weighted_kappa_ci(x, y, method="jackknife")


def test_likert_to_rank():
    assert likert_to_rank(4, 2) == "1" and likert_to_rank(2, 4) == "2"
    assert likert_to_rank(3, 3) == "similar"
    assert likert_ranks({(1, 1): 5, (1, 2): 3, (2, 1): 2, (2, 2): 2, (3, 1): 4}) == {
        1: "1", 2: "similar"}  # pair 3 has one image scored only


def test_summarize_likert_and_tables():
    # two readers rank pairs 1-4 once; Likert-scored by both
    votes = [vt("R5", 1, "1"), vt("R5", 2, "2"), vt("R5", 3, "similar"), vt("R5", 4, "1"),
             vt("R7", 1, "1"), vt("R7", 2, "2"), vt("R7", 3, "2"), vt("R7", 4, "1")]
    s5 = {1: (4, 2), 2: (3, 3), 3: (2, 2), 4: (5, 1)}  # ranks 1, similar, similar, 1
    s7 = {1: (4, 3), 2: (2, 4), 3: (3, 3), 4: (4, 4)}  # ranks 1, 2, similar, similar
    scores = [LikertScore(r, pid, j + 1, sc[j]) for r, table in (("R5", s5), ("R7", s7))
              for pid, sc in table.items() for j in range(2)]
    s = summarize(votes, scores)
    e = s["likert"]["R5|R7"]
    x = [v for pid in (1, 2, 3, 4) for v in s5[pid]]
    y = [v for pid in (1, 2, 3, 4) for v in s7[pid]]
    assert e["kappa_w"] == pytest.approx(_direct_kappa(x, y))
    assert e["agreement"] == pytest.approx(1 / 8)  # only image 1 of pair 1 (4 = 4)
    assert e["n_images"] == 8
    # Likert-derived ranks: R5 (1, sim, sim, 1) vs R7 (1, 2, sim, sim) -> pairs 1, 3 agree
    assert e["rank_agreement"] == pytest.approx(2 / 4)
    assert e["direct_rank_agreement"] == pytest.approx(3 / 4)  # pairs 1, 2, 4
    # Table 3: direct vs Likert-derived, R5: (1,1) (2,sim) (sim,sim) (1,1) -> 3/4
    assert s["likert_vs_rank"]["R5"] == pytest.approx(3 / 4)
    # R7: (1,1) (2,2) (2,sim) (1,sim) -> 2/4
    assert s["likert_vs_rank"]["R7"] == pytest.approx(2 / 4)
    m = np.array(s["confusion"]["likert_vs_rank:R7"])  # rows direct, columns Likert
    assert m.tolist() == [[1, 1, 0], [0, 0, 0], [0, 1, 1]]
    assert np.array(s["confusion"]["likert:R5|R7"]).sum() == 8
    assert math.isclose(np.trace(np.array(s["confusion"]["rank:R5|R7"])), 3)


def test_summarize_keys_and_ranges():
    s = summarize(VOTES)
    for key in ("intra", "inter", "overall", "n_votes", "likert", "likert_vs_rank", "confusion"):
        assert key in s
    assert s["n_votes"] == 9 and s["n_skips"] == 1
    assert s["intra"] == {"A": pytest.approx(0.75)} and s["readers"]["C"]["n_repeated_pairs"] == 0
    vals = [*s["intra"].values(), *s["inter"].values(), s["overall"]]
    assert all(0 <= v <= 1 for v in vals)
    assert s["consensus"]["n_pairs"] + s["consensus"]["n_no_consensus"] == s["n_pairs"]


def test_summary_sds_are_population_sds():
    """The paper's ± are population SDs (ddof=0): Table 1's 5.51 over its 21 reader pairs."""
    s = summarize(VOTES)
    inter = list(s["inter"].values())
    assert len(inter) >= 2
    assert s["inter_sd"] == pytest.approx(float(np.std(inter, ddof=0)))
    assert s["inter_sd"] < float(np.std(inter, ddof=1))


def test_agreement_by_group_uses_each_groups_votes_only():
    from rankiq.service.readers.agreement import agreement_by_group

    by = agreement_by_group(VOTES, {1: "T1", 2: "T1", 4: "T2"})
    assert set(by) == {"T1", "T2"}
    assert by["T1"]["n_pairs"] == 2 and by["T2"]["n_pairs"] == 1
    assert by["T1"]["inter_mean"] == pytest.approx(summarize(
        [v for v in VOTES if v.pair_id in (1, 2)])["inter_mean"])
    assert by["T2"]["inter_mean"] == pytest.approx(1.0)  # B and C both said 2 on pair 4


def test_paired_times_match_reader_and_pair():
    from rankiq.service.readers.agreement import paired_times

    votes = [Vote("A", 1, "1", 3.0), Vote("A", 1, "2", 5.0), Vote("A", 2, "skip", 9.0),
             Vote("B", 1, "1", 2.0)]
    scores = [LikertScore("A", 1, 1, 3, 4.0), LikertScore("A", 1, 2, 4, 5.0),
              LikertScore("A", 2, 1, 3, 1.0), LikertScore("A", 2, 2, 3, 1.0),
              LikertScore("B", 1, 1, 3, 4.0)]  # B scored one image only: no pair
    r, lk = paired_times(votes, scores)
    assert r.tolist() == [4.0] and lk.tolist() == [9.0]
