"""``rankiq panel`` (simulated reader panel) and ``rankiq agreement`` (reader statistics).

Neither needs torch. Handlers import numpy/h5py and the training modules lazily.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry


def add_commands(reg: Registry) -> None:
    """Add ``rankiq panel`` and ``rankiq agreement``."""
    p = reg.command("panel", "rankiq.training.commands.panel_cmd:panel",
                    "simulate votes of simulated readers calibrated to the paper's agreement "
                    "on a pairs file")
    p.add_argument("--pairs", required=True, help="pairs HDF5 file (from `rankiq simulate`)")
    p.add_argument("--readers", type=int, default=7, help="number of readers (default 7)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="rankings CSV to write")
    p.add_argument("--likert", help="also write Likert scores of a subset of pairs here")
    p.add_argument("--likert-pairs", type=int, default=52,
                   help="pairs scored on the Likert scale (default 52, as in the paper)")
    p.add_argument("--likert-readers", default=None,
                   help="comma-separated readers scoring Likert (default R5,R7 as in the "
                        "paper, or the last two readers when fewer than 7)")
    p.add_argument("--consensus", help="also write the consensus CSV here")
    p.add_argument("--repeat-fraction", type=float, default=0.1,
                   help="fraction of a reader's pairs shown twice (default 0.1)")
    p.add_argument("--coverage", type=float, default=None,
                   help="fraction of pairs each reader sees (default: the paper's reader "
                        "vote counts / 2916, capped at 1)")
    p.add_argument("--target-intra", type=float, default=0.949,
                   help="expected intra-reader agreement (default 0.949: the paper's Table 1 "
                        "diagonal)")
    p.add_argument("--target-inter", type=float, default=0.675,
                   help="expected mean inter-reader agreement (default 0.675: Table 1's "
                        "off-diagonal mean; the text's 61.47 %% is a typo)")
    p.add_argument("--target-similar", type=float, default=0.12,
                   help="expected fraction of 'similar' answers (default 0.12)")

    a = reg.command("agreement", "rankiq.training.commands.panel_cmd:agreement",
                    "reader agreement statistics of rankings (and Likert scores)")
    a.add_argument("--rankings", required=True, help="rankings CSV (reader,pair_id,outcome)")
    a.add_argument("--likert", help="Likert CSV (reader,pair_id,image,score)")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.add_argument("--consensus", help="write the consensus CSV here")
    a.add_argument("--pairs", help="pairs HDF5 file: also report consensus vs MSE/SSIM ranks")
    a.add_argument("--kappa-ci", choices=("asymptotic", "bootstrap"), default="asymptotic",
                   help="kappa_w 95%% CI: Fleiss-Cohen-Everitt asymptotic (default) or a "
                        "bootstrap over pairs")
    a.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")

    i = reg.command("import-votes", "rankiq.training.commands.panel_cmd:import_votes",
                    "convert the paper's ranking-page CSVs (Results_<initials>_*.csv) to a "
                    "rankings CSV")
    i.add_argument("files", nargs="+", help="ranking-page CSV files")
    i.add_argument("--out", required=True, help="rankings CSV to write")
    i.add_argument("--reader", help="reader name for every file (default: from the file name)")


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    from rankiq.service.readers.rankings import RankingsFormatError

    if not lo <= value <= hi:
        raise RankingsFormatError(f"{name} must be in [{lo}, {hi}], got {value}")


def _metric_report(cons: list, labels: dict[str, dict[int, str]]) -> dict[str, Any]:
    from rankiq.service.readers.agreement import agreement_with_labels

    return {name: agreement_with_labels(cons, lab) for name, lab in labels.items()}


def _format_metric_report(rep: dict[str, Any]) -> list[str]:
    lines = []
    for name, r in rep.items():
        if r["all"] is None:
            continue
        d = "-" if r["directional"] is None else f"{100 * r['directional']:.1f} %"
        lines.append(f"consensus vs {name.upper()} ranking: {100 * r['all']:.1f} % of "
                     f"{r['n']} labelled pairs; {d} of the {r['n_directional']} pairs whose "
                     "consensus is not 'similar'")
    return lines


def _contrast_and_time_lines(votes: list, scores: list | None, pair_ids: Any,
                             contrasts: Any) -> list[str]:
    """Agreement by contrast (the paper's Table S2) and the paired t-test of ranking vs
    Likert seconds per pair (Table 2), as printed lines."""
    import numpy as np
    from rankiq.service.readers.agreement import agreement_by_group, paired_times

    def pct(m: float | None, sd: float | None = None) -> str:
        if m is None:
            return "-"
        return f"{100 * m:.1f}" + ("" if sd is None else f" +- {100 * sd:.1f}")

    groups = {int(p): str(c) for p, c in zip(pair_ids, contrasts, strict=True) if str(c)}
    lines = []
    for g, e in agreement_by_group(votes, groups).items():
        lines.append(f"agreement on {g} ({e['n_pairs']} pairs, {e['n_votes']} votes): intra "
                     f"{pct(e['intra_mean'], e['intra_sd'])} %, inter "
                     f"{pct(e['inter_mean'], e['inter_sd'])} %, overall {pct(e['overall'])} %")
    if scores:
        r, lk = paired_times(votes, scores)
        if len(r) >= 2:
            from scipy.stats import ttest_rel

            t = ttest_rel(r, lk)
            lines.append(f"seconds per pair, ranking {np.mean(r):.2f} vs Likert {np.mean(lk):.2f} "
                         f"(paired t-test over {len(r)} reader-pairs: t = {t.statistic:.2f}, "
                         f"p = {t.pvalue:.3g}; paper 3.95 vs 8.6)")
    return lines


def _check_panel_args(args: argparse.Namespace) -> None:
    """The numeric options of ``rankiq panel`` in their ranges (else a one-line error)."""
    from rankiq.service.readers.rankings import RankingsFormatError

    if args.readers < 1:
        raise RankingsFormatError("--readers must be >= 1")
    _check_range("--repeat-fraction", args.repeat_fraction, 0.0, 1.0)
    _check_range("--target-intra", args.target_intra, 0.5, 1.0)
    _check_range("--target-inter", args.target_inter, 0.0, 1.0)
    _check_range("--target-similar", args.target_similar, 0.0, 0.9)
    if args.coverage is not None:
        _check_range("--coverage", args.coverage, 1e-6, 1.0)


def _likert_plan(args: argparse.Namespace, pan: Any, names: list[str], n_pairs: int
                 ) -> tuple[list[str], Any]:
    """``(Likert readers, sorted pair indices they score)`` of ``--likert`` (none without it);
    the pairs are drawn from the panel's generator, so this runs between calibration and the
    simulation."""
    import numpy as np
    from rankiq.service.readers.rankings import RankingsFormatError

    if not args.likert:
        return [], np.zeros(0, np.int64)
    if args.likert_readers:
        readers = [r.strip() for r in args.likert_readers.split(",") if r.strip()]
        unknown = [r for r in readers if r not in names]
        if unknown:
            raise RankingsFormatError(f"--likert-readers: unknown reader(s) "
                                      f"{', '.join(unknown)} (readers are R1..R{len(names)})")
    else:
        readers = ["R5", "R7"] if len(names) >= 7 else names[-2:]
    idx = np.sort(pan.rng.choice(n_pairs, size=min(args.likert_pairs, n_pairs), replace=False))
    return readers, idx


def _mean_observer_vs(observer: dict[int, str], labels: dict[str, dict[int, str]]
                      ) -> dict[str, float]:
    """Agreement of the noise-free panel-mean observer's labels with each metric's labels
    (fraction of the pairs both label)."""
    import numpy as np

    return {m: float(np.mean([observer[k] == v for k, v in lab.items() if k in observer]))
            for m, lab in labels.items() if lab}


def _ceiling_lines(cons: list, observer: dict[str, dict[int, str]]) -> list[str]:
    """The consensus against the noise-free panel-mean observer and its parts
    (:func:`rankiq.training.panel.observer_labels`): how far a metric can follow the labels."""
    rep = _metric_report(cons, observer)
    if rep["observer"]["directional"] is None:
        return []

    def pct(name: str) -> str:
        d = rep[name]["directional"]
        return "-" if d is None else f"{100 * d:.1f} %"

    parts = ", ".join(f"{name} {pct(name)}" for name in observer
                      if name not in ("observer", "severities", "image_measures"))
    n = rep["observer"]["n_directional"]
    return [f"consensus vs the noise-free panel-mean observer (what a metric that perceives "
            f"as the average simulated reader reaches): {pct('observer')} of the {n} pairs "
            f"whose consensus is not 'similar'; its artefact severities alone "
            f"{pct('severities')}, its reference-based image measures alone "
            f"{pct('image_measures')} ({parts})"]


def _calibration_lines(args: argparse.Namespace, n_readers: int, n_pairs: int,
                       prm: Any) -> list[str]:
    """The run and its calibrated observer parameters, with the closed-form expectations."""
    e = {k: ("-" if v != v else f"{100 * v:.2f}") for k, v in prm.expected.items()}  # NaN: -
    return [f"rankiq panel: {n_readers} readers on {n_pairs} pairs from {args.pairs} "
            f"(seed {args.seed})",
            f"calibrated: sigma={prm.sigma:.4f} and jnd0={prm.jnd0:.4f} (x each reader's "
            f"median |Q1-Q2|), idiosyncrasy kappa={prm.kappa:.4f}",
            f"expected (closed form): intra {e['intra']} %, inter "
            f"{e['inter']} %, similar {e['similar']} % (targets "
            f"{100 * args.target_intra:.1f} / {100 * args.target_inter:.1f} / "
            f"{100 * args.target_similar:.0f} %)"]


def _measured_lines(summary: dict[str, Any], names: list[str]) -> list[str]:
    """Measured intra/inter/overall agreement (with the paper's values) and the consensus."""

    def ms(m: float | None, sd: float | None) -> str:
        if m is None:
            return "-"
        return f"{100 * m:.2f} %" + ("" if sd is None else f" +- {100 * sd:.2f}")

    intra = summary["intra"]
    lines = ["measured intra-reader agreement: " + ", ".join(
        f"{r} {100 * intra[r]:.1f}" if r in intra else f"{r} -" for r in names)
        + " (repeated pairs per reader: "
        + ", ".join(str(summary["readers"][r]["n_repeated_pairs"]) for r in names
                    if r in summary["readers"]) + ")"]
    inter = list(summary["inter"].values())
    lines.append(f"measured intra-reader mean: {ms(summary['intra_mean'], summary['intra_sd'])} "
                 "(population SD; paper: 94.88 +- 2.44)")
    rng_txt = f", range {100 * min(inter):.1f}-{100 * max(inter):.1f}" if inter else ""
    lines.append(f"measured inter-reader mean: {ms(summary['inter_mean'], summary['inter_sd'])}"
                 f"{rng_txt} (population SD; paper Table 1: 67.47 +- 5.51, range 53.9-77.8)")
    if summary["overall"] is not None:
        lines.append(f"measured overall agreement: {100 * summary['overall']:.2f} % "
                     "(paper: 81.4)")
    c = summary["consensus"]
    lines.append(f"votes: {summary['n_votes']} (+{summary['n_skips']} skips); consensus on "
                 f"{c['n_pairs']} pairs (1: {c['1']}, similar: {c['similar']}, 2: {c['2']}), "
                 f"{c['n_no_consensus']} ties without consensus")
    return lines


def _likert_lines(summary: dict[str, Any]) -> list[str]:
    """Likert agreement (kappa_w and its CI) and Likert-derived vs direct ranks, with the
    paper's values."""
    lines = []
    for key, le in summary["likert"].items():
        kw = "-" if le["kappa_w"] is None else f"{le['kappa_w']:.2f}"
        ci = le["kappa_ci"]
        cis = "" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]"
        lines.append(f"Likert {key}: kappa_w {kw}{cis}, agreement {100 * le['agreement']:.1f} % "
                     f"(paper 0.47, 25 %); Likert-derived ranks "
                     f"{100 * le['rank_agreement']:.1f} % (paper 65.4); direct ranks on the "
                     f"same pairs {100 * (le['direct_rank_agreement'] or 0):.1f} % (paper 70.4)")
    if summary["likert_vs_rank"]:
        lines.append("Likert-derived vs direct ranks: " + ", ".join(
            f"{r} {100 * v:.1f} %" for r, v in summary["likert_vs_rank"].items())
            + " (paper: 59.6, 51.9)")
    return lines


def panel(args: argparse.Namespace) -> int:
    """``rankiq panel``: calibrate, simulate, write, and print the measured statistics."""
    from rankiq.service.readers.agreement import consensus, summarize, vote_counts, write_consensus
    from rankiq.service.readers.rankings import RankingsFormatError, write_likert, write_rankings
    from rankiq.training.panel import Panel, load_pairs, metric_labels, observer_labels

    _check_panel_args(args)
    data = load_pairs(args.pairs)
    if data.n < 2:
        raise RankingsFormatError("needs at least 2 pairs", source=args.pairs)
    pan = Panel(data, args.readers, args.seed, args.coverage)
    prm = pan.calibrate(args.target_intra, args.target_inter, args.target_similar)
    names = [d.name for d in pan.draws]
    likert_readers, likert_idx = _likert_plan(args, pan, names, data.n)
    # the Likert readers also rank their Likert pairs
    votes = pan.simulate(args.repeat_fraction, force={r: likert_idx for r in likert_readers})
    write_rankings(args.out, votes)
    scores = pan.simulate_likert(likert_readers, likert_idx) if args.likert else None
    if args.likert:
        assert scores is not None
        write_likert(args.likert, scores)
    summary = summarize(votes, scores)
    cons = consensus(vote_counts(votes))
    labels = metric_labels(data)
    observer = observer_labels(pan)
    obs_vs = _mean_observer_vs(observer["observer"], labels)
    lines = [*_calibration_lines(args, len(names), data.n, prm),
             *_measured_lines(summary, names),
             *_format_metric_report(_metric_report(cons, labels)),
             *_ceiling_lines(cons, observer),
             "noise-free panel-mean observer vs " + ", ".join(
                 f"{m.upper()} {100 * v:.1f} %" for m, v in obs_vs.items()),
             *_likert_lines(summary),
             *_contrast_and_time_lines(votes, scores, data.pair_id, data.contrast)]
    print("\n".join(lines))
    written = [args.out] + ([args.likert] if args.likert else [])
    if args.consensus:
        write_consensus(args.consensus, cons)
        written.append(args.consensus)
    print("wrote " + ", ".join(written))
    return 0


def agreement(args: argparse.Namespace) -> int:
    """``rankiq agreement``: statistics of a rankings CSV (and a Likert CSV)."""
    from rankiq.service.readers.agreement import (
        consensus,
        format_summary,
        summarize,
        vote_counts,
        write_consensus,
    )
    from rankiq.service.readers.rankings import read_likert, read_rankings

    votes = read_rankings(args.rankings)
    scores = read_likert(args.likert) if args.likert else None
    summary = summarize(votes, scores, kappa_ci_method=args.kappa_ci, seed=args.seed)
    cons = consensus(vote_counts(votes))
    if args.pairs:
        from rankiq.training.panel import read_metric_labels

        summary["metric_agreement"] = _metric_report(cons, read_metric_labels(args.pairs))
    if args.consensus:
        n = write_consensus(args.consensus, cons)
        summary["consensus"]["written"] = n
    if args.json:
        print(json.dumps(summary, default=float, indent=1))
    else:
        print(format_summary(summary))
        if "metric_agreement" in summary:
            print()
            print("\n".join(_format_metric_report(summary["metric_agreement"])))
        if args.consensus:
            print(f"wrote {n} consensus rows to {args.consensus} "
                  f"({summary['consensus']['n_no_consensus']} tied pairs omitted)")
    return 0


def import_votes(args: argparse.Namespace) -> int:
    """``rankiq import-votes``: ranking-page CSVs -> one rankings CSV."""
    from rankiq.service.readers.rankings import import_page_csv, write_rankings

    votes = []
    for path in args.files:
        got = import_page_csv(path, reader=args.reader)
        votes += got
        print(f"{path}: {len(got)} votes by {got[0].reader if got else '-'}")
    write_rankings(args.out, votes)
    print(f"wrote {len(votes)} votes to {args.out}")
    return 0
