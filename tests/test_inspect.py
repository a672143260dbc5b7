"""`rankiq inspect`: per-series summary, pixel_sha256, failures, exit codes, no identifiers."""

from __future__ import annotations

import hashlib
import json
import subprocess

import numpy as np
import pydicom
import pytest
from helpers_io import assert_no_phi, bundled, mr_dataset, write, write_zip
from rankiq.service.cli import EXIT_INPUT, EXIT_USAGE, main
from rankiq.service.io import description_label, display_name

VARIANTS = ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
            "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm")


def _inspect_json(capsys, *paths) -> tuple[int, dict]:
    code = main(["inspect", *map(str, paths), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_differently_encoded_copies_have_one_pixel_sha256(capsys):
    # independent expectation: pydicom's own decode of the uncompressed file, as float32
    pixels = pydicom.dcmread(bundled("MR_small.dcm")).pixel_array.astype(np.float32)
    expected = hashlib.sha256(np.ascontiguousarray(pixels[None]).tobytes()).hexdigest()
    syntaxes = set()
    for name in VARIANTS:
        code, out = _inspect_json(capsys, bundled(name))
        assert code == 0
        (series,) = out["series"]
        assert series["pixel_sha256"] == expected, name
        syntaxes.add(series["transfer_syntax"])
        assert (series["kind"], series["modality"], series["slices"], series["rows"],
                series["columns"]) == ("dicom", "MR", 1, 64, 64)
        assert series["spacing_mm"] == [0.3125, 0.3125]
    assert len(syntaxes) == len(VARIANTS)  # six transfer syntaxes, one hash


def test_series_and_failures_are_listed_with_exit_0(tmp_path, capsys):
    write(mr_dataset(np.ones((16, 16)), instance=1), tmp_path / "a.dcm")
    write(mr_dataset(np.ones((16, 16)), instance=2, position=(0, 0, 3)), tmp_path / "b.dcm")
    (tmp_path / "notes.txt").write_text("hello")
    code, out = _inspect_json(capsys, tmp_path, bundled("test-SR.dcm"))
    assert code == 0
    (series,) = out["series"]
    assert series["slices"] == 2 and series["contrast"] == "T2"
    assert series["description"] == description_label("AX T2 FSE")
    assert series["slice_order"] == "position"
    reasons = {f["source"]: f["reason"] for f in out["failures"]}
    assert reasons == {display_name(str(tmp_path / "notes.txt")): "unsupported",
                       display_name(str(bundled("test-SR.dcm"))): "non_image"}


def test_text_output_and_no_identifiers(tmp_path, capsys):
    write(mr_dataset(np.arange(256).reshape(16, 16)), tmp_path / "a.dcm")
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for field in ("dicom", "MR", description_label("AX T2 FSE"), "contrast T2", "slices 1",
                      "rows 16",
                  "columns 16", "spacing 0.9 x 0.8 mm", "Explicit VR Little Endian",
                  "pixel_sha256 ", "unreadable inputs (1)",
                  display_name(str(tmp_path / "bad.dcm"))):
        assert field in out, field
    assert_no_phi(out)


def test_exit_2_when_nothing_was_read(tmp_path, capsys):
    code, out = _inspect_json(capsys, bundled("MR_truncated.dcm"), tmp_path / "missing.dcm")
    assert code == EXIT_INPUT and out["series"] == []
    assert [f["reason"] for f in out["failures"]] == ["unreadable", "unreadable"]


def test_hostile_zip_is_a_one_line_error(tmp_path, capsys):
    write_zip(tmp_path / "evil.zip", {"../../x.dcm": b"x"})
    assert main(["inspect", str(tmp_path / "evil.zip")]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evil.zip" not in err and "traversal" in err
    assert display_name(str(tmp_path / "evil.zip")) in err


def test_usage_error_exits_1():
    with pytest.raises(SystemExit) as exc:
        main(["inspect"])
    assert exc.value.code == EXIT_USAGE


def test_console_script_runs_inspect(rankiq_exe, tmp_path):
    path = write(mr_dataset(np.ones((16, 16))), tmp_path / "a.dcm")
    proc = subprocess.run([str(rankiq_exe), "inspect", str(path), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["series"][0]["rows"] == 16
    assert_no_phi(proc.stdout + proc.stderr)
