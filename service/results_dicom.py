"""RankIQ results as DICOM objects that sit next to the images in a PACS (built with highdicom).

* :func:`build_sr`: a Comprehensive 3D SR holding a TID 1500 *Measurement Report*: one
  measurement per slice (the slice's score, referencing its image), the series statistics
  (median, 90th percentile) and the flag threshold as numeric measurements, the verdict
  (passed / flagged / not assessable), whether it is flagged and the rule that fired as coded
  qualitative evaluations, and the model name and version as the algorithm identification
  (TID 4019). Concepts RankIQ defines are coded in the private scheme ``99RANKIQ``
  (:data:`CODES`), units in UCUM (``1``: no units).
* :func:`build_saliency`: a *Parametric Map* (float pixels, one frame per source slice, the
  source's own matrix, pixel spacing, orientation and positions) of where the score comes from,
  which viewers overlay on the series; :func:`saliency_on_matrix` brings the model's map back
  from its analysis grid to the scan's matrix.

The source of a series is either one single-frame instance per slice or one multi-frame
instance (Enhanced MR, Legacy Converted Enhanced MR) whose frames are the slices
(:func:`slice_sources`): then each slice-score measurement references its frame by number and
the map's frames are derived from the source frames, with their positions.

Both copy the source study's patient, study and equipment-independent attributes from the
source images as the IODs require (highdicom does so from the evidence), invent none, and get
new UIDs that are derived deterministically from the source series, the model and the kind of
object (:func:`derived_uid`): storing the same result twice replaces nothing and duplicates
nothing, so an interrupted write-back is simply repeated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Private coding scheme of the concepts RankIQ defines.
SCHEME = "99RANKIQ"
SR_SERIES_NUMBER = 9901
SALIENCY_SERIES_NUMBER = 9902
#: (code value, meaning) of every RankIQ concept (code values at most 16 characters).
CODES: dict[str, tuple[str, str]] = {
    "procedure": ("RIQ100", "MR image quality assessment"),
    "slice_score": ("RIQ001", "Image quality score (lower is better)"),
    "median": ("RIQ002", "Series median image quality score"),
    "p90": ("RIQ003", "Series 90th percentile image quality score"),
    "threshold": ("RIQ004", "Image quality flag threshold"),
    "verdict": ("RIQ010", "Image quality verdict"),
    "passed": ("RIQ011", "Passed"),
    "flagged": ("RIQ012", "Flagged"),
    "not_assessable": ("RIQ013", "Not assessable"),
    "rule": ("RIQ020", "Flag rule"),
    "model_threshold": ("RIQ021", "Model threshold"),
    "site_threshold": ("RIQ022", "Site threshold"),
    "archive_outlier": ("RIQ023", "Archive outlier"),
    "flag": ("RIQ030", "Flagged for image quality review"),
    "saliency": ("RIQ040", "Image quality score saliency"),
    "tracking": ("RIQ050", "RankIQ image quality"),
}


@dataclass(frozen=True)
class SeriesVerdict:
    """What the SR reports of one scored series (the qa.json row and its per-slice scores).

    Attributes:
        scores: per-slice scores in slice order (model units, lower is better).
        median, p90: series statistics over non-blank slices (``None`` when undefined).
        threshold: the flag threshold that applied (same units), or ``None``.
        status: ``passed``, ``flagged`` or ``not_assessable``; ``flagged``: the flag;
            ``rule``: ``model_threshold``, ``site_threshold``, ``archive_outlier`` or ``""``.
        model, model_version, model_sha256: the model that scored the series.
    """

    scores: tuple[float, ...]
    median: float | None
    p90: float | None
    threshold: float | None
    status: str
    flagged: bool
    rule: str
    model: str
    model_version: str
    model_sha256: str

    @classmethod
    def from_row(cls, row: dict[str, Any], scores: Sequence[float], model_sha256: str = ""
                 ) -> SeriesVerdict:
        """From a qa.json series row and the journalled per-slice scores."""
        def num(key: str) -> float | None:
            v = row.get(key)
            return None if v is None or v == "" else float(v)

        return cls(scores=tuple(float(s) for s in scores), median=num("median"),
                   p90=num("p90"), threshold=num("threshold"), status=str(row["status"]),
                   flagged=bool(row["flagged"]), rule=str(row.get("rule") or ""),
                   model=str(row.get("model")), model_version=str(row.get("model_version")),
                   model_sha256=model_sha256)


#: Type 2 attributes of the Patient and General Study modules that derived objects copy from
#: their source: present in every object, empty when the source lacks them (unknown).
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def with_type2(sources: Sequence[Any]) -> list[Any]:
    """Copies of the source headers in which every :data:`TYPE2_COPIED` attribute the source
    lacks is present and empty (DICOM's "unknown"), so the derived objects carry exactly the
    source's values and nothing invented."""
    import copy

    out = []
    for ds in sources:
        ds = copy.copy(ds)
        for keyword in TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
        out.append(ds)
    return out


@dataclass(frozen=True)
class SliceSources:
    """The source images of a series' slices, as the DICOM results reference them.

    Attributes:
        images: the source headers (pydicom datasets, no pixels): one per slice in slice order,
            or the one multi-frame image whose frames are the slices.
        frames: with one multi-frame image, the 1-based frame number of each slice in slice
            order (the order RankIQ scores in: along the slice normal, else by frame number);
            ``None`` for single-frame images.
    """

    images: list[Any]
    frames: tuple[int, ...] | None = None


def slice_sources(headers: Sequence[tuple[str, Any]], n_slices: int) -> SliceSources:
    """Which source image (and frame) each slice of a series read by
    :mod:`rankiq.service.io` came from.

    Args:
        headers: ``(source name, header)`` of each file of ``series.source_files``, in that
            order (the names the reader gave them: the frames are ordered as it orders them).
        n_slices: the series' number of slices.

    Raises:
        ValueError: what the results cannot describe: slices spread over several instances of
            which one is a multi-frame image (a Parametric Map derives from one multi-frame
            source or from single-frame images), or files and slices that do not match.
    """
    from highdicom._standard_utils import is_multiframe_image
    from rankiq.service.io.dicom import Frame, _fg, _instance_meta, _num, _vec, order_frames

    multi = [is_multiframe_image(ds) for _, ds in headers]
    if not any(multi):
        if len(headers) != n_slices:
            raise ValueError(f"{len(headers)} single-frame images for {n_slices} slices")
        return SliceSources(images=[ds for _, ds in headers])
    if len(headers) != 1:
        raise ValueError("the slices come from several instances, one of them multi-frame")
    source, ds = headers[0]
    count = int(_num(ds.get("NumberOfFrames")) or 1)
    if count != n_slices:
        raise ValueError(f"{count} frames for {n_slices} slices")
    # the reader's own ordering, on the frames' geometry (no pixels needed)
    meta, inst = _instance_meta(ds), _num(ds.get("InstanceNumber"))
    empty = np.zeros((0, 0), np.float32)
    frames = [Frame(pixels=empty,
                    position=_vec(_fg(ds, i, "PlanePositionSequence", "ImagePositionPatient"), 3),
                    orientation=_vec(_fg(ds, i, "PlaneOrientationSequence",
                                         "ImageOrientationPatient"), 6),
                    instance_number=None if inst is None else int(inst), frame_index=i,
                    source=source, meta=meta)
              for i in range(count)]
    ordered, _, _ = order_frames(frames)
    return SliceSources(images=[ds], frames=tuple(f.frame_index + 1 for f in ordered))


def _check_frames(sources: Sequence[Any], frames: Sequence[int] | None, n: int) -> None:
    """Raise ValueError unless ``sources`` (and ``frames``) describe ``n`` slices."""
    if frames is None:
        if len(sources) != n:
            raise ValueError(f"{len(sources)} source images for {n} slices")
        return
    count = int(sources[0].get("NumberOfFrames") or 1) if len(sources) == 1 else -1
    if count != n or sorted(frames) != list(range(1, n + 1)):
        raise ValueError(f"frame numbers {list(frames)[:4]}... are not the {n} frames of one "
                         "multi-frame source image")


def code(name: str) -> Any:
    """The :class:`highdicom.sr.CodedConcept` of a RankIQ concept."""
    from highdicom.sr import CodedConcept

    value, meaning = CODES[name]
    return CodedConcept(value, SCHEME, meaning)


def derived_uid(kind: str, series_uid: str, model_sha256: str) -> str:
    """A new UID for a derived object, the same for the same source series, model and kind
    (``sr-series``, ``sr``, ``saliency-series``, ``saliency``...)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["rankiq", kind, series_uid.strip(), model_sha256])


def _no_units() -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept("1", "UCUM", "no units")


def build_sr(sources: Sequence[Any], verdict: SeriesVerdict, *, software_version: str,
             frames: Sequence[int] | None = None) -> Any:
    """The TID 1500 measurement report of one series (a Comprehensive 3D SR dataset).

    Args:
        sources: the series' source images (pydicom datasets, header only is enough), one per
            slice, in slice order (the order of ``verdict.scores``); or, with ``frames``, the
            one multi-frame image whose frames are the slices.
        verdict: the scores and the verdict.
        software_version: RankIQ's version (SoftwareVersions of the SR).
        frames: with a multi-frame source, the 1-based frame number of each slice in slice
            order (:attr:`SliceSources.frames`); each slice's measurement references its frame.

    Raises:
        ValueError: sources (or frames) and scores of different lengths.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    _check_frames(sources, frames, len(verdict.scores))
    sources = with_type2(sources)
    series_uid = str(sources[0].SeriesInstanceUID)
    sha = verdict.model_sha256
    algorithm = hd.sr.AlgorithmIdentification(name=f"RankIQ {verdict.model}",
                                              version=verdict.model_version)
    unit = _no_units()
    if frames is None:
        slice_refs = [hd.sr.SourceImageForMeasurement.from_source_image(ds) for ds in sources]
    else:
        slice_refs = [hd.sr.SourceImageForMeasurement.from_source_image(
            sources[0], referenced_frame_numbers=[int(n)]) for n in frames]
    measurements = [hd.sr.Measurement(name=code("slice_score"), value=float(s), unit=unit,
                                      algorithm_id=algorithm, referenced_images=[ref])
                    for s, ref in zip(verdict.scores, slice_refs, strict=True)]
    for name in ("median", "p90", "threshold"):
        value = getattr(verdict, name)
        if value is not None and np.isfinite(value):
            measurements.append(hd.sr.Measurement(name=code(name), value=float(value),
                                                  unit=unit, algorithm_id=algorithm))
    yes, no = codes.SCT.Yes, codes.SCT.No
    evaluations = [
        hd.sr.QualitativeEvaluation(code("verdict"), code(verdict.status)),
        hd.sr.QualitativeEvaluation(code("flag"), yes if verdict.flagged else no),
    ]
    if verdict.rule:
        evaluations.append(hd.sr.QualitativeEvaluation(code("rule"), code(verdict.rule)))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("sr-tracking", series_uid, sha), identifier=CODES["tracking"][1]),
        algorithm_id=algorithm, measurements=measurements, qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
                       for ds in sources])
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", verdict.model, sha), name="RankIQ",
            manufacturer_name="RankIQ", model_name=verdict.model))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=code("procedure"), imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(sources), content=report,
        series_instance_uid=derived_uid("sr-series", series_uid, sha),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=derived_uid("sr", series_uid, sha),
        instance_number=1, manufacturer="RankIQ", is_complete=True)
    sr.SeriesDescription = "RankIQ image quality report"
    sr.SoftwareVersions = f"rankiq {software_version}"
    return sr


def saliency_on_matrix(saliency: np.ndarray, pixels: np.ndarray, *, features: bool
                       ) -> np.ndarray:
    """Bring a model's saliency back to the scan's own matrix, float32 ``(S, rows, cols)``.

    Args:
        saliency: float ``(S, C, G, G)`` from :func:`rankiq.service.scoring.score_series`; the
            channels are combined as their root sum of squares.
        pixels: the series' pixels ``(S, rows, cols)`` (where the analysis grid came from).
        features: the no-reference features model (its analysis grid crops the zero border,
            pads to a square and brings a side above 256 down to 256, per slice:
            :func:`rankiq.service.noref.analysis_grid`); otherwise the network grid (the slice
            padded to a square and resampled: :func:`rankiq.service.preprocess.to_grid`).

    Returns:
        the magnitude of the map on the scan's pixels, linearly interpolated and scaled by
        the pixel area ratio (so a slice's total is the same on either grid); zero outside
        the analysed region.
    """
    from rankiq.service.scoring import saliency_to_input

    s = np.asarray(saliency, np.float64)
    mag = np.sqrt((s ** 2).sum(axis=1))[:, None]  # (S, 1, G, G)
    return np.maximum(saliency_to_input(mag, pixels, features=features)[:, 0], 0)


def build_saliency(sources: Sequence[Any], maps: np.ndarray, verdict: SeriesVerdict, *,
                   software_version: str, frames: Sequence[int] | None = None) -> Any:
    """The saliency maps of one series as a Parametric Map (one float frame per source slice).

    Args:
        sources: the source images, one per slice, in slice order (header only is enough); or,
            with ``frames``, the one multi-frame image whose frames are the slices.
        maps: float32 ``(S, rows, cols)`` on the source matrix (:func:`saliency_on_matrix`),
            in score units per pixel, in slice order.
        verdict: for the model name, version and hash.
        software_version: RankIQ's version.
        frames: with a multi-frame source, the 1-based frame number of each slice in slice
            order; the map's frame derived from source frame ``n`` (its position, from the
            source's per-frame functional groups) holds the map of the slice read from it.
    """
    import highdicom as hd

    maps = np.ascontiguousarray(maps, dtype=np.float32)
    _check_frames(sources, frames, maps.shape[0])
    if frames is not None:  # highdicom pairs plane i with source frame i + 1
        by_frame = np.empty_like(maps)
        by_frame[np.asarray(frames, np.intp) - 1] = maps
        maps = by_frame
    sources = with_type2(sources)
    series_uid = str(sources[0].SeriesInstanceUID)
    sha = verdict.model_sha256
    lo, hi = float(maps.min()), float(maps.max())
    top = float(np.percentile(maps, 99.5)) or hi or 1.0
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="SALIENCY", lut_explanation=CODES["saliency"][1], unit=_no_units(),
        value_range=(lo, max(hi, lo + 1e-6)), slope=1.0, intercept=0.0,
        quantity_definition=code("saliency"))
    pm = hd.pm.ParametricMap(
        source_images=list(sources), pixel_array=maps,
        series_instance_uid=derived_uid("saliency-series", series_uid, sha),
        series_number=SALIENCY_SERIES_NUMBER,
        sop_instance_uid=derived_uid("saliency", series_uid, sha), instance_number=1,
        manufacturer="RankIQ", manufacturer_model_name=verdict.model[:64],
        software_versions=f"rankiq {software_version}",
        device_serial_number=(sha or "none")[:16],
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(  # maps are << 1: exact windowing
            window_center=top / 2, window_width=top, voi_lut_function="LINEAR_EXACT")],
        content_label="SALIENCY",
        content_description="Where the RankIQ image quality score comes from")
    pm.SeriesDescription = "RankIQ saliency"
    _copy_body_part(sources[0], pm)
    return pm


def _copy_body_part(source: Any, pm: Any) -> None:
    """General Series' body part and Laterality (type 2C: required for a paired body part)
    from the source, never guessed: the source's side when it states one; otherwise absent when
    the source names its body part (a validator then decides whether it is paired, as for the
    source), else empty: body part and side unknown."""
    if source.get("BodyPartExamined"):
        pm.BodyPartExamined = source.BodyPartExamined
    if str(source.get("Laterality", "") or "").strip():
        pm.Laterality = source.Laterality
    elif "BodyPartExamined" in pm:
        if "Laterality" in pm:
            del pm.Laterality
    else:
        pm.Laterality = ""


# -- the HTTP answer (POST /score?format=dicom) ---------------------------------------------------

def upload_sources(data: bytes, series: Any, field: str) -> SliceSources:
    """The source headers (pydicom datasets, no pixels) of the slices of an uploaded series: the
    one DICOM file, or the zip members the slices were read from (:func:`slice_sources`).

    Args:
        data: the upload's bytes (a DICOM file or a zip of one series).
        series: the :class:`rankiq.service.io.types.ImageSeries` read from ``data``.
        field: the form field (for messages).

    Raises:
        UnsupportedInput: k-space (HDF5): there are no source images to reference.
        InvalidImage: slices the objects cannot reference (frames of several multi-frame
            instances).
    """
    import io
    import zipfile

    import pydicom
    from rankiq.service.errors import InvalidImage, UnsupportedInput

    if series.kind != "dicom":
        raise UnsupportedInput("format=dicom needs DICOM images (a file or a zip of one "
                               "series): k-space has no images to reference", source=field)
    files = list(series.source_files)
    headers: list[tuple[str, Any]] = []
    if files == [field]:  # one uploaded DICOM file
        headers.append((field, pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)))
    else:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            for name in files:
                # the member's display name is "<field>!<1-based position>-<hash>"
                index = int(name.rsplit("!", 1)[1].split("-", 1)[0])
                with zf.open(infos[index - 1]) as fp:
                    headers.append((name, pydicom.dcmread(fp, stop_before_pixels=True)))
    try:
        return slice_sources(headers, int(series.pixels.shape[0]))
    except ValueError:
        raise InvalidImage("format=dicom needs one single-frame instance per slice or one "
                           "multi-frame instance holding every slice (the slices are frames "
                           "of several multi-frame instances)", source=field) from None


def verdict_of(result: Any) -> SeriesVerdict:
    """The :class:`SeriesVerdict` of a :class:`rankiq.service.scoring.SeriesScore` (the model's
    threshold on the median, as the JSON answer's ``threshold`` and ``flagged``)."""
    keep = result.scores[~result.blank].astype(np.float64)
    if not result.in_range or result.flagged is None:
        status, flagged, rule = "not_assessable", False, ""
    else:
        status = "flagged" if result.flagged else "passed"
        flagged, rule = bool(result.flagged), "model_threshold" if result.flagged else ""
    m = result.model
    return SeriesVerdict(scores=tuple(float(s) for s in result.scores), median=result.median,
                         p90=float(np.percentile(keep, 90)), threshold=result.threshold,
                         status=status, flagged=flagged, rule=rule, model=str(m["name"]),
                         model_version=str(m["version"]), model_sha256=str(m.get("sha256", "")))


def dicom_answer(sources: SliceSources, result: Any, *, software_version: str) -> Any:
    """``POST /score?format=dicom``: the SR and the saliency Parametric Map of one series as a
    ``multipart/related; type="application/dicom"`` response (the body of a DICOMweb STOW-RS
    request or WADO-RS answer: one DICOM file per part).

    Args:
        sources: the source headers of the slices (:func:`upload_sources`).
        result: the :class:`rankiq.service.scoring.SeriesScore`, its saliency already on the
            scan's matrix (:func:`rankiq.service.scoring.saliency_to_input`).
        software_version: RankIQ's version.

    Raises:
        InvalidImage: source headers from which the objects cannot be built (no frame of
            reference, say).
    """
    import io
    import uuid

    from rankiq.service.errors import InvalidImage
    from starlette.responses import Response

    if any("FrameOfReferenceUID" not in ds for ds in sources.images):
        raise InvalidImage("format=dicom: the images have no FrameOfReferenceUID, so a saliency "
                           "map cannot be placed on them (it is never invented)", source="image")
    verdict = verdict_of(result)
    maps = np.sqrt(np.sum(np.square(result.saliency, dtype=np.float64), axis=1))
    try:
        objects = [build_sr(sources.images, verdict, software_version=software_version,
                            frames=sources.frames),
                   build_saliency(sources.images, maps.astype(np.float32), verdict,
                                  software_version=software_version, frames=sources.frames)]
    except (ValueError, TypeError, AttributeError) as exc:
        # the source headers break a rule of the IODs; highdicom's message may quote values
        raise InvalidImage(f"format=dicom: the images' headers do not allow a DICOM result "
                           f"({type(exc).__name__})", source="image") from None
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for ds in objects:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii"))
        body.write(buf.getvalue())
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode("ascii"))
    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return Response(body.getvalue(), media_type=media)
