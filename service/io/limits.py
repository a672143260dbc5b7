"""Size limits for everything :mod:`rankiq.service.io` reads.

Inputs above a limit are refused, never truncated. Archive-level limits guard against zip bombs
(many entries, huge declared sizes, extreme compression ratios); image limits against absurd
dimensions; budgets against memory amplification: every size is checked from headers (DICOM
Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated, HDF5 dataset shape x dtype,
a zip's declared sizes) *before* anything is decoded or inflated.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class ReadLimits:
    """Limits applied while reading (all sizes in bytes).

    Attributes:
        max_bytes: largest single file, upload or k-space file.
        max_zip_entries: most entries (files and folders) one zip may list.
        max_total_uncompressed: sum of the declared uncompressed sizes of a zip's entries.
        max_entry_uncompressed: largest declared uncompressed size of one zip entry.
        max_compression_ratio: largest uncompressed/compressed ratio of any zip entry above
            ``ratio_check_min_bytes`` (DICOM rarely deflates beyond ~20x; bombs reach ~1000x).
        ratio_check_min_bytes: entries smaller than this cannot hold a bomb (their inflated
            size is already bounded by it) and are not ratio-checked.
        max_slices: most slices (frames) in one series.
        max_matrix: largest rows or columns of one image (k-space: per axis, before the
            readout oversampling is removed, so twice this is allowed along the readout).
        max_coils: most receive coils in one k-space file.
        max_series_bytes: largest decoded series: ``slices x rows x cols x 4`` (float32 pixels)
            for DICOM, the declared k-space ``slices x coils x kx x ky x 8`` (complex64) for
            HDF5; also the largest stored pixel data of one instance (``rows x cols x frames x
            samples x BitsAllocated / 8``). Checked from headers before decoding.
        max_decoded_bytes: decoded pixels (float32) one read may hold in total (all series of a
            :func:`rankiq.service.io.read_upload` or ``read_series`` call, or a shared
            :class:`ReadBudget` across the files of one request).
        max_inflated_bytes: largest inflated data set of a Deflated Explicit VR Little Endian
            DICOM (inflated in a bounded stream before pydicom parses it).
        max_series: most distinct series one read may hold.
        max_instances: most DICOM instances / k-space files one read may parse.
        max_read_seconds: wall-clock budget of one read (``None``: unlimited), checked between
            files so a zip of thousands of tiny series is refused quickly.
    """

    max_bytes: int = 2 * GiB
    max_zip_entries: int = 100_000
    max_total_uncompressed: int = 8 * GiB
    max_entry_uncompressed: int = 2 * GiB
    max_compression_ratio: float = 200.0
    ratio_check_min_bytes: int = 64 * 1024
    max_slices: int = 4096
    max_matrix: int = 4096
    max_coils: int = 128
    max_series_bytes: int = 512 * MiB
    max_decoded_bytes: int = 2 * GiB
    max_inflated_bytes: int = 512 * MiB
    max_series: int = 10_000
    max_instances: int = 100_000
    max_read_seconds: float | None = None


#: Limits used when none are given.
DEFAULT_LIMITS = ReadLimits()
