"""Regenerate the pictures of the README and the docs with the shipped tools.

    .venv/bin/python docs/img/make_images.py            # writes docs/img/*.png

* ``saliency.png``: pydicom's ``MR_small.dcm`` (the reference), a copy with motion ghosts, and
  the saliency overlay ``rankiq score GHOSTED --reference MR_small.dcm --saliency OUT.png``
  writes for it (red: where the score is most sensitive).
* ``qa-report.png``: ``rankiq qa`` on a small synthetic archive (``rankiq.service.qa.synth``)
  with site thresholds for T1/T1post, its ``report.html`` rendered by headless Chromium
  (Debian package ``chromium``) when installed, else its table drawn by matplotlib.

Needs the ``train`` extra (matplotlib). Everything runs offline in a temporary folder.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent
RANKIQ = str(Path(sys.executable).with_name("rankiq"))


def _quantised(src: Path, dst: Path, colours: int = 160) -> None:
    """Save ``src`` as a palette PNG (a fraction of the RGB size, no visible loss here)."""
    from PIL import Image

    Image.open(src).convert("RGB").quantize(colours).save(dst, optimize=True)


def saliency_picture(tmp: Path) -> None:
    """Reference, motion-corrupted copy and the reference-mode saliency overlay, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from pydicom.data import get_testdata_file
    from rankiq.service.io import read_series
    from rankiq.service.qa.synth import corrupt, write_series

    ref_path = get_testdata_file("MR_small.dcm")
    ref = read_series(ref_path)[0].pixels  # float32 (1, 64, 64)
    rng = np.random.default_rng(7)
    ghosted = corrupt(ref, "motion", 0.5, rng)
    write_series(tmp / "ghosted", ghosted, description="AX T2 ghosted", rng=rng)
    sal = tmp / "saliency.png"
    run = subprocess.run([RANKIQ, "score", str(tmp / "ghosted"), "--reference", ref_path,
                          "--saliency", str(sal)], check=True, capture_output=True, text=True)
    print(run.stdout.strip())
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.9), dpi=100)
    panels = [(ref[0], "reference (MR_small.dcm)"), (ghosted[0], "motion ghosts"),
              (np.asarray(Image.open(sal)), "saliency of the score")]
    for ax, (img, title) in zip(axes, panels, strict=True):
        ax.imshow(img, cmap="gray", interpolation="bicubic")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(tmp / "saliency_panel.png")
    _quantised(tmp / "saliency_panel.png", OUT / "saliency.png")


def qa_picture(tmp: Path) -> None:
    """Run ``rankiq qa`` on a synthetic archive and picture its report."""
    from rankiq.service.qa.synth import build_archive

    build_archive(tmp / "archive", 6, size=128, slices=(6, 8), seed=3, extras=True)
    site = tmp / "site.yaml"
    site.write_text("statistic: median\nthresholds: {T1: 2.0, T1post: 2.0}\n")
    # relative paths: the report names the thresholds file as given
    subprocess.run([RANKIQ, "qa", "archive", "--out", "qa", "--thresholds", site.name,
                    "--no-progress"], check=True, cwd=tmp)
    shot = tmp / "qa.png"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", "--window-size=1100,860", f"--screenshot={shot}",
                        (tmp / "qa" / "report.html").as_uri()], check=True, capture_output=True)
    else:
        _table_picture(tmp / "qa" / "qa.csv", shot)
    _quantised(shot, OUT / "qa-report.png")


def _table_picture(qa_csv: Path, out: Path) -> None:
    """Fallback without a browser: the report's series table drawn with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["series_key", "description", "contrast", "median", "threshold", "flagged"]
    with qa_csv.open() as f:
        rows = [[r[c] for c in cols] for r in csv.DictReader(f)]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(rows) + 0.8), dpi=100)
    ax.axis("off")
    ax.table(cellText=rows, colLabels=cols, loc="center")
    fig.savefig(out, bbox_inches="tight")


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        saliency_picture(Path(d))
        qa_picture(Path(d))
    for p in sorted(OUT.glob("*.png")):
        print(f"{p.name}: {p.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
