"""A real multi-frame MR series for the DICOM-results tests: a synthetic single-frame series
converted by highdicom into one Legacy Converted Enhanced MR instance, its frames stored in the
reverse of the slice order (frame 1 is the top slice), so that frame numbers and the order
RankIQ scores in (along the slice normal) differ."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom


def single_frame_series(out_dir: Path, volume: np.ndarray, *, seed: int = 0
                        ) -> list[pydicom.Dataset]:
    """Write ``volume`` ``(S, rows, cols)`` as a single-frame MR series (slices 3 mm apart,
    ``rankiq.service.qa.synth.write_series``) and return its datasets in slice order."""
    from rankiq.service.qa.synth import write_series

    paths = write_series(out_dir, volume, description="t2 tse", rng=np.random.default_rng(seed))
    out = []
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.WindowCenter, ds.WindowWidth = 2000, 4000  # the converter's Frame VOI LUT needs them
        ds.save_as(p, enforce_file_format=True)
        out.append(ds)
    return out


def legacy_multiframe(slices: list[pydicom.Dataset], label: str = "multiframe"
                      ) -> pydicom.Dataset:
    """One Legacy Converted Enhanced MR instance of ``slices`` (the same series and pixels),
    frame ``n`` holding slice ``S - n`` (reverse slice order)."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    first = slices[0]
    mf = hd.legacy.LegacyConvertedEnhancedMRImage(
        list(reversed(slices)), series_instance_uid=first.SeriesInstanceUID,
        series_number=int(first.SeriesNumber), instance_number=1,
        sop_instance_uid=generate_uid(entropy_srcs=[label, first.SeriesInstanceUID]))
    # highdicom keeps the order it was given: frame 1 is the last slice
    z = [float(fg.PlanePositionSequence[0].ImagePositionPatient[2])
         for fg in mf.PerFrameFunctionalGroupsSequence]
    assert z == sorted(z, reverse=True), z
    return mf


def to_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def frame_positions(ds: pydicom.Dataset) -> list[tuple[float, ...]]:
    """ImagePositionPatient of each frame (frame number - 1 indexes the list), rounded."""
    return [tuple(round(float(v), 3) for v in fg.PlanePositionSequence[0].ImagePositionPatient)
            for fg in ds.PerFrameFunctionalGroupsSequence]


def map_frames(pm: pydicom.Dataset) -> list[tuple[int, tuple[float, ...]]]:
    """``(referenced source frame number, position)`` of each frame of a Parametric Map."""
    out = []
    for fg in pm.PerFrameFunctionalGroupsSequence:
        (src,) = fg.DerivationImageSequence[0].SourceImageSequence
        out.append((int(src.ReferencedFrameNumber),
                    tuple(round(float(v), 3)
                          for v in fg.PlanePositionSequence[0].ImagePositionPatient)))
    return out


def frame_measurements(sr: pydicom.Dataset, code: str) -> list[tuple[float, str, list[int]]]:
    """``(value, referenced SOP instance UID, referenced frame numbers)`` of each TID 1500
    measurement named ``code`` (read back with highdicom)."""
    import highdicom as hd

    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    (group,) = report.content.get_image_measurement_groups()
    out = []
    for m in group.get_measurements():
        if m.name.value == code:
            (ref,) = m.referenced_images
            out.append((float(m.value), ref.referenced_sop_instance_uid,
                        [int(n) for n in ref.referenced_frame_numbers or []]))
    return out
