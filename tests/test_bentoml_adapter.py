"""service.bentoml_adapter: BentoML internals behind a version check."""

from __future__ import annotations

import pytest
from rankiq.service.bentoml_adapter import (
    UnsupportedBentoML,
    check_version,
    http_metrics_middleware,
    worker_index,
)


def test_installed_version_is_supported_and_others_are_refused():
    import bentoml

    assert check_version() == bentoml.__version__
    assert check_version("1.4.0") == "1.4.0"
    for other in ("1.5.0", "2.0.1", "1.3.9", "nightly"):
        with pytest.raises(UnsupportedBentoML, match="BentoML"):
            check_version(other)


def test_accessors_reach_the_internals():
    assert worker_index() is None  # not inside a server
    assert callable(http_metrics_middleware().__call__)
