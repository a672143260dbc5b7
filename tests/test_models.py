"""service.models without torch: the ordinal classifier against its formula, its validation,
and the input checks of the shipped models."""

from __future__ import annotations

import numpy as np
import pytest
from rankiq.service.errors import InvalidImage
from rankiq.service.models import OrdinalClassifier, load_classifier


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + np.exp(-z))


def test_ordinal_classifier_matches_its_formula():
    clf = load_classifier({"kind": "ordinal", "beta": 2.0, "theta": 0.5})
    assert isinstance(clf, OrdinalClassifier)
    p = clf.probabilities(np.array([1.0, 4.0, 2.0]), np.array([2.0, 1.0, 2.0]))
    for (s1, s2), row in zip([(1.0, 2.0), (4.0, 1.0), (2.0, 2.0)], p, strict=True):
        d = np.log(s2) - np.log(s1)
        p1, p2 = _sigmoid(2.0 * d - 0.5), _sigmoid(-2.0 * d - 0.5)
        assert row == pytest.approx([p1, 1.0 - p1 - p2, p2], rel=1e-12)
    assert p[0, 0] > p[0, 2] and p[1, 2] > p[1, 0] and p[2, 0] == pytest.approx(p[2, 2])
    # scores at or below the floor are compared at the floor (no log of zero)
    z = clf.probabilities(np.array([0.0, -1.0]), np.array([1e-6, 1e-6]))
    assert np.allclose(z[0], z[1]) and np.isfinite(z).all()
    assert clf.to_json() == {"kind": "ordinal", "beta": 2.0, "theta": 0.5, "floor": 1e-6,
                             "gamma": 1.0}


def test_ordinal_classifier_gamma_shapes_the_gap_and_keeps_the_order():
    """gamma < 1: the size of the score gap matters less than its sign; the order of the
    probabilities and the swap symmetry stay; gamma must be positive."""
    clf = load_classifier({"kind": "ordinal", "beta": 1.0, "theta": 0.1, "gamma": 0.25})
    assert isinstance(clf, OrdinalClassifier) and clf.gamma == 0.25
    p = clf.probabilities(np.array([1.0, 1.0]), np.array([1.01, 10.0]))
    d = np.log([1.01, 10.0])
    g = d ** 0.25
    assert p[:, 0] == pytest.approx(_sigmoid(g - 0.1), rel=1e-12)
    assert p[:, 2] == pytest.approx(_sigmoid(-g - 0.1), rel=1e-12)
    plain = load_classifier({"kind": "ordinal", "beta": 1.0, "theta": 0.1})
    q = plain.probabilities(np.array([1.0, 1.0]), np.array([1.01, 10.0]))
    assert p[1, 0] - p[0, 0] < q[1, 0] - q[0, 0]  # a 10x gap adds less confidence
    np.testing.assert_allclose(clf.probabilities(np.array([1.01, 10.0]), np.ones(2)),
                               p[:, ::-1])
    r = np.linspace(-3, 3, 61)
    pa = clf.probabilities(np.ones_like(r), np.exp(r))[:, 0]
    assert (np.diff(pa) > 0).all()
    for bad in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError):
            load_classifier({"kind": "ordinal", "beta": 1.0, "theta": 0.1, "gamma": bad})


@pytest.mark.parametrize(("beta", "theta", "ok"), [(1.0, 0.0, True), (1e-9, 2.0, True),
                                                   (0.0, 1.0, False), (-1.0, 1.0, False),
                                                   (1.0, -1e-9, False),
                                                   (float("inf"), 1.0, False),
                                                   (1.0, float("nan"), False)])
def test_ordinal_classifier_parameters_are_validated(beta, theta, ok):
    doc = {"kind": "ordinal", "beta": beta, "theta": theta}
    if ok:
        assert load_classifier(doc).beta == beta
    else:
        with pytest.raises(ValueError, match="beta > 0, theta >= 0 and gamma > 0"):
            load_classifier(doc)


def test_network_input_shape_and_values_are_checked(repo_root):
    from rankiq.service.models import ScoringModel

    model = ScoringModel.load(repo_root / "models" / "iqnet-ref")
    good = np.zeros((2, model.channels, *model.grid), np.float32)
    assert model.score(good).shape == (2,)
    for bad in (good[0], good[:, :, :-1], np.zeros((2, model.channels + 1, *model.grid))):
        with pytest.raises(InvalidImage, match="expects network input"):
            model.score(bad)
    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidImage, match="NaN"):
        model.score(nan)


# -- loading checks on a copy of the small shipped model (no torch) --------------------------------

def _noref_copy(repo_root, tmp_path):
    """A writable copy of the shipped features model and a function that rewrites one of its
    files and records the new SHA-256 in metadata.json."""
    import json
    import shutil

    from rankiq.service.models import sha256_file

    d = tmp_path / "iqnet-noref"
    shutil.copytree(repo_root / "models" / "iqnet-noref", d)

    def put(name: str, text: str) -> None:
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        meta = json.loads((d / "metadata.json").read_text())
        meta["files"][name] = sha256_file(path)
        (d / "metadata.json").write_text(json.dumps(meta))

    return d, put


def test_a_listed_file_outside_the_directory_is_refused(repo_root, tmp_path):
    from rankiq.service.models import ModelCorrupt, ScoringModel

    d, put = _noref_copy(repo_root, tmp_path)
    assert ScoringModel.load(d).name == "iqnet-noref"
    put("zz/notes.txt", "hello")  # exists, hash right: still not a file of the directory
    with pytest.raises(ModelCorrupt, match="path outside the directory: 'zz/notes.txt'"):
        ScoringModel.load(d)


@pytest.mark.parametrize("doc", ['{"kind": "ordinal", "theta": 0.1}',  # KeyError
                                 '{"f": 1, "g": 2}',  # TypeError
                                 '{"kind": "ordinal", "beta": -1, "theta": 0}',  # ValueError
                                 '{"kind": "ordinal", "beta": "x", "theta": 0}'])
def test_an_invalid_classifier_is_a_corrupt_model(repo_root, tmp_path, doc):
    from rankiq.service.models import ModelCorrupt, ScoringModel

    d, put = _noref_copy(repo_root, tmp_path)
    put("classifier.json", doc)
    with pytest.raises(ModelCorrupt, match="classifier.json is invalid"):
        ScoringModel.load(d)


def _branch(w1, b1, w2, b2):
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}


@pytest.mark.parametrize("bad", [
    _branch([[1.0, 2.0]], [[1.0, 2.0]], [[1.0, 2.0]], 0.0),  # 2-D weights, shapes alike
    _branch([1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.0]),  # a vector bias of the output
    _branch([1.0, 2.0], [1.0], [1.0, 2.0], 0.0),  # hidden sizes differ
])
def test_rank_classifier_branches_must_be_consistent(bad):
    good = _branch([1.0, -1.0], [0.0, 0.5], [0.3, 0.2], 0.1)
    assert load_classifier({"f": good, "g": good}).probabilities(
        np.array([1.0]), np.array([2.0])).shape == (1, 3)
    for doc in ({"f": bad, "g": good}, {"f": good, "g": bad}):
        with pytest.raises(ValueError, match="inconsistent branch shapes"):
            load_classifier(doc)


def test_rank_classifier_is_the_softmax_of_its_logits():
    from rankiq.service.models import RankClassifierNP

    f = _branch([1.0, -2.0], [0.5, 0.0], [0.7, -0.3], 0.2)
    g = _branch([0.4, 1.5], [-0.1, 0.3], [0.2, 0.6], -0.5)
    clf = load_classifier({"f": f, "g": g})
    assert isinstance(clf, RankClassifierNP)
    s1, s2 = np.array([0.2, 1.0, 3.0]), np.array([0.5, 1.0, 1.0])

    def branch(b, d):
        h = 1.0 / (1.0 + np.exp(-(d * np.array(b["w1"]) + np.array(b["b1"]))))
        return float(h @ np.array(b["w2"]) + b["b2"])

    for i, d in enumerate(s1 - s2):
        z = np.array([branch(f, d), branch(g, d) + branch(g, -d), branch(f, -d)])
        assert clf.logits(s1, s2)[i] == pytest.approx(z, rel=1e-12)
        assert clf.probabilities(s1, s2)[i] == pytest.approx(np.exp(z) / np.exp(z).sum(),
                                                             rel=1e-12)
    # equal scores: the outer classes are equally likely
    p = clf.probabilities(np.array([1.0]), np.array([1.0]))[0]
    assert p[0] == pytest.approx(p[2]) and p.sum() == pytest.approx(1.0)


def test_default_batch_and_channels_per_input_kind(repo_root):
    from rankiq.service import models

    assert models.DEFAULT_BATCH == 8  # slices per ONNX call
    m = models.ScoringModel.load(repo_root / "models" / "iqnet-ref")
    assert m.batch_size == 8 and m.channels == 1 and m.input_kind == "magnitude"
    complex_model = models.ScoringModel(m.path, {**m.metadata, "input_kind": "complex"},
                                        m.provider, m.classifier, m._score)
    assert complex_model.channels == 2 and complex_model.batch_size == 8


def test_batches_and_empty_inputs_give_the_same_answers(repo_root):
    from rankiq.service.models import ScoringModel

    one = ScoringModel.load(repo_root / "models" / "iqnet-ref", batch_size=1)
    three = ScoringModel.load(repo_root / "models" / "iqnet-ref", batch_size=3)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, (4, 1, *one.grid)).astype(np.float32)
    np.testing.assert_allclose(one.score(x), three.score(x), rtol=1e-5, atol=1e-6)
    s1, g1 = one.score_and_saliency(x)
    s3, g3 = three.score_and_saliency(x)
    assert g1.shape == g3.shape == x.shape and s1.shape == (4,)
    np.testing.assert_allclose(g1, g3, rtol=1e-4, atol=1e-6)
    empty = np.zeros((0, 1, *one.grid), np.float32)
    assert one.score(empty).shape == (0,)
    s, g = one.score_and_saliency(empty)
    assert s.shape == (0,) and g.shape == (0, 1, *one.grid) and g.dtype == np.float32


def test_an_unavailable_accelerator_falls_back_to_cpu_quietly(repo_root, capfd):
    """Asking for CUDA where it cannot start gives a CPU model and no onnxruntime error spam on
    stderr (the provider is reported in ``.provider``); CPU-only loading stays quiet too."""
    from rankiq.service.models import ScoringModel

    capfd.readouterr()
    m = ScoringModel.load(repo_root / "models" / "iqnet-ref",
                          providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert m.provider in ("CUDAExecutionProvider", "CPUExecutionProvider")  # what runs
    m.score(np.zeros((1, 1, *m.grid), np.float32))
    assert capfd.readouterr().err == ""


def test_input_check_messages_name_the_expected_shape(repo_root):
    from rankiq.service.models import ScoringModel

    m = ScoringModel.load(repo_root / "models" / "iqnet-ref")
    wide = ScoringModel(m.path, {**m.metadata, "grid": [128, 96]}, m.provider, m.classifier,
                        m._score)
    with pytest.raises(InvalidImage) as err:
        wide.score(np.zeros((2, 1, 96, 128), np.float32))
    assert str(err.value).startswith(
        "model iqnet-ref expects network input (N, 1, 128, 96), got (2, 1, 96, 128)")
    f = ScoringModel.load(repo_root / "models" / "iqnet-noref")
    k = len(f.feature_names)
    assert k > 1 and f.score(np.zeros((3, k), np.float32)).shape == (3,)
    for bad in (np.zeros((3, k + 1)), np.zeros(k), np.zeros((1, 1, k))):
        with pytest.raises(InvalidImage) as err:
            f.score(bad)
        assert str(err.value).startswith(
            f"model iqnet-noref expects features (N, {k}), got {tuple(bad.shape)}")


def test_session_options_are_the_documented_threads_and_modes(repo_root):
    import onnxruntime as ort
    from rankiq.service.models import ScoringModel, session_options

    opts = session_options(3)
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.log_severity_level == 3  # errors still reach the log; warnings do not
    quiet = session_options(2, spinning=False)
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # a loaded model runs one intra-op thread per session unless told otherwise
    m = ScoringModel.load(repo_root / "models" / "iqnet-ref")
    got = m._score.get_session_options()
    assert (got.intra_op_num_threads, got.inter_op_num_threads) == (1, 1)
    two = ScoringModel.load(repo_root / "models" / "iqnet-ref", threads=2)
    assert two._score.get_session_options().intra_op_num_threads == 2


def test_saliency_is_available_from_a_graph_or_from_features(repo_root):
    from rankiq.service.models import SaliencyUnavailable, ScoringModel

    ref = ScoringModel.load(repo_root / "models" / "iqnet-ref")
    noref = ScoringModel.load(repo_root / "models" / "iqnet-noref")
    assert ref.has_saliency and noref.has_saliency and noref._saliency is None
    bare = ScoringModel(ref.path, ref.metadata, ref.provider, ref.classifier, ref._score)
    assert not bare.has_saliency
    with pytest.raises(SaliencyUnavailable, match="no saliency graph"):
        bare.score_and_saliency(np.zeros((1, 1, *ref.grid), np.float32))


@pytest.mark.parametrize("name", ["a/z.txt", "zz/notes.txt"])
def test_any_listed_subpath_is_refused(repo_root, tmp_path, name):
    from rankiq.service.models import ModelCorrupt, ScoringModel

    d, put = _noref_copy(repo_root, tmp_path)
    put(name, "hello")
    with pytest.raises(ModelCorrupt, match="path outside the directory"):
        ScoringModel.load(d)


def test_an_iqnet_model_with_saliency_must_list_its_graph(repo_root, tmp_path):
    import json
    import shutil

    from rankiq.service.models import ModelCorrupt, ScoringModel

    d = tmp_path / "iqnet-ref"
    shutil.copytree(repo_root / "models" / "iqnet-ref", d)
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["saliency"] and meta.get("kind", "iqnet") == "iqnet"
    del meta["files"]["saliency.onnx"]
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelCorrupt, match="metadata.json does not list saliency.onnx"):
        ScoringModel.load(d)
