"""Load and run shipped scoring models on ONNX Runtime (no torch).

A model directory (CONTRACTS.md section 4) holds ``score.onnx``, ``saliency.onnx`` (optional),
``classifier.json``, ``metadata.json`` and ``MODEL_CARD.md``. :meth:`ScoringModel.load` checks
the SHA-256 of every file listed in the metadata and the preprocessing contract version before
any graph is opened, and picks the execution provider once: CUDA when requested/available and it
initialises, otherwise CPU (reported in ``.provider``).

Arrays: network inputs are float32 ``(N, C, H, W)`` (``rankiq.service.preprocess.Prepared
.network_input``), scores float32 ``(N,)`` (lower is better), saliency maps float32
``(N, C, H, W)`` (d score / d input), rank probabilities float64 ``(N, 3)`` in the order
(image 1 better, similar, image 2 better).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from rankiq.service.errors import InvalidImage, RankIQError
from rankiq.service.preprocess import PREPROCESS_VERSION

DEFAULT_BATCH = 8  # slices per ONNX call: bounds the saliency graph's memory
_REQUIRED_META = ("name", "version", "mode", "input_kind", "grid", "preprocess_version", "files")
_REQUIRED_FILES = ("score.onnx", "classifier.json")


class ModelError(RankIQError):
    """A model directory cannot be used (base class; HTTP 503: the service is misconfigured)."""

    http_status = 503
    reason = "model_unavailable"


class ModelNotFound(ModelError):
    """The model directory or one of its files does not exist."""

    reason = "model_not_found"


class ModelCorrupt(ModelError):
    """A model file is unreadable or its SHA-256 differs from metadata.json."""

    reason = "model_corrupt"


class ModelIncompatible(ModelError):
    """The model was exported for another preprocessing contract or layout."""

    reason = "model_incompatible"


class SaliencyUnavailable(RankIQError):
    """The model has no saliency graph (e.g. a non-IQ-Net architecture)."""

    http_status = 422
    reason = "saliency_unavailable"


def session_options(threads: int = 1, *, spinning: bool = True) -> ort.SessionOptions:
    """ONNX Runtime options with explicit thread counts (``threads`` intra-op, 1 inter-op).

    ``spinning=False`` stops idle intra-op threads from busy-waiting (better when several
    processes share few cores; slightly higher latency on an idle machine).
    """
    opts = ort.SessionOptions()
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # a missing CUDA runtime is reported via .provider, not logs
    return opts


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _default_providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _open_session(path: Path, threads: int, providers: list[str]
                  ) -> tuple[ort.InferenceSession, str]:
    """Open ``path`` with the first provider that initialises; CPU is the last resort."""
    chain = [p for p in providers if p != "CPUExecutionProvider"] + ["CPUExecutionProvider"]
    last: Exception | None = None
    for provider in chain:
        quiet = provider != "CPUExecutionProvider"
        if quiet:  # a CUDA build without CUDA libraries logs errors while falling back
            ort.set_default_logger_severity(4)
        try:
            sess = ort.InferenceSession(str(path), session_options(threads),
                                        providers=[provider])
        except Exception as exc:  # noqa: BLE001 - e.g. CUDA libraries absent: try the next
            last = exc
            continue
        finally:
            if quiet:
                ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)
        # onnxruntime itself may have fallen back to CPU: report what actually runs
        return sess, sess.get_providers()[0]
    raise ModelCorrupt(f"cannot open {path.name}: {last}", source=str(path.parent))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


@dataclass(frozen=True)
class OrdinalClassifier:
    """A rank classifier that agrees with its model's scores by construction.

    With ``d = log(s2) - log(s1)`` (positive when image 1 scores lower, i.e. better) and
    ``g = sign(d) |d| ** gamma``::

        P(1 better) = sigmoid(beta g - theta),  P(2 better) = sigmoid(-beta g - theta),
        P(similar)  = 1 - both

    (Davidson-type ties). ``beta > 0``, ``theta >= 0`` and ``gamma > 0``: P(1 better) rises
    with ``s2 - s1``, swapping the images swaps the outer probabilities, and the image with
    the lower score is never the less likely winner. ``gamma`` (1: the plain logistic in the
    log ratio) is how much the *size* of the gap matters beyond its sign: readers of similar
    corruptions follow the sign of the score difference about as often at small gaps as at
    large ones, and a fitted ``gamma`` well below 1 says so, which keeps the probabilities
    calibrated. Scores must be positive (no-reference models' scores are); ``floor`` keeps the
    log finite.
    """

    beta: float
    theta: float
    floor: float = 1e-6
    gamma: float = 1.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrdinalClassifier:
        beta, theta = float(data["beta"]), float(data["theta"])
        gamma = float(data.get("gamma", 1.0))
        if not (beta > 0 and theta >= 0 and gamma > 0
                and np.isfinite([beta, theta, gamma]).all()):
            raise ValueError("ordinal classifier needs beta > 0, theta >= 0 and gamma > 0")
        return cls(beta, theta, float(data.get("floor", 1e-6)), gamma)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "ordinal", "beta": self.beta, "theta": self.theta, "floor": self.floor,
                "gamma": self.gamma}

    def probabilities(self, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
        """``(N,)``, ``(N,)`` scores -> float64 ``(N, 3)`` (1 better, similar, 2 better)."""
        a = np.log(np.maximum(np.asarray(s1, np.float64).reshape(-1), self.floor))
        b = np.log(np.maximum(np.asarray(s2, np.float64).reshape(-1), self.floor))
        d = b - a
        g = np.sign(d) * np.abs(d) ** self.gamma
        p1 = _sigmoid(self.beta * g - self.theta)
        p2 = _sigmoid(-self.beta * g - self.theta)
        return np.stack([p1, np.clip(1.0 - p1 - p2, 0.0, 1.0), p2], axis=1)


def load_classifier(data: dict[str, Any]) -> RankClassifierNP | OrdinalClassifier:
    """The classifier described by a classifier.json document (``kind`` ``"ordinal"`` or
    IQ-Net's two-branch network, the default)."""
    if data.get("kind") == "ordinal":
        return OrdinalClassifier.from_json(data)
    return RankClassifierNP.from_json(data)


@dataclass(frozen=True)
class RankClassifierNP:
    """numpy twin of ``rankiq.training.models.RankClassifier`` read from classifier.json."""

    f: dict[str, np.ndarray]
    g: dict[str, np.ndarray]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RankClassifierNP:
        def branch(b: dict[str, Any]) -> dict[str, np.ndarray]:
            out = {k: np.asarray(b[k], dtype=np.float64) for k in ("w1", "b1", "w2", "b2")}
            if not (out["w1"].shape == out["b1"].shape == out["w2"].shape
                    and out["w1"].ndim == 1 and out["b2"].ndim == 0):
                raise ValueError("inconsistent branch shapes")
            return out

        return cls(branch(data["f"]), branch(data["g"]))

    @staticmethod
    def _branch(p: dict[str, np.ndarray], d: np.ndarray) -> np.ndarray:
        return _sigmoid(d[:, None] * p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def logits(self, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
        """``(N,)``, ``(N,)`` scores -> ``(N, 3)`` logits ``[f(d), g(d) + g(-d), f(-d)]``."""
        d = np.asarray(s1, np.float64).reshape(-1) - np.asarray(s2, np.float64).reshape(-1)
        return np.stack([self._branch(self.f, d),
                         self._branch(self.g, d) + self._branch(self.g, -d),
                         self._branch(self.f, -d)], axis=1)

    def probabilities(self, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
        """Softmax of :meth:`logits`, float64 ``(N, 3)``."""
        z = self.logits(s1, s2)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


def _read_metadata(d: Path) -> dict[str, Any]:
    if not d.is_dir():
        raise ModelNotFound("model directory does not exist", source=str(d))
    meta_path = d / "metadata.json"
    if not meta_path.is_file():
        raise ModelNotFound("metadata.json is missing", source=str(d))
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCorrupt(f"metadata.json is unreadable: {exc}", source=str(d)) from exc
    if not isinstance(meta, dict):
        raise ModelCorrupt("metadata.json is not a JSON object", source=str(d))
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise ModelCorrupt(f"metadata.json lacks {', '.join(missing)}", source=str(d))
    return meta


def _verify_files(d: Path, meta: dict[str, Any]) -> None:
    files = meta["files"]
    if not isinstance(files, dict):
        raise ModelCorrupt("metadata.json 'files' is not a mapping", source=str(d))
    graph_saliency = meta.get("saliency") and meta.get("kind", "iqnet") == "iqnet"
    for required in _REQUIRED_FILES + (("saliency.onnx",) if graph_saliency else ()):
        if required not in files:
            raise ModelCorrupt(f"metadata.json does not list {required}", source=str(d))
    for name, digest in files.items():
        path = d / name
        if Path(name).name != name:
            raise ModelCorrupt(f"metadata.json lists a path outside the directory: {name!r}",
                               source=str(d))
        if not path.is_file():
            raise ModelNotFound(f"{name} is missing", source=str(d))
        if sha256_file(path) != digest:
            raise ModelCorrupt(f"{name} does not match its SHA-256 in metadata.json "
                               "(modified or truncated)", source=str(d))


@dataclass
class ScoringModel:
    """A loaded model: ONNX Runtime sessions, classifier and metadata.

    Build with :meth:`load`. Thread-safe for concurrent calls (ONNX Runtime sessions are).
    """

    path: Path
    metadata: dict[str, Any]
    provider: str
    classifier: RankClassifierNP | OrdinalClassifier
    _score: ort.InferenceSession = field(repr=False)
    _saliency: ort.InferenceSession | None = field(repr=False, default=None)
    batch_size: int = DEFAULT_BATCH

    @classmethod
    def load(cls, path: str | Path, *, threads: int = 1, providers: list[str] | None = None,
             batch_size: int = DEFAULT_BATCH) -> ScoringModel:
        """Load ``path`` after checking every file's SHA-256, the preprocess version and, for a
        features model, the features version it was fitted on.

        Args:
            path: model directory.
            threads: ONNX Runtime intra-op threads per session.
            providers: execution providers in order of preference (default: CUDA if this
                onnxruntime build has it, then CPU); CPU is always the fallback.
            batch_size: slices per ONNX call.

        Raises:
            ModelNotFound, ModelCorrupt, ModelIncompatible.
        """
        d = Path(path)
        meta = _read_metadata(d)
        if str(meta["preprocess_version"]) != PREPROCESS_VERSION:
            raise ModelIncompatible(
                f"exported for preprocess version {meta['preprocess_version']!r}, this RankIQ "
                f"prepares images with version {PREPROCESS_VERSION!r}: re-export the model",
                source=str(d))
        if meta["input_kind"] not in ("magnitude", "complex") or meta["mode"] not in (
                "reference", "no-reference") or meta.get("kind", "iqnet") not in (
                "iqnet", "features"):
            raise ModelIncompatible(f"unknown mode/input_kind {meta['mode']!r}/"
                                    f"{meta['input_kind']!r}", source=str(d))
        if meta.get("kind") == "features":
            from rankiq.service.noref import FEATURES_VERSION

            fitted = str(meta.get("features_version", "1"))
            if fitted != FEATURES_VERSION:
                raise ModelIncompatible(
                    f"fitted on features version {fitted!r}, this "
                    f"RankIQ computes version {FEATURES_VERSION!r}: rebuild it (make noref-model)",
                    source=str(d))
        _verify_files(d, meta)
        try:
            clf = load_classifier(json.loads((d / "classifier.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelCorrupt(f"classifier.json is invalid: {exc}", source=str(d)) from exc
        chain = list(providers) if providers is not None else _default_providers()
        score, provider = _open_session(d / "score.onnx", threads, chain)
        sal = None
        if "saliency.onnx" in meta["files"]:
            sal, _ = _open_session(d / "saliency.onnx", threads, [provider])
        if meta.get("kind") == "features":
            from rankiq.service.noref import warm

            warm()  # compile or load the feature kernels now, not on the first request
        return cls(d, meta, provider, clf, score, sal, batch_size)

    # -- metadata ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def sha256(self) -> str:
        """SHA-256 of score.onnx (identifies the exact scoring graph)."""
        return str(self.metadata["files"]["score.onnx"])

    @property
    def mode(self) -> str:
        return str(self.metadata["mode"])

    @property
    def input_kind(self) -> str:
        return str(self.metadata["input_kind"])

    @property
    def grid(self) -> tuple[int, int]:
        g = self.metadata["grid"]
        return int(g[0]), int(g[1])

    @property
    def channels(self) -> int:
        return 1 if self.input_kind == "magnitude" else 2

    @property
    def kind(self) -> str:
        """``"iqnet"`` (network on prepared images) or ``"features"`` (no-reference model on
        :mod:`rankiq.service.noref` features)."""
        return str(self.metadata.get("kind", "iqnet"))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Feature order of a ``"features"`` model (empty for IQ-Net models)."""
        return tuple(self.metadata.get("features", ()))

    @property
    def has_saliency(self) -> bool:
        # a features model explains its score with evidence maps (rankiq.service.noref)
        return self._saliency is not None or self.kind == "features"

    # -- inference -----------------------------------------------------------------------------
    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        want: tuple[int, ...] = (self.channels, *self.grid)
        if self.kind == "features":
            want = (len(self.feature_names),)
            if x.ndim != 2 or tuple(x.shape[1:]) != want:
                raise InvalidImage(f"model {self.name} expects features (N, {want[0]}), got "
                                   f"{tuple(x.shape)}")
            return np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise InvalidImage(f"model {self.name} expects network input (N, {want[0]}, "
                               f"{want[1]}, {want[2]}), got {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise InvalidImage(f"network input for model {self.name} contains NaN or Inf")
        return np.ascontiguousarray(x, dtype=np.float32)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Scores float32 ``(N,)`` of network inputs ``(N, C, H, W)``; lower is better."""
        x = self._check(x)
        out = [self._score.run(["score"], {"x": x[i:i + self.batch_size]})[0]
               for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def score_and_saliency(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``(N,)`` and saliency maps ``(N, C, H, W)`` (d score / d x)."""
        if self._saliency is None:
            raise SaliencyUnavailable(f"model {self.name} has no saliency graph")
        x = self._check(x)
        scores, maps = [], []
        for i in range(0, len(x), self.batch_size):
            s, g = self._saliency.run(["score", "saliency"], {"x": x[i:i + self.batch_size]})
            scores.append(s)
            maps.append(g)
        if not scores:
            return np.zeros(0, np.float32), np.zeros((0, *x.shape[1:]), np.float32)
        return np.concatenate(scores), np.concatenate(maps)

    def classify(self, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
        """Rank probabilities float64 ``(N, 3)``: (image 1 better, similar, image 2 better)."""
        return self.classifier.probabilities(s1, s2)


def load_models(models_dir: str | Path, *, threads: int = 1,
                providers: list[str] | None = None) -> dict[str, ScoringModel]:
    """Load every model directory (a folder with metadata.json) under ``models_dir``, by name.

    Raises:
        ModelNotFound: ``models_dir`` is missing or holds no model.
        ModelCorrupt: two models share a name, or any model fails its checks.
    """
    root = Path(models_dir)
    if not root.is_dir():
        raise ModelNotFound("models directory does not exist", source=str(root))
    models: dict[str, ScoringModel] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and (p / "metadata.json").exists()):
        m = ScoringModel.load(d, threads=threads, providers=providers)
        if m.name in models:
            raise ModelCorrupt(f"two models are named {m.name!r}", source=str(d))
        models[m.name] = m
    if not models:
        raise ModelNotFound("no model directories (with metadata.json) found", source=str(root))
    return models
