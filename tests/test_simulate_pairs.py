"""`rankiq simulate`: layout, pair constraint, determinism, resume, sources, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sigpy")
h5py = pytest.importorskip("h5py")

from rankiq.service.cli import main  # noqa: E402
from rankiq.training.corruptions import SEVERITY_NAMES  # noqa: E402
from rankiq.training.pairs import PairsFile, load_pairs  # noqa: E402
from rankiq.training.simulate import run  # noqa: E402

SIZE = 32


def _contents(path: Path) -> dict:
    """Every dataset (as bytes-exact arrays) and attribute of a pairs file."""
    out = {}
    with h5py.File(path, "r") as h:
        out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v)
                        for k, v in h.attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[...]

        h.visititems(visit)
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k == "attrs":
            assert a[k].keys() == b[k].keys()
            for kk in a[k]:
                assert np.array_equal(a[k][kk], b[k][kk]), kk
        else:
            x, y = a[k], b[k]
            assert x.dtype == y.dtype and x.shape == y.shape, k
            if x.dtype.kind in "fc":
                assert x.tobytes() == y.tobytes(), k  # bit for bit
            else:
                assert np.array_equal(x, y), k


@pytest.fixture(scope="module")
def six_pairs(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sim") / "pairs.h5"
    summary = run("phantom", 6, SIZE, 11, out, workers=1)
    return out, summary


@pytest.mark.slow
def test_layout_matches_the_contract(six_pairs):
    path, summary = six_pairs
    n, s = 6, SIZE
    with h5py.File(path, "r") as h:
        a = h.attrs
        assert a["format"] == "rankiq-pairs" and a["format_version"] == 1
        assert a["seed"] == 11 and a["source"] == "phantom" and a["size"] == s
        assert a["n_pairs"] == n and a["preprocess_version"]
        cfg = json.loads(a["config_json"])
        assert cfg["corruption"]["noise_level"] == [0.0, 12.0]
        for k in ("reference", "image1", "image2"):
            assert h[k].dtype == np.complex64 and h[k].shape == (n, s, s)
        assert h["pair_id"].dtype == np.int64 and list(h["pair_id"][:]) == list(range(n))
        assert h["slice_index"].dtype == np.int32 and h["slice_index"].shape == (n,)
        for k in ("source_id", "contrast"):
            assert h[k].shape == (n,) and h[k].dtype.kind == "O"
        for k in ("recon", "params"):
            assert h[k].shape == (n, 2)
        for k in ("mse", "ssim"):
            assert h[k].dtype == np.float32 and h[k].shape == (n, 2)
        for k in SEVERITY_NAMES:
            assert h[f"severity/{k}"].dtype == np.float32 and h[f"severity/{k}"].shape == (n, 2)
    d = load_pairs(path)
    assert all(sid.startswith("phantom-") for sid in d["source_id"])
    assert set(d["contrast"]) == {"other"}
    assert set(d["recon"].ravel()) <= {"rss", "combine", "sense", "cs_l1", "cs_tv"}
    assert np.allclose(np.abs(d["reference"]).max(axis=(1, 2)), 1.0, atol=1e-6)
    # stored metrics agree with the stored images; the pair constraint holds
    from rankiq.training.ssim import mse, ssim_batch

    for k, key in ((0, "image1"), (1, "image2")):
        assert np.allclose(d["ssim"][:, k], ssim_batch(d[key], d["reference"]), atol=1e-5)
        assert np.allclose(d["mse"][:, k], mse(d[key], d["reference"]), rtol=1e-4, atol=1e-8)
    assert np.all(np.abs(d["ssim"][:, 0] - d["ssim"][:, 1]) < 0.09)
    assert summary["max_ssim_diff"] < 0.09 and summary["pairs"] == n
    # params record every corruption, consistent with the severity datasets
    for i in range(n):
        for k in range(2):
            p = json.loads(d["params"][i, k])
            assert p["recon"]["method"] == d["recon"][i, k]
            c = p["corruptions"]
            sev = {name: d[f"severity/{name}"][i, k] for name in SEVERITY_NAMES}
            assert (sev["noise_level"] > 0) == ("noise" in c)
            if "undersample_1d" in c:
                assert sev["undersample_1d_fraction"] == pytest.approx(
                    c["undersample_1d"]["lines_dropped"] / c["undersample_1d"]["lines_total"])
            if "motion" in c and c["motion"]["applied"]:
                assert sev["motion_shift_px"] == pytest.approx(
                    math.hypot(*c["motion"]["shift_px"]), rel=1e-5)
    with PairsFile(path) as pf:
        assert len(pf) == n
        ref, a, b = pf.images(2)
        assert np.array_equal(a, d["image1"][2])


@pytest.mark.slow
def test_seed_reproduces_bit_identical_files_whatever_the_workers(six_pairs, tmp_path):
    path, _ = six_pairs
    again = tmp_path / "again.h5"
    run("phantom", 6, SIZE, 11, again, workers=2)
    _assert_same(_contents(path), _contents(again))
    assert path.read_bytes() == again.read_bytes()
    other = tmp_path / "other.h5"
    run("phantom", 2, SIZE, 12, other, workers=1)
    assert not np.array_equal(load_pairs(other)["image1"], load_pairs(path)["image1"][:2])


@pytest.mark.slow
def test_resume_equals_one_uninterrupted_run(six_pairs, tmp_path):
    path, _ = six_pairs
    part = tmp_path / "part.h5"
    s1 = run("phantom", 3, SIZE, 11, part, workers=1)  # stops mid-slice (2 pairs per slice)
    assert s1["pairs"] == 3
    s2 = run("phantom", 6, SIZE, 11, part, workers=1)
    assert s2["resumed_from"] == 3 and s2["new_pairs"] == 3
    _assert_same(_contents(path), _contents(part))
    # a different seed refuses to resume; asking for fewer pairs than held is an error
    assert main(["simulate", "--source", "phantom", "--pairs", "6", "--size", str(SIZE),
                 "--seed", "5", "--out", str(part)]) == 2
    assert main(["simulate", "--source", "phantom", "--pairs", "4", "--size", str(SIZE),
                 "--seed", "11", "--out", str(part)]) == 2


@pytest.mark.slow
def test_interrupted_process_resumes_without_loss_or_duplicates(six_pairs, tmp_path):
    path, _ = six_pairs
    out, png = tmp_path / "killed.h5", tmp_path / "png"
    exe = Path(sys.executable).with_name("rankiq")
    cmd = [str(exe), "simulate", "--source", "phantom", "--pairs", "6", "--size", str(SIZE),
           "--seed", "11", "--out", str(out), "--workers", "1", "--png", str(png)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if png.exists() and len(list(png.glob("*.png"))) >= 2:
            break
        time.sleep(0.05)
    interrupted = proc.poll() is None
    if interrupted:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    with PairsFile(out) as pf:
        done = len(pf)
    assert 2 <= done <= 6
    if interrupted and done < 6:
        assert proc.returncode == 130
    assert main(cmd[1:]) == 0
    _assert_same(_contents(path), _contents(out))
    assert sorted(p.name for p in png.glob("*.png")) == [f"pair_{i:06d}.png"
                                                         for i in range(6)]


def test_cli_json_summary(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    rc = main(["simulate", "--source", "phantom", "--pairs", "2", "--size", str(SIZE),
               "--seed", "3", "--out", str(out), "--workers", "1", "--json"])
    assert rc == 0
    stdout = capsys.readouterr().out
    summary = json.loads(stdout)  # exactly one JSON object
    for key in ("pairs", "max_ssim_diff", "retries", "seconds", "corruptions", "recon"):
        assert key in summary
    assert summary["pairs"] == 2
    assert sum(summary["recon"].values()) == 4


@pytest.mark.parametrize(
    "argv",
    [
        ["--source", "nope"],
        ["--source", "nifti:/does/not/exist.nii.gz"],
        ["--source", "fastmri:EMPTY"],
        ["--pairs", "0"],
        ["--out", "/does/not/exist/pairs.h5"],
        ["--size", "33"],
    ],
)
def test_bad_input_is_one_line_and_non_zero(argv, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    base = {"--source": "phantom", "--pairs": "2", "--size": str(SIZE),
            "--out": str(tmp_path / "x.h5")}
    for k, v in zip(argv[::2], argv[1::2], strict=True):
        base[k] = v.replace("EMPTY", str(tmp_path / "empty"))
    args = ["simulate"] + [x for kv in base.items() for x in kv]
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and "error" in err
    assert not (tmp_path / "x.h5").exists()


def test_nifti_and_fastmri_sources(tmp_path):
    import nibabel as nib
    import sigpy

    # a small 3D magnitude volume: a Shepp-Logan slab
    ph = np.abs(sigpy.shepp_logan((40, 40))).astype(np.float32)
    vol = np.stack([ph * (1 + 0.1 * z) for z in range(4)], axis=-1)
    nii = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(nii))
    s = run(f"nifti:{nii}", 2, SIZE, 1, tmp_path / "n.h5", workers=1)
    d = load_pairs(tmp_path / "n.h5")
    assert s["pairs"] == 2 and set(d["source_id"]) == {"nifti-vol"}
    assert set(d["slice_index"]) <= set(range(4))

    # a fake fastMRI multicoil file: (slices, coils, readout 2x oversampled, phase)
    from rankiq.service.fft import center_pad, fft2c

    maps = sigpy.mri.birdcage_maps((4, SIZE, SIZE)).astype(np.complex64)
    img = np.abs(sigpy.shepp_logan((SIZE, SIZE))).astype(np.complex64)
    k = fft2c(center_pad(maps * img, (2 * SIZE, SIZE)))
    rng = np.random.default_rng(0)
    k = k + 1e-3 * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    d_dir = tmp_path / "fastmri"
    d_dir.mkdir()
    with h5py.File(d_dir / "file_brain_AXT2_000.h5", "w") as h:
        h["kspace"] = np.stack([k, k]).astype(np.complex64)
        h.attrs["acquisition"] = "AXT2"
    s = run(f"fastmri:{d_dir}", 2, SIZE, 1, tmp_path / "f.h5", workers=1)
    d = load_pairs(tmp_path / "f.h5")
    assert set(d["source_id"]) == {"fastmri-file_brain_AXT2_000"}
    assert set(d["contrast"]) == {"T2"}


@pytest.mark.slow
def test_brain_source_gives_plausible_contrasts(tmp_path):
    from rankiq.training.sources import CONTRASTS, BrainSource, SourceConfig

    src = BrainSource(SourceConfig())
    seen = set()
    for unit in range(0, 12 * 6, 12):  # first slice of six subjects
        cs = src.slice(unit, 0, 64, np.random.default_rng(unit))
        assert cs.kspace.shape == (6, 128, 64) and cs.kspace.dtype == np.complex64
        assert cs.source_id == f"brain-s{unit // 12:04d}"
        seen.add(cs.contrast)
    assert seen <= set(CONTRASTS) and len(seen) >= 2
    s = run("brain", 1, 64, 0, tmp_path / "b.h5", workers=1)
    assert s["pairs"] == 1


@pytest.mark.skipif(os.environ.get("RANKIQ_SKIP_BENCH_SMOKE") == "1", reason="opt-out")
def test_bench_simulate_runs(capsys):
    rc = main(["bench", "simulate", "--source", "phantom", "--size", str(SIZE), "--pairs", "2",
               "--workers", "1", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["pairs"] == 2 and res["wall_seconds_per_pair"] > 0
    assert {r["method"] for r in res["per_method"]} == {"rss", "combine", "sense", "cs_l1",
                                                        "cs_tv"}
