"""Reader-agreement statistics of pairwise rankings and Likert scores (the paper's Tables 1-3).

Everything here is a pure function of votes/scores. Outcome vectors follow the class order
0 = image 1 better (``1``), 1 = similar, 2 = image 2 better (``2``); skips are excluded.

Definitions (as in the paper and its code, with the fix noted for intra-reader agreement):

- ``p[r][pair]``: reader r's outcome probabilities for a pair = counts / times r saw the pair.
- Agreement between readers A and B = mean over their common pairs of ``sum_k pA_k * pB_k``.
- Intra-reader agreement = the same formula of a reader with themself, ``sum_k p_k^2``, over
  the pairs that reader saw at least twice only (the reference counted pairs seen once as 1).
  A reader without repeated pairs has no intra value. With two presentations this is 1 when
  they agree and 0.5 when they do not, so 95 % means ~10 % of repeats changed answer; the
  unbiased "two distinct presentations agree" rate is :func:`intra_agreement_pairwise`.
- Overall agreement = sum over pairs of the majority count / sum of the votes, over pairs
  voted on by at least two readers (a single reader's pair says nothing about agreement).
- Consensus: each reader's own most frequent vote, then the majority across readers. Tie rule:
  a reader whose own votes tie abstains on that pair; a tie across readers gives no consensus.
- Likert: quadratic weights ``1 - (i-j)^2/16``; Cohen's kappa_w with a 95 % CI from the
  asymptotic variance of Fleiss, Cohen & Everitt (1969) (or a seeded bootstrap over pairs).
  A Likert pair becomes a rank by the sign of the score difference (higher better, equal =
  similar).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from rankiq.service.readers.rankings import OUTCOME_INDEX, OUTCOMES, SKIP, LikertScore, Vote

Counts = dict[str, dict[int, np.ndarray]]  # reader -> pair_id -> int (3,) outcome counts
LIKERT_LEVELS = 5
Z95 = 1.959963984540054


def reader_sort_key(name: str) -> tuple:
    """Natural order: R2 before R10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def pair_key(a: str, b: str) -> str:
    """Key ``"A|B"`` of two readers in natural order."""
    a, b = sorted((a, b), key=reader_sort_key)
    return f"{a}|{b}"


# --- votes -> counts and probabilities ---------------------------------------------------------

def vote_counts(votes: Iterable[Vote]) -> Counts:
    """Outcome counts per reader and pair, skips excluded (int64 ``(3,)`` in class order)."""
    counts: Counts = {}
    for v in votes:
        if v.outcome == SKIP:
            continue
        per = counts.setdefault(v.reader, {})
        c = per.get(v.pair_id)
        if c is None:
            c = per[v.pair_id] = np.zeros(3, np.int64)
        c[OUTCOME_INDEX[v.outcome]] += 1
    return counts


def labels_to_counts(labels: Mapping[int, str]) -> dict[int, np.ndarray]:
    """One-hot counts of single labels ``pair_id -> outcome`` (e.g. Likert-derived ranks)."""
    out = {}
    for pid, o in labels.items():
        c = np.zeros(3, np.int64)
        c[OUTCOME_INDEX[o]] = 1
        out[pid] = c
    return out


def outcome_probabilities(counts: Counts) -> dict[str, dict[int, np.ndarray]]:
    """``p[r][pair]`` = counts / number of (non-skip) presentations, float64 ``(3,)``."""
    return {r: {pid: c / c.sum() for pid, c in per.items()} for r, per in counts.items()}


# --- ranking agreement ------------------------------------------------------------------------

def intra_agreement(reader_counts: Mapping[int, np.ndarray]) -> float | None:
    """Mean of ``sum_k p_k^2`` over the pairs this reader saw at least twice; None if none."""
    vals = [float(np.sum((c / c.sum()) ** 2)) for c in reader_counts.values() if c.sum() >= 2]
    return float(np.mean(vals)) if vals else None


def intra_agreement_pairwise(reader_counts: Mapping[int, np.ndarray]) -> float | None:
    """Probability that two distinct presentations of a repeated pair got the same answer:
    mean over pairs seen >= 2 times of ``sum_k n_k (n_k - 1) / (n (n - 1))``; None if none."""
    vals = [float(np.sum(c * (c - 1)) / (c.sum() * (c.sum() - 1)))
            for c in reader_counts.values() if c.sum() >= 2]
    return float(np.mean(vals)) if vals else None


def inter_agreement(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray]) -> float | None:
    """Mean over common pairs of ``sum_k pA_k pB_k``; None if the readers share no pair."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    vals = [float(np.dot(a[p] / a[p].sum(), b[p] / b[p].sum())) for p in common]
    return float(np.mean(vals))


def agreement_tables(counts: Counts) -> tuple[dict[str, float], dict[str, float]]:
    """Table 1: ``intra`` (reader -> value, readers without repeats omitted) and ``inter``
    (``"A|B"`` -> value, reader pairs without a common pair omitted)."""
    readers = sorted(counts, key=reader_sort_key)
    intra = {r: v for r in readers if (v := intra_agreement(counts[r])) is not None}
    inter = {}
    for a, b in combinations(readers, 2):
        v = inter_agreement(counts[a], counts[b])
        if v is not None:
            inter[pair_key(a, b)] = v
    return intra, inter


def pooled_counts(counts: Counts) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """All readers' votes per pair (``(3,)`` counts) and the number of readers per pair."""
    pooled: dict[int, np.ndarray] = {}
    n_readers: dict[int, int] = {}
    for per in counts.values():
        for pid, c in per.items():
            pooled[pid] = pooled.get(pid, np.zeros(3, np.int64)) + c
            n_readers[pid] = n_readers.get(pid, 0) + 1
    return pooled, n_readers


def overall_agreement(counts: Counts, min_readers: int = 2) -> float | None:
    """Sum of per-pair majority counts / sum of votes over pairs with >= ``min_readers``
    readers (all presentations counted); None if there is no such pair."""
    pooled, n_readers = pooled_counts(counts)
    top = tot = 0
    for pid, c in pooled.items():
        if n_readers[pid] >= min_readers:
            top += int(c.max())
            tot += int(c.sum())
    return top / tot if tot else None


# --- consensus ---------------------------------------------------------------------------------

def mode_outcome(c: np.ndarray) -> int | None:
    """Index of the most frequent outcome, None when the top count is tied (or no votes)."""
    if c.sum() == 0:
        return None
    top = np.flatnonzero(c == c.max())
    return int(top[0]) if len(top) == 1 else None


@dataclass(frozen=True)
class Consensus:
    """Consensus of one pair. ``outcome`` None = no consensus (tie or no decided reader);
    ``agreement`` = fraction of decided readers whose own vote equals the consensus."""

    pair_id: int
    outcome: str | None
    n_votes: int
    n_readers: int
    agreement: float | None


def consensus(counts: Counts) -> list[Consensus]:
    """Majority vote of the readers' own most frequent votes, per pair (sorted by pair id).

    Tie rule: a reader whose own votes tie abstains; a tie between outcomes across readers
    (or no reader left) gives ``outcome=None``.
    """
    pooled, n_readers = pooled_counts(counts)
    modes: dict[int, list[int]] = {}
    for per in counts.values():
        for pid, c in per.items():
            m = mode_outcome(c)
            if m is not None:
                modes.setdefault(pid, []).append(m)
    rows = []
    for pid in sorted(pooled):
        votes = np.bincount(modes.get(pid, []), minlength=3)
        m = mode_outcome(votes)
        rows.append(Consensus(pid, None if m is None else OUTCOMES[m], int(pooled[pid].sum()),
                              n_readers[pid],
                              None if m is None else float(votes[m] / votes.sum())))
    return rows


def write_consensus(path: Path | str, rows: Iterable[Consensus]) -> int:
    """Write ``pair_id,outcome,n_votes,n_readers,agreement`` for pairs with a consensus (pairs
    without one are omitted); returns the number of rows written."""
    n = 0
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["pair_id", "outcome", "n_votes", "n_readers", "agreement"])
        for r in rows:
            if r.outcome is None:
                continue
            w.writerow([r.pair_id, r.outcome, r.n_votes, r.n_readers, f"{r.agreement:.4f}"])
            n += 1
    return n


def metric_outcome(value1: float, value2: float, lower_is_better: bool) -> str:
    """Rank of a pair by a per-image metric (MSE: lower better; SSIM: higher better)."""
    if value1 == value2:
        return "similar"
    return "1" if (value1 < value2) == lower_is_better else "2"


def agreement_with_labels(cons: Sequence[Consensus], labels: Mapping[int, str]) -> dict:
    """How often consensus labels equal other labels (e.g. an MSE ranking).

    Returns ``all`` (over pairs with a consensus and a label), ``directional`` (over pairs whose
    consensus is not "similar": a two-way metric can never say similar), and the two counts.
    """
    both = [(c.outcome, labels[c.pair_id]) for c in cons
            if c.outcome is not None and c.pair_id in labels]
    directional = [(a, b) for a, b in both if a != "similar"]

    def frac(xs: list[tuple[str, str]]) -> float | None:
        return sum(a == b for a, b in xs) / len(xs) if xs else None

    return {"all": frac(both), "directional": frac(directional), "n": len(both),
            "n_directional": len(directional)}


def confusion(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray],
              pairs: Iterable[int] | None = None) -> np.ndarray:
    """3x3 confusion of two sets of counts over common pairs (rows a, columns b, class order):
    each pair adds ``outer(pA, pB)``, so single votes give integer counts, its total is the
    number of pairs and ``trace / total`` equals :func:`inter_agreement`."""
    common = set(a) & set(b)
    if pairs is not None:
        common &= set(pairs)
    m = np.zeros((3, 3))
    for p in common:
        m += np.outer(a[p] / a[p].sum(), b[p] / b[p].sum())
    return m


# --- Likert -----------------------------------------------------------------------------------

def likert_table(scores: Iterable[LikertScore]) -> dict[str, dict[tuple[int, int], int]]:
    """reader -> (pair_id, image) -> score."""
    table: dict[str, dict[tuple[int, int], int]] = {}
    for s in scores:
        table.setdefault(s.reader, {})[(s.pair_id, s.image)] = s.score
    return table


def likert_to_rank(score1: int, score2: int) -> str:
    """Rank of a pair from two scores: the higher score is better, equal scores are similar."""
    if score1 == score2:
        return "similar"
    return "1" if score1 > score2 else "2"


def likert_ranks(reader_scores: Mapping[tuple[int, int], int]) -> dict[int, str]:
    """pair_id -> rank for the pairs whose two images this reader scored."""
    pids = {pid for pid, _ in reader_scores}
    return {pid: likert_to_rank(reader_scores[(pid, 1)], reader_scores[(pid, 2)])
            for pid in sorted(pids) if (pid, 1) in reader_scores and (pid, 2) in reader_scores}


def quadratic_weights(k: int = LIKERT_LEVELS) -> np.ndarray:
    """Agreement weights ``1 - (i-j)^2/(k-1)^2`` (``/16`` for five levels), ``(k, k)``."""
    i = np.arange(k)
    return 1.0 - (i[:, None] - i[None, :]) ** 2 / (k - 1) ** 2


def score_confusion(x: Sequence[int], y: Sequence[int], k: int = LIKERT_LEVELS) -> np.ndarray:
    """``k x k`` counts of paired scores 1..k (rows x, columns y)."""
    m = np.zeros((k, k), np.int64)
    np.add.at(m, (np.asarray(x) - 1, np.asarray(y) - 1), 1)
    return m


def weighted_kappa(x: Sequence[int], y: Sequence[int], k: int = LIKERT_LEVELS) -> float | None:
    """Quadratic-weighted Cohen's kappa of paired scores 1..k; None when undefined
    (chance agreement 1, e.g. both raters always give the same single score)."""
    p = score_confusion(x, y, k) / len(x)
    w = quadratic_weights(k)
    po = float(np.sum(w * p))
    pe = float(np.sum(w * np.outer(p.sum(1), p.sum(0))))
    return None if pe >= 1 - 1e-12 else (po - pe) / (1 - pe)


def weighted_kappa_se(x: Sequence[int], y: Sequence[int], k: int = LIKERT_LEVELS) -> float | None:
    """Asymptotic standard error of kappa_w (Fleiss, Cohen & Everitt 1969, non-null form):
    ``var = [sum_ij p_ij (w_ij - (wbar_i. + wbar_.j)(1-kw))^2 - (kw - pe(1-kw))^2]
    / (n (1-pe)^2)`` with ``wbar_i. = sum_j p_.j w_ij`` and ``wbar_.j = sum_i p_i. w_ij``."""
    kw = weighted_kappa(x, y, k)
    if kw is None:
        return None
    n = len(x)
    p = score_confusion(x, y, k) / n
    w = quadratic_weights(k)
    pr, pc = p.sum(1), p.sum(0)
    pe = float(np.sum(w * np.outer(pr, pc)))
    wi = w @ pc  # wbar_i.
    wj = pr @ w  # wbar_.j
    term = np.sum(p * (w - (wi[:, None] + wj[None, :]) * (1 - kw)) ** 2)
    var = (term - (kw - pe * (1 - kw)) ** 2) / (n * (1 - pe) ** 2)
    return float(math.sqrt(max(var, 0.0)))


def weighted_kappa_ci(x: Sequence[int], y: Sequence[int], *, method: str = "asymptotic",
                      clusters: Sequence[int] | None = None, n_boot: int = 2000, seed: int = 0,
                      k: int = LIKERT_LEVELS) -> tuple[float, float] | None:
    """95 % CI of kappa_w: ``asymptotic`` (kw +- 1.96 SE, clipped to [-1, 1]) or ``bootstrap``
    (percentile CI resampling ``clusters``, e.g. pair ids so the two images of a pair stay
    together; items when None; seeded)."""
    kw = weighted_kappa(x, y, k)
    if kw is None:
        return None
    if method == "asymptotic":
        se = weighted_kappa_se(x, y, k)
        assert se is not None  # defined whenever kw is
        return (max(-1.0, kw - Z95 * se), min(1.0, kw + Z95 * se))
    if method != "bootstrap":
        raise ValueError(f"method must be 'asymptotic' or 'bootstrap', not {method!r}")
    xa, ya = np.asarray(x), np.asarray(y)
    groups = np.arange(len(xa)) if clusters is None else np.asarray(clusters)
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        v = weighted_kappa(xa[idx], ya[idx], k)
        if v is not None:
            stats.append(v)
    if not stats:
        return None
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return (float(lo), float(hi))


# --- everything at once -----------------------------------------------------------------------

def _mean_sd(values: Iterable[float]) -> tuple[float | None, float | None]:
    """Mean and *population* SD (ddof=0) of the values, as the paper reports its ± (Table 1's
    94.88 ± 2.44 % and 67.47 ± 5.51 % are population SDs over readers / reader pairs)."""
    v = list(values)
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=0)) if len(v) > 1 else None)


def agreement_by_group(votes: Sequence[Vote], group_of: Mapping[int, str]
                       ) -> dict[str, dict[str, Any]]:
    """Agreement per group of pairs (the paper's Table S2: by contrast): for each group, the
    votes on its pairs only. Pairs without a group are left out.

    Returns:
        ``{group: {"n_pairs", "n_votes", "intra_mean", "intra_sd", "inter_mean", "inter_sd",
        "overall"}}`` (fractions; population SDs; None where undefined), groups sorted.
    """
    by: dict[str, list[Vote]] = {}
    for v in votes:
        g = group_of.get(v.pair_id)
        if g is not None:
            by.setdefault(g, []).append(v)
    out: dict[str, dict[str, Any]] = {}
    for g in sorted(by):
        counts = vote_counts(by[g])
        intra, inter = agreement_tables(counts)
        im, isd = _mean_sd(intra.values())
        em, esd = _mean_sd(inter.values())
        out[g] = {"n_pairs": len({pid for per in counts.values() for pid in per}),
                  "n_votes": int(sum(c.sum() for per in counts.values() for c in per.values())),
                  "intra_mean": im, "intra_sd": isd, "inter_mean": em, "inter_sd": esd,
                  "overall": overall_agreement(counts)}
    return out


def paired_times(votes: Sequence[Vote], scores: Sequence[LikertScore]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Seconds spent on the same pair by the same reader, ranking vs Likert: float64 ``(M,)``
    twice over the (reader, pair) with both a timed ranking (mean over its presentations) and
    timed Likert scores of both images (their sum), the paired data behind Table 2's 3.95 s vs
    8.6 s per pair."""
    rank: dict[tuple[str, int], list[float]] = {}
    for v in votes:
        if v.outcome != SKIP and v.seconds is not None:
            rank.setdefault((v.reader, v.pair_id), []).append(float(v.seconds))
    lik: dict[tuple[str, int], list[float]] = {}
    for sc in scores:
        if sc.seconds is not None:
            lik.setdefault((sc.reader, sc.pair_id), []).append(float(sc.seconds))
    keys = sorted(k for k in set(rank) & set(lik) if len(lik[k]) == 2)
    return (np.array([np.mean(rank[k]) for k in keys], np.float64),
            np.array([sum(lik[k]) for k in keys], np.float64))


def summarize(votes: Sequence[Vote], scores: Sequence[LikertScore] | None = None, *,
              kappa_ci_method: str = "asymptotic", seed: int = 0) -> dict[str, Any]:
    """All statistics as one JSON-ready object (fractions in [0, 1], None where undefined).

    Keys: ``intra``, ``inter``, ``overall``, ``n_votes`` (non-skip), ``likert``,
    ``likert_vs_rank``, ``confusion`` (as specified for ``rankiq agreement --json``) plus
    ``intra_pairwise``, ``intra_mean``/``intra_sd``, ``inter_mean``/``inter_sd`` (population
    SDs, ddof=0), ``n_skips``,
    ``n_pairs``, ``readers`` (per-reader counts) and ``consensus`` (label counts).
    Confusion names: ``rank:A|B`` (direct ranks, all common pairs), ``likert:A|B`` (5x5
    scores), ``likert_rank:A|B`` (Likert-derived ranks), ``rank_on_likert:A|B`` (direct ranks
    on the pairs both readers scored), ``likert_vs_rank:A`` (rows direct rank, columns
    Likert-derived rank). 3x3 matrices use the class order 1, similar, 2.
    """
    counts = vote_counts(votes)
    readers = sorted(counts, key=reader_sort_key)
    intra, inter = agreement_tables(counts)
    intra_pw = {r: v for r in readers if (v := intra_agreement_pairwise(counts[r])) is not None}
    cons = consensus(counts)
    conf: dict[str, list] = {}
    for a, b in combinations(readers, 2):
        if set(counts[a]) & set(counts[b]):
            conf[f"rank:{pair_key(a, b)}"] = confusion(counts[a], counts[b]).tolist()
    out: dict[str, Any] = {
        "intra": intra, "inter": inter, "overall": overall_agreement(counts),
        "n_votes": int(sum(c.sum() for per in counts.values() for c in per.values())),
        "n_skips": sum(v.outcome == SKIP for v in votes),
        "n_pairs": len({pid for per in counts.values() for pid in per}),
        "intra_pairwise": intra_pw,
        "readers": {r: {"n_votes": int(sum(c.sum() for c in counts[r].values())),
                        "n_pairs": len(counts[r]),
                        "n_repeated_pairs": int(sum(c.sum() >= 2 for c in counts[r].values()))}
                    for r in readers},
        "consensus": {"n_pairs": sum(c.outcome is not None for c in cons),
                      "n_no_consensus": sum(c.outcome is None for c in cons),
                      **{o: sum(c.outcome == o for c in cons) for o in OUTCOMES}},
        "likert": {}, "likert_vs_rank": {}, "confusion": conf,
    }
    out["intra_mean"], out["intra_sd"] = _mean_sd(intra.values())
    out["inter_mean"], out["inter_sd"] = _mean_sd(inter.values())
    if scores:
        table = likert_table(scores)
        lreaders = sorted(table, key=reader_sort_key)
        ranks = {r: likert_ranks(table[r]) for r in lreaders}
        for a, b in combinations(lreaders, 2):
            key = pair_key(a, b)
            a, b = key.split("|")
            items = sorted(set(table[a]) & set(table[b]))
            if not items:
                continue
            x = [table[a][i] for i in items]
            y = [table[b][i] for i in items]
            ci = weighted_kappa_ci(x, y, method=kappa_ci_method, seed=seed,
                                   clusters=[pid for pid, _ in items])
            ra, rb = labels_to_counts(ranks[a]), labels_to_counts(ranks[b])
            lpairs = set(ra) & set(rb)
            entry = {"kappa_w": weighted_kappa(x, y), "kappa_ci": None if ci is None else list(ci),
                     "kappa_ci_method": kappa_ci_method,
                     "agreement": float(np.mean(np.asarray(x) == np.asarray(y))),
                     "n_images": len(items), "rank_agreement": inter_agreement(ra, rb),
                     "n_pairs": len(lpairs), "direct_rank_agreement": None}
            conf[f"likert:{key}"] = score_confusion(x, y).tolist()
            if lpairs:
                conf[f"likert_rank:{key}"] = confusion(ra, rb).tolist()
            if a in counts and b in counts:
                da = {p: c for p, c in counts[a].items() if p in lpairs}
                db = {p: c for p, c in counts[b].items() if p in lpairs}
                entry["direct_rank_agreement"] = inter_agreement(da, db)
                if set(da) & set(db):
                    conf[f"rank_on_likert:{key}"] = confusion(da, db).tolist()
            out["likert"][key] = entry
        for r in lreaders:
            if r in counts and ranks[r]:
                lr = labels_to_counts(ranks[r])
                v = inter_agreement(counts[r], lr)
                if v is not None:
                    out["likert_vs_rank"][r] = v
                    conf[f"likert_vs_rank:{r}"] = confusion(counts[r], lr).tolist()
    return out


def _pct(v: float | None) -> str:
    return "   -  " if v is None else f"{100 * v:6.2f}"


def format_summary(s: Mapping[str, Any]) -> str:
    """Human-readable tables of :func:`summarize`'s output (percentages)."""
    readers = list(s["readers"])
    lines = [f"{s['n_votes']} votes ({s['n_skips']} skips excluded) on {s['n_pairs']} pairs "
             f"by {len(readers)} readers", "",
             "Agreement (%): diagonal = intra-reader (repeated pairs only), off-diagonal = "
             "inter-reader"]
    w = max([6, *(len(r) for r in readers)])
    lines.append(" " * w + " " + " ".join(f"{r:>{w}}" for r in readers))
    for i, a in enumerate(readers):
        cells = []
        for j, b in enumerate(readers):
            if j < i:
                cells.append(" " * w)
            elif j == i:
                cells.append(f"{_pct(s['intra'].get(a)):>{w}}")
            else:
                cells.append(f"{_pct(s['inter'].get(pair_key(a, b))):>{w}}")
        lines.append(f"{a:>{w}} " + " ".join(cells))
    lines.append("")
    for r in readers:
        info = s["readers"][r]
        lines.append(f"  {r}: {info['n_votes']} votes, {info['n_pairs']} pairs, "
                     f"{info['n_repeated_pairs']} repeated")

    def ms(m: float | None, sd: float | None) -> str:
        if m is None:
            return "-"
        return f"{100 * m:.2f} %" + ("" if sd is None else f" +- {100 * sd:.2f}")

    lines += ["", f"intra-reader mean: {ms(s['intra_mean'], s['intra_sd'])}",
              f"inter-reader mean: {ms(s['inter_mean'], s['inter_sd'])}",
              f"overall agreement: {_pct(s['overall']).strip()} %"]
    c = s["consensus"]
    lines.append(f"consensus: {c['n_pairs']} pairs (1: {c['1']}, similar: {c['similar']}, "
                 f"2: {c['2']}), {c['n_no_consensus']} without consensus (ties)")
    for key, e in s["likert"].items():
        ci = e["kappa_ci"]
        kw = "-" if e["kappa_w"] is None else f"{e['kappa_w']:.3f}"
        cis = "" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}] ({e['kappa_ci_method']})"
        lines += ["", f"Likert {key}: {e['n_images']} images, agreement {_pct(e['agreement'])} %,"
                      f" kappa_w {kw}{cis}",
                  f"  Likert-derived ranks agreement {_pct(e['rank_agreement'])} % on "
                  f"{e['n_pairs']} pairs; direct ranks on those pairs "
                  f"{_pct(e['direct_rank_agreement'])} %"]
        for name in (f"likert:{key}", f"likert_rank:{key}", f"rank_on_likert:{key}"):
            if name in s["confusion"]:
                lines.append(_format_matrix(name, s["confusion"][name]))
    for r, v in s["likert_vs_rank"].items():
        lines += ["", f"Likert-derived vs direct ranks, {r}: {_pct(v)} %",
                  _format_matrix(f"likert_vs_rank:{r}", s["confusion"][f"likert_vs_rank:{r}"])]
    return "\n".join(lines)


def _format_matrix(name: str, m: Sequence[Sequence[float]]) -> str:
    labels = [str(i + 1) for i in range(len(m))] if len(m) != 3 else list(OUTCOMES)
    head = f"  {name} (rows first, columns second)"
    rows = ["    " + " " * 8 + "".join(f"{x:>9}" for x in labels)]
    for lab, row in zip(labels, m, strict=True):
        rows.append("    " + f"{lab:>8}" + "".join(f"{v:9.4g}" for v in row))
    return "\n".join([head, *rows])
