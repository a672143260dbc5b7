"""Labelled pairs for training: pairs file + consensus (or votes) -> network inputs.

Every image goes through :func:`rankiq.service.preprocess.prepare`, the one normaliser shared with
serving, on the training grid. Labels come from a consensus CSV
(``pair_id,outcome,...`` as written by ``rankiq agreement --consensus``) or from a raw rankings
CSV (``reader,pair_id,outcome``), whose consensus is computed with
:func:`rankiq.service.readers.agreement.consensus`. Skipped votes never reach training:
``skip`` votes are dropped before the consensus, a ``skip`` outcome in a consensus file drops
the row, and pairs without a consensus (ties) are left out.

Class order (everywhere): 0 = image 1 better, 1 = similar, 2 = image 2 better.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
from rankiq.service.errors import RankIQError
from rankiq.service.readers.rankings import OUTCOME_INDEX, SKIP, RankingsFormatError

CHUNK = 32  # pairs prepared at a time (bounds temporary memory)


class DataError(RankIQError):
    """Labels and pairs file that do not fit together."""

    reason = "bad_training_data"


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            row = next(csv.reader(fh), None)
    except OSError as exc:
        raise RankingsFormatError(f"cannot open: {exc.strerror}", source=str(path)) from None
    if not row:
        raise RankingsFormatError("empty file (expected a header)", source=str(path))
    return [h.strip().lower() for h in row]


def read_labels(path: str | Path) -> dict[int, int]:
    """Consensus class per pair id from a consensus CSV or a rankings (votes) CSV.

    Returns:
        ``{pair_id: class}`` with class 0 (image 1 better), 1 (similar) or 2 (image 2 better);
        skipped votes and pairs without consensus are absent.
    """
    path = Path(path)
    header = _header(path)
    if "reader" in header:  # raw votes: consensus of the readers' own majority votes
        from rankiq.service.readers.agreement import consensus, vote_counts
        from rankiq.service.readers.rankings import read_rankings

        rows = consensus(vote_counts(read_rankings(path)))
        return {r.pair_id: OUTCOME_INDEX[r.outcome] for r in rows if r.outcome is not None}
    if "pair_id" not in header or "outcome" not in header:
        raise RankingsFormatError("missing column(s) pair_id/outcome in header (expected a "
                                  "consensus CSV pair_id,outcome,... or votes "
                                  "reader,pair_id,outcome)", source=str(path))
    labels: dict[int, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, fieldnames=header)
        next(reader)
        for row in reader:
            line = reader.line_num
            pid_s, out = (row.get("pair_id") or "").strip(), (row.get("outcome") or "")
            out = out.strip().lower()
            if not pid_s and not out:
                continue
            try:
                pid = int(pid_s)
            except ValueError:
                raise RankingsFormatError(f"line {line}: pair_id {pid_s!r} is not an integer",
                                          source=str(path)) from None
            if out in ("", SKIP):  # skipped / undecided: never a training label
                continue
            if out not in OUTCOME_INDEX:
                raise RankingsFormatError(f"line {line}: unknown outcome {out!r} (expected 1, "
                                          "2 or similar)", source=str(path))
            if pid in labels and labels[pid] != OUTCOME_INDEX[out]:
                raise RankingsFormatError(f"line {line}: pair {pid} has two different "
                                          "consensus outcomes", source=str(path))
            labels[pid] = OUTCOME_INDEX[out]
    return labels


@dataclass
class RankingData:
    """Labelled pairs ready for a scorer.

    Attributes:
        pair_id: int64 ``(N,)``; row: int64 ``(N,)`` row in the pairs file.
        label: int64 ``(N,)`` consensus class.
        source_id: object ``(N,)`` subject id (for grouped folds).
        x1, x2: float32 ``(N, C, H, W)`` network inputs of image 1 and 2 (``image - reference``
            in reference mode, the normalised image otherwise) on ``grid``; for the metric
            baselines float64 ``(N, 1)`` metric values instead.
        severity: ``{name: float32 (N, 2)}`` from the pairs file.
        metrics: ``{"mse"|"ssim": float64 (N, 2)}`` of the prepared magnitudes (when computed).
        grid: ``(H, W)``; mode, input_kind as requested; size: the pairs file's image side.
    """

    pair_id: np.ndarray
    row: np.ndarray
    label: np.ndarray
    source_id: np.ndarray
    x1: np.ndarray
    x2: np.ndarray
    grid: tuple[int, int]
    mode: str
    input_kind: str
    size: int
    severity: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)


def match_labels(labels: dict[int, int], pair_ids: np.ndarray, rankings: str, pairs: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the labelled pairs: ``(pair_id, row, label)`` sorted by pair id.

    Raises:
        DataError: no labels, or labels naming pair ids absent from the pairs file.
    """
    if not labels:
        raise DataError("no labelled pairs (every vote skipped or without consensus)",
                        source=rankings)
    row_of = {int(p): i for i, p in enumerate(pair_ids)}
    missing = sorted(p for p in labels if p not in row_of)
    if missing:
        eg = ", ".join(str(p) for p in missing[:3])
        raise DataError(f"{len(missing)} labelled pair id(s) are not in {pairs} (e.g. {eg}); "
                        "rankings and pairs file do not belong together", source=rankings)
    pids = np.array(sorted(labels), dtype=np.int64)
    rows = np.array([row_of[int(p)] for p in pids], dtype=np.int64)
    return pids, rows, np.array([labels[int(p)] for p in pids], dtype=np.int64)


def prepare_pairs(ref: np.ndarray, img1: np.ndarray, img2: np.ndarray, *, mode: str,
                  input_kind: str, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs of a chunk of pairs through :func:`rankiq.service.preprocess.prepare`.

    Args:
        ref, img1, img2: complex ``(n, S, S)``.

    Returns:
        float32 ``(n, C, H, W)`` twice (image 1, image 2).
    """
    from rankiq.service.preprocess import prepare

    use_ref = ref if mode == "reference" else None
    a = prepare(img1, use_ref, grid=grid, input_kind=input_kind).network_input  # type: ignore[arg-type]
    b = prepare(img2, use_ref, grid=grid, input_kind=input_kind).network_input  # type: ignore[arg-type]
    return a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)


def prepared_metrics(ref: np.ndarray, img1: np.ndarray, img2: np.ndarray,
                     grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """MSE and SSIM ``(n, 2)`` of the prepared magnitude images against the prepared
    reference (the baselines' inputs)."""
    from rankiq.service.preprocess import prepare
    from rankiq.training.baselines import metric_values

    out = {"mse": np.zeros((len(ref), 2)), "ssim": np.zeros((len(ref), 2))}
    for j, img in enumerate((img1, img2)):
        p = prepare(img, ref, grid=grid, input_kind="magnitude")
        assert p.reference is not None
        for m in out:
            out[m][:, j] = metric_values(m, p.image[:, 0], p.reference[:, 0])
    return out


class _Pairs:
    """Minimal reader of the pairs-file datasets training needs (the layout of
    :mod:`rankiq.training.pairs`; tolerant of files without ``config_json``, e.g. test fixtures)."""

    def __init__(self, path: str | Path) -> None:
        import h5py
        from rankiq.training.pairs import FORMAT, PairsFileError

        p = Path(path)
        if not p.is_file():
            raise PairsFileError("no such pairs file", source=str(p))
        try:
            self.h5 = h5py.File(p, "r")
        except OSError:
            raise PairsFileError("not a readable HDF5 file", source=str(p)) from None
        fmt = self.h5.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != FORMAT or "n_pairs" not in self.h5.attrs:
            self.h5.close()
            raise PairsFileError(f"not a {FORMAT} file", source=str(p))
        self.n = int(self.h5.attrs["n_pairs"])
        self.size = int(self.h5.attrs.get("size", self.h5["reference"].shape[-1]))

    def meta(self) -> dict[str, np.ndarray]:
        n = self.n
        out = {"pair_id": self.h5["pair_id"][:n],
               "source_id": np.asarray(self.h5["source_id"].asstr()[:n], dtype=object)}
        if "severity" in self.h5:
            for k in self.h5["severity"]:
                out[f"severity/{k}"] = self.h5[f"severity/{k}"][:n]
        return out

    def __enter__(self) -> _Pairs:
        return self

    def __exit__(self, *exc) -> None:
        self.h5.close()


def open_pairs(path: str | Path) -> _Pairs:
    """Open a pairs file for training (:class:`rankiq.training.pairs.PairsFileError` if
    unusable)."""
    return _Pairs(path)


def load_ranking_data(pairs: str | Path, rankings: str | Path, *, mode: str = "reference",
                      input_kind: str = "magnitude", grid: tuple[int, int] | None = None,
                      metric: str | None = None, with_metrics: bool = False) -> RankingData:
    """Read the labelled pairs and prepare them for training.

    Args:
        pairs: pairs HDF5 file (``rankiq simulate``).
        rankings: consensus CSV or rankings CSV.
        mode: ``"reference"`` or ``"no-reference"``.
        input_kind: ``"magnitude"`` or ``"complex"``.
        grid: training grid ``(H, W)``; default the pairs file's size.
        metric: ``"mse"``/``"ssim"``: ``x1``/``x2`` hold that metric ``(N, 1)`` instead of images.
        with_metrics: also fill ``metrics`` (MSE and SSIM of both images).
    """
    from rankiq.training.corruptions import SEVERITY_NAMES

    labels = read_labels(rankings)
    with open_pairs(pairs) as pf:
        meta = pf.meta()
        pids, rows, y = match_labels(labels, meta["pair_id"], str(rankings), str(pairs))
        grid = cast("tuple[int, int]", tuple(grid)) if grid else (pf.size, pf.size)
        n = len(rows)
        metrics: dict[str, np.ndarray] = {}
        if metric is None:
            c = 1 if input_kind == "magnitude" else 2
            x1 = np.zeros((n, c, *grid), np.float32)
            x2 = np.zeros((n, c, *grid), np.float32)
        for a in range(0, n, CHUNK):
            r = rows[a:a + CHUNK]
            order = np.argsort(r)  # h5py fancy indexing needs increasing indices
            sel = r[order]
            ref, i1, i2 = (pf.h5[k][sel] for k in ("reference", "image1", "image2"))
            inv = np.empty_like(order)
            inv[order] = np.arange(len(order))
            ref, i1, i2 = ref[inv], i1[inv], i2[inv]
            if metric is None:
                x1[a:a + CHUNK], x2[a:a + CHUNK] = prepare_pairs(
                    ref, i1, i2, mode=mode, input_kind=input_kind, grid=grid)
            if metric is not None or with_metrics:
                part = prepared_metrics(ref, i1, i2, grid)
                for k, v in part.items():
                    metrics.setdefault(k, np.zeros((n, 2)))[a:a + CHUNK] = v
        if metric is not None:
            x1, x2 = metrics[metric][:, :1].copy(), metrics[metric][:, 1:].copy()
        severity = {k: meta[f"severity/{k}"][rows] for k in SEVERITY_NAMES
                    if f"severity/{k}" in meta}
        size = pf.size
    return RankingData(pair_id=pids, row=rows, label=y, source_id=meta["source_id"][rows],
                       x1=x1, x2=x2, grid=grid, mode=mode,
                       input_kind=input_kind, size=size, severity=severity, metrics=metrics)
