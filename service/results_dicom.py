"""RankIQ results as DICOM objects that sit next to the images in a PACS (built with highdicom).

* :func:`build_sr`: a Comprehensive 3D SR holding a TID 1500 *Measurement Report*: one
  measurement per slice (the slice's score, referencing its image), the series statistics
  (median, 90th percentile) and the flag threshold as numeric measurements, the verdict
  (passed / flagged / not assessable), whether it is flagged and the rule that fired as coded
  qualitative evaluations, and the model name and version as the algorithm identification
  (TID 4019). Concepts RankIQ defines are coded in the private scheme ``99RANKIQ``
  (:data:`CODES`), units in UCUM (``1``: no units).
* :func:`build_saliency`: *Parametric Maps* (float pixels, one frame per source slice, the
  source's own matrix, pixel spacing, orientation and positions) of where the score comes from,
  which viewers overlay on the series; :func:`saliency_on_matrix` brings the model's map back
  from its analysis grid to the scan's matrix.

Each slice's source is an instance and, in a multi-frame instance (Enhanced MR, Legacy
Converted Enhanced MR), a frame (:class:`SliceSources`, :func:`slice_sources`): single-frame
images, one multi-frame instance holding every slice, or a series split over several
multi-frame instances. Each slice-score measurement references its instance and frame number;
the map's frames derive from the source frames, with their positions, in one map per
multi-frame source instance (highdicom derives a map from one multi-frame image or from
single-frame images).

Both copy the source study's patient, study and equipment-independent attributes from the
source images as the IODs require (highdicom does so from the evidence), invent none, and get
new UIDs that are derived deterministically from the source series, the model, the kind of
object and, for one map of several, its source instance (:func:`derived_uid`): storing the same
result twice replaces nothing and duplicates nothing, so an interrupted write-back is simply
repeated.
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
class SliceSource:
    """Where one slice was read from.

    Attributes:
        instance: index of its source instance in :attr:`SliceSources.images`.
        frame: its 1-based frame number in that instance when the instance is a multi-frame
            image; ``None`` for a single-frame image.
    """

    instance: int
    frame: int | None = None


@dataclass(frozen=True)
class SliceSources:
    """The source images of a series' slices, as the DICOM results reference them.

    One mapping covers every layout: one single-frame image per slice (each slice's frame is
    ``None``), one multi-frame image whose frames are the slices, or frames of several
    multi-frame instances (an Enhanced MR series split over instances), or a mix.

    Attributes:
        images: the source headers (pydicom datasets, no pixels), each instance once.
        slices: each slice's :class:`SliceSource`, in slice order (the order RankIQ scores in:
            along the slice normal, else by instance and frame number).
    """

    images: tuple[Any, ...]
    slices: tuple[SliceSource, ...]

    @classmethod
    def single_frame(cls, images: Sequence[Any]) -> SliceSources:
        """One single-frame image per slice, ``images`` in slice order."""
        return cls(images=tuple(images), slices=tuple(SliceSource(i) for i in range(len(images))))

    def groups(self) -> list[tuple[str, list[int]]]:
        """The sets of slices a Parametric Map can derive from (highdicom derives a map from
        single-frame images or from one multi-frame image): ``(part, slice indices)`` with
        ``part`` ``""`` for the single-frame images (in slice order) and the SOPInstanceUID of
        each multi-frame instance (its slices in that instance's frame order), instances in
        :attr:`images` order.
        """
        single = [i for i, s in enumerate(self.slices) if s.frame is None]
        out: list[tuple[str, list[int]]] = [("", single)] if single else []
        for k, ds in enumerate(self.images):
            mine = [i for i, s in enumerate(self.slices) if s.instance == k and s.frame is not None]
            if mine:
                mine.sort(key=lambda i: int(self.slices[i].frame or 0))
                out.append((str(ds.SOPInstanceUID), mine))
        return out

    def check(self, n: int) -> None:
        """Raise ValueError unless the mapping describes ``n`` slices: each single-frame image
        once, each multi-frame instance's frames 1..NumberOfFrames once each."""
        if len(self.slices) != n:
            raise ValueError(f"{len(self.slices)} source slices for {n} slices")
        if any(not 0 <= s.instance < len(self.images) for s in self.slices):
            raise ValueError("a slice refers to no source instance")
        for k, ds in enumerate(self.images):
            frames = [s.frame for s in self.slices if s.instance == k]
            if frames == [None]:
                continue
            count = int(ds.get("NumberOfFrames") or 1)
            if None in frames or sorted(int(f or 0) for f in frames) != list(
                    range(1, count + 1)):
                raise ValueError(f"the slices of source instance {k + 1} are not its "
                                 f"{count} frames, each once")


def slice_sources(headers: Sequence[tuple[str, Any]], n_slices: int) -> SliceSources:
    """Which source image (and frame) each slice of a series read by
    :mod:`rankiq.service.io` came from.

    Args:
        headers: ``(source name, header)`` of each file of ``series.source_files``, in that
            order (the names the reader gave them: the slices are ordered as it orders them,
            from the same geometry, so no pixels are needed).
        n_slices: the series' number of slices.

    Raises:
        ValueError: files and slices that do not match.
    """
    from highdicom._standard_utils import is_multiframe_image
    from rankiq.service.io.dicom import Frame, _fg, _instance_meta, _num, _vec, order_frames

    empty = np.zeros((0, 0), np.float32)
    frames: list[Frame] = []
    where: dict[tuple[str, int], SliceSource] = {}
    for k, (source, ds) in enumerate(headers):
        multi = is_multiframe_image(ds)
        count = int(_num(ds.get("NumberOfFrames")) or 1) if multi else 1
        meta, inst = _instance_meta(ds), _num(ds.get("InstanceNumber"))
        for i in range(count):
            frames.append(Frame(
                pixels=empty,
                position=_vec(_fg(ds, i, "PlanePositionSequence", "ImagePositionPatient"), 3),
                orientation=_vec(_fg(ds, i, "PlaneOrientationSequence",
                                     "ImageOrientationPatient"), 6),
                instance_number=None if inst is None else int(inst), frame_index=i,
                source=source, meta=meta))
            where[(source, i)] = SliceSource(k, i + 1 if multi else None)
    if len(frames) != n_slices:
        raise ValueError(f"{len(frames)} source frames for {n_slices} slices")
    ordered, _, _ = order_frames(frames)  # the reader's own ordering
    out = SliceSources(images=tuple(ds for _, ds in headers),
                       slices=tuple(where[(f.source, f.frame_index)] for f in ordered))
    out.check(n_slices)
    return out


def code(name: str) -> Any:
    """The :class:`highdicom.sr.CodedConcept` of a RankIQ concept."""
    from highdicom.sr import CodedConcept

    value, meaning = CODES[name]
    return CodedConcept(value, SCHEME, meaning)


def derived_uid(kind: str, series_uid: str, model_sha256: str, part: str = "") -> str:
    """A new UID for a derived object, the same for the same source series, model and kind
    (``sr-series``, ``sr``, ``saliency-series``, ``saliency``...) and, for one of several
    objects of a kind (a map per multi-frame source instance), the same ``part`` (that source
    instance's SOPInstanceUID); ``part=""`` gives the UID of the kind's only object."""
    from pydicom.uid import generate_uid

    entropy = ["rankiq", kind, series_uid.strip(), model_sha256]
    return generate_uid(entropy_srcs=[*entropy, part.strip()] if part else entropy)


def _no_units() -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept("1", "UCUM", "no units")


def build_sr(sources: SliceSources, verdict: SeriesVerdict, *, software_version: str) -> Any:
    """The TID 1500 measurement report of one series (a Comprehensive 3D SR dataset).

    Args:
        sources: the series' source images (pydicom datasets, header only is enough) and each
            slice's instance and frame, in slice order (the order of ``verdict.scores``): each
            slice's measurement references its image, and its frame by number in a
            multi-frame image; every instance is evidence and a source of the group.
        verdict: the scores and the verdict.
        software_version: RankIQ's version (SoftwareVersions of the SR).

    Raises:
        ValueError: sources and scores that do not match.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources.check(len(verdict.scores))
    images = with_type2(sources.images)
    series_uid = str(images[0].SeriesInstanceUID)
    sha = verdict.model_sha256
    algorithm = hd.sr.AlgorithmIdentification(name=f"RankIQ {verdict.model}",
                                              version=verdict.model_version)
    unit = _no_units()
    slice_refs = [hd.sr.SourceImageForMeasurement.from_source_image(
        images[s.instance], referenced_frame_numbers=None if s.frame is None else [s.frame])
        for s in sources.slices]
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
                       for ds in images])
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", verdict.model, sha), name="RankIQ",
            manufacturer_name="RankIQ", model_name=verdict.model))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=code("procedure"), imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(images), content=report,
        series_instance_uid=derived_uid("sr-series", series_uid, sha),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=derived_uid("sr", series_uid, sha),
        instance_number=1, manufacturer="RankIQ", is_complete=True)
    sr.SeriesDescription = "RankIQ image quality report"
    sr.SoftwareVersions = f"rankiq {software_version}"
    return sr


def saliency_on_matrix(saliency: np.ndarray, pixels: np.ndarray, *, features: bool,
                       interpolation: float = 1.0) -> np.ndarray:
    """Bring a model's saliency back to the scan's own matrix, float32 ``(S, rows, cols)``.

    Args:
        saliency: float ``(S, C, G, G)`` from :func:`rankiq.service.scoring.score_series`; the
            channels are combined as their root sum of squares.
        pixels: the series' pixels ``(S, rows, cols)`` (where the analysis grid came from).
        features: the no-reference features model (its analysis grid crops the zero border,
            pads to a square and brings a side above 256 down to 256, per slice:
            :func:`rankiq.service.noref.analysis_grid`); otherwise the network grid (the slice
            padded to a square and resampled: :func:`rankiq.service.preprocess.to_grid`).
        interpolation: the series' :func:`rankiq.service.scoring.series_interpolation`.

    Returns:
        the magnitude of the map on the scan's pixels, linearly interpolated and scaled by
        the pixel area ratio (so a slice's total is the same on either grid); zero outside
        the analysed region.
    """
    from rankiq.service.scoring import saliency_to_input

    s = np.asarray(saliency, np.float64)
    mag = np.sqrt((s ** 2).sum(axis=1))[:, None]  # (S, 1, G, G)
    return np.maximum(saliency_to_input(mag, pixels, features=features,
                                        interpolation=interpolation)[:, 0], 0)


@dataclass(frozen=True)
class PendingSaliency:
    """A features model's saliency map of one series, not computed yet: what it is computed
    from, handed to another process (DICOMweb write-back's builder), which computes it with
    its own copy of the model while the scoring goes on.

    Attributes:
        features: the series' :class:`~rankiq.service.noref.FeatureInput`, masks kept
            (:attr:`rankiq.service.scoring.SeriesScore.saliency_input`).
        pixels: float32 ``(S, rows, cols)``, the series' pixels (the scan's matrix).
    """

    features: Any
    pixels: np.ndarray

    def on_matrix(self, model: Any) -> np.ndarray:
        """The map :func:`saliency_on_matrix` gives for ``score_series(..., saliency=True)``
        with the same ``model`` (a features :class:`~rankiq.service.models.ScoringModel`),
        float32 ``(S, rows, cols)``."""
        from rankiq.service.scoring import feature_saliency

        return saliency_on_matrix(feature_saliency(model, self.features), self.pixels,
                                  features=True, interpolation=self.features.interpolation)


def build_saliency(sources: SliceSources, maps: np.ndarray, verdict: SeriesVerdict, *,
                   software_version: str) -> list[Any]:
    """The saliency maps of one series as Parametric Maps (one float frame per source slice).

    highdicom derives a map from single-frame images or from one multi-frame image, so there is
    one map per :meth:`SliceSources.groups` entry: one for a series of single-frame images or
    of one multi-frame image (today's UID), one per multi-frame instance for a series split over
    several (instance numbers 1, 2...; UIDs derived from the source instance too). All are in
    the same derived series; their UIDs are stable across reruns.

    Args:
        sources: the source images (header only is enough) and each slice's instance and frame.
        maps: float32 ``(S, rows, cols)`` on the source matrix (:func:`saliency_on_matrix`),
            in score units per pixel, in slice order.
        verdict: for the model name, version and hash.
        software_version: RankIQ's version.

    Returns:
        the maps: a map's frame ``i`` derives from frame ``i + 1`` of its multi-frame source
        (its position from the source's per-frame functional groups) and holds the map of the
        slice read from it; from single-frame images, frame ``i`` is slice ``i``'s.

    Raises:
        ValueError: sources and maps that do not match.
    """
    import highdicom as hd

    maps = np.ascontiguousarray(maps, dtype=np.float32)
    sources.check(maps.shape[0])
    images = with_type2(sources.images)
    series_uid = str(images[0].SeriesInstanceUID)
    sha = verdict.model_sha256
    groups = sources.groups()
    lo, hi = float(maps.min()), float(maps.max())  # one value range and window for all parts
    top = float(np.percentile(maps, 99.5)) or hi or 1.0
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="SALIENCY", lut_explanation=CODES["saliency"][1], unit=_no_units(),
        value_range=(lo, max(hi, lo + 1e-6)), slope=1.0, intercept=0.0,
        quantity_definition=code("saliency"))
    out = []
    for number, (part, slices) in enumerate(groups, start=1):
        if part:  # highdicom pairs plane i with source frame i + 1
            (src,) = {sources.slices[i].instance for i in slices}
            group_images = [images[src]]
        else:
            group_images = [images[sources.slices[i].instance] for i in slices]
        pm = hd.pm.ParametricMap(
            source_images=group_images, pixel_array=maps[slices],
            series_instance_uid=derived_uid("saliency-series", series_uid, sha),
            series_number=SALIENCY_SERIES_NUMBER,
            sop_instance_uid=derived_uid("saliency", series_uid, sha,
                                         part if len(groups) > 1 else ""),
            instance_number=number,
            manufacturer="RankIQ", manufacturer_model_name=verdict.model[:64],
            software_versions=f"rankiq {software_version}",
            device_serial_number=(sha or "none")[:16],
            contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.VOILUTTransformation(  # maps << 1: exact windowing
                window_center=top / 2, window_width=top, voi_lut_function="LINEAR_EXACT")],
            content_label="SALIENCY",
            content_description="Where the RankIQ image quality score comes from")
        pm.SeriesDescription = "RankIQ saliency"
        _copy_body_part(group_images[0], pm)
        out.append(pm)
    return out


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
        InvalidImage: files whose frames are not the slices read (never expected: the reader
            reads every frame of every file it names).
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
        raise InvalidImage("format=dicom: the uploaded instances' frames are not the slices "
                           "read from them", source=field) from None


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
    """``POST /score?format=dicom``: the SR and the saliency Parametric Map(s) of one series as a
    ``multipart/related; type="application/dicom"`` response (the body of a DICOMweb STOW-RS
    request or WADO-RS answer: one DICOM file per part): the SR first, then the maps (one, or
    one per multi-frame source instance: :func:`build_saliency`).

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
        objects = [build_sr(sources, verdict, software_version=software_version),
                   *build_saliency(sources, maps.astype(np.float32), verdict,
                                   software_version=software_version)]
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
