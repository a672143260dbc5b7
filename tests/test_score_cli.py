"""`rankiq score` / `rankiq compare`: the service's scorer in-process, from the command line."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from helpers_io import assert_no_phi
from helpers_service import fastmri_file, mr_small, noisy, series_zip, slice_dicom
from PIL import Image


def rankiq(exe, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    base = mr_small()
    out = {"ref": d / "ref.dcm", "low": d / "low.dcm", "high": d / "high.dcm",
           "zip": d / "series.zip", "small": d / "small.dcm", "text": d / "notes.dcm"}
    out["ref"].write_bytes(slice_dicom(base))
    out["low"].write_bytes(slice_dicom(noisy(base, 0.02, seed=1)))
    out["high"].write_bytes(slice_dicom(noisy(base, 0.2, seed=2)))
    out["small"].write_bytes(slice_dicom(base[:32, :32]))
    out["zip"].write_bytes(series_zip(np.stack([noisy(base, 0.01 + 0.1 * (i == 2), seed=i)
                                                for i in range(4)])))
    out["text"].write_text("not an image\n" * 20)
    out["h5"] = fastmri_file(d / "k.h5", slices=2)
    return out


@pytest.mark.slow
def test_score_json_matches_reference_semantics(rankiq_exe, files):
    r = rankiq(rankiq_exe, "score", str(files["ref"]), "--reference", str(files["ref"]),
               "--json")
    assert r.returncode == 0, r.stderr
    same = json.loads(r.stdout)
    low = json.loads(rankiq(rankiq_exe, "score", str(files["low"]), "--reference",
                            str(files["ref"]), "--json").stdout)
    high = json.loads(rankiq(rankiq_exe, "score", str(files["high"]), "--reference",
                             str(files["ref"]), "--json").stdout)
    assert same["mode"] == "reference"
    assert abs(same["summary"]["median"]) < 0.05 * low["summary"]["median"]
    assert low["summary"]["median"] < high["summary"]["median"]


@pytest.mark.slow
def test_score_series_text_and_saliency_files(rankiq_exe, files, tmp_path):
    r = rankiq(rankiq_exe, "score", str(files["zip"]), "--saliency", str(tmp_path / "sal.png"))
    assert r.returncode == 0, r.stderr
    assert "no-reference" in r.stdout and "worst" in r.stdout
    pngs = sorted(tmp_path.glob("sal_*.png"))
    assert [p.name for p in pngs] == [f"sal_{i:03d}.png" for i in range(4)]
    img = Image.open(pngs[0])
    assert img.mode == "RGB" and img.size[0] == img.size[1] > 0
    one = rankiq(rankiq_exe, "score", str(files["ref"]), "--saliency", str(tmp_path / "one.png"))
    assert one.returncode == 0 and (tmp_path / "one.png").is_file()


@pytest.mark.slow
def test_score_kspace(rankiq_exe, files):
    r = rankiq(rankiq_exe, "score", str(files["h5"]), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["input_kind"] == "fastmri" and len(d["slices"]) == 2


@pytest.mark.slow
def test_compare(rankiq_exe, files):
    r = rankiq(rankiq_exe, "compare", str(files["low"]), str(files["high"]), "--reference",
               str(files["ref"]), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["a"]["summary"]["median"] < d["b"]["summary"]["median"]
    assert d["probabilities"]["a_better"] > d["probabilities"]["b_better"]
    assert sum(d["probabilities"].values()) == pytest.approx(1.0)
    t = rankiq(rankiq_exe, "compare", str(files["low"]), str(files["high"]))
    assert t.returncode == 0 and "P(A better)" in t.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("args", "needle"), [
    (["score", "{text}"], "not DICOM"),
    (["score", "{low}", "--reference", "{small}"], "geometry"),
    (["score", "{zip}", "--max-slices", "3"], "limit"),
    (["compare", "{low}", "{text}"], "not DICOM"),
])
def test_bad_input_exit_2_one_line(rankiq_exe, files, args, needle):
    r = rankiq(rankiq_exe, *[a.format(**{k: str(v) for k, v in files.items()}) for a in args])
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    assert_no_phi(r.stderr + r.stdout)
