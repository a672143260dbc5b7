"""The HTTP answer on the scan's own matrix: saliency resampled from the model's grid, and
``POST /score?format=dicom`` (the SR and saliency Parametric Map as multipart/related DICOM),
on a live server with real DICOM uploads."""

from __future__ import annotations

import base64
import dataclasses
import email
import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from helpers_io import PHI, assert_no_phi, dciodvfy_errors, dicom_bytes, mr_dataset, uid
from helpers_service import (
    AUTH,
    TOKEN,
    fastmri_file,
    mr_small,
    series_zip,
    slice_dicom,
    start_server,
    volume_with_bad_slice,
)
from PIL import Image
from rankiq.service.overlay import decode_array
from rankiq.service.results_dicom import CODES, SCHEME, saliency_on_matrix
from rankiq.service.scoring import saliency_to_input


def test_saliency_to_input_crops_padding_and_keeps_totals():
    # a non-square 40x64 slice was padded to 64x64 (12 rows each side) and resampled to 32x32
    pixels = np.ones((1, 40, 64), np.float32)
    grid = np.zeros((1, 2, 32, 32))
    grid[0, 0] = 1.0
    grid[0, 1, 6:26] = -2.0  # the rows that hold the image; the rest is padding
    out = saliency_to_input(grid, pixels, features=False)
    assert out.shape == (1, 2, 40, 64) and out.dtype == np.float32
    # a per-pixel derivative on 4x as many pixels is a quarter as large
    np.testing.assert_allclose(out[0, 0], 0.25, rtol=1e-6)
    np.testing.assert_allclose(out[0, 1].sum(), grid[0, 1].sum(), rtol=0.05)
    assert (out[0, 1] < 0).all()


def test_saliency_to_input_features_map_only_on_the_analysed_region():
    pixels = np.zeros((2, 50, 50), np.float32)
    pixels[0, 10:30, 5:45] = 1.0  # zero border cropped, 20x40 padded to 40x40 by analysis_grid
    grid = np.ones((2, 1, 40, 40))
    out = saliency_to_input(grid, pixels, features=True)
    assert out.shape == (2, 1, 50, 50)
    np.testing.assert_allclose(out[0, 0, 10:30, 5:45], 1.0)
    assert out[0, 0].sum() == pytest.approx(800.0) and not out[0, 0, :10].any()
    assert not out[1].any()  # blank slice
    np.testing.assert_array_equal(saliency_on_matrix(grid, pixels, features=True), out[:, 0])


def framed_zip(volume: np.ndarray) -> bytes:
    """A zip of one MR series (a file per slice, 3 mm apart) with a frame of reference."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, sl in enumerate(volume):
            ds = mr_dataset(np.rint(sl).astype(np.int16), series_uid=uid("framed"),
                            instance=i + 1, position=(0.0, 0.0, 3.0 * i))
            ds.FrameOfReferenceUID = uid("frame")
            zf.writestr(f"IM{i + 1:04d}.dcm", dicom_bytes(ds))
    return buf.getvalue()


@pytest.fixture(scope="module")
def server():
    srv = start_server(workers=1, env={"RANKIQ_API_TOKEN": TOKEN})
    yield srv
    srv.close()


def score(server, image: bytes, *, reference: bytes | None = None, query: str = "",
          **data) -> requests.Response:
    files = {"image": ("scan.dcm", image)}
    if reference is not None:
        files["reference"] = ("ref.dcm", reference)
    return requests.post(f"{server.url}/score{query}", files=files, data=data, headers=AUTH,
                         timeout=120)


@pytest.mark.slow
def test_saliency_answered_on_the_scans_matrix(server):
    image = mr_small()[8:56]  # 48x64: padded to a square, then to the model's 128x128 grid
    ref = score(server, slice_dicom(image), reference=slice_dicom(image * 0.9),
                saliency="true").json()
    nr = score(server, series_zip(volume_with_bad_slice(2)[:, 8:56]), saliency="true").json()
    for d, slices in ((ref, 1), (nr, 2)):
        assert d["shape"] == [slices, 48, 64]
        assert d["threshold"] is not None and "flagged" in d
        for row in d["slices"]:
            m = decode_array(row["saliency"]["map"])
            assert m.shape[1:] == (48, 64) and np.isfinite(m).all() and np.abs(m).max() > 0
            png = Image.open(io.BytesIO(base64.b64decode(row["saliency"]["overlay_png"])))
            assert png.size == (64, 48) and png.mode == "RGB"


def _parts(r: requests.Response) -> list[pydicom.Dataset]:
    ctype = r.headers["content-type"]
    assert ctype.startswith("multipart/related") and 'type="application/dicom"' in ctype
    msg = email.message_from_bytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + r.content)
    parts = msg.get_payload()
    assert all(p.get_content_type() == "application/dicom" for p in parts)
    return [pydicom.dcmread(io.BytesIO(p.get_payload(decode=True))) for p in parts]


def _measurements(node: pydicom.Dataset, out: list[tuple[str, float, str | None]]) -> None:
    for item in node.get("ContentSequence", []):
        if item.ValueType == "NUM":
            refs = [r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                    for r in item.get("ContentSequence", []) if r.ValueType == "IMAGE"]
            out.append((item.ConceptNameCodeSequence[0].CodeValue,
                        float(item.MeasuredValueSequence[0].NumericValue),
                        refs[0] if refs else None))
        _measurements(item, out)


@pytest.mark.slow
def test_format_dicom_answers_sr_and_parametric_map(server):
    import highdicom as hd

    upload = framed_zip(volume_with_bad_slice(3, bad=1))
    with zipfile.ZipFile(io.BytesIO(upload)) as zf:  # members in slice order (z = 3 mm * i)
        headers = [pydicom.dcmread(zf.open(n), stop_before_pixels=True) for n in zf.namelist()]
    uids = [str(h.SOPInstanceUID) for h in headers]
    as_json = score(server, upload).json()
    r = score(server, upload, query="?format=dicom")
    assert r.status_code == 200, r.text
    sr, pm = _parts(r)
    # the SR: a TID 1500 report whose per-slice scores are the JSON's, each on its own image
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    found: list[tuple[str, float, str | None]] = []
    _measurements(report, found)
    per_slice = [(v, ref) for c, v, ref in found if c == CODES["slice_score"][0]]
    assert [ref for _, ref in per_slice] == uids
    np.testing.assert_allclose([v for v, _ in per_slice],
                               [s["score"] for s in as_json["slices"]], rtol=1e-6)
    assert [v for c, v, _ in found if c == CODES["median"][0]] == pytest.approx(
        [as_json["summary"]["median"]])
    assert [v for c, v, _ in found if c == CODES["threshold"][0]] == pytest.approx(
        [as_json["threshold"]])
    assert any(i.ConceptCodeSequence[0].CodingSchemeDesignator == SCHEME
               for i in _walk(report) if i.ValueType == "CODE")
    evidence = {i.ReferencedSOPInstanceUID
                for s in report.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert evidence == set(uids)
    assert sr.PatientID == headers[0].PatientID and sr.PatientID in PHI
    assert sr.StudyInstanceUID == headers[0].StudyInstanceUID
    # the Parametric Map: one float frame per slice on the scan's own 64x64 matrix
    pmap = hd.pm.ParametricMap.from_dataset(pm)
    assert (pm.Rows, pm.Columns, int(pm.NumberOfFrames)) == (64, 64, 3)
    frames = pmap.pixel_array
    assert np.isfinite(frames).all() and frames.max() > 0
    refs = {i.ReferencedSOPInstanceUID for s in pm.ReferencedSeriesSequence
            for i in s.ReferencedInstanceSequence}
    assert refs == set(uids)
    assert pm.StudyInstanceUID == headers[0].StudyInstanceUID


def _walk(node: pydicom.Dataset):
    for item in node.get("ContentSequence", []):
        yield item
        yield from _walk(item)


@pytest.mark.slow
def test_format_dicom_refusals_and_logs(server):
    r = score(server, slice_dicom(mr_small()), query="?format=xml")
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    with tempfile.TemporaryDirectory() as tmp:
        h5 = fastmri_file(Path(tmp) / "k.h5").read_bytes()
    r = score(server, h5, query="?format=dicom")
    assert r.status_code == 415 and r.json()["error"] == "unsupported"
    assert_no_phi(r.text)
    # helpers' plain images have no frame of reference: the map is not placed, nor invented
    r = score(server, slice_dicom(mr_small()), query="?format=dicom")
    assert r.status_code == 422 and r.json()["error"] == "invalid_image"
    assert "FrameOfReferenceUID" in r.json()["detail"]
    ok = score(server, framed_zip(mr_small()[None]), query="?format=dicom")
    assert ok.status_code == 200, ok.text
    log = server.log(tail=10**7)
    assert "/score" in log
    assert_no_phi(log, extra=["scan.dcm"])
    doc = requests.get(server.url + "/docs.json", headers=AUTH, timeout=30).json()
    op = doc["paths"]["/score"]["post"]
    assert [p["schema"]["enum"] for p in op["parameters"] if p["name"] == "format"] == [
        ["json", "dicom"]]
    assert "multipart/related" in op["responses"]["200"]["content"]


@pytest.mark.slow
def test_format_dicom_multiframe_source(server, tmp_path):
    """One Legacy Converted Enhanced MR instance whose frames are stored top slice first: each
    slice score references its frame, the map's frames derive from the source frames, at their
    positions, and hold the same scores and maps as the single-frame series of the same
    pixels."""
    from helpers_multiframe import (
        frame_measurements,
        frame_positions,
        legacy_multiframe,
        map_frames,
        single_frame_series,
        to_bytes,
    )

    slices = single_frame_series(tmp_path, volume_with_bad_slice(4, bad=1))
    mf = legacy_multiframe(slices)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, ds in enumerate(slices):
            zf.writestr(f"IM{i + 1:04d}.dcm", dicom_bytes(ds))
    single = buf.getvalue()
    as_json = score(server, single).json()  # slices in z order: 0, 3, 6, 9 mm
    z_order = [round(float(ds.ImagePositionPatient[2]), 3) for ds in slices]
    by_z = dict(zip(z_order, (s["score"] for s in as_json["slices"]), strict=True))

    r = score(server, to_bytes(mf), query="?format=dicom")
    assert r.status_code == 200, r.text
    sr, pm = _parts(r)
    positions = frame_positions(mf)  # frame n at positions[n - 1]: 9, 6, 3, 0 mm
    found = frame_measurements(sr, CODES["slice_score"][0])
    assert [f for _, _, f in found] == [[4], [3], [2], [1]]  # slice order: frame 4 is z = 0
    assert {u for _, u, _ in found} == {mf.SOPInstanceUID}
    for value, _, (n,) in found:
        assert value == pytest.approx(by_z[positions[n - 1][2]], rel=1e-5)
    evidence = {i.ReferencedSOPInstanceUID
                for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert evidence == {mf.SOPInstanceUID}

    # the map: a frame per source frame, derived from it, at its position
    assert int(pm.NumberOfFrames) == 4
    frames = map_frames(pm)
    assert sorted(n for n, _ in frames) == [1, 2, 3, 4]
    assert all(pos == positions[n - 1] for n, pos in frames)
    ref = _parts(score(server, single, query="?format=dicom"))[1]
    ref_maps = {pos[2]: m for pos, m in zip(frame_positions(ref), ref.pixel_array, strict=True)}
    for (_, pos), m in zip(frames, pm.pixel_array, strict=True):
        np.testing.assert_allclose(m, ref_maps[pos[2]], rtol=1e-5, atol=1e-9)

    # the series split over two multi-frame instances, slices alternating between them and
    # each instance's frames top slice first: the SR, then one map per instance
    parts = [legacy_multiframe(slices[0::2], "a"), legacy_multiframe(slices[1::2], "b")]
    two = io.BytesIO()
    with zipfile.ZipFile(two, "w") as zf:
        for name, ds in zip(("a.dcm", "b.dcm"), parts, strict=True):
            zf.writestr(name, to_bytes(ds))
    r = score(server, two.getvalue(), query="?format=dicom")
    assert r.status_code == 200, r.text
    sr, *maps = _parts(r)
    by_uid = {str(ds.SOPInstanceUID): frame_positions(ds) for ds in parts}
    found = frame_measurements(sr, CODES["slice_score"][0])
    # slice i (z = 3 i mm) is frame 2 - i // 2 of instance a (i even) or b (i odd)
    assert [(u, f) for _, u, f in found] == [
        (str(parts[i % 2].SOPInstanceUID), [2 - i // 2]) for i in range(4)]
    for value, u, (n,) in found:
        assert value == pytest.approx(by_z[by_uid[u][n - 1][2]], rel=1e-5)
    evidence = {i.ReferencedSOPInstanceUID
                for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert evidence == set(by_uid)
    assert [int(m.InstanceNumber) for m in maps] == [1, 2]
    assert len({m.SOPInstanceUID for m in maps}) == 2
    assert len({m.SeriesInstanceUID for m in maps}) == 1
    for m, src in zip(maps, parts, strict=True):  # each derived from its own instance
        assert [i.ReferencedSOPInstanceUID for s in m.ReferencedSeriesSequence
                for i in s.ReferencedInstanceSequence] == [src.SOPInstanceUID]
        assert map_frames(m) == [(n + 1, p) for n, p in enumerate(frame_positions(src))]
        for (_, pos), px in zip(map_frames(m), m.pixel_array, strict=True):
            np.testing.assert_allclose(px, ref_maps[pos[2]], rtol=1e-5, atol=1e-9)
    again = _parts(score(server, two.getvalue(), query="?format=dicom"))
    assert [d.SOPInstanceUID for d in again] == [sr.SOPInstanceUID, *(m.SOPInstanceUID
                                                                      for m in maps)]


def test_enhanced_mr_frames_referenced_in_slice_order():
    """An Enhanced MR upload whose frames are not in slice order: the slices are matched to
    their frames as the reader orders them (along the normal), the SR's per-slice references
    and the map's frames follow the frame numbers."""
    from helpers_io import enhanced_mr_dataset
    from helpers_multiframe import frame_measurements, map_frames
    from rankiq.service.io import read_upload
    from rankiq.service.results_dicom import (
        SeriesVerdict,
        SliceSource,
        build_saliency,
        build_sr,
        upload_sources,
    )

    stored = (np.random.default_rng(0).random((3, 32, 32)) * 1000).astype(np.int16)
    ds = enhanced_mr_dataset(stored, [(0, 0, 8.0), (0, 0, 0.0), (0, 0, 4.0)])
    ds.FrameOfReferenceUID = uid("enhanced-frame")
    data = dicom_bytes(ds)
    series = read_upload(data, "image")[0]
    np.testing.assert_array_equal(series.pixels, stored[[1, 2, 0]])  # z = 0, 4, 8 mm
    sources = upload_sources(data, series, "image")
    assert sources.slices == (SliceSource(0, 2), SliceSource(0, 3), SliceSource(0, 1))
    assert len(sources.images) == 1
    verdict = SeriesVerdict(scores=(1.0, 2.0, 3.0), median=2.0, p90=2.8, threshold=2.5,
                            status="passed", flagged=False, rule="", model="m",
                            model_version="1", model_sha256="0" * 64)
    sr = build_sr(sources, verdict, software_version="test")
    found = frame_measurements(sr, CODES["slice_score"][0])
    assert [(v, f) for v, _, f in found] == [(1.0, [2]), (2.0, [3]), (3.0, [1])]
    maps = np.stack([np.full((32, 32), v, np.float32) for v in (1.0, 2.0, 3.0)])
    (pm,) = build_saliency(sources, maps, verdict, software_version="test")
    z_of_frame = {1: 8.0, 2: 0.0, 3: 4.0}
    for (n, pos), m in zip(map_frames(pm), pm.pixel_array, strict=True):
        assert pos[2] == z_of_frame[n]
        assert float(m.mean()) == pytest.approx({8.0: 3.0, 0.0: 1.0, 4.0: 2.0}[pos[2]])


def test_enhanced_mr_split_over_two_instances():
    """An Enhanced MR series split over two instances, frames out of order in each: every slice
    maps to its (instance, frame) as the reader orders the slices, the SR references both, and
    there is one map per instance, its frames in that instance's frame order, with UIDs that
    differ per instance and are the same when built again; one instance keeps the UID of the
    kind's only object."""
    from helpers_io import enhanced_mr_dataset
    from helpers_multiframe import frame_measurements, map_frames
    from rankiq.service.io import read_upload
    from rankiq.service.results_dicom import (
        SeriesVerdict,
        SliceSource,
        build_saliency,
        build_sr,
        derived_uid,
        upload_sources,
    )

    stored = (np.random.default_rng(2).random((4, 32, 32)) * 1000).astype(np.int16)
    series_uid = uid("split-series")
    a = enhanced_mr_dataset(stored[:2], [(0, 0, 12.0), (0, 0, 0.0)], series_uid=series_uid)
    b = enhanced_mr_dataset(stored[2:], [(0, 0, 8.0), (0, 0, 4.0)], series_uid=series_uid)
    b.InstanceNumber = 2
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, ds in (("a.dcm", a), ("b.dcm", b)):
            ds.FrameOfReferenceUID = uid("split-frame")
            zf.writestr(name, dicom_bytes(ds))
    data = buf.getvalue()
    series = read_upload(data, "image")[0]
    np.testing.assert_array_equal(series.pixels, stored[[1, 3, 2, 0]])  # z = 0, 4, 8, 12 mm
    sources = upload_sources(data, series, "image")
    assert [str(ds.SOPInstanceUID) for ds in sources.images] == [a.SOPInstanceUID,
                                                                 b.SOPInstanceUID]
    assert sources.slices == (SliceSource(0, 2), SliceSource(1, 2), SliceSource(1, 1),
                              SliceSource(0, 1))
    verdict = SeriesVerdict(scores=(1.0, 2.0, 3.0, 4.0), median=2.5, p90=3.7, threshold=3.5,
                            status="passed", flagged=False, rule="", model="m",
                            model_version="1", model_sha256="0" * 64)
    sr = build_sr(sources, verdict, software_version="test")
    assert [(v, u, f) for v, u, f in frame_measurements(sr, CODES["slice_score"][0])] == [
        (1.0, a.SOPInstanceUID, [2]), (2.0, b.SOPInstanceUID, [2]),
        (3.0, b.SOPInstanceUID, [1]), (4.0, a.SOPInstanceUID, [1])]
    maps = np.stack([np.full((32, 32), v, np.float32) for v in (1.0, 2.0, 3.0, 4.0)])
    pa, pb = build_saliency(sources, maps, verdict, software_version="test")
    assert [(n, pos[2]) for n, pos in map_frames(pa)] == [(1, 12.0), (2, 0.0)]
    assert [(n, pos[2]) for n, pos in map_frames(pb)] == [(1, 8.0), (2, 4.0)]
    assert [float(m.mean()) for m in pa.pixel_array] == [4.0, 1.0]
    assert [float(m.mean()) for m in pb.pixel_array] == [3.0, 2.0]
    assert pa.SeriesInstanceUID == pb.SeriesInstanceUID
    assert pa.SOPInstanceUID == derived_uid("saliency", series_uid, "0" * 64, a.SOPInstanceUID)
    assert pb.SOPInstanceUID == derived_uid("saliency", series_uid, "0" * 64, b.SOPInstanceUID)
    again = build_saliency(sources, maps, verdict, software_version="test")
    assert [m.SOPInstanceUID for m in again] == [pa.SOPInstanceUID, pb.SOPInstanceUID]
    # one instance: one map, the UID of the kind's only object (as before the split existed)
    one = read_upload(dicom_bytes(a), "image")[0]
    (pm,) = build_saliency(upload_sources(dicom_bytes(a), one, "image"), maps[:2],
                           dataclasses.replace(verdict, scores=(1.0, 2.0)),
                           software_version="test")
    assert pm.SOPInstanceUID == derived_uid("saliency", series_uid, "0" * 64)


@pytest.mark.parametrize(("laterality", "body_part", "expected"), [
    (None, "BRAIN", None), (None, None, ""), ("", "BRAIN", None), ("", None, ""),
    ("L", "KNEE", "L")])
def test_parametric_map_laterality_is_the_sources(laterality, body_part, expected, tmp_path):
    """Body part and Laterality (General Series, type 2C) come from the source, never guessed:
    its side when it states one; absent when it names its body part but no side; empty
    (unknown) when it names neither. dciodvfy finds no error in any of these maps."""
    from rankiq.service.results_dicom import SeriesVerdict, SliceSources, build_saliency

    src = mr_dataset((np.random.default_rng(1).random((32, 32)) * 1000).astype(np.int16))
    src.FrameOfReferenceUID = uid("laterality-frame")
    if laterality is not None:
        src.Laterality = laterality
    if body_part is not None:
        src.BodyPartExamined = body_part
    verdict = SeriesVerdict(scores=(1.0,), median=1.0, p90=1.0, threshold=2.0,
                            status="passed", flagged=False, rule="", model="m",
                            model_version="1", model_sha256="0" * 64)
    (pm,) = build_saliency(SliceSources.single_frame([src]), np.ones((1, 32, 32), np.float32),
                           verdict, software_version="test")
    assert pm.get("Laterality") == expected
    assert pm.get("BodyPartExamined") == body_part
    assert dciodvfy_errors(pm, tmp_path / "pm.dcm") == []
