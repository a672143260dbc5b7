"""Reference series mapped in to QA series (``rankiq qa --references FILE``).

Where a fully sampled / reference-quality acquisition of a series exists (a research archive, a
reconstruction study), QA scores the series against it with the reference model
(``models/iqnet-ref``), as the paper's IQ-Net was trained; every other series is scored by the
no-reference model. The file (JSON or YAML) maps series to reference paths::

    {"references": {"/archive/study1/series_004": "/refs/study1/series_004_full",
                    "9c1f0e7a2b3d4c5e": "/refs/other.zip"}}

(a flat mapping works too). A key is either an anonymised ``series_key`` (as in ``qa.csv``) or a
path: a series matches when its first instance's source (``file`` or ``archive.zip!member``)
lies under that path; the longest matching path wins. A reference path is anything
:func:`rankiq.service.io.read_series` reads and must hold exactly one series with the same geometry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankiq.service.qa.selection import RulesError, load_document

SERIES_KEY_LEN = 16


@dataclass(frozen=True)
class ReferenceMap:
    """Series -> reference path.

    Attributes:
        by_key: ``series_key`` -> reference path.
        by_prefix: ``(resolved path prefix, reference path)``, longest prefix first.
    """

    by_key: dict[str, str]
    by_prefix: tuple[tuple[str, str], ...]

    def lookup(self, series_key: str, first_source: str | None) -> str | None:
        """The reference path of a series, or ``None`` when none is mapped."""
        if series_key in self.by_key:
            return self.by_key[series_key]
        if first_source:
            src, sep, member = first_source.partition("!")  # "archive.zip!member" in a zip
            full = str(Path(src).resolve()) + sep + member
            for prefix, ref in self.by_prefix:
                if full == prefix or full.startswith((prefix.rstrip("/") + "/", prefix + "!")):
                    return ref
        return None

    def fingerprint(self) -> str:
        """Short hash of the mapping (stored in the QA journal: a resumed run must match)."""
        doc = json.dumps({"k": self.by_key, "p": self.by_prefix}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _is_series_key(key: str) -> bool:
    return len(key) == SERIES_KEY_LEN and all(c in "0123456789abcdef" for c in key)


def load_reference_map(path: str | Path | None) -> ReferenceMap | None:
    """Read a reference map file; ``None`` when no file is given.

    Raises:
        RulesError: not a mapping of strings, or a reference path that does not exist (the
            message names the file and the entry).
    """
    if path is None:
        return None
    doc: Any = load_document(path)
    if isinstance(doc, dict) and "references" in doc:
        doc = doc["references"]
    if not isinstance(doc, dict) or not doc:
        raise RulesError(f"{path}: expected a mapping series (key or path) -> reference path")
    by_key: dict[str, str] = {}
    prefixes: list[tuple[str, str]] = []
    for key, ref in doc.items():
        if not isinstance(key, str) or not isinstance(ref, str) or not key or not ref:
            raise RulesError(f"{path}: entries must map a series key or path to a reference "
                             f"path (both strings), not {key!r}: {ref!r}")
        if not Path(ref).exists():
            raise RulesError(f"{path}: reference {ref!r} (for {key!r}) does not exist")
        if _is_series_key(key):
            by_key[key] = ref
        else:
            prefixes.append((str(Path(key).resolve()), ref))
    prefixes.sort(key=lambda p: len(p[0]), reverse=True)
    return ReferenceMap(by_key, tuple(prefixes))
