"""No patient data out of the CLI: a series whose every identifying element (SeriesDescription
included) and every file and folder name carries a marker string goes through ``rankiq score``,
``rankiq qa``, ``rankiq inspect`` and ``rankiq calibrate``, valid and truncated; the marker must
appear in no stdout, stderr or output file (the QA journal, which points at the inputs,
excepted)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_qa import MODEL_DIR, rankiq
from test_service_hardening import MARKER, marked_slice

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (MODEL_DIR / "metadata.json").exists(),
                                reason="models/iqnet-noref not exported yet")]


def _series(root: Path) -> Path:
    folder = root / f"DOE_{MARKER}" / f"PHI-{MARKER}"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{MARKER}_{i}.dcm").write_bytes(marked_slice(i, series=f"cli-{MARKER}"))
    (folder / f"{MARKER}_broken.dcm").write_bytes(marked_slice(9)[:700])
    return root / f"DOE_{MARKER}"


def test_marker_leaks_from_no_cli_command(tmp_path):
    series = _series(tmp_path / "in")
    one = next(series.rglob(f"{MARKER}_0.dcm"))
    out = tmp_path / "out"
    out.mkdir()
    runs = {
        "score": rankiq("score", str(one), "--json"),
        "score-text": rankiq("score", str(one), "--saliency", str(out / "score.png")),
        "score-truncated": rankiq("score", str(next(series.rglob("*_broken.dcm")))),
        "qa": rankiq("qa", str(series), "--out", str(out / "qa"), "--no-progress", "--json"),
        "inspect": rankiq("inspect", str(series)),
        "inspect-json": rankiq("inspect", str(series), "--json"),
        "calibrate": rankiq("calibrate", str(series), "--out", str(out / "site.json"),
                            "--no-progress", "--json"),
    }
    assert runs["score"].returncode == 0, runs["score"].stderr
    assert runs["score-truncated"].returncode == 2
    assert runs["qa"].returncode == 0, runs["qa"].stderr
    assert runs["inspect"].returncode == 0, runs["inspect"].stderr
    leaks = [f"{name} {stream}: {text[:300]}" for name, proc in runs.items()
             for stream, text in (("stdout", proc.stdout), ("stderr", proc.stderr))
             if MARKER in text or "DOE" in text]
    files = [f for f in out.rglob("*") if f.is_file() and not f.name.startswith("journal")]
    assert any(f.name == "report.html" for f in files)
    leaks += [str(f.relative_to(out)) for f in files if MARKER.encode() in f.read_bytes()]
    assert not leaks, "\n".join(leaks)
