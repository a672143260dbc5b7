"""Size limits for everything :mod:`rankiq.service.io` reads.

Inputs above a limit are refused, never truncated. Archive-level limits guard against zip bombs
(many entries, huge declared sizes, extreme compression ratios); image limits against absurd
dimensions that would exhaust memory before any pixel is decoded.
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
        max_compression_ratio: largest uncompressed/compressed ratio of an entry above
            ``ratio_check_min_bytes`` (DICOM rarely deflates beyond ~20x; bombs reach ~1000x).
        ratio_check_min_bytes: entries smaller than this are not ratio-checked.
        max_slices: most slices (frames) in one series.
        max_matrix: largest rows or columns of one image (k-space: per axis, before the
            readout oversampling is removed, so twice this is allowed along the readout).
        max_coils: most receive coils in one k-space file.
    """

    max_bytes: int = 2 * GiB
    max_zip_entries: int = 100_000
    max_total_uncompressed: int = 8 * GiB
    max_entry_uncompressed: int = 2 * GiB
    max_compression_ratio: float = 200.0
    ratio_check_min_bytes: int = 8 * MiB
    max_slices: int = 4096
    max_matrix: int = 4096
    max_coils: int = 128


#: Limits used when none are given.
DEFAULT_LIMITS = ReadLimits()
