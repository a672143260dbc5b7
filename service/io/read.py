"""The public readers: :func:`read_series`, :func:`read_upload`, :func:`scan_instances`,
:func:`load_series` and :func:`group_instances`.

``read_series`` decodes every instance as it walks and groups frames by series; batch QA uses the
two-step form instead, ``scan_instances`` (header-only, streaming) then ``load_series`` per group,
so memory stays bounded by one series.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import replace

from rankiq.service.errors import (
    GeometryMismatch,
    HostileArchive,
    InputTooLarge,
    InvalidImage,
    NonImageInput,
    RankIQError,
    UnreadableInput,
    UnsupportedInput,
)
from rankiq.service.io.archive import (
    Entry,
    PathLike,
    cached_zip,
    failure_of,
    walk,
    walk_bytes,
)
from rankiq.service.io.dicom import (
    Frame,
    assemble,
    check_header,
    decode_instance,
    decoded_bytes,
    instance_key_of,
    instance_ref,
    read_dataset,
    series_key_of,
    shape_key,
    uid_of,
)
from rankiq.service.io.kspace import content_key, kspace_from_bytes, kspace_from_file, read_kspace
from rankiq.service.io.limits import DEFAULT_LIMITS, ReadLimits
from rankiq.service.io.privacy import display_name, quiet_reads
from rankiq.service.io.sniff import SNIFF_BYTES, sniff
from rankiq.service.io.types import ImageSeries, InstanceRef, ReadFailure, SeriesList

_ERRORS_BY_REASON: dict[str, type[RankIQError]] = {
    cls.reason: cls for cls in (UnsupportedInput, UnreadableInput, NonImageInput, InvalidImage,
                                GeometryMismatch, InputTooLarge, HostileArchive)
}


class SeriesTooLarge(InputTooLarge):
    """A series above ``max_slices``: refuses the whole read (not one file's failure)."""


class ReadBudget:
    """What one read (or one request, shared by its files) may still cost: decoded bytes,
    instances, series and wall-clock time (``limits.max_decoded_bytes``, ``max_instances``,
    ``max_series``, ``max_read_seconds``). Charged from headers, before decoding.

    Breaking it raises :class:`SeriesTooLarge` (an :class:`InputTooLarge`, 413), which refuses
    the whole read rather than one file.
    """

    def __init__(self, limits: ReadLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.decoded = 0
        self.instances = 0
        self.series: dict[str, int] = {}  # series key -> decoded bytes
        self.deadline = (None if limits.max_read_seconds is None
                         else time.monotonic() + limits.max_read_seconds)

    def tick(self, source: str) -> None:
        """Count one more file read; refuse past the instance count or the time budget."""
        self.instances += 1
        if self.instances > self.limits.max_instances:
            raise SeriesTooLarge(f"more than {self.limits.max_instances} files in one request",
                                 source=source)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise SeriesTooLarge(f"reading took longer than {self.limits.max_read_seconds:g} s "
                                 "(too many files or series in one request)", source=source)

    def charge(self, key: str, nbytes: int, source: str) -> None:
        """Charge ``nbytes`` decoded bytes to series ``key`` before they are decoded."""
        lim = self.limits
        if key not in self.series and len(self.series) >= lim.max_series:
            raise SeriesTooLarge(f"more than {lim.max_series} series in one request",
                                 source=source)
        self.series[key] = self.series.get(key, 0) + nbytes
        self.decoded += nbytes
        if self.series[key] > lim.max_series_bytes:
            raise SeriesTooLarge(f"series decodes to more than {lim.max_series_bytes} bytes",
                                 source=source)
        if self.decoded > lim.max_decoded_bytes:
            raise SeriesTooLarge(f"images decode to more than {lim.max_decoded_bytes} bytes "
                                 "in one request", source=source)


def error_of(failure: ReadFailure) -> RankIQError:
    """The typed error a failure stands for (its ``reason`` names the class)."""
    cls = _ERRORS_BY_REASON.get(failure.reason, UnreadableInput)
    return cls(failure.message, source=failure.source)


class _Collector:
    """Frames grouped by series (in order of first appearance), k-space series, failures."""

    def __init__(self, limits: ReadLimits, budget: ReadBudget | None = None) -> None:
        self.limits = limits
        self.budget = budget or ReadBudget(limits)
        self.groups: dict[str, list[Frame] | ImageSeries] = {}
        self.failures: list[ReadFailure] = []
        self.instances: set[str] = set()  # instance keys read: copies are read once

    def add_frames(self, key: str, frames: list[Frame]) -> None:
        group = self.groups.setdefault(key, [])
        assert isinstance(group, list)
        group.extend(frames)
        if len(group) > self.limits.max_slices:
            raise SeriesTooLarge(f"series has more than {self.limits.max_slices} slices",
                                 source=group[0].source)

    def add_series(self, series: ImageSeries) -> None:
        key = series.series_key
        while key in self.groups:  # the same k-space file given twice: keep both
            key += "+"
        self.groups[key] = series

    def add_entry(self, entry: Entry) -> None:
        """Read one entry; its problems become failures (budget breaches raise)."""
        self.budget.tick(entry.source)
        with quiet_reads(entry.source):
            self._add_entry(entry)

    def _add_entry(self, entry: Entry) -> None:
        try:
            if entry.kind == "hdf5":
                if entry.member is None:
                    series = read_kspace(entry.path or "", limits=self.limits)
                else:
                    data = entry.read_bytes(self.limits.max_entry_uncompressed)
                    series = kspace_from_bytes(data, entry.source, limits=self.limits)
                self.budget.charge(series.series_key, series.pixels.nbytes * 3, entry.source)
                self.add_series(series)
                return
            if entry.member is None:
                ds = read_dataset(entry.path, entry.source, header_only=False,
                                  limits=self.limits)
            else:
                data = entry.read_bytes(self.limits.max_entry_uncompressed)
                ds = read_dataset(io.BytesIO(data), entry.source, header_only=False,
                                  limits=self.limits)
            key = series_key_of(uid_of(ds), entry.source)
            instance = instance_key_of(ds)
            if not (instance and instance in self.instances):
                n = check_header(ds, entry.source, self.limits)
                self.budget.charge(key, decoded_bytes(int(ds.Rows), int(ds.Columns), n),
                                   entry.source)
            frames = decode_instance(ds, entry.source, self.limits)  # a broken copy still fails
            if instance and instance in self.instances:
                return  # a copy of an instance already read (same file twice, re-encoded)
            self.add_frames(key, frames)
            if instance:
                self.instances.add(instance)
        except SeriesTooLarge:
            raise
        except RankIQError as exc:
            self.failures.append(failure_of(exc, entry.source))
        except Exception as exc:  # noqa: BLE001 - hostile bytes break parsers in many ways
            self.failures.append(ReadFailure(entry.source, UnreadableInput.reason,
                                             f"cannot be read ({type(exc).__name__})"))

    def result(self) -> SeriesList:
        series: list[ImageSeries] = []
        for key, group in self.groups.items():
            if isinstance(group, ImageSeries):
                series.append(group)
                continue
            by_shape: dict[tuple[int, ...], list[Frame]] = {}
            for f in group:
                by_shape.setdefault(f.pixels.shape, []).append(f)
            for shape, frames in by_shape.items():
                k = key if len(by_shape) == 1 else shape_key(key, shape[0], shape[1])
                series.append(assemble(frames, k))
        return SeriesList(series, self.failures)


def read_series(paths: PathLike | Iterable[PathLike], *,
                limits: ReadLimits = DEFAULT_LIMITS,
                budget: ReadBudget | None = None) -> SeriesList:
    """Read every image series under ``paths``.

    Args:
        paths: a file (DICOM, fastMRI/ISMRMRD HDF5, zip), a directory (walked recursively) or a
            list of them. Content is sniffed; extensions are ignored.
        limits: size limits.
        budget: a :class:`ReadBudget` shared with other reads (default: a fresh one).

    Returns:
        :class:`SeriesList` of :class:`ImageSeries` (DICOM grouped by SeriesInstanceUID, slices
        ordered along the normal; one series per k-space file), in order of first appearance;
        ``.failures`` lists every unreadable file with its reason. A series mixing matrix sizes
        is split into one series per size.

    Raises:
        HostileArchive, InputTooLarge: a path named directly breaks a limit, or a series has
            more than ``limits.max_slices`` slices.
    """
    collector = _Collector(limits, budget)
    for item in walk(paths, limits):
        if isinstance(item, ReadFailure):
            collector.failures.append(item)
        else:
            collector.add_entry(item)
    return collector.result()


def read_upload(data: bytes, name: str, *, limits: ReadLimits = DEFAULT_LIMITS,
                budget: ReadBudget | None = None) -> SeriesList:
    """Read uploaded content (a DICOM file, an HDF5 k-space file or a zip of them).

    The kind is sniffed from the bytes; ``name`` (the upload's form field, or a file name that
    is then hashed: :func:`rankiq.service.io.privacy.display_name`) is only used in messages,
    its extension is never trusted. ``budget`` is shared by the files of one request.

    Raises:
        InputTooLarge: more than ``limits.max_bytes``.
        UnsupportedInput: not DICOM, HDF5 or zip.
        HostileArchive: a zip breaking an archive limit or with path-traversal names.
        RankIQError: a single file that cannot be read raises its error; a zip that yields
            no series raises the class of its first failure.
    """
    name = display_name(name)
    budget = budget or ReadBudget(limits)
    if len(data) > limits.max_bytes:
        raise InputTooLarge(f"{len(data)} bytes, above the limit of {limits.max_bytes}",
                            source=name)
    kind = sniff(data[:SNIFF_BYTES])
    if kind is None:
        raise UnsupportedInput("not DICOM, HDF5 k-space or a zip (content sniffed; the file "
                               "name's extension is ignored)", source=name)
    if kind == "hdf5":
        budget.tick(name)
        series = kspace_from_bytes(data, name, limits=limits)
        budget.charge(series.series_key, series.pixels.nbytes * 3, name)
        return SeriesList([series])
    if kind == "dicom":
        budget.tick(name)
        with quiet_reads(name):
            try:
                return _read_one_dicom(data, name, limits, budget)
            except RankIQError:
                raise
            except Exception as exc:  # noqa: BLE001 - hostile bytes break parsers many ways
                raise UnreadableInput(f"cannot be read ({type(exc).__name__})",
                                      source=name) from None
    collector = _Collector(limits, budget)
    for item in walk_bytes(data, name, limits):
        if isinstance(item, ReadFailure):
            collector.failures.append(item)
        else:
            collector.add_entry(item)
    result = collector.result()
    if not result:
        if result.failures:
            raise error_of(result.failures[0])
        raise UnreadableInput("zip holds no files", source=name)
    return result


def _read_one_dicom(data: bytes, name: str, limits: ReadLimits,
                    budget: ReadBudget) -> SeriesList:
    """One uploaded DICOM instance as a one-series list (charged to ``budget`` first)."""
    ds = read_dataset(io.BytesIO(data), name, header_only=False, limits=limits)
    key = series_key_of(uid_of(ds), name)
    n = check_header(ds, name, limits)
    budget.charge(key, decoded_bytes(int(ds.Rows), int(ds.Columns), n), name)
    frames = decode_instance(ds, name, limits)
    return SeriesList([assemble(frames, key)])


def scan_instances(paths: PathLike | Iterable[PathLike], *,
                   limits: ReadLimits = DEFAULT_LIMITS,
                   pool: Executor | None = None) -> Iterator[InstanceRef | ReadFailure]:
    """Stream header-only descriptions of every instance under ``paths``.

    DICOM headers are read with ``stop_before_pixels`` from a stream (zip members are never
    loaded whole); directories are walked lazily. One k-space file is one ``kind="hdf5"`` ref
    (its series key hashes the file, so it is read once). Unreadable or non-image inputs are
    yielded as :class:`ReadFailure`; the walk goes on.

    ``pool``: parse the headers in its processes, :data:`SCAN_CHUNK` entries per task, a few
    chunks ahead of the walk (the walk stays lazy); the items come in the same order as without.

    Raises:
        HostileArchive, InputTooLarge: a path named directly breaks a limit (met inside a
            directory, the same problem is yielded as a failure).
    """
    if pool is None:
        for item in walk(paths, limits):
            yield item if isinstance(item, ReadFailure) else describe_entry(item, limits)
        return
    ahead: deque[Future[list[InstanceRef | ReadFailure]]] = deque()
    chunk: list[Entry | ReadFailure] = []
    for item in walk(paths, limits):
        # the walk's open zip stays here (it cannot be pickled): a pool process opens its own
        chunk.append(item if isinstance(item, ReadFailure) else replace(item, zf=None))
        if len(chunk) >= SCAN_CHUNK:
            ahead.append(pool.submit(describe_entries, chunk, limits))
            chunk = []
            while len(ahead) > SCAN_AHEAD:
                yield from ahead.popleft().result()
    if chunk:
        ahead.append(pool.submit(describe_entries, chunk, limits))
    while ahead:
        yield from ahead.popleft().result()


#: entries per task of a parallel header walk, and tasks in flight ahead of the consumer
SCAN_CHUNK = 64
SCAN_AHEAD = 8


#: zips opened by :func:`describe_entries` in this process (:func:`cached_zip`): a pool
#: process keeps a few open across chunks, not one per chunk
_SCAN_ZIPS: dict[str, zipfile.ZipFile] = {}


def describe_entries(items: list[Entry | ReadFailure], limits: ReadLimits
                     ) -> list[InstanceRef | ReadFailure]:
    """:func:`describe_entry` of each entry (failures pass through); the task of a parallel
    header walk (zips stay open in the process for the next chunk)."""
    out: list[InstanceRef | ReadFailure] = []
    for item in items:
        if isinstance(item, ReadFailure):
            out.append(item)
            continue
        if item.member is not None and item.path is not None:
            item = replace(item, zf=cached_zip(_SCAN_ZIPS, item.path))  # None: reported below
        out.append(describe_entry(item, limits))
    return out


def describe_entry(item: Entry, limits: ReadLimits = DEFAULT_LIMITS
                   ) -> InstanceRef | ReadFailure:
    """The header-only :class:`InstanceRef` of one walked entry, or why it cannot be read."""
    try:
        if item.kind == "hdf5":
            key = content_key(item.path or "") if item.member is None else \
                content_key(item.read_bytes(limits.max_entry_uncompressed))
            return InstanceRef(source=item.source, path=item.path, member=item.member,
                               kind="hdf5", series_key=key, modality="MR", size=item.size)
        with quiet_reads(item.source), item.open() as fp:
            ds = read_dataset(fp, item.source, header_only=True, limits=limits)
            return instance_ref(ds, item.source, item.path, item.member, item.size, limits)
    except RankIQError as exc:
        return failure_of(exc, item.source)
    except Exception as exc:  # noqa: BLE001 - hostile bytes break parsers in many ways
        return ReadFailure(item.source, UnreadableInput.reason,
                           f"cannot be read ({type(exc).__name__})")


def group_instances(refs: Iterable[InstanceRef]) -> dict[str, list[InstanceRef]]:
    """Group refs into series exactly as :func:`read_series` does.

    Returns:
        ``{series key: refs}`` in order of first appearance; a series mixing matrix sizes is
        split, each part keyed like :func:`read_series` keys it. Pass the key to
        :func:`load_series` (``key=``) to get the same ``series_key``.
    """
    groups: dict[str, list[InstanceRef]] = {}
    seen: set[str] = set()
    for ref in refs:
        if ref.instance_key and ref.instance_key in seen:
            continue  # a copy of an instance already listed: read once, as read_series does
        seen.add(ref.instance_key)
        groups.setdefault(ref.series_key, []).append(ref)
    out: dict[str, list[InstanceRef]] = {}
    for key, group in groups.items():
        shapes = list(dict.fromkeys((r.rows, r.cols) for r in group))
        if len(shapes) == 1 or group[0].kind == "hdf5":
            out[key] = group
            continue
        for rows, cols in shapes:
            out[shape_key(key, rows, cols)] = [r for r in group if (r.rows, r.cols) == (rows,
                                                                                       cols)]
    return out


def load_series(refs: list[InstanceRef], *, limits: ReadLimits = DEFAULT_LIMITS,
                key: str | None = None,
                zips: dict[str, zipfile.ZipFile] | None = None) -> ImageSeries:
    """Pixels for one series found by :func:`scan_instances`.

    Args:
        refs: the refs of one series (one group of :func:`group_instances`), any order.
        limits: size limits.
        key: series key to report (default: the refs' ``series_key``).
        zips: open zips by path to reuse across calls (for huge archives, so the central
            directory is parsed once); zips opened here are closed before returning.

    Raises:
        ValueError: no refs, or refs of different series.
        RankIQError: any instance that cannot be read (strict: a series is all or nothing),
            :class:`InvalidImage` for mixed matrix sizes, :class:`InputTooLarge` for more
            than ``limits.max_slices`` slices.
    """
    if not refs:
        raise ValueError("load_series needs at least one InstanceRef")
    if len({r.series_key for r in refs}) != 1:
        raise ValueError("load_series got refs of more than one series")
    first = refs[0]
    if first.kind == "hdf5":
        if len(refs) != 1:
            raise ValueError("a k-space series is one file: pass one ref")
        if first.member is None:
            series = read_kspace(first.path or "", limits=limits)
        else:
            with zipfile.ZipFile(first.path or "") as zf, zf.open(first.member) as fp:
                data = fp.read(limits.max_entry_uncompressed + 1)
            if len(data) > limits.max_entry_uncompressed:
                raise InputTooLarge("zip entry above the per-entry limit", source=first.source)
            series = kspace_from_file(io.BytesIO(data), first.source, first.series_key,
                                      limits=limits)
        series.series_key = key or first.series_key
        return series
    if sum(r.frames for r in refs) > limits.max_slices:
        raise InputTooLarge(f"series has more than {limits.max_slices} slices",
                            source=first.source)
    size = sum(decoded_bytes(r.rows, r.cols, r.frames) for r in refs)
    if size > limits.max_series_bytes:
        raise InputTooLarge(f"series decodes to {size} bytes, above the "
                            f"{limits.max_series_bytes} byte limit of one series",
                            source=first.source)
    opened: dict[str, zipfile.ZipFile] = {}
    frames: list[Frame] = []
    try:
        for ref in refs:
            if ref.member is None:
                ds = read_dataset(ref.path, ref.source, header_only=False, limits=limits)
            else:
                path = ref.path or ""
                archive = (zips or {}).get(path) or opened.get(path)
                if archive is None:
                    archive = opened[path] = zipfile.ZipFile(path)
                try:
                    with archive.open(ref.member) as fp:
                        data = fp.read(limits.max_entry_uncompressed + 1)
                except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
                    raise UnreadableInput(f"zip entry cannot be read ({type(exc).__name__})",
                                          source=ref.source) from exc
                if len(data) > limits.max_entry_uncompressed:
                    raise InputTooLarge("zip entry above the per-entry limit", source=ref.source)
                ds = read_dataset(io.BytesIO(data), ref.source, header_only=False,
                                  limits=limits)
            with quiet_reads(ref.source):
                try:
                    frames.extend(decode_instance(ds, ref.source, limits))
                except RankIQError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one hostile file: unreadable
                    raise UnreadableInput(f"cannot be read ({type(exc).__name__})",
                                          source=ref.source) from None
    finally:
        for zf in opened.values():
            zf.close()
    return assemble(frames, key or first.series_key)
