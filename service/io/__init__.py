"""Reading MR images: DICOM (files, directories, zips), fastMRI and ISMRMRD k-space.

```python
from rankiq.service.io import read_series, read_kspace, read_upload, scan_instances, load_series
series_list = read_series(["scan.zip", "dicom_dir/"])     # SeriesList of ImageSeries
for s in series_list: s.pixels                            # float32 (slices, rows, cols)
for f in series_list.failures: print(f)                   # "source: reason" per unreadable file
```

See the README ("Reading images") for supported inputs, limits and ordering rules. Nothing
returned or raised carries a patient identifier; ``series_key`` is a hash.
"""

from __future__ import annotations

from rankiq.service.io.kspace import read_kspace
from rankiq.service.io.limits import DEFAULT_LIMITS, ReadLimits
from rankiq.service.io.privacy import description_label, display_name, member_name
from rankiq.service.io.read import (
    ReadBudget,
    error_of,
    group_instances,
    load_series,
    read_series,
    read_upload,
    scan_instances,
)
from rankiq.service.io.types import (
    CONTRAST_FAMILIES,
    ImageSeries,
    InstanceRef,
    ReadFailure,
    SeriesList,
)

__all__ = [
    "CONTRAST_FAMILIES",
    "DEFAULT_LIMITS",
    "ImageSeries",
    "InstanceRef",
    "ReadBudget",
    "ReadFailure",
    "ReadLimits",
    "SeriesList",
    "description_label",
    "display_name",
    "error_of",
    "group_instances",
    "load_series",
    "member_name",
    "read_kspace",
    "read_series",
    "read_upload",
    "scan_instances",
]
