"""``rankiq score`` and ``rankiq compare``: the service's scorer, in-process (no server).

``rankiq score IMAGE [--reference REF] [--saliency OUT.png] [--json]`` prints per-slice scores and
the series summary (median, worst slice); ``--json`` prints the same JSON as ``POST /score``.
``rankiq compare A B [--reference R] [--json]`` prints both scores and the rank classifier's
probabilities (A better, similar, B better), as ``POST /compare``. IMAGE may be a DICOM file, a
folder or zip holding one series, or a fastMRI / ISMRMRD HDF5 k-space file. Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry
    from rankiq.service.io.types import ImageSeries
    from rankiq.service.models import ScoringModel


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", metavar="REF", default=None,
                   help="reference image of the same geometry (selects the reference model)")
    p.add_argument("--models", metavar="DIR", default=None,
                   help="models directory (default: $RANKIQ_MODELS_DIR or the repo's models/)")
    p.add_argument("--max-slices", type=int, default=None, metavar="N",
                   help="refuse series with more slices (default: $RANKIQ_MAX_SLICES or 512)")
    p.add_argument("--json", action="store_true", help="print the service's JSON answer")


def add_commands(reg: Registry) -> None:
    """Add ``rankiq score`` and ``rankiq compare``."""
    p = reg.command("score", "rankiq.service.commands.score_cmd:run_score",
                    "score an MR image or series in-process (same scorer as POST /score)")
    p.add_argument("image", metavar="IMAGE",
                   help="DICOM file, folder or zip of one series, fastMRI/ISMRMRD .h5")
    _common(p)
    p.add_argument("--saliency", metavar="OUT.png", default=None,
                   help="write saliency overlays (one slice: OUT.png; a series: OUT_000.png, ...)")
    c = reg.command("compare", "rankiq.service.commands.score_cmd:run_compare",
                    "compare two images with the rank classifier (same as POST /compare)")
    c.add_argument("image_a", metavar="A")
    c.add_argument("image_b", metavar="B")
    _common(c)


def read_one(path: str, role: str) -> ImageSeries:
    """Read ``path`` as exactly one series (k-space, DICOM file, folder or zip)."""
    from rankiq.service.errors import UnreadableInput
    from rankiq.service.io import read_series
    from rankiq.service.io.read import error_of
    from rankiq.service.scoring import MultipleSeries

    found = read_series([path])
    if not found:
        if found.failures:
            raise error_of(found.failures[0])
        raise UnreadableInput("no image found", source=path)
    if len(found) != 1:
        raise MultipleSeries(f"holds {len(found)} series ({role}); pass one series", source=path)
    return found[0]


def load_for(args: argparse.Namespace, *, reference: bool) -> tuple[ScoringModel, int]:
    """The model serving this request's mode, and the slice limit."""
    from rankiq.service.models import load_models
    from rankiq.service.scoring import select_model
    from rankiq.service.settings import ServiceSettings

    settings = ServiceSettings.from_env()
    models = load_models(args.models or settings.models_dir, threads=settings.ort_threads)
    return select_model(models, reference=reference), args.max_slices or settings.max_slices


def saliency_paths(out: str, n: int) -> list[Path]:
    """Where ``--saliency OUT.png`` writes ``n`` overlays."""
    p = Path(out)
    if n == 1:
        return [p]
    return [p.with_name(f"{p.stem}_{i:03d}{p.suffix or '.png'}") for i in range(n)]


def run_score(args: argparse.Namespace) -> int:
    """Handler of ``rankiq score``."""
    from rankiq.service.overlay import overlay_png
    from rankiq.service.scoring import score_series, series_json

    image = read_one(args.image, "image")
    reference = read_one(args.reference, "reference") if args.reference else None
    model, max_slices = load_for(args, reference=reference is not None)
    result = score_series(model, image, reference, saliency=bool(args.saliency),
                          max_slices=max_slices)
    written: list[Path] = []
    if args.saliency:
        assert result.saliency is not None and result.display is not None
        for i, path in enumerate(saliency_paths(args.saliency, len(result.scores))):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(overlay_png(result.display[i], result.saliency[i]))
            written.append(path)
    if args.json:
        out = series_json(result, png=False, raw=False)
        out["input_kind"] = image.kind
        if written:
            out["saliency_png"] = [str(p) for p in written]
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    from rankiq.service.io import display_name

    m = result.model
    # the path is hashed like every name RankIQ prints (a folder may be named after the patient)
    print(f"{display_name(str(args.image))}: {m['mode']} model {m['name']} {m['version']} "
          f"(contrast {result.contrast}, {len(result.scores)} slice(s); lower is better)")
    print(f"  median {result.median:.4g}  worst {result.worst:.4g} (slice {result.worst_slice})")
    if result.threshold is not None:
        verdict = {True: "FLAGGED", False: "passes", None: "not assessable"}[result.flagged]
        print(f"  QA threshold {result.threshold:.4g} ({result.contrast}): {verdict}")
    if not result.in_range:
        print(f"  out of the model's range: {', '.join(result.range_reasons)} "
              "(score shown, not to be trusted)")
    for i, s in enumerate(result.scores):
        print(f"  slice {i:3d}: {s:.4g}" + ("  (blank)" if result.blank[i] else ""))
    for p in written:
        print(f"  saliency overlay: {p}")
    return 0


def _side(name: str, r: Any) -> str:
    return (f"  {name}: median {r.median:.4g}  worst {r.worst:.4g} (slice {r.worst_slice}), "
            f"{len(r.scores)} slice(s)")


def run_compare(args: argparse.Namespace) -> int:
    """Handler of ``rankiq compare``."""
    from rankiq.service.scoring import OUTCOMES, compare_series, comparison_json

    a = read_one(args.image_a, "A")
    b = read_one(args.image_b, "B")
    reference = read_one(args.reference, "reference") if args.reference else None
    model, max_slices = load_for(args, reference=reference is not None)
    cmp = compare_series(model, a, b, reference, max_slices=max_slices)
    if args.json:
        json.dump(comparison_json(cmp), sys.stdout, indent=2)
        print()
        return 0
    print(f"{cmp.a.model['mode']} model {cmp.a.model['name']} {cmp.a.model['version']} "
          "(lower score is better)")
    print(_side("A", cmp.a))
    print(_side("B", cmp.b))
    probs = dict(zip(OUTCOMES, cmp.probabilities, strict=True))
    print("  P(A better) {a_better:.3f}  P(similar) {similar:.3f}  P(B better) {b_better:.3f}"
          .format(**probs))
    return 0
