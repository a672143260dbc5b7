"""Names and library diagnostics that are safe to show: nothing a client or a file supplied.

* :func:`display_name` replaces a path or upload name by a short hash (``file-1a2b3c4d5e``), and
  :func:`member_name` a zip member by its 1-based position in the archive plus a hash of its
  name (``file-1a2b3c4d5e!3-9f8e7d6c``): file and member names often carry patient names or IDs
  (``DOE_JANE/PHI-123456/slice1.dcm``). The hash is SHA-256 of the name as given, so an
  operator can find the file (``printf %s NAME | sha256sum``) without the name being printed.
* :func:`quiet_reads` captures what pydicom, h5py and numpy report while a file is read (Python
  warnings and the ``pydicom`` logger both quote raw element values: a malformed PatientName is
  echoed byte for byte) and reduces each to a bounded reason code, logged as one line without
  any value.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import warnings
from collections import Counter
from collections.abc import Iterator

log = logging.getLogger("rankiq.io")

#: Reason codes of library diagnostics (anything else is ``"other"``).
WARNING_REASONS: dict[str, str] = {
    "invalid value for vr": "invalid_vr_value",
    "vr": "vr_mismatch",
    "character set": "charset",
    "encoding": "charset",
    "decode": "charset",
    "length": "odd_length",
    "pixel data": "pixel_data",
    "transfer syntax": "transfer_syntax",
    "preamble": "no_preamble",
    "file meta": "file_meta",
    "tag": "tag",
    "deprecat": "deprecation",
    "overflow": "overflow",
    "invalid value encountered": "float_invalid",
}
_PATTERNS = [(re.compile(re.escape(k)), v) for k, v in WARNING_REASONS.items()]


def _hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def display_name(name: str) -> str:
    """A file path or upload name as shown in messages, reports and logs: ``file-<10 hex>``.

    Upload form fields (``image``, ``reference``...) are the service's own words and stay as
    they are; anything else is hashed.
    """
    if name in {"image", "reference", "image_a", "image_b"} or re.fullmatch(r"files\[\d+\]",
                                                                            name):
        return name
    if re.fullmatch(r"file-[0-9a-f]{10}", name):
        return name  # already a display name
    return f"file-{_hash(name, 10)}"


def member_name(archive: str, index: int, member: str) -> str:
    """A zip member's display name: ``<archive display name>!<index>-<8 hex of the name>``.

    Args:
        archive: the zip's display name (see :func:`display_name`).
        index: 1-based position of the member in the zip's central directory.
        member: the member's name in the archive (hashed, never shown).
    """
    return f"{archive}!{index}-{_hash(member, 8)}"


def description_label(description: str | None) -> str:
    """A SeriesDescription as shown in outputs: ``desc-<8 hex>`` (``""`` when empty).

    Free text typed at the scanner may name the patient, so outputs carry SHA-256 of the
    description case-folded with whitespace collapsed: the hash that the QA protocol key
    (:func:`rankiq.service.qa.aggregate.protocol_key`) groups series by, so a label can be
    matched to its protocol group and series named alike share it.
    """
    text = " ".join(str(description or "").casefold().split())
    return f"desc-{hashlib.sha256(text.encode()).hexdigest()[:8]}" if text else ""


def reason_of(message: str) -> str:
    """The bounded reason code of a library diagnostic (its text is never kept)."""
    low = message.lower()
    for pattern, code in _PATTERNS:
        if pattern.search(low):
            return code
    return "other"


class _Capture(logging.Handler):
    """Collects ``pydicom`` log records of the reading thread as reason codes."""

    def __init__(self, sink: Counter[str], thread: int) -> None:
        super().__init__(level=logging.DEBUG)
        self.sink = sink
        self.thread = thread

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and record.levelno >= logging.WARNING:
            self.sink[f"pydicom:{reason_of(record.getMessage())}"] += 1


_LIB_LOGGERS = ("pydicom", "h5py")
_lock = threading.Lock()
_active = 0


@contextlib.contextmanager
def quiet_reads(source: str) -> Iterator[Counter[str]]:
    """Capture library warnings and log records while reading ``source`` (a display name).

    Yields the counter of reason codes; on exit, logs one line ``read diagnostics <source>:
    code x n, ...`` at INFO when anything was captured. The libraries' own loggers are kept from
    printing (their messages quote element values) for as long as a read is in progress.
    """
    global _active
    sink: Counter[str] = Counter()
    handler = _Capture(sink, threading.get_ident())
    loggers = [logging.getLogger(n) for n in _LIB_LOGGERS]
    with _lock:
        _active += 1
        for lg in loggers:
            lg.addHandler(handler)
            lg.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield sink
        for w in caught:
            sink[f"{w.category.__name__}:{reason_of(str(w.message))}"] += 1
    finally:
        with _lock:
            _active -= 1
            for lg in loggers:
                lg.removeHandler(handler)
                if _active == 0:
                    lg.propagate = True
        if sink:
            log.info("read diagnostics %s: %s", source,
                     ", ".join(f"{k} x{v}" for k, v in sorted(sink.items())))


def silence_library_loggers() -> None:
    """Keep ``pydicom`` and ``h5py`` log records out of a process's logs for good (the service
    calls this at start): their messages may quote element values."""
    for name in _LIB_LOGGERS:
        lg = logging.getLogger(name)
        lg.propagate = False
        lg.handlers = [logging.NullHandler()]
