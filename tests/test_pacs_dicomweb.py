"""`rankiq qa --dicomweb` against a real Orthanc (Debian packages orthanc, orthanc-dicomweb):
QIDO-RS query, WADO-RS retrieval, the same QA as a folder run, STOW-RS write-back of the TID 1500
SR and the saliency parametric map read back from Orthanc, reruns, and the PACS failures
(down, 401, malformed QIDO answer, a series deleted mid-run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers_io import dciodvfy_errors
from helpers_orthanc import PASSWORD, USER, Orthanc, dicomweb_plugin, orthanc_binary, start_orthanc
from helpers_qa import build, read_csv, read_json

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    orthanc_binary() is None or dicomweb_plugin() is None,
    reason="needs the Debian packages orthanc and orthanc-dicomweb (make test-deps)")]

ENV = {"RANKIQ_DICOMWEB_USER": USER, "RANKIQ_DICOMWEB_PASSWORD": PASSWORD}
MODEL = Path(__file__).resolve().parents[1] / "models" / "iqnet-noref"


def qa_env(**extra: str) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKIQ_DICOMWEB_")}
    return {**env, "OMP_NUM_THREADS": "1", "RANKIQ_FFT_WORKERS": "1", **extra}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc holding two synthetic MR series and pydicom's MR_small (3 studies)."""
    root = tmp_path_factory.mktemp("pacs")
    (root / "orthanc").mkdir()
    orthanc = start_orthanc(root / "orthanc")
    build(root, 2, size=64, slices=(4, 5), seed=3)
    shutil.copy(pydicom.data.get_testdata_file("MR_small.dcm"), root / "archive" / "mr.dcm")
    files = sorted(p for p in (root / "archive").rglob("*") if p.is_file())
    for f in files:
        orthanc.upload(f)
    yield orthanc, root
    orthanc.stop()


@pytest.fixture
def orthanc(tmp_path):
    """An empty Orthanc of the test's own (in ``tmp_path/orthanc``), stopped after it."""
    (tmp_path / "orthanc").mkdir()
    orthanc = start_orthanc(tmp_path / "orthanc")
    yield orthanc
    orthanc.stop()


def rankiq(*args: str, env: dict | None = None, timeout: float = 120
           ) -> subprocess.CompletedProcess:
    """The `rankiq` console script with exactly ``env`` (default: no DICOMweb credentials)."""
    import sys

    exe = Path(sys.executable).parent / "rankiq"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env=qa_env() if env is None else env)


def run_pacs(url: str, out: Path, *args: str, env: dict | None = None
             ) -> subprocess.CompletedProcess:
    return rankiq("qa", "--dicomweb", url, "--out", str(out), "--no-progress", "--json", *args,
                  env=qa_env(**ENV) if env is None else env, timeout=120)


def series_of_study(orthanc, study_uid: str) -> list[dict]:
    import requests

    r = requests.get(f"{orthanc.dicomweb}/studies/{study_uid}/series", auth=orthanc.auth,
                     timeout=30)
    r.raise_for_status()
    return r.json()


def retrieve(orthanc, study_uid: str, series_uid: str) -> list[pydicom.Dataset]:
    import requests
    from dicomweb_client import DICOMwebClient

    s = requests.Session()
    s.auth = orthanc.auth
    return DICOMwebClient(orthanc.dicomweb, session=s).retrieve_series(study_uid, series_uid)


def journal_scores(out: Path) -> dict[str, list[float]]:
    import sqlite3

    db = sqlite3.connect(out / "journal.sqlite")
    try:
        return {k: json.loads(r)["scores"] for k, r in
                db.execute("SELECT series_key, result FROM series WHERE status = 'done'")}
    finally:
        db.close()


def written_back(orthanc, out: Path, study_uid: str, written: dict[str, int]
                 ) -> tuple[dict, list[float], dict[str, str]]:
    """A QA run with ``--write-back sr,saliency`` that stores ``written`` objects per kind,
    supports every series and leaves no staged images; returns its ``dicomweb`` summary, the
    one scored series' journalled scores and ``{modality: series UID}`` of the study."""
    proc = run_pacs(orthanc.dicomweb, out, "--write-back", "sr,saliency")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)["dicomweb"]
    assert info["written"] == written and info["unsupported"] == 0
    assert not (out / "dicomweb-staging").exists()
    (scores,) = journal_scores(out).values()
    by_modality = {s["00080060"]["Value"][0]: s["0020000E"]["Value"][0]
                   for s in series_of_study(orthanc, study_uid)}
    assert sorted(by_modality) == ["MR", "OT", "SR"]
    return info, scores, by_modality


def score_saliency(folder: Path) -> np.ndarray:
    """The saliency `/score` gives for the series in ``folder`` on its own matrix: float64
    ``(S, rows, cols)``, the magnitude over the map's channels, in slice order."""
    from rankiq.service.io import read_series
    from rankiq.service.models import ScoringModel
    from rankiq.service.scoring import saliency_to_input, score_series

    model = ScoringModel.load(str(MODEL), threads=1)
    (image,) = read_series(str(folder))
    on_matrix = saliency_to_input(score_series(model, image, saliency=True).saliency,
                                  image.pixels, features=True)
    return np.sqrt(np.sum(np.square(on_matrix, dtype=np.float64), axis=1))


def test_pull_score_write_back_and_rerun(pacs, tmp_path):
    import highdicom as hd
    from rankiq.service.io.dicom import series_key_of

    orthanc, root = pacs
    out = tmp_path / "out"
    proc = run_pacs(orthanc.dicomweb, out, "--write-back", "sr,saliency")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["dicomweb"]["found"] == 3 and summary["dicomweb"]["retrieved"] == 3
    assert summary["dicomweb"]["written"] == {"sr": 3, "saliency": 3}
    assert not (out / "dicomweb-staging").exists()  # the patient's images left the disk

    # the same QA as a folder run of the same files
    folder = rankiq("qa", str(root / "archive"), "--out", str(tmp_path / "folder"),
                    "--no-progress", env=qa_env())
    assert folder.returncode == 0, folder.stderr
    rows = {r["series_key"]: r for r in read_csv(out / "qa.csv")}
    assert rows == {r["series_key"]: r for r in read_csv(tmp_path / "folder" / "qa.csv")}
    doc = {r["series_key"]: r for r in read_json(out / "qa.json")["series"]}
    scores = journal_scores(out)

    sources: dict[str, list[pydicom.Dataset]] = {}
    written_maps: dict[str, np.ndarray] = {}
    for f in (root / "archive").rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        sources.setdefault(series_key_of(ds.SeriesInstanceUID, ""), []).append(ds)
    for key, src in sources.items():
        first = src[0]
        listed = series_of_study(orthanc, first.StudyInstanceUID)
        modalities = sorted(s["00080060"]["Value"][0] for s in listed)
        assert modalities == ["MR", "OT", "SR"]  # the image series and our two objects
        by_modality = {s["00080060"]["Value"][0]: s["0020000E"]["Value"][0] for s in listed}

        # the SR: valid TID 1500, measurements equal the JSON scores, references the images
        (sr_ds,) = retrieve(orthanc, first.StudyInstanceUID, by_modality["SR"])
        sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
        assert sr.SOPInstanceUID not in {d.SOPInstanceUID for d in src}
        for kw in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate"):
            assert str(sr_ds.get(kw, "")) == str(first.get(kw, "")), kw
        (group,) = sr.content.get_image_measurement_groups()
        slice_ms = [m for m in group.get_measurements()
                    if m.name.value == "RIQ001"]
        assert [round(m.value, 6) for m in slice_ms] == [round(v, 6) for v in scores[key]]
        referenced = [m.referenced_images[0].referenced_sop_instance_uid for m in slice_ms]
        assert sorted(referenced) == sorted(d.SOPInstanceUID for d in src)
        named = {m.name.value: m.value for m in group.get_measurements()}
        assert named["RIQ002"] == pytest.approx(doc[key]["median"], abs=1e-6)
        assert named["RIQ004"] == pytest.approx(doc[key]["threshold"], abs=1e-6)
        evals = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
        assert evals["RIQ030"] == ("373066001" if doc[key]["flagged"] else "373067005")
        assert evals["RIQ010"] == {"passed": "RIQ011", "flagged": "RIQ012",
                                   "not_assessable": "RIQ013"}[doc[key]["status"]]
        assert dciodvfy_errors(sr_ds, tmp_path / f"{key}-sr.dcm") == []

        # the saliency parametric map: the source's matrix, spacing and slice positions
        (pm,) = retrieve(orthanc, first.StudyInstanceUID, by_modality["OT"])
        assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
        assert (pm.Rows, pm.Columns) == (first.Rows, first.Columns)
        assert int(pm.NumberOfFrames) == len(src)
        positions = sorted(tuple(round(float(v), 3) for v in
                                 fg.PlanePositionSequence[0].ImagePositionPatient)
                           for fg in pm.PerFrameFunctionalGroupsSequence)
        assert positions == sorted(tuple(round(float(v), 3) for v in d.ImagePositionPatient)
                                   for d in src)
        spacing = pm.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        assert [float(v) for v in spacing] == [float(v) for v in first.PixelSpacing]
        maps = np.asarray(pm.pixel_array, np.float64).reshape(len(src), pm.Rows, pm.Columns)
        assert np.isfinite(maps).all() and (maps >= 0).all()
        assert (maps.reshape(len(src), -1).max(axis=1) > 0).all()  # every slice has a map
        # the reader's slice order: along the slice normal
        cosines = [float(v) for v in pm.SharedFunctionalGroupsSequence[0]
                   .PlaneOrientationSequence[0].ImageOrientationPatient]
        normal = np.cross(cosines[:3], cosines[3:])
        along = [float(np.dot(normal, [float(v) for v in fg.PlanePositionSequence[0]
                                       .ImagePositionPatient]))
                 for fg in pm.PerFrameFunctionalGroupsSequence]
        written_maps[key] = maps[np.argsort(along, kind="stable")]

    # the map comes from the QA's one scoring pass and is the one `/score` (and `rankiq score
    # --saliency`) gives for the same slices: the scorer's saliency on the scan's matrix, its
    # magnitude as `?format=dicom` answers it
    from rankiq.service.io import read_series
    from rankiq.service.models import ScoringModel
    from rankiq.service.scoring import saliency_to_input, score_series

    model = ScoringModel.load(str(MODEL), threads=1)
    for image in read_series(str(root / "archive")):
        scored = score_series(model, image, saliency=True)
        on_matrix = saliency_to_input(scored.saliency, image.pixels, features=True)
        answered = np.sqrt(np.sum(np.square(on_matrix, dtype=np.float64), axis=1))
        np.testing.assert_allclose(written_maps[image.series_key],
                                   answered.astype(np.float32), rtol=1e-5, atol=1e-12)

    # a rerun finds everything done: nothing fetched, nothing stored twice
    count = orthanc.get("/statistics")["CountInstances"]
    again = run_pacs(orthanc.dicomweb, out, "--write-back", "sr,saliency", "--resume")
    assert again.returncode == 0, again.stderr
    info = json.loads(again.stdout)["dicomweb"]
    assert info["retrieved"] == 0 and info["written"] == {"sr": 0, "saliency": 0}
    assert orthanc.get("/statistics")["CountInstances"] == count


def test_series_deleted_mid_run_then_rerun_completes(pacs, tmp_path):
    """A series that vanishes between the query and its retrieval is reported, the others are
    scored, and a rerun after it is back completes only that one."""
    import requests
    from dicomweb_client import DICOMwebClient
    from rankiq.service.pacs.dicomweb import SeriesQuery
    from rankiq.service.pacs.qa import run_dicomweb_qa
    from rankiq.service.qa.runner import QAOptions

    orthanc, root = pacs
    victim = next(p for p in sorted((root / "archive").rglob("*.dcm")) if p.parent.name
                  != "archive")
    victim_uid = pydicom.dcmread(victim, stop_before_pixels=True).SeriesInstanceUID
    (orthanc_id,) = [s for s in orthanc.get("/series")
                     if orthanc.get(f"/series/{s}")["MainDicomTags"]["SeriesInstanceUID"]
                     == victim_uid]

    class ChangingPacs(DICOMwebClient):
        """The real Orthanc, in which the series is deleted right after the query."""

        def search_for_series(self, *a, **k):
            found = super().search_for_series(*a, **k)
            orthanc.delete(f"/series/{orthanc_id}")
            return found

    session = requests.Session()
    session.auth = orthanc.auth
    out = tmp_path / "out"
    opts = QAOptions(model_dir=Path(__file__).resolve().parents[1] / "models" / "iqnet-noref",
                     progress=False, threads=1)
    res = run_dicomweb_qa(orthanc.dicomweb, out, opts, SeriesQuery(),
                          write_back_kinds=("sr",),
                          client=ChangingPacs(orthanc.dicomweb, session=session))
    assert res.gone == 1 and res.retrieved == 2 and res.written == {"sr": 2}
    failed = read_csv(out / "failed.csv")
    assert [r["reason"] for r in failed] == ["series_not_found"]
    assert victim_uid not in (out / "failed.csv").read_text()
    staging = out / "dicomweb-staging"
    assert not list(staging.glob("*.part"))  # nothing half-written
    for f in sorted(victim.parent.glob("*.dcm")):  # the series is back
        orthanc.upload(f)
    again = run_pacs(orthanc.dicomweb, out, "--write-back", "sr", "--resume")
    assert again.returncode == 0, again.stderr
    info = json.loads(again.stdout)
    assert info["dicomweb"]["retrieved"] == 1 and info["dicomweb"]["written"] == {"sr": 1}
    assert info["series"] == 3 and info["failed_inputs"] == 0
    assert not staging.exists()


def test_write_back_asked_on_resume_after_the_images_left(pacs, tmp_path):
    """A run without write-back removes its staged images when it ends; asking for write-back
    on --resume then fails with one line that says what to do (no traceback), and a new
    --out folder writes back."""
    orthanc, _ = pacs
    out = tmp_path / "out"
    first = run_pacs(orthanc.dicomweb, out)
    assert first.returncode == 0, first.stderr
    assert not (out / "dicomweb-staging").exists()
    late = run_pacs(orthanc.dicomweb, out, "--write-back", "sr", "--resume")
    assert late.returncode == 2
    assert len(late.stderr.strip().splitlines()) == 1, late.stderr
    assert "no longer staged" in late.stderr and "Traceback" not in late.stderr
    again = run_pacs(orthanc.dicomweb, tmp_path / "new", "--write-back", "sr")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["dicomweb"]["written"] == {"sr": 3}


def test_pacs_failures_are_one_line_and_write_nothing(pacs, tmp_path):
    orthanc, _ = pacs
    # wrong credentials: 401
    bad = run_pacs(orthanc.dicomweb, tmp_path / "a",
                   env=qa_env(RANKIQ_DICOMWEB_USER=USER, RANKIQ_DICOMWEB_PASSWORD="wrong"))
    assert bad.returncode == 2 and "answered 401" in bad.stderr
    assert PASSWORD not in bad.stderr and "wrong" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    # credentials on the command line are refused
    cl = run_pacs(orthanc.dicomweb.replace("http://", f"http://{USER}:{PASSWORD}@"),
                  tmp_path / "b")
    assert cl.returncode == 2 and "credentials in the URL" in cl.stderr
    assert PASSWORD not in cl.stderr
    # the server is down
    from helpers_orthanc import free_port

    down = run_pacs(f"http://127.0.0.1:{free_port()}/dicom-web", tmp_path / "c")
    assert down.returncode == 2 and "cannot reach http://127.0.0.1" in down.stderr
    assert not (tmp_path / "c").exists()


class _BadQido(BaseHTTPRequestHandler):
    answers = [b"not json at all", b'{"not": "a list"}',
               b'[{"0020000E": {"vr": "UI", "Value": ["1.2.3"]}}]',
               b'[{"0020000E": {"vr": "UI", "Value": ["<script>"]}, '
               b'"0020000D": {"vr": "UI", "Value": ["1.2"]}}]']

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.answers[int(self.server.calls) % len(self.answers)]  # type: ignore[attr-defined]
        self.server.calls += 1  # type: ignore[attr-defined]
        _answer(self, body, "application/dicom+json")

    def log_message(self, *args: object) -> None:
        pass


def _answer(handler: BaseHTTPRequestHandler, body: bytes, ctype: str) -> None:
    """A 200 with ``body`` of type ``ctype``."""
    handler.send_response(200)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def test_malformed_qido_answers(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BadQido)
    server.calls = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        for i in range(len(_BadQido.answers)):
            proc = run_pacs(url, tmp_path / f"o{i}")
            assert proc.returncode == 2, proc.stderr
            assert "QIDO-RS" in proc.stderr or "DICOMweb" in proc.stderr, proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1
            assert "<script>" not in proc.stderr and "internal error" not in proc.stderr
            assert not (tmp_path / f"o{i}").exists()
    finally:
        server.shutdown()


class _Wado(BaseHTTPRequestHandler):
    """WADO-RS of a series, three ways: multipart (``good``), one part sent as plain
    application/dicom (``single``), and multipart with a part that is not DICOM (``bad``)."""

    files: list[bytes] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        boundary = "b0undary"
        if "/series/1.2.2" in self.path:  # single
            body, ctype = self.files[0], "application/dicom"
        else:
            parts = self.files if "/series/1.2.1" in self.path else [self.files[0], b"x" * 200]
            body = b"".join(f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n"
                            .encode() + p for p in parts) + f"\r\n--{boundary}--".encode()
            ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
        _answer(self, body, ctype)

    log_message = _BadQido.log_message


def test_wado_parts_are_staged_as_sent_and_a_part_that_is_not_dicom_is_refused(tmp_path):
    """Retrieval writes each instance's bytes as the server sent them (nothing decoded and
    encoded again); a part that is not a DICOM file is a malformed answer, and the series'
    folder is then absent, half-written parts included."""
    from pydicom.data import get_testdata_file
    from rankiq.service.pacs.dicomweb import PacsBadAnswer, SeriesHit, connect, retrieve_series

    _Wado.files = [Path(get_testdata_file(n)).read_bytes()
                   for n in ("MR_small.dcm", "CT_small.dcm")]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Wado)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = connect(f"http://127.0.0.1:{server.server_address[1]}/dicom-web")
        good = tmp_path / "good"
        assert retrieve_series(client, SeriesHit("1.2", "1.2.1", "good", "MR", 2), good) == 2
        assert [p.read_bytes() for p in sorted(good.iterdir())] == _Wado.files
        single = tmp_path / "single"
        assert retrieve_series(client, SeriesHit("1.2", "1.2.2", "single", "MR", 1), single) == 1
        assert [p.read_bytes() for p in single.iterdir()] == _Wado.files[:1]
        bad = tmp_path / "bad"
        with pytest.raises(PacsBadAnswer, match="not a DICOM file"):
            retrieve_series(client, SeriesHit("1.2", "1.2.3", "bad", "MR", 2), bad)
        assert not bad.exists() and not (tmp_path / "bad.part").exists()
    finally:
        server.shutdown()


def test_dicomweb_options_need_dicomweb(tmp_path):
    proc = rankiq("qa", str(tmp_path), "--out", str(tmp_path / "o"), "--write-back", "sr")
    assert proc.returncode == 2 and "need --dicomweb" in proc.stderr
    proc = rankiq("qa", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "PATHs or --dicomweb" in proc.stderr
    proc = rankiq("qa", "--dicomweb", "http://127.0.0.1:1/x", "--out", str(tmp_path / "o"),
                  "--write-back", "png")
    assert proc.returncode == 2 and "--write-back takes" in proc.stderr
    proc = rankiq("qa", "--dicomweb", "http://127.0.0.1:1/x", "--out", str(tmp_path / "o"),
                  "--study", "not-a-uid")
    assert proc.returncode == 2 and "--study takes a DICOM UID" in proc.stderr


def test_push_mode_lua_recipe(tmp_path):
    """deploy/orthanc/rankiq.lua: Orthanc runs rankiq when a series is stable and the SR and
    saliency map land back in the series' study."""
    import sys
    import time

    root = tmp_path / "orthanc"
    root.mkdir()
    lua = Path(__file__).resolve().parents[1] / "deploy" / "orthanc" / "rankiq.lua"
    env = qa_env(**ENV, RANKIQ_BIN=str(Path(sys.executable).parent / "rankiq"),
                 RANKIQ_PUSH_OUT=str(tmp_path / "push"), RANKIQ_DICOMWEB="{url}/dicom-web")
    orthanc = start_orthanc(root, lua=lua, env=env)
    try:
        path = Path(pydicom.data.get_testdata_file("MR_small.dcm"))
        study = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
        orthanc.upload(path)
        deadline = time.monotonic() + 60
        found: list[str] = []
        while time.monotonic() < deadline:
            found = sorted(s["00080060"]["Value"][0] for s in series_of_study(orthanc, study))
            if found == ["MR", "OT", "SR"]:
                break
            time.sleep(0.5)
        logs = "".join(p.read_text() for p in (tmp_path / "push").glob("*.log")) \
            if (tmp_path / "push").exists() else ""
        assert found == ["MR", "OT", "SR"], logs
    finally:
        orthanc.stop()


def test_multiframe_series_written_back(orthanc, tmp_path):
    """A series stored as one Legacy Converted Enhanced MR instance (frames top slice first) is
    scored and written back: each SR slice score references its frame, the map has one frame
    per source frame, derived from it and at its position."""
    import highdicom as hd
    from helpers_multiframe import (
        frame_measurements,
        frame_positions,
        legacy_multiframe,
        map_frames,
        single_frame_series,
    )
    from helpers_service import volume_with_bad_slice

    mf = legacy_multiframe(single_frame_series(tmp_path / "sf",
                                               volume_with_bad_slice(4, bad=1)))
    mf.save_as(tmp_path / "mf.dcm", enforce_file_format=True)
    orthanc.upload(tmp_path / "mf.dcm")
    out = tmp_path / "out"
    # scores in slice order: along the normal, z = 0 first
    _, scores, by_modality = written_back(orthanc, out, mf.StudyInstanceUID,
                                          {"sr": 1, "saliency": 1})

    (sr_ds,) = retrieve(orthanc, mf.StudyInstanceUID, by_modality["SR"])
    assert dciodvfy_errors(sr_ds, tmp_path / "sr.dcm") == []
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    found = frame_measurements(sr, "RIQ001")
    positions = frame_positions(mf)  # frame n at positions[n - 1]: z = 9, 6, 3, 0 mm
    z_order = sorted(p[2] for p in positions)
    assert [f for _, _, f in found] == [[4], [3], [2], [1]]
    for i, (value, uid, (n,)) in enumerate(found):
        assert uid == mf.SOPInstanceUID and positions[n - 1][2] == z_order[i]
        assert value == pytest.approx(scores[i], abs=1e-6)
    (group,) = sr.content.get_image_measurement_groups()
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [
        mf.SOPInstanceUID]

    (pm,) = retrieve(orthanc, mf.StudyInstanceUID, by_modality["OT"])
    assert int(pm.NumberOfFrames) == int(mf.NumberOfFrames) == 4
    frames = map_frames(pm)
    assert sorted(n for n, _ in frames) == [1, 2, 3, 4]
    assert all(pos == positions[n - 1] for n, pos in frames)
    shared = pm.SharedFunctionalGroupsSequence[0]
    src_shared = mf.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] \
        == [float(v) for v in src_shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    maps = np.asarray(pm.pixel_array, np.float64)
    assert maps.shape == (4, pm.Rows, pm.Columns) and np.isfinite(maps).all()
    assert (maps.reshape(4, -1).max(axis=1) > 0).all()


def test_series_split_over_two_multiframe_instances_written_back(orthanc, tmp_path):
    """A series whose slices are frames of two Legacy Converted Enhanced MR instances (slices
    alternating between them, each instance's frames top slice first): the SR references each
    slice's (instance, frame), one map per instance is derived from it in its frame order with
    the saliency `/score` gives for those slices, dciodvfy finds no error, and a rerun (after a
    map was lost from the PACS) stores the same objects again: nothing duplicated."""
    import highdicom as hd
    from helpers_multiframe import (
        frame_measurements,
        frame_positions,
        legacy_multiframe,
        map_frames,
        single_frame_series,
    )
    from helpers_service import volume_with_bad_slice

    slices = single_frame_series(tmp_path / "sf", volume_with_bad_slice(4, bad=1))
    parts = [legacy_multiframe(slices[0::2], "a"), legacy_multiframe(slices[1::2], "b")]
    (tmp_path / "mf").mkdir()
    for name, ds in zip(("a.dcm", "b.dcm"), parts, strict=True):
        ds.save_as(tmp_path / "mf" / name, enforce_file_format=True)
        orthanc.upload(tmp_path / "mf" / name)
    out = tmp_path / "out"
    study = parts[0].StudyInstanceUID
    # scores in slice order: z = 0, 3, 6, 9 mm
    _, scores, by_modality = written_back(orthanc, out, study, {"sr": 1, "saliency": 2})

    (sr_ds,) = retrieve(orthanc, study, by_modality["SR"])
    assert dciodvfy_errors(sr_ds, tmp_path / "sr.dcm") == []
    positions = {str(ds.SOPInstanceUID): frame_positions(ds) for ds in parts}
    found = frame_measurements(sr_ds, "RIQ001")
    # slice i (z = 3 i mm) is frame 2 - i // 2 of instance a (i even) or b (i odd)
    assert [(u, f) for _, u, f in found] == [
        (str(parts[i % 2].SOPInstanceUID), [2 - i // 2]) for i in range(4)]
    for i, (value, u, (n,)) in enumerate(found):
        assert positions[u][n - 1][2] == 3.0 * i
        assert value == pytest.approx(scores[i], abs=1e-6)
    (group,) = hd.sr.Comprehensive3DSR.from_dataset(sr_ds).content \
        .get_image_measurement_groups()
    assert sorted(s.referenced_sop_instance_uid for s in group.source_images) == sorted(
        positions)

    # the saliency /score gives for the same slices (the single-frame series' pixels)
    answered = score_saliency(tmp_path / "mf")
    maps = sorted(retrieve(orthanc, study, by_modality["OT"]),
                  key=lambda d: int(d.InstanceNumber))
    assert len(maps) == 2 and len({m.SOPInstanceUID for m in maps}) == 2
    for pm, src in zip(maps, parts, strict=True):
        assert dciodvfy_errors(pm, tmp_path / f"pm{pm.InstanceNumber}.dcm") == []
        assert [i.ReferencedSOPInstanceUID for s in pm.ReferencedSeriesSequence
                for i in s.ReferencedInstanceSequence] == [src.SOPInstanceUID]
        frames = map_frames(pm)
        assert frames == [(n + 1, p) for n, p in enumerate(frame_positions(src))]
        for (_, pos), px in zip(frames, np.asarray(pm.pixel_array, np.float64),
                                strict=True):
            np.testing.assert_allclose(px, answered[int(round(pos[2] / 3.0))]
                                       .astype(np.float32), rtol=1e-5, atol=1e-12)

    # a --resume finds everything written; a map lost from the PACS comes back under the
    # same UID with a new run, and nothing is duplicated
    count = orthanc.get("/statistics")["CountInstances"]
    again = run_pacs(orthanc.dicomweb, out, "--write-back", "sr,saliency", "--resume")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["dicomweb"]["written"] == {"sr": 0, "saliency": 0}
    (hit,) = [i for i in orthanc.get("/instances?expand")
              if i["MainDicomTags"].get("SOPInstanceUID") == maps[1].SOPInstanceUID]
    orthanc.delete(f"/instances/{hit['ID']}")
    assert orthanc.get("/statistics")["CountInstances"] == count - 1
    rerun = run_pacs(orthanc.dicomweb, tmp_path / "out2", "--write-back", "sr,saliency")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["dicomweb"]["written"] == {"sr": 1, "saliency": 2}
    assert orthanc.get("/statistics")["CountInstances"] == count
    assert sorted(d.SOPInstanceUID for d in retrieve(orthanc, study, by_modality["OT"])) \
        == sorted(m.SOPInstanceUID for m in maps)


# -- a STOW-RS request refused part-way; a series mixing single- and multi-frame instances -------

#: Orthanc's filter of received instances: the Parametric Map numbered 2 (the second map of the
#: write-back's one STOW-RS request for a series split over two instances) fails to store.
REFUSE_SECOND_MAP = """
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and dicom.InstanceNumber == "2" then
    error("the test refuses this map")
  end
  return true
end
"""


@pytest.fixture
def own_orthanc(tmp_path):
    """``start(lua=None)``: (re)start an Orthanc of the test's own on one storage
    (``tmp_path/orthanc``) and one URL (a QA run's journal is bound to its server), stopping
    the one running first; the last is stopped after the test."""
    from urllib.parse import urlsplit

    root = tmp_path / "orthanc"
    root.mkdir()
    running: list[Orthanc] = []

    def start(lua: Path | None = None) -> Orthanc:
        port = None
        while running:
            stopped = running.pop()
            stopped.stop()
            port = urlsplit(stopped.url).port
        running.append(start_orthanc(root, lua=lua, port=port))
        return running[0]

    yield start
    for orthanc in running:
        orthanc.stop()


def sop_uids(orthanc) -> list[str]:
    """The SOPInstanceUID of every instance Orthanc holds (one entry per stored instance)."""
    return [i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("/instances?expand")]


def writeback_kinds(out: Path) -> dict[str, set[str]]:
    """The journal's write-back records: ``{series key: kinds recorded as written}``."""
    import sqlite3

    db = sqlite3.connect(out / "journal.sqlite")
    try:
        found: dict[str, set[str]] = {}
        for key, kind in db.execute("SELECT series_key, kind FROM writeback"):
            found.setdefault(key, set()).add(kind)
        return found
    finally:
        db.close()


def test_store_refused_part_way_through_one_request_then_rerun(own_orthanc, tmp_path):
    """Orthanc stores the first saliency map of a series split over two multi-frame instances
    and fails on the second (same STOW-RS request): the run fails with one line naming the
    series by its key (no patient identifier, UID or file name), the kind is not journalled,
    the images stay staged; a --resume against the same storage without the filter stores
    exactly the missing map and the SR, and a further rerun stores nothing."""
    from helpers_multiframe import legacy_multiframe, single_frame_series
    from helpers_service import volume_with_bad_slice
    from rankiq.service.io.dicom import series_key_of

    slices = single_frame_series(tmp_path / "sf", volume_with_bad_slice(4, bad=1))
    parts = [legacy_multiframe(slices[0::2], "a"), legacy_multiframe(slices[1::2], "b")]
    names = ("head-scan-part-a.dcm", "head-scan-part-b.dcm")
    lua = tmp_path / "refuse.lua"
    lua.write_text(REFUSE_SECOND_MAP)
    orthanc = own_orthanc(lua=lua)
    (tmp_path / "mf").mkdir()
    for name, ds in zip(names, parts, strict=True):
        ds.save_as(tmp_path / "mf" / name, enforce_file_format=True)
        orthanc.upload(tmp_path / "mf" / name)
    images = set(sop_uids(orthanc))
    assert len(images) == 2
    key = series_key_of(parts[0].SeriesInstanceUID, "")

    out = tmp_path / "out"
    proc = run_pacs(orthanc.dicomweb, out, "--write-back", "sr,saliency")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"STOW-RS of the saliency map of series {key}" in proc.stderr
    assert "refused 1 of 2 instances" in proc.stderr
    first = parts[0]
    for secret in (str(first.PatientName), str(first.PatientID), first.StudyInstanceUID,
                   first.SeriesInstanceUID, *images, *names, "00001.dcm", str(tmp_path)):
        assert secret and secret not in proc.stderr, secret
    # one map got in; neither kind is recorded as written, so the images stay for a rerun
    stored = [u for u in sop_uids(orthanc) if u not in images]
    assert len(stored) == 1
    (kept,) = stored
    tags = next(orthanc.get(f"/instances/{i['ID']}/simplified-tags")
                for i in orthanc.get("/instances?expand")
                if i["MainDicomTags"]["SOPInstanceUID"] == kept)
    assert tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.30" and tags["InstanceNumber"] == "1"
    assert writeback_kinds(out) == {}
    assert (out / "dicomweb-staging" / key).is_dir()
    # the reports were written before the write-back: the series is scored, no input failed
    (row,) = read_json(out / "qa.json")["series"]
    assert row["series_key"] == key and row["status"] in ("passed", "flagged")
    assert read_csv(out / "failed.csv") == []

    # the PACS accepts everything again (same storage): the rerun completes what is missing
    orthanc = own_orthanc()
    assert sorted(sop_uids(orthanc)) == sorted([*images, kept])
    again = run_pacs(orthanc.dicomweb, out, "--write-back", "sr,saliency", "--resume")
    assert again.returncode == 0, again.stderr
    info = json.loads(again.stdout)["dicomweb"]
    assert info["retrieved"] == 0 and info["unsupported"] == 0
    # the kind is stored as one request again; the map already there is not stored twice
    assert info["written"] == {"sr": 1, "saliency": 2}
    after = sop_uids(orthanc)
    assert len(after) == len(set(after)) == len(images) + 3
    assert kept in after
    derived = {u: orthanc.get(f"/instances/{i['ID']}/simplified-tags")
               for i in orthanc.get("/instances?expand")
               if (u := i["MainDicomTags"]["SOPInstanceUID"]) not in images}
    assert sorted((t["SOPClassUID"], t.get("InstanceNumber")) for t in derived.values()) == [
        ("1.2.840.10008.5.1.4.1.1.30", "1"), ("1.2.840.10008.5.1.4.1.1.30", "2"),
        ("1.2.840.10008.5.1.4.1.1.88.34", "1")]
    assert writeback_kinds(out) == {key: {"sr", "saliency"}}
    assert not (out / "dicomweb-staging").exists()
    # and a further rerun stores nothing
    last = run_pacs(orthanc.dicomweb, out, "--write-back", "sr,saliency", "--resume")
    assert last.returncode == 0, last.stderr
    assert json.loads(last.stdout)["dicomweb"]["written"] == {"sr": 0, "saliency": 0}
    assert sorted(sop_uids(orthanc)) == sorted(after)


def test_series_mixing_single_and_multiframe_instances_written_back(orthanc, tmp_path):
    """A series of two single-frame images (z = 0, 3 mm) and one Legacy Converted Enhanced MR
    instance holding the other two slices (frame 1 at z = 9, frame 2 at z = 6): the SR
    references each slice's instance, and its frame in the multi-frame one; there is one map
    derived from the single-frame images (a frame per image, at its position) and one from the
    multi-frame instance (frame n from its frame n), both holding the saliency `/score` gives
    for those slices; dciodvfy finds no error; a rerun stores nothing."""
    import highdicom as hd
    from helpers_multiframe import frame_measurements, legacy_multiframe, single_frame_series
    from helpers_service import volume_with_bad_slice

    slices = single_frame_series(tmp_path / "sf", volume_with_bad_slice(4, bad=1))
    single, mf = slices[:2], legacy_multiframe(slices[2:], "mixed")
    assert {str(mf.SeriesInstanceUID), str(mf.StudyInstanceUID)} == {
        str(single[0].SeriesInstanceUID), str(single[0].StudyInstanceUID)}
    (tmp_path / "mixed").mkdir()
    for i, ds in enumerate([*single, mf]):
        ds.save_as(tmp_path / "mixed" / f"{i}.dcm", enforce_file_format=True)
        orthanc.upload(tmp_path / "mixed" / f"{i}.dcm")
    out = tmp_path / "out"
    study = str(mf.StudyInstanceUID)
    # scores in slice order: z = 0, 3, 6, 9 mm
    info, scores, by_modality = written_back(orthanc, out, study, {"sr": 1, "saliency": 2})
    assert info["retrieved"] == 1 and info["instances"] == 3
    assert len(scores) == 4

    # where each slice (by its z) was read from: (instance, [frame] or [] for single-frame)
    source_of = {round(float(ds.ImagePositionPatient[2]), 3): (str(ds.SOPInstanceUID), [])
                 for ds in single}
    for n, fg in enumerate(mf.PerFrameFunctionalGroupsSequence, start=1):
        z = round(float(fg.PlanePositionSequence[0].ImagePositionPatient[2]), 3)
        source_of[z] = (str(mf.SOPInstanceUID), [n])
    assert sorted(source_of) == [0.0, 3.0, 6.0, 9.0]

    (sr_ds,) = retrieve(orthanc, study, by_modality["SR"])
    assert dciodvfy_errors(sr_ds, tmp_path / "sr.dcm") == []
    found = frame_measurements(sr_ds, "RIQ001")
    assert [(u, f) for _, u, f in found] == [source_of[3.0 * i] for i in range(4)]
    assert [v for v, _, _ in found] == pytest.approx(scores, abs=1e-6)
    (group,) = hd.sr.Comprehensive3DSR.from_dataset(sr_ds).content \
        .get_image_measurement_groups()
    assert sorted(s.referenced_sop_instance_uid for s in group.source_images) == sorted(
        {u for u, _ in source_of.values()})

    # the maps: one from the single-frame images, one from the multi-frame instance
    answered = score_saliency(tmp_path / "mixed")
    assert answered.shape[0] == 4
    maps = sorted(retrieve(orthanc, study, by_modality["OT"]),
                  key=lambda d: int(d.InstanceNumber))
    assert [int(m.InstanceNumber) for m in maps] == [1, 2]
    assert len({m.SOPInstanceUID for m in maps}) == 2
    expected_sources = [sorted(str(ds.SOPInstanceUID) for ds in single), [str(mf.SOPInstanceUID)]]
    for pm, sources in zip(maps, expected_sources, strict=True):
        assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
        assert dciodvfy_errors(pm, tmp_path / f"pm{pm.InstanceNumber}.dcm") == []
        assert sorted(i.ReferencedSOPInstanceUID for s in pm.ReferencedSeriesSequence
                      for i in s.ReferencedInstanceSequence) == sources
        assert int(pm.NumberOfFrames) == 2
        pixels = np.asarray(pm.pixel_array, np.float64).reshape(2, pm.Rows, pm.Columns)
        for fg, px in zip(pm.PerFrameFunctionalGroupsSequence, pixels, strict=True):
            z = round(float(fg.PlanePositionSequence[0].ImagePositionPatient[2]), 3)
            (src,) = fg.DerivationImageSequence[0].SourceImageSequence
            frame = [int(src.ReferencedFrameNumber)] if "ReferencedFrameNumber" in src else []
            # each map frame derives from the image (and frame) its slice was read from
            assert (str(src.ReferencedSOPInstanceUID), frame) == source_of[z]
            np.testing.assert_allclose(px, answered[int(round(z / 3.0))].astype(np.float32),
                                       rtol=1e-5, atol=1e-12)

    # a rerun finds everything written: nothing stored again
    count = orthanc.get("/statistics")["CountInstances"]
    assert count == 3 + 3
    again = run_pacs(orthanc.dicomweb, out, "--write-back", "sr,saliency", "--resume")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["dicomweb"]["written"] == {"sr": 0, "saliency": 0}
    assert orthanc.get("/statistics")["CountInstances"] == count
