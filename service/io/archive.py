"""Walk files, directories and zips safely, one entry at a time.

Nothing is extracted to disk and nothing is loaded whole: a directory is walked lazily
(``os.walk``, sorted per folder, symlinked folders not followed so loops cannot occur) and a zip
is read from its central directory, each member streamed when it is opened. That keeps
:func:`rankiq.service.io.scan_instances` streaming over archives of millions of files.

Policy (also in the README, "Reading images"):

* A zip is checked before any member is read: entry count, every declared uncompressed size,
  their total, the compression ratio of every entry (entries under ``ratio_check_min_bytes``
  excepted: their inflated size is bounded by that floor), and every member name (absolute paths,
  ``..`` components, drive letters, NUL bytes are path traversal). Breaking one refuses the whole
  archive (:class:`HostileArchive`). A file above ``max_bytes`` is :class:`InputTooLarge`.
* An input named directly (a path argument, an upload) that breaks a limit raises. The same
  problem met while walking a directory becomes a :class:`ReadFailure`, so one bad file cannot
  hide the rest of a folder.
* Zips inside zips are not opened (reported as unsupported): no recursive bombs.
* Names shown (``Entry.source``, failures) are display names
  (:mod:`rankiq.service.io.privacy`): a hash of the path, a zip member's index and a hash of its
  name. The real path and member name stay in ``path`` / ``member`` for reading only.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from rankiq.service.errors import (
    HostileArchive,
    InputTooLarge,
    RankIQError,
    UnreadableInput,
    UnsupportedInput,
)
from rankiq.service.io.limits import ReadLimits
from rankiq.service.io.privacy import display_name, member_name
from rankiq.service.io.sniff import SNIFF_BYTES, Kind, sniff
from rankiq.service.io.types import ReadFailure

PathLike = str | os.PathLike[str]
_DRIVE = re.compile(r"^[A-Za-z]:")
_SKIPPED_PREFIXES = ("__MACOSX/",)  # macOS resource forks: never images


@dataclass(frozen=True)
class Entry:
    """One file to read: a file on disk or a zip member.

    Attributes:
        source: display name (``path`` or ``archive.zip!member``), used in messages.
        path: file on disk (the zip for members), ``None`` for an in-memory zip.
        member: zip member name or ``None``.
        size: bytes (declared uncompressed size for members).
        kind: sniffed content kind (``"dicom"`` or ``"hdf5"``).
        zf: the open zip while walking it (not part of equality).
    """

    source: str
    path: str | None
    member: str | None
    size: int
    kind: Kind
    zf: zipfile.ZipFile | None = field(default=None, compare=False, repr=False)

    def open(self) -> IO[bytes]:
        """A binary stream of the content (streams zip members; the caller closes it)."""
        if self.member is None:
            assert self.path is not None
            return open(self.path, "rb")  # noqa: SIM115 - returned to the caller
        zf = self.zf if self.zf is not None else zipfile.ZipFile(self.path or "")
        return zf.open(self.member)

    def read_bytes(self, limit: int) -> bytes:
        """The whole content, refusing more than ``limit`` bytes (a lying zip header included)."""
        with self.open() as fp:
            data = fp.read(limit + 1)
        if len(data) > limit:
            raise InputTooLarge(f"larger than the {limit} byte limit", source=self.source)
        return data


def cached_zip(cache: dict[str, zipfile.ZipFile], path: str, *, keep: int = 4
               ) -> zipfile.ZipFile | None:
    """The zip at ``path`` from ``cache`` (a process's open zips, by path), opened and added if
    absent, the oldest closed beyond ``keep``: a huge zip's central directory is parsed once
    per process. ``None`` when it cannot be opened (the reader of the member reports why)."""
    if path not in cache:
        while len(cache) >= keep:
            cache.pop(next(iter(cache))).close()
        try:
            cache[path] = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile):
            return None
    return cache[path]


def failure_of(exc: RankIQError, source: str) -> ReadFailure:
    """A :class:`ReadFailure` for an error, its message without the ``source:`` prefix."""
    msg = str(exc)
    if exc.source and msg.startswith(f"{exc.source}: "):
        msg = msg[len(exc.source) + 2 :]
    return ReadFailure(source=exc.source or source, reason=exc.reason, message=msg)


def _unsafe_name(name: str) -> bool:
    """Whether a zip member name could escape an extraction folder (path traversal)."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or _DRIVE.match(norm) or "\x00" in norm:
        return True
    return ".." in norm.split("/")


def check_zip(zf: zipfile.ZipFile, source: str, limits: ReadLimits) -> list[zipfile.ZipInfo]:
    """Validate a zip's central directory; return its file members (folders skipped).

    Raises:
        HostileArchive: too many entries, path traversal, a declared size, total or ratio
            above the limits.
    """
    infos = zf.infolist()
    if len(infos) > limits.max_zip_entries:
        raise HostileArchive(
            f"zip lists {len(infos)} entries, above the limit of {limits.max_zip_entries}",
            source=source,
        )
    total = 0
    members = []
    for i, info in enumerate(infos):
        if _unsafe_name(info.filename):
            # the name itself is attacker-controlled: say which entry, not what it claims
            raise HostileArchive(
                f"zip entry #{i + 1} has an unsafe name (absolute path or '..': path traversal)",
                source=source,
            )
        if info.file_size > limits.max_entry_uncompressed:
            raise HostileArchive(
                f"zip entry #{i + 1} declares {info.file_size} uncompressed bytes, above the "
                f"per-entry limit of {limits.max_entry_uncompressed} (zip bomb?)",
                source=source,
            )
        if (
            info.file_size > limits.ratio_check_min_bytes
            and info.file_size > limits.max_compression_ratio * max(info.compress_size, 1)
        ):
            raise HostileArchive(
                f"zip entry #{i + 1} expands {info.file_size / max(info.compress_size, 1):.0f}x, "
                f"above the ratio limit of {limits.max_compression_ratio:.0f}x (zip bomb?)",
                source=source,
            )
        total += info.file_size
        if total > limits.max_total_uncompressed:
            raise HostileArchive(
                f"zip expands to more than {limits.max_total_uncompressed} bytes in total "
                "(zip bomb?)",
                source=source,
            )
        if not info.is_dir() and not info.filename.startswith(_SKIPPED_PREFIXES):
            members.append(info)
    return members


def open_zip(file: PathLike | BinaryIO, source: str, limits: ReadLimits,
             ) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """Open and validate a zip (see :func:`check_zip`); the caller closes it."""
    try:
        zf = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise UnreadableInput(
            f"zip cannot be opened (truncated or corrupt: {type(exc).__name__})", source=source
        ) from exc
    try:
        return zf, check_zip(zf, source, limits)
    except BaseException:
        zf.close()
        raise


def iter_zip(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], source: str,
             path: str | None) -> Iterator[Entry | ReadFailure]:
    """Entries of an open, validated zip; unreadable or unsupported members become failures."""
    position = {id(info): i + 1 for i, info in enumerate(zf.infolist())}
    for info in members:
        name = member_name(source, position.get(id(info), 0), info.filename)
        if info.flag_bits & 0x1:
            yield ReadFailure(name, UnreadableInput.reason, "encrypted zip entry")
            continue
        try:
            with zf.open(info) as fp:
                head = fp.read(SNIFF_BYTES)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            yield ReadFailure(name, UnreadableInput.reason,
                              f"zip entry cannot be read (corrupt: {type(exc).__name__})")
            continue
        kind = sniff(head)
        if kind is None:
            yield ReadFailure(name, UnsupportedInput.reason,
                              "not DICOM or HDF5 k-space (content sniffed)")
        elif kind == "zip":
            yield ReadFailure(name, UnsupportedInput.reason,
                              "zip inside a zip: nested archives are not opened")
        else:
            yield Entry(name, path, info.filename, info.file_size, kind, zf)


def _sniff_file(path: str) -> Kind | None:
    with open(path, "rb") as fp:
        return sniff(fp.read(SNIFF_BYTES))


def _walk_file(path: str, limits: ReadLimits, named: bool) -> Iterator[Entry | ReadFailure]:
    """Entries of one file (a zip's members for a zip); ``named``: given directly (raise)."""
    shown = display_name(path)
    try:
        size = os.path.getsize(path)
        kind = _sniff_file(path)
    except OSError as exc:
        yield ReadFailure(shown, UnreadableInput.reason,
                          f"cannot be read ({exc.strerror or type(exc).__name__})")
        return
    try:
        if size > limits.max_bytes:
            raise InputTooLarge(f"{size} bytes, above the limit of {limits.max_bytes}",
                                source=shown)
        if kind == "zip":
            zf, members = open_zip(path, shown, limits)
        elif kind is None:
            raise UnsupportedInput("not DICOM, HDF5 k-space or a zip (content sniffed)",
                                   source=shown)
    except (HostileArchive, InputTooLarge) as exc:
        if named:
            raise
        yield failure_of(exc, shown)
        return
    except RankIQError as exc:
        yield failure_of(exc, shown)
        return
    if kind != "zip":
        yield Entry(shown, path, None, size, kind)
        return
    with zf:
        yield from iter_zip(zf, members, shown, path)


def _folder_failures(errors: list[OSError]) -> Iterator[ReadFailure]:
    while errors:
        exc = errors.pop(0)
        yield ReadFailure(display_name(str(exc.filename)), UnreadableInput.reason,
                          f"folder cannot be listed ({exc.strerror or type(exc).__name__})")


def walk(paths: PathLike | Iterable[PathLike], limits: ReadLimits) -> Iterator[Entry | ReadFailure]:
    """Every readable entry under ``paths`` (files, directories recursively, zips), lazily.

    Yields :class:`Entry` for DICOM and HDF5 content and :class:`ReadFailure` for anything
    unreadable or unsupported. Raises :class:`HostileArchive` / :class:`InputTooLarge` for a
    named path that breaks a limit (see the module docstring).
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    for p in paths:
        path = os.fspath(p)
        if os.path.isdir(path):
            errors: list[OSError] = []  # folders that cannot be listed: reported, not fatal
            for root, dirs, files in os.walk(path, followlinks=False, onerror=errors.append):
                yield from _folder_failures(errors)
                dirs.sort()
                for name in sorted(files):
                    yield from _walk_file(os.path.join(root, name), limits, named=False)
            yield from _folder_failures(errors)
        elif os.path.exists(path):
            yield from _walk_file(path, limits, named=True)
        else:
            yield ReadFailure(display_name(path), UnreadableInput.reason,
                              "no such file or directory")


def walk_bytes(data: bytes, name: str, limits: ReadLimits) -> Iterator[Entry | ReadFailure]:
    """Entries of an uploaded zip held in memory (validated first; breaches raise)."""
    zf, members = open_zip(io.BytesIO(data), name, limits)
    with zf:
        yield from iter_zip(zf, members, name, None)
