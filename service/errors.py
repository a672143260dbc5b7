"""Typed errors for bad input.

Every message names the file (by its path or upload field name) and the problem, never a patient
identifier. The HTTP layer maps each class to a status code (``http_status``) and the CLI to a
one-line message and a non-zero exit code.
"""

from __future__ import annotations


class RankIQError(Exception):
    """Base class of every error RankIQ reports to a user."""

    http_status: int = 422
    reason: str = "invalid_input"  # bounded label for metrics (never file names or UIDs)

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class UnsupportedInput(RankIQError):
    """The content is not a kind RankIQ reads (not DICOM, HDF5 k-space or zip)."""

    http_status = 415
    reason = "unsupported"


class UnreadableInput(RankIQError):
    """The content claims a supported kind but cannot be decoded (truncated, corrupt)."""

    http_status = 422
    reason = "unreadable"


class NonImageInput(RankIQError):
    """A readable object that holds no image (DICOM SR, RT, presentation state, ...)."""

    http_status = 422
    reason = "non_image"


class InvalidImage(RankIQError):
    """Pixel data that cannot be scored: NaN/Inf, absurd or inconsistent dimensions."""

    http_status = 422
    reason = "invalid_image"


class GeometryMismatch(RankIQError):
    """Image and reference do not share a geometry (slices, rows, columns)."""

    http_status = 422
    reason = "geometry_mismatch"


class InputTooLarge(RankIQError):
    """Input above a stated limit (bytes, slices, pixels, zip entries): refused, never truncated."""

    http_status = 413
    reason = "too_large"


class HostileArchive(RankIQError):
    """A zip that looks like an attack: path traversal, zip bomb, too many entries."""

    http_status = 422
    reason = "hostile_archive"


class MissingDependency(RankIQError):
    """A command needs an optional dependency (e.g. torch for training) that is not installed."""

    http_status = 500
    reason = "missing_dependency"


class UnsupportedModality(InvalidImage):
    """A readable image of a modality the models were not trained on (CT, CR, US, ...)."""

    http_status = 422
    reason = "unsupported_modality"


class UnsupportedPhotometric(InvalidImage):
    """A colour image (PALETTE COLOR, RGB, YBR...): MR images are greyscale."""

    http_status = 422
    reason = "unsupported_photometric"
