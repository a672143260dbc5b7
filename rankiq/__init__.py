"""RankIQ: a learned MRI image-quality metric, served on ONNX Runtime.

The public API (everything else is reachable under :mod:`rankiq.service` and
:mod:`rankiq.training`, but may change between versions)::

    import rankiq
    series = rankiq.read_series("scan/")            # DICOM files, a folder, a zip or k-space
    result = rankiq.score(series)                   # no reference: the no-reference model
    result.median, result.flagged, result.in_range  # lower is better

    rankiq.score(image, reference=truth)            # numpy (H, W) or (S, H, W) arrays work too
    rankiq.compare(a, b).probabilities              # (a better, similar, b better)
    model = rankiq.load_model("iqnet-ref")          # a shipped model by name, or a directory
    loss = rankiq.IQNetLoss(...)                    # only with the ``train`` extra (torch)

Scores are lower-is-better distances from a clean acquisition, on one scale for every contrast
and matrix size; see ``docs/scores.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

__version__ = "0.2.0"
__all__ = ["IQNetLoss", "compare", "load_model", "read_series", "score", "__version__"]

if TYPE_CHECKING:
    from rankiq.service.io.types import ImageSeries
    from rankiq.service.models import ScoringModel
    from rankiq.service.scoring import Comparison, SeriesScore

_LOADED: dict[tuple[str, str], ScoringModel] = {}


def read_series(paths: Any) -> ImageSeries:
    """Read one image series from DICOM files, a folder, a zip, or fastMRI/ISMRMRD k-space.

    Raises:
        rankiq.service.errors.RankIQError: unreadable input, or more than one series (use
            :func:`rankiq.service.io.read_series` for several).
    """
    from rankiq.service.io import read_series as _read
    from rankiq.service.scoring import MultipleSeries

    found = _read(paths)
    if not found:
        from rankiq.service.io import error_of

        if found.failures:
            raise error_of(found.failures[0])
        from rankiq.service.errors import InvalidImage

        raise InvalidImage("no image series found")
    if len(found) > 1:
        raise MultipleSeries(f"{len(found)} series found where one is expected")
    return found[0]


def load_model(name: str | Path = "iqnet-noref", *, threads: int = 1) -> ScoringModel:
    """A shipped model by name (``"iqnet-ref"``, ``"iqnet-noref"``) or a model directory.

    Models are cached per process: loading the same one twice returns the same object.
    """
    from rankiq.service.models import ScoringModel
    from rankiq.service.settings import ServiceSettings

    path = Path(name)
    if not path.is_dir():
        path = ServiceSettings.from_env().models_dir / str(name)
    key = (str(path.resolve()), str(threads))
    if key not in _LOADED:
        _LOADED[key] = ScoringModel.load(path, threads=threads)
    return _LOADED[key]


def _as_series(x: Any) -> ImageSeries:
    from rankiq.service.io.types import ImageSeries

    if isinstance(x, ImageSeries):
        return x
    if isinstance(x, np.ndarray):
        return ImageSeries.from_array(x)
    return read_series(x)


def score(image: Any, reference: Any = None, *, model: str | Path | ScoringModel | None = None,
          saliency: bool = False) -> SeriesScore:
    """Score an image (a path, an :class:`ImageSeries` or a numpy ``(H, W)``/``(S, H, W)``
    array, magnitude or complex), against ``reference`` when given. Lower is better.

    ``model`` defaults to ``iqnet-ref`` with a reference and ``iqnet-noref`` without.
    """
    from rankiq.service.scoring import score_series

    m = _model(model, reference is not None)
    ref = None if reference is None else _as_series(reference)
    return score_series(m, _as_series(image), ref, saliency=saliency)


def compare(a: Any, b: Any, reference: Any = None, *,
            model: str | Path | ScoringModel | None = None) -> Comparison:
    """Score ``a`` and ``b`` with one model and return the rank classifier's verdict."""
    from rankiq.service.scoring import compare_series

    m = _model(model, reference is not None)
    ref = None if reference is None else _as_series(reference)
    return compare_series(m, _as_series(a), _as_series(b), ref)


def _model(model: str | Path | ScoringModel | None, reference: bool) -> ScoringModel:
    from rankiq.service.models import ScoringModel

    if isinstance(model, ScoringModel):
        return model
    if model is None:
        model = "iqnet-ref" if reference else "iqnet-noref"
    return load_model(model)


def __getattr__(name: str) -> Any:
    # torch is optional (the ``train`` extra): IQNetLoss is imported only when asked for.
    if name == "IQNetLoss":
        try:
            from rankiq.training.losses import IQNetLoss
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise AttributeError("rankiq.IQNetLoss needs torch: pip install 'rankiq[train]'"
                                 ) from exc
        return IQNetLoss
    raise AttributeError(f"module 'rankiq' has no attribute {name!r}")
