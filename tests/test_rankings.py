"""Rankings/Likert CSV formats, validation errors and the paper-page importer."""

from __future__ import annotations

from pathlib import Path

import pytest
from rankiq.service.cli import EXIT_INPUT, main
from rankiq.service.errors import RankIQError
from rankiq.service.readers.rankings import (
    LikertScore,
    RankingsFormatError,
    Vote,
    import_page_csv,
    read_likert,
    read_rankings,
    reader_from_page_filename,
    write_likert,
    write_rankings,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_rankings_roundtrip(tmp_path):
    votes = [Vote("R1", 3, "1", 2.5, "2024-01-01T09:00:00"), Vote("R1", 4, "similar"),
             Vote("R2", 3, "2", 1.0), Vote("R2", 5, "skip")]
    write_rankings(tmp_path / "r.csv", votes)
    assert read_rankings(tmp_path / "r.csv") == votes


def test_rankings_optional_columns_and_case(tmp_path):
    p = _write(tmp_path / "r.csv", "Reader,Pair_ID,Outcome\nR1,7,Similar\nR1,8,SKIP\n\n")
    assert read_rankings(p) == [Vote("R1", 7, "similar"), Vote("R1", 8, "skip")]


def test_likert_roundtrip(tmp_path):
    scores = [LikertScore("R5", 1, 1, 3, 4.2), LikertScore("R5", 1, 2, 5)]
    write_likert(tmp_path / "l.csv", scores)
    assert read_likert(tmp_path / "l.csv") == scores


@pytest.mark.parametrize(("text", "line", "words"), [
    ("reader,pair_id,outcome\nR1,1,1\nR1,2,better\n", 3, "unknown outcome 'better'"),
    ("reader,pair_id\nR1,1\n", 1, "missing column(s) outcome"),
    ("reader,pair_id,outcome\nR1,1\n", 2, "expected 3 fields"),
    ("reader,pair_id,outcome\nR1,x1,1\n", 2, "pair_id 'x1' is not an integer"),
    ("reader,pair_id,outcome\n,1,1\n", 2, "empty reader"),
    ("reader,pair_id,outcome\nA|B,1,1\n", 2, "contains '|'"),
    ("reader,pair_id,outcome,seconds\nR1,1,1,-3\n", 2, "must be >= 0"),
])
def test_rankings_errors_name_the_line(tmp_path, text, line, words):
    p = _write(tmp_path / "bad.csv", text)
    with pytest.raises(RankingsFormatError) as exc:
        read_rankings(p)
    msg = str(exc.value)
    assert isinstance(exc.value, RankIQError)
    assert "bad.csv" in msg and f"line {line}:" in msg and words in msg


@pytest.mark.parametrize(("text", "line", "words"), [
    ("reader,pair_id,image,score\nR5,1,1,3\nR5,1,2,7\n", 3, "score 7 out of range 1-5"),
    ("reader,pair_id,image,score\nR5,1,3,3\n", 2, "image 3 must be 1 or 2"),
    ("reader,pair_id,score\nR5,1,3\n", 1, "missing column(s) image"),
    ("reader,pair_id,image,score\nR5,1,1,3\nR5,1,1,4\n", 3, "first on line 2"),
    ("reader,pair_id,image,score\nR5,1,1,3.5\n", 2, "score '3.5' is not an integer"),
])
def test_likert_errors_name_the_line(tmp_path, text, line, words):
    p = _write(tmp_path / "bad.csv", text)
    with pytest.raises(RankingsFormatError) as exc:
        read_likert(p)
    assert f"line {line}:" in str(exc.value) and words in str(exc.value)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(RankingsFormatError, match="empty file"):
        read_rankings(_write(tmp_path / "e.csv", ""))
    with pytest.raises(RankingsFormatError, match="cannot open"):
        read_rankings(tmp_path / "nope.csv")


def test_page_import_one_based(tmp_path):
    p = _write(tmp_path / "Results_LBE_2021-06-01.csv", "1,2,10\n2,1,11\n2,2,12\n")
    assert reader_from_page_filename(p) == "LBE"
    assert import_page_csv(p) == [Vote("LBE", 10, "1"), Vote("LBE", 11, "2"),
                                  Vote("LBE", 12, "similar")]


def test_page_import_zero_based_and_extra_columns(tmp_path):
    p = _write(tmp_path / "Results_AP_x.csv", "0,1,5,3.2\n1,0,6,1.0\n2,2,7,0.5\n")
    assert [v.outcome for v in import_page_csv(p)] == ["1", "2", "similar"]
    assert import_page_csv(p, reader="R5")[0] == Vote("R5", 5, "1")


def test_page_import_errors(tmp_path):
    bad = _write(tmp_path / "Results_JS_a.csv", "1,2,10\n1,1,11\n")
    with pytest.raises(RankingsFormatError, match=r"line 2: indices 1,1"):
        import_page_csv(bad)
    short = _write(tmp_path / "Results_JS_b.csv", "1,2\n")
    with pytest.raises(RankingsFormatError, match="line 1: expected 3 fields"):
        import_page_csv(short)
    with pytest.raises(RankingsFormatError, match="Results_<initials>"):
        import_page_csv(_write(tmp_path / "votes.csv", "1,2,3\n"))


def test_cli_reports_malformed_csv_with_line(tmp_path, capsys):
    p = _write(tmp_path / "r.csv", "reader,pair_id,outcome\nR1,1,1\nR1,2,maybe\n")
    assert main(["agreement", "--rankings", str(p)]) == EXIT_INPUT
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "line 3" in err and "unknown outcome" in err


def test_cli_import_votes(tmp_path, capsys):
    a = _write(tmp_path / "Results_LBE_1.csv", "1,2,10\n2,2,11\n")
    b = _write(tmp_path / "Results_AP_1.csv", "1,0,10\n")
    out = tmp_path / "r.csv"
    assert main(["import-votes", str(a), str(b), "--out", str(out)]) == 0
    assert read_rankings(out) == [Vote("LBE", 10, "1"), Vote("LBE", 11, "similar"),
                                  Vote("AP", 10, "2")]
