"""The HTTP service end to end: a real `bentoml serve` on 127.0.0.1, real DICOM / zip / HDF5
uploads, every route and every error status.

One server for the module (token auth on, small limits so 413 is cheap to reach).
"""

from __future__ import annotations

import base64
import io
import json
import zipfile

import numpy as np
import pytest
import requests
from helpers_io import PHI, _base, assert_no_phi, bundled, dicom_bytes
from helpers_service import (
    AUTH,
    TOKEN,
    brain_slice,
    fastmri_file,
    mr_small,
    noisy,
    series_zip,
    slice_dicom,
    start_server,
    volume_with_bad_slice,
)
from PIL import Image
from rankiq.service.overlay import decode_array

pytestmark = pytest.mark.slow

MAX_SLICES = 8
MAX_BYTES = 1024 * 1024


@pytest.fixture(scope="module")
def server():
    srv = start_server(workers=1, env={"RANKIQ_API_TOKEN": TOKEN,
                                       "RANKIQ_MAX_SLICES": str(MAX_SLICES),
                                       "RANKIQ_MAX_UPLOAD_BYTES": str(MAX_BYTES)})
    yield srv
    srv.close()


def post(server, route: str, files: dict[str, bytes], data: dict | None = None,
         headers: dict | None = AUTH) -> requests.Response:
    # a tuple value is sent as is ((None, text) = a multipart text part, no file name)
    return requests.post(server.url + route,
                         files={k: v if isinstance(v, tuple) else (f"{k}.bin", v)
                                for k, v in files.items()},
                         data=data or {}, headers=headers, timeout=120)


def score(server, image: bytes, reference: bytes | None = None, **data) -> dict:
    files = {"image": image} if reference is None else {"image": image, "reference": reference}
    r = post(server, "/score", files, data)
    assert r.status_code == 200, r.text
    return r.json()


# -- probes, models, auth ------------------------------------------------------------------------

def test_probes_open_and_models_listed(server):
    assert requests.get(server.url + "/livez", timeout=10).status_code == 200
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
    r = requests.get(server.url + "/models", headers=AUTH, timeout=10)
    assert r.status_code == 200
    info = r.json()
    assert info["ready"] is True and info["error"] is None
    modes = {m["mode"] for m in info["models"]}
    assert modes == {"reference", "no-reference"}
    for m in info["models"]:
        assert m["provider"].endswith("ExecutionProvider")
        assert len(m["sha256"]) == 64 and m["metadata"]["name"] == m["name"]
    assert info["limits"] == {"max_upload_bytes": MAX_BYTES, "max_slices": MAX_SLICES,
                              "max_series_bytes": 256 * 1024 * 1024}


@pytest.mark.parametrize("headers", [None, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_auth_required_everywhere_but_probes(server, headers):
    img = slice_dicom(mr_small())
    r = post(server, "/score", {"image": img}, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    for path in ("/models", "/metrics"):
        assert requests.get(server.url + path, headers=headers, timeout=10).status_code == 401
    assert requests.get(server.url + "/metrics", headers=AUTH, timeout=10).status_code == 200


# -- scores --------------------------------------------------------------------------------------

def test_identical_reference_scores_about_zero_and_noise_raises_score(server):
    base = mr_small()
    ref = slice_dicom(base)
    same = score(server, ref, ref)
    assert same["mode"] == "reference" and same["model"]["name"]
    assert same["model"]["sha256"] and same["model"]["version"]
    low = score(server, slice_dicom(noisy(base, 0.02, seed=1)), ref)
    high = score(server, slice_dicom(noisy(base, 0.10, seed=2)), ref)
    s0, s1, s2 = (d["summary"]["median"] for d in (same, low, high))
    assert abs(s0) < 0.05 * s1, (s0, s1)
    assert s0 < s1 < s2
    assert same["contrast"] in {"T1", "T1post", "T2", "FLAIR", "other"}
    assert set(same["timings_ms"]) >= {"read", "prepare", "inference", "total", "request"}


def test_no_reference_mode_and_bundled_encodings(server):
    """The no-reference model scores real DICOM encodings of one image alike."""
    d = score(server, bundled("MR_small.dcm").read_bytes())
    assert d["mode"] == "no-reference" and d["input_kind"] == "dicom"
    assert d["shape"] == [1, 64, 64] and len(d["slices"]) == 1
    for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        other = score(server, bundled(name).read_bytes())
        assert other["summary"]["median"] == pytest.approx(d["summary"]["median"], rel=1e-4)


def test_no_reference_more_noise_higher_when_trained(server):
    info = requests.get(server.url + "/models", headers=AUTH, timeout=10).json()
    noref = next(m for m in info["models"] if m["mode"] == "no-reference")
    if not noref["metadata"].get("trained", True):
        pytest.skip("shipped no-reference model is the untrained interim export")
    base = brain_slice()
    s = [score(server, slice_dicom(noisy(base, sg, seed=3)))["summary"]["median"]
         for sg in (0.0, 0.05, 0.2)]
    assert s[0] < s[1] < s[2]


def test_series_zip_per_slice_and_summary(server):
    vol = volume_with_bad_slice(slices=5, bad=3)
    ref = series_zip(np.stack([mr_small()] * 5), series="ref-series")
    d = score(server, series_zip(vol), ref)
    assert [s["index"] for s in d["slices"]] == [0, 1, 2, 3, 4]
    scores = [s["score"] for s in d["slices"]]
    assert d["summary"]["worst_slice"] == 3 == int(np.argmax(scores))
    assert d["summary"]["worst"] == pytest.approx(max(scores))
    assert d["summary"]["median"] == pytest.approx(float(np.median(scores)))
    assert d["shape"] == [5, 64, 64]


def test_kspace_hdf5(server, tmp_path):
    data = fastmri_file(tmp_path / "k.h5", slices=2).read_bytes()
    d = score(server, data)
    assert d["input_kind"] == "fastmri" and d["shape"][0] == 2 and len(d["slices"]) == 2
    assert all(np.isfinite(s["score"]) for s in d["slices"])
    same = score(server, data, data)
    assert max(s["score"] for s in same["slices"]) < 0.05 * d["summary"]["median"] + 1.0


def test_saliency_png_and_raw_map(server):
    d = score(server, slice_dicom(mr_small()), saliency="true")
    sal = d["slices"][0]["saliency"]
    raw = decode_array(sal["map"])
    assert sal["map"]["dtype"] == "float32" and raw.dtype == np.dtype("<f4")
    # on the scan's own matrix (64x64), not the model's grid
    assert list(raw.shape) == [1, 64, 64] == sal["map"]["shape"] != [1, *d["model"]["grid"]]
    assert np.isfinite(raw).all() and np.abs(raw).max() > 0
    png = Image.open(io.BytesIO(base64.b64decode(sal["overlay_png"])))
    assert png.format == "PNG" and png.size == (64, 64) and png.mode == "RGB"
    plain = score(server, slice_dicom(mr_small()))
    assert "saliency" not in plain["slices"][0]
    assert plain["summary"]["median"] == pytest.approx(d["summary"]["median"], rel=1e-3)


def test_compare(server):
    base = mr_small()
    a, b = slice_dicom(noisy(base, 0.01, seed=4)), slice_dicom(noisy(base, 0.2, seed=5))
    r = post(server, "/compare", {"image_a": a, "image_b": b, "reference": slice_dicom(base)})
    assert r.status_code == 200, r.text
    d = r.json()
    p = d["probabilities"]
    assert set(p) == {"a_better", "similar", "b_better"}
    assert sum(p.values()) == pytest.approx(1.0)
    assert d["a"]["summary"]["median"] < d["b"]["summary"]["median"]
    assert p["a_better"] > p["b_better"] and d["mode"] == "reference"
    assert len(d["per_slice"]) == 1
    swapped = post(server, "/compare", {"image_a": b, "image_b": a,
                                        "reference": slice_dicom(base)}).json()
    assert swapped["probabilities"]["b_better"] == pytest.approx(p["a_better"], rel=1e-6)


# -- errors --------------------------------------------------------------------------------------

def _sr_bytes() -> bytes:
    """A DICOM Basic Text SR (no pixel data) with the sentinel identifiers."""
    ds = _base("1.2.840.10008.5.1.4.1.1.88.11", "1.2.3.4.5", 1, 1)
    for k in ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
              "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, k)
    ds.Modality = "SR"
    return dicom_bytes(ds)


def _two_series_zip() -> bytes:
    """A zip holding two series of three slices each (two SeriesInstanceUIDs)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in ("first", "second"):
            for i in range(3):
                zf.writestr(f"{name}/IM{i}.dcm", slice_dicom(mr_small(), series=name,
                                                               instance=i + 1, z=3.0 * i))
    return buf.getvalue()


def error_cases() -> list[tuple[str, dict[str, bytes], dict, int, str]]:
    base = mr_small()
    good = slice_dicom(base)
    return [
        ("text file", {"image": b"hello, I am not an image\n" * 50}, {}, 415, "unsupported"),
        ("png", {"image": b"\x89PNG\r\n\x1a\n" + b"\0" * 200}, {}, 415, "unsupported"),
        ("truncated dicom", {"image": bundled("MR_truncated.dcm").read_bytes()}, {}, 422,
         "unreadable"),
        ("cut dicom", {"image": good[: len(good) // 2]}, {}, 422, "unreadable"),
        ("structured report", {"image": _sr_bytes()}, {}, 422, "non_image"),
        ("geometry", {"image": good, "reference": slice_dicom(base[:32, :48])}, {}, 422,
         "geometry_mismatch"),
        ("slices", {"image": series_zip(np.stack([base] * (MAX_SLICES + 1)))}, {}, 413,
         "too_large"),
        ("bytes", {"image": b"\0" * 128 + b"DICM" + b"\0" * MAX_BYTES}, {}, 413, "too_large"),
        ("text value for file", {"image": (None, b"http://example.org/x.dcm")}, {}, 400,
         "bad_request"),
        ("urlencoded", {}, {"image": "x"}, 415, "unsupported_request"),
        ("missing image", {"reference": good}, {}, 400, "bad_request"),
        ("unknown field", {"image": good, "file": good}, {}, 400, "bad_request"),
        ("bad flag", {"image": good}, {"saliency": "maybe"}, 400, "bad_request"),
        # one series per field: a zip of two is refused, never scored as its first series
        ("two series", {"image": _two_series_zip()}, {}, 422, "multiple_series"),
        ("two series reference", {"image": good, "reference": _two_series_zip()}, {}, 422,
         "multiple_series"),
    ]


@pytest.mark.parametrize("case", error_cases(), ids=lambda c: c[0])
def test_error_statuses(server, case):
    _, files, data, status, reason = case
    r = post(server, "/score", files, data)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == reason and isinstance(body["detail"], str) and body["detail"]
    assert_no_phi(r.text)


def test_malformed_requests_never_500(server):
    url = server.url + "/score"
    cases = [
        requests.post(url, data=b"not multipart", headers={**AUTH, "Content-Type":
                                                           "multipart/form-data; boundary=x"}),
        requests.post(url, data=b"--x\r\nbroken", headers={**AUTH, "Content-Type":
                                                           "multipart/form-data; boundary=x"}),
        requests.post(url, json={"image": "x"}, headers=AUTH),
        requests.post(url, data=b"", headers={**AUTH, "Content-Type": "multipart/form-data"}),
    ]
    assert [c.status_code for c in cases] == [400, 400, 415, 400]
    for c in cases:
        assert set(c.json()) == {"error", "detail"}


def test_compare_errors(server):
    good = slice_dicom(mr_small())
    r = post(server, "/compare", {"image_a": good, "image_b": b"junk" * 100})
    assert r.status_code == 415 and r.json()["error"] == "unsupported"
    r = post(server, "/compare", {"image_a": good})
    assert r.status_code == 400


def test_metrics_count_rejections_and_scores(server):
    # its own requests, so the test holds when run alone or first
    assert post(server, "/score", {"image": b"hello\n" * 100}).status_code == 415
    assert post(server, "/score", {"image": b"\0" * 128 + b"DICM" + b"\0" * MAX_BYTES}
                ).status_code == 413
    score(server, slice_dicom(mr_small()))
    text = requests.get(server.url + "/metrics", headers=AUTH, timeout=10).text
    assert 'rankiq_inputs_rejected_total{reason="unsupported"}' in text
    assert 'rankiq_inputs_rejected_total{reason="too_large"}' in text
    assert "rankiq_score_bucket{" in text and "rankiq_slices_scored_total{" in text
    assert 'rankiq_model_info{' in text
    assert "bentoml_service_request_total" in text
    assert_no_phi(text)


def test_logs_hold_no_patient_identifiers(server):
    # its own requests carrying the sentinel identifiers: a score, a non-image and an
    # unreadable file, so the check reads the output they caused even when run alone
    score(server, slice_dicom(mr_small()))
    assert post(server, "/score", {"image": _sr_bytes()}).status_code == 422
    good = slice_dicom(mr_small())
    assert post(server, "/score", {"image": good[: len(good) // 2]}).status_code == 422
    log = server.log(tail=10**7)
    assert "/score" in log  # the access log is there: this check reads real output
    assert_no_phi(log, extra=[json.dumps(PHI[0])])
