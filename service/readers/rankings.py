"""Readers' votes and Likert scores: data model, CSV readers/writers and the paper-page importer.

Formats (one row per record, UTF-8, comma separated, header required except for the importer):

- Rankings CSV: ``reader,pair_id,outcome`` plus optional ``seconds,timestamp``. ``outcome`` is
  ``1`` (image 1 better), ``2`` (image 2 better), ``similar`` or ``skip``. Skips are kept in the
  file but excluded from every statistic. ``1``/``2`` refer to the images as stored in the pairs
  file; left/right display order is the collector's business.
- Likert CSV: ``reader,pair_id,image,score`` plus optional ``seconds``; ``image`` is 1 or 2 and
  ``score`` an integer 1-5 (5 = best).
- Paper ranking page (import only): no header; ``better,worse,example_id[,...]``. ``2,2,id``
  means similar; otherwise the columns hold the image indices (0-based ``0,1``/``1,0`` or
  1-based ``1,2``/``2,1``: the two schemes never overlap, so the file's scheme is detected).
  The reader is taken from the file name ``Results_<initials>_....csv``.

Bad rows raise :class:`RankingsFormatError` naming the file and the line.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rankiq.service.errors import RankIQError

#: Outcomes in class order: 0 = image 1 better, 1 = similar, 2 = image 2 better.
OUTCOMES: tuple[str, str, str] = ("1", "similar", "2")
SKIP = "skip"
OUTCOME_INDEX: dict[str, int] = {o: i for i, o in enumerate(OUTCOMES)}

RANKING_COLUMNS = ("reader", "pair_id", "outcome")
RANKING_OPTIONAL = ("seconds", "timestamp")
LIKERT_COLUMNS = ("reader", "pair_id", "image", "score")
LIKERT_OPTIONAL = ("seconds",)
LIKERT_MIN, LIKERT_MAX = 1, 5

_PAGE_NAME = re.compile(r"^Results_([^_]+)_.*\.csv$", re.IGNORECASE)


class RankingsFormatError(RankIQError):
    """A rankings, Likert or ranking-page CSV that cannot be read (bad header, value or row)."""

    reason = "bad_rankings"


@dataclass(frozen=True)
class Vote:
    """One reader's answer for one presentation of a pair.

    ``outcome`` is one of :data:`OUTCOMES` or :data:`SKIP`; ``seconds`` the time spent (or None).
    """

    reader: str
    pair_id: int
    outcome: str
    seconds: float | None = None
    timestamp: str | None = None


@dataclass(frozen=True)
class LikertScore:
    """One reader's 1-5 score of one image (``image`` 1 or 2) of a pair."""

    reader: str
    pair_id: int
    image: int
    score: int
    seconds: float | None = None


def _err(path: Path | str, line: int | None, msg: str) -> RankingsFormatError:
    where = f"line {line}: " if line is not None else ""
    return RankingsFormatError(f"{where}{msg}", source=str(path))


def _reader(value: str, path: Path | str, line: int) -> str:
    reader = value.strip()
    if not reader:
        raise _err(path, line, "empty reader")
    if "|" in reader:  # "A|B" keys the inter-reader statistics
        raise _err(path, line, f"reader {reader!r} contains '|'")
    return reader


def _int(value: str, what: str, path: Path | str, line: int) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise _err(path, line, f"{what} {value.strip()!r} is not an integer") from None


def _seconds(value: str | None, path: Path | str, line: int) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        s = float(value)
    except ValueError:
        raise _err(path, line, f"seconds {value.strip()!r} is not a number") from None
    if not s >= 0:  # also rejects NaN
        raise _err(path, line, f"seconds {value.strip()!r} must be >= 0")
    return s


def _open(path: Path | str) -> TextIO:
    """Open a CSV for reading (BOM tolerated); a missing/unreadable file is a format error."""
    try:
        return Path(path).open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise RankingsFormatError(f"cannot open: {exc.strerror}", source=str(path)) from None


def _rows(path: Path | str, required: Sequence[str]) -> Iterable[tuple[int, dict[str, str]]]:
    """Yield (line number, row) of a headed CSV after checking the header has ``required``."""
    with _open(path) as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise _err(path, None, "empty file (expected a header)") from None
        header = [h.strip().lower() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise _err(path, 1, f"missing column(s) {', '.join(missing)} in header "
                                f"(expected {','.join(required)})")
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise _err(path, line, f"expected {len(header)} fields, found {len(row)}")
            yield line, dict(zip(header, row, strict=True))


def read_rankings(path: Path | str) -> list[Vote]:
    """Read a rankings CSV (see module docstring). Raises :class:`RankingsFormatError`."""
    votes = []
    for line, row in _rows(path, RANKING_COLUMNS):
        outcome = row["outcome"].strip().lower()
        if outcome not in OUTCOME_INDEX and outcome != SKIP:
            raise _err(path, line, f"unknown outcome {row['outcome'].strip()!r} "
                                   "(expected 1, 2, similar or skip)")
        ts = (row.get("timestamp") or "").strip() or None
        votes.append(Vote(_reader(row["reader"], path, line),
                          _int(row["pair_id"], "pair_id", path, line), outcome,
                          _seconds(row.get("seconds"), path, line), ts))
    return votes


def write_rankings(path: Path | str, votes: Iterable[Vote]) -> None:
    """Write votes as a rankings CSV with the optional ``seconds,timestamp`` columns."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(RANKING_COLUMNS + RANKING_OPTIONAL)
        for v in votes:
            w.writerow([v.reader, v.pair_id, v.outcome,
                        "" if v.seconds is None else f"{v.seconds:.2f}", v.timestamp or ""])


def read_likert(path: Path | str) -> list[LikertScore]:
    """Read a Likert CSV; a second score of the same reader, pair and image is an error."""
    scores: list[LikertScore] = []
    seen: dict[tuple[str, int, int], int] = {}
    for line, row in _rows(path, LIKERT_COLUMNS):
        reader = _reader(row["reader"], path, line)
        pair_id = _int(row["pair_id"], "pair_id", path, line)
        image = _int(row["image"], "image", path, line)
        if image not in (1, 2):
            raise _err(path, line, f"image {image} must be 1 or 2")
        score = _int(row["score"], "score", path, line)
        if not LIKERT_MIN <= score <= LIKERT_MAX:
            raise _err(path, line, f"score {score} out of range {LIKERT_MIN}-{LIKERT_MAX}")
        key = (reader, pair_id, image)
        if key in seen:
            raise _err(path, line, f"second score for reader {reader}, pair {pair_id}, "
                                   f"image {image} (first on line {seen[key]})")
        seen[key] = line
        scores.append(LikertScore(reader, pair_id, image, score,
                                  _seconds(row.get("seconds"), path, line)))
    return scores


def write_likert(path: Path | str, scores: Iterable[LikertScore]) -> None:
    """Write Likert scores with the optional ``seconds`` column."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(LIKERT_COLUMNS + LIKERT_OPTIONAL)
        for s in scores:
            w.writerow([s.reader, s.pair_id, s.image, s.score,
                        "" if s.seconds is None else f"{s.seconds:.2f}"])


def reader_from_page_filename(path: Path | str) -> str:
    """The reader's initials from a ranking-page file name ``Results_<initials>_....csv``."""
    m = _PAGE_NAME.match(Path(path).name)
    if not m:
        raise RankingsFormatError("file name does not match Results_<initials>_....csv; "
                                  "pass the reader explicitly", source=str(path))
    return m.group(1)


def import_page_csv(path: Path | str, reader: str | None = None) -> list[Vote]:
    """Votes from one CSV written by the paper's ranking page.

    Rows are ``better,worse,example_id`` (extra columns ignored); ``2,2,id`` is "similar". The
    index scheme (0-based ``0,1``/``1,0`` or 1-based ``1,2``/``2,1``) is detected per file:
    a 0 anywhere in the index columns means 0-based. ``example_id`` becomes ``pair_id``.
    """
    reader = _reader(reader, path, 0) if reader else reader_from_page_filename(path)
    rows: list[tuple[int, int, int, int]] = []
    with _open(path) as fh:
        cr = csv.reader(fh)
        for row in cr:
            line = cr.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 3:
                raise _err(path, line, f"expected 3 fields (better,worse,example_id), "
                                       f"found {len(row)}")
            rows.append((line, _int(row[0], "better index", path, line),
                         _int(row[1], "worse index", path, line),
                         _int(row[2], "example id", path, line)))
    zero_based = any(0 in (b, w) for _, b, w, _ in rows)
    first, second = (0, 1) if zero_based else (1, 2)
    votes = []
    for line, better, worse, pid in rows:
        if (better, worse) == (2, 2):
            outcome = "similar"
        elif (better, worse) == (first, second):
            outcome = "1"
        elif (better, worse) == (second, first):
            outcome = "2"
        else:
            scheme = "0-based (0,1 / 1,0)" if zero_based else "1-based (1,2 / 2,1)"
            raise _err(path, line, f"indices {better},{worse} are not a vote in this file's "
                                   f"{scheme} scheme nor 2,2 (similar)")
        votes.append(Vote(reader, pid, outcome))
    return votes
