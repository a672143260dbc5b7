"""rankiq.service.models: the torch-free ONNX Runtime loader of shipped model directories."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_export import export_small, torch_saliency, torch_scores
from rankiq.service.errors import InvalidImage, RankIQError
from rankiq.service.models import (
    ModelCorrupt,
    ModelIncompatible,
    ModelNotFound,
    ScoringModel,
    load_models,
)
from rankiq.service.preprocess import prepare
from rankiq.training.export import parity_inputs
from rankiq.training.export.parity import corrupt, phantom

pytestmark = pytest.mark.torch
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    d, net, clf = export_small(root / "tiny-ref")
    return d, net, clf


def _copy(d: Path, tmp_path: Path) -> Path:
    out = tmp_path / d.name
    shutil.copytree(d, out)
    return out


def test_load_score_saliency_match_torch(exported) -> None:
    d, net, _ = exported
    m = ScoringModel.load(d, threads=1)
    assert m.provider == "CPUExecutionProvider"
    assert (m.name, m.mode, m.input_kind, m.grid) == ("tiny-ref", "reference", "magnitude",
                                                       (48, 48))
    assert m.sha256 == m.metadata["files"]["score.onnx"]
    x = parity_inputs("reference", "magnitude", (48, 48), seed=11)
    want = torch_scores(net, x)
    s = m.score(x)
    assert s.dtype == np.float32 and np.max(np.abs(s - want) / np.abs(want)) <= 1e-4
    s2, g = m.score_and_saliency(x)
    want_g = torch_saliency(net, x)
    assert np.allclose(s2, s, rtol=1e-5)
    assert np.max(np.abs(g - want_g)) / np.max(np.abs(want_g)) <= 1e-3
    # batching inside the model does not change results
    m_small = ScoringModel.load(d, batch_size=1)
    assert np.allclose(m_small.score(x), s, rtol=1e-6)


def test_classify_matches_rank_classifier_and_is_symmetric(exported) -> None:
    d, _, clf = exported
    m = ScoringModel.load(d)
    rng = np.random.default_rng(0)
    s1, s2 = rng.normal(0, 3, 20), rng.normal(0, 3, 20)
    with torch.no_grad():
        want = torch.softmax(clf(torch.from_numpy(s1).float(), torch.from_numpy(s2).float()),
                             dim=1).numpy()
    p = m.classify(s1, s2)
    assert p.shape == (20, 3) and np.allclose(p.sum(axis=1), 1)
    assert np.allclose(p, want, atol=1e-5)
    swapped = m.classify(s2, s1)
    assert np.allclose(swapped[:, [2, 1, 0]], p, atol=1e-12)


def test_sha256_mismatch_is_refused(exported, tmp_path) -> None:
    d = _copy(exported[0], tmp_path)
    data = bytearray((d / "score.onnx").read_bytes())
    data[-10] ^= 0xFF
    (d / "score.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelCorrupt, match="score.onnx.*SHA-256"):
        ScoringModel.load(d)


def test_wrong_preprocess_version_is_refused(exported, tmp_path) -> None:
    d = _copy(exported[0], tmp_path)
    meta = json.loads((d / "metadata.json").read_text())
    meta["preprocess_version"] = "0-old"
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelIncompatible, match="preprocess version"):
        ScoringModel.load(d)


def test_missing_and_corrupt_directories(exported, tmp_path) -> None:
    with pytest.raises(ModelNotFound):
        ScoringModel.load(tmp_path / "nope")
    d = _copy(exported[0], tmp_path)
    (d / "saliency.onnx").unlink()
    with pytest.raises(ModelNotFound, match="saliency.onnx"):
        ScoringModel.load(d)
    (d / "metadata.json").write_text("{not json")
    with pytest.raises(ModelCorrupt, match="metadata.json"):
        ScoringModel.load(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFound):
        load_models(empty)
    assert all(issubclass(e, RankIQError) for e in (ModelNotFound, ModelCorrupt))


def test_wrong_input_shape_is_a_typed_error(exported) -> None:
    m = ScoringModel.load(exported[0])
    with pytest.raises(InvalidImage, match="expects"):
        m.score(np.zeros((1, 1, 32, 32), np.float32))


def test_shipped_models_load_and_rank_noise(repo_root) -> None:
    models = load_models(repo_root / "models", threads=1)
    assert {"iqnet-ref", "iqnet-noref"} <= set(models)
    ref = models["iqnet-ref"]
    assert ref.mode == "reference" and models["iqnet-noref"].mode == "no-reference"
    rng = np.random.default_rng(0)
    clean = phantom(ref.grid, rng)
    scores = []
    for noise in (0.0, 0.01, 0.05):
        img = np.abs(corrupt(clean, rng, noise=noise, blur=0.0)) if noise else clean
        scores.append(float(ref.score(prepare(img, clean, grid=ref.grid).network_input)[0]))
    assert scores[0] < 1e-2 * scores[1] and scores[1] < scores[2]


def test_service_models_does_not_import_torch() -> None:
    code = ("import sys, service.models; "
            "bad = [m for m in ('torch', 'training') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
