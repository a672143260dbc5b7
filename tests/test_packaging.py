"""The lean serving install: `pip install rankiq` (and `make serve`) brings no torch and no
training stack, the wheel carries the shipped models, and the Bento installs the same set."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
#: distributions only the training stack needs (multi-GB with torch); none may reach serving
TRAINING_ONLY = {"torch", "sigpy", "nilearn", "nibabel", "matplotlib", "efficientnet-pytorch",
                 "onnx", "ray"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _base_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def _closure(roots: list[Requirement]) -> set[str]:
    """Installed distributions reachable from ``roots`` (markers evaluated with no extras)."""
    env = {**default_environment(), "extra": ""}
    seen: set[str] = set()
    todo = [r for r in roots if r.marker is None or r.marker.evaluate(env)]
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # an optional platform dependency that is not installed here
        for spec in dist.requires or []:
            sub = Requirement(spec)
            if sub.marker is None or sub.marker.evaluate(env):
                todo.append(sub)
    return seen


def test_base_dependencies_never_pull_the_training_stack():
    closure = _closure(_base_requirements())
    assert {"onnxruntime-gpu", "bentoml", "pydicom"} <= closure  # the walk does reach things
    assert not closure & TRAINING_ONLY, sorted(closure & TRAINING_ONLY)


def test_bentofile_installs_exactly_the_base_dependencies():
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    packages = {str(Requirement(p)) for p in bento["python"]["packages"]}
    assert packages == {str(r) for r in _base_requirements()}


@pytest.mark.slow
def test_wheel_carries_models_and_declares_training_as_an_extra(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--no-build-isolation", "--wheel-dir", str(tmp_path), str(REPO)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("rankiq-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for model in ("iqnet-ref", "iqnet-noref"):
        for f in ("metadata.json", "score.onnx", "classifier.json"):
            assert f"rankiq/models/{model}/{f}" in names
    assert "rankiq/py.typed" in names and "rankiq/service/app.py" in names
    assert not any(n.startswith(("tests/", "service/", "training/", "models/")) for n in names)
    requires = [Requirement(line.split(":", 1)[1].strip()) for line in meta.splitlines()
                if line.startswith("Requires-Dist:")]
    unconditional = {_norm(q.name) for q in requires if q.marker is None}
    assert "onnxruntime-gpu" in unconditional and not unconditional & TRAINING_ONLY
    torch = [q for q in requires if _norm(q.name) == "torch"]
    assert torch and all("train" in str(q.marker) for q in torch)


def test_dockerfile_copies_what_the_build_needs():
    """`pip install .` inside deploy/Dockerfile needs every mapped package folder, the readme and
    the license file (no Docker daemon here: the build context is checked statically)."""
    text = (REPO / "deploy" / "Dockerfile").read_text()
    copied = {p.rstrip("/") for line in text.splitlines() if line.startswith("COPY ")
              for p in line.split()[1:-1]}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "constraints.txt", pyproject["project"]["readme"],
              *pyproject["project"]["license-files"],
              *pyproject["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= copied, sorted(needed - copied)
    assert all((REPO / p).exists() for p in copied)
