"""Atomic file writes: the one write-to-a-temporary-file-then-rename of RankIQ.

A reader (a resumed run, a polling client, another worker) sees either the previous file or the
complete new one, never half a file: the content goes to a uniquely named temporary file in the
same folder (so concurrent writers never share it), is flushed to disk, and replaces the target
with ``os.replace`` (atomic on POSIX and Windows within one file system). A write that fails
leaves the target as it was and removes its temporary file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_write", "write_json", "write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that needs a file name (``np.savez``,
    ``torch.save``); it replaces ``path`` when the block ends without an exception.

    The temporary name keeps ``path``'s suffix, so libraries that add one (``np.savez``) do
    not rename it.
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                suffix=f".tmp{target.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing (``mode`` ``"w"`` or ``"wb"``); it replaces ``path``
    when the block ends without an exception, after being flushed to disk."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp:
        if mode == "wb":
            fh: IO[Any] = open(tmp, "wb")  # noqa: SIM115 - closed below
        else:
            fh = open(tmp, "w", encoding=encoding, newline=newline)  # noqa: SIM115
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as fh:
        fh.write(text)


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2,
               sort_keys: bool = False, allow_nan: bool = False) -> None:
    """Write ``obj`` as JSON (and a final newline) to ``path`` atomically.

    ``allow_nan=False`` (the default) refuses NaN and infinities, which strict JSON readers
    cannot parse; pass ``True`` for files only RankIQ reads back.
    """
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys,
                                allow_nan=allow_nan) + "\n")
