"""``rankiq inspect PATH... [--json]``: what RankIQ reads from files, folders, zips, k-space.

Per series: kind, modality, description (a hash of the SeriesDescription, which is free text
typed at the scanner), contrast family, slices, rows, columns, spacing,
transfer syntax and ``pixel_sha256`` (SHA-256 of the decoded float32 pixels in C order, so
differently encoded copies of one image can be checked equal); then every unreadable input
with its reason. Exit 0 when at least one series was read, 2 when none, 1 on usage errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from rankiq.service.commands.registry import Registry
    from rankiq.service.io.types import ImageSeries


def add_commands(reg: Registry) -> None:
    """Add ``rankiq inspect``."""
    p = reg.command("inspect", "rankiq.service.commands.inspect_cmd:run",
                    "list the image series in DICOM files, folders, zips and k-space files")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="DICOM file, folder (recursive), zip, fastMRI or ISMRMRD .h5")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def pixel_sha256(pixels: np.ndarray) -> str:
    """SHA-256 (hex) of pixels as float32 in C order."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.float32).tobytes()).hexdigest()


def describe(series: ImageSeries) -> dict[str, Any]:
    """JSON-able summary of a series (no identifiers)."""
    from rankiq.service.io import description_label

    s, r, c = series.shape
    return {
        "kind": series.kind,
        "series_key": series.series_key,
        "modality": series.modality,
        "description": description_label(series.description),
        "contrast": series.contrast,
        "slices": s,
        "rows": r,
        "columns": c,
        "spacing_mm": None if series.pixel_spacing is None
        else [round(float(v), 6) for v in series.pixel_spacing],
        "slice_thickness_mm": series.slice_thickness,
        "transfer_syntax": series.transfer_syntax,
        "slice_order": series.attributes.get("slice_order"),
        "files": len(series.source_files),
        "pixel_sha256": pixel_sha256(series.pixels),
    }


def _text(summary: dict[str, Any], index: int, total: int) -> str:
    spacing = summary["spacing_mm"]
    spacing_s = "-" if spacing is None else f"{spacing[0]:g} x {spacing[1]:g} mm"
    desc = summary["description"] or "-"
    return (
        f"series {index}/{total}: {summary['kind']} {summary['modality']} \"{desc}\" "
        f"(contrast {summary['contrast']}, key {summary['series_key']})\n"
        f"  slices {summary['slices']}  rows {summary['rows']}  columns {summary['columns']}  "
        f"spacing {spacing_s}  transfer syntax {summary['transfer_syntax'] or '-'}  "
        f"files {summary['files']}\n"
        f"  pixel_sha256 {summary['pixel_sha256']}"
    )


def run(args: argparse.Namespace) -> int:
    """Handler of ``rankiq inspect``."""
    from rankiq.service.io import read_series

    result = read_series(args.paths)
    summaries = [describe(s) for s in result]
    if args.json:
        print(json.dumps({
            "series": summaries,
            "failures": [{"source": f.source, "reason": f.reason, "message": f.message}
                         for f in result.failures],
        }, indent=2))
    else:
        for i, summary in enumerate(summaries, 1):
            print(_text(summary, i, len(summaries)))
        if not summaries:
            print("no image series found", file=sys.stderr)
        if result.failures:
            print(f"unreadable inputs ({len(result.failures)}):")
            for f in result.failures:
                print(f"  {f.source}: {f.reason}: {f.message}")
    return 0 if summaries else 2
