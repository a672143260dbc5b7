"""The explicit backward and the exact folding, in torch and exported to ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_export import export_small, random_iqnet, torch_saliency, torch_scores
from rankiq.training.export import ParityError, export_model, parity_inputs, sha256_file
from rankiq.training.export.iqnet_graphs import (
    FoldedBlock,
    FoldedSaliency,
    FoldedScore,
    NaiveSaliency,
    PartialFoldBlock,
)
from rankiq.training.models import RankClassifier

pytestmark = pytest.mark.torch


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("kind,grid", [("magnitude", (48, 48)), ("complex", (37, 45)),
                                       ])
def test_folded_and_explicit_backward_match_autograd(kind: str, grid: tuple[int, int]) -> None:
    """Odd and even sizes, strips forced on every block that can take them."""
    net = random_iqnet(kind, seed=3)
    x = np.random.default_rng(0).standard_normal((2, net.parts, *grid)).astype(np.float32)
    want_s, want_g = torch_scores(net, x), torch_saliency(net, x)
    folded = FoldedScore(net, grid, strip_min_size=8)
    assert any(isinstance(b, FoldedBlock) for b in folded.blocks)
    assert any(isinstance(b, PartialFoldBlock) for b in folded.blocks)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        s_f = folded(xt).numpy()
        s_fs, g_fs = (t.numpy() for t in FoldedSaliency(net, grid, strip_min_size=8)(xt))
        s_n, g_n = (t.numpy() for t in NaiveSaliency(net, grid)(xt))
    for s in (s_f, s_fs, s_n):
        assert np.max(np.abs(s - want_s) / np.abs(want_s)) < 1e-5
    assert _rel(g_fs, want_g) < 1e-5
    assert _rel(g_n, want_g) < 1e-5


def test_folding_without_the_border_strips_would_be_wrong() -> None:
    """The composed 5x5 conv alone differs on the border ring: the strips are needed."""
    net = random_iqnet(seed=4)
    block = net.blocks[0]
    fb = FoldedBlock(block, (32, 32))
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        exact = block(x)
        naive_fold = torch.nn.functional.conv2d(x, fb.k6, stride=2, padding=2)
        assert torch.allclose(fb(x), exact, rtol=1e-5, atol=1e-5)
        ring = (naive_fold - exact).abs()
        assert ring[..., 1:-1, 1:-1].max() < 1e-5  # interior exact
        assert ring.max() > 1e-3  # border not


@pytest.mark.slow
@pytest.mark.parametrize("kind,mode,act", [("magnitude", "reference", "identity"),
                                           ("complex", "no-reference", "relu")])
def test_export_writes_the_contract_directory(tmp_path, kind: str, mode: str, act: str) -> None:
    d, net, _ = export_small(tmp_path / "m", input_kind=kind, mode=mode, activation=act)
    names = {"score.onnx", "score_naive.onnx", "saliency.onnx", "classifier.json",
             "metadata.json", "MODEL_CARD.md"}
    assert {p.name for p in d.iterdir()} == names
    meta = json.loads((d / "metadata.json").read_text())
    assert set(meta["files"]) == names - {"metadata.json"}
    for name, digest in meta["files"].items():
        assert sha256_file(d / name) == digest
    assert meta["mode"] == mode and meta["input_kind"] == kind and meta["grid"] == [48, 48]
    assert meta["score_direction"] == "lower_is_better" and meta["saliency"] is True
    assert set(meta["qa_thresholds"]) == {"T1", "T1post", "T2", "FLAIR", "other"}
    assert "UNTRAINED" in (d / "MODEL_CARD.md").read_text()

    import onnxruntime as ort

    x = parity_inputs(mode, kind, (48, 48), seed=7)  # other inputs than the export's check
    want_s, want_g = torch_scores(net, x), torch_saliency(net, x)
    for graph in ("score_naive.onnx", "score.onnx"):
        s = ort.InferenceSession(str(d / graph), providers=["CPUExecutionProvider"])
        got = s.run(None, {"x": x})[0]
        assert got.shape == (len(x),)
        assert np.max(np.abs(got - want_s) / np.abs(want_s)) <= 1e-4
    s = ort.InferenceSession(str(d / "saliency.onnx"), providers=["CPUExecutionProvider"])
    got_s, got_g = s.run(None, {"x": x})
    assert np.max(np.abs(got_s - want_s) / np.abs(want_s)) <= 1e-4
    assert got_g.shape == x.shape and _rel(got_g, want_g) <= 1e-3


class _TracesDifferently(torch.nn.Module):
    """Eager and traced graphs disagree: the exported graph is wrong on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * x).sum(dim=(1, 2, 3)) * self.w
        return s * 1.01 if torch.jit.is_tracing() else s


def test_export_fails_loudly_and_writes_nothing_on_parity_error(tmp_path) -> None:
    out = tmp_path / "bad"
    with pytest.raises(ParityError, match="parity"):
        export_model(_TracesDifferently(), RankClassifier(), out, name="bad", version="0",
                     mode="reference", input_kind="magnitude", grid=(32, 32))
    assert not out.exists()
    assert not any(tmp_path.iterdir())


def test_distilled_student_exports_with_saliency(tmp_path) -> None:
    from rankiq.training.distill import NoRefStudent

    torch.manual_seed(0)
    st = NoRefStudent("magnitude").eval()
    with torch.no_grad():
        st.head.weight.normal_(0, 0.1)
    meta = export_model(st, RankClassifier(), tmp_path / "st", name="st", version="0",
                        mode="no-reference", input_kind="magnitude", grid=(48, 48))
    assert meta["saliency"] is True and meta["architecture"]["model"] == "iqnet-student"
    assert meta["parity"]["saliency.onnx"]["saliency_rel_err"] <= 1e-3


@pytest.mark.slow
def test_efficientnet_exports_without_saliency(tmp_path) -> None:
    from rankiq.training.distill import ExpScorer
    from rankiq.training.models.efficientnet import EfficientNetScorer

    torch.manual_seed(0)
    eff = ExpScorer(EfficientNetScorer("magnitude", size=32)).eval()
    meta = export_model(eff, RankClassifier(), tmp_path / "ef", name="ef", version="0",
                        mode="no-reference", input_kind="magnitude", grid=(48, 48))
    assert meta["saliency"] is False and "saliency.onnx" not in meta["files"]
    assert meta["parity"]["score.onnx"]["score_rel_err"] <= 1e-4
    from rankiq.service.models import SaliencyUnavailable, ScoringModel

    m = ScoringModel.load(tmp_path / "ef")
    with pytest.raises(SaliencyUnavailable):
        m.score_and_saliency(np.zeros((1, 1, 48, 48), np.float32))
