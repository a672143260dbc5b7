"""Shared helpers of the batch-QA tests: tiny synthetic DICOM archives and running `rankiq qa`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "models" / "iqnet-noref"


def build(root: Path, n: int, *, seed: int = 0, size: int = 64, slices=(6, 10),
          extras: bool = False, clean_fraction: float = 0.5) -> list[dict]:
    """Write a small archive under ``root/archive`` and return its ground truth (dicts, each
    with its io series key)."""
    from rankiq.service.qa.synth import build_archive, series_key_of

    truth = build_archive(root / "archive", n, size=size, slices=slices, seed=seed,
                          extras=extras, clean_fraction=clean_fraction)
    return [{**t.__dict__, "key": series_key_of(t.files[0])} for t in truth]


def rankiq(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run the `rankiq` console script of this environment."""
    exe = Path(sys.executable).parent / "rankiq"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANKIQ_FFT_WORKERS": "1"}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, **kw)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
