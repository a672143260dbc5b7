"""A hostile-input corpus for the HTTP service, generated from a fixed seed (nothing binary is
committed): byte-mutated DICOMs, bombs of each kind (deflate, RLE frames, zip ratio, zip of many
tiny series, HDF5 fill value), malformed multipart bodies, long and odd file names, and the
marker string of :mod:`test_service_hardening` in every identifying element and name.

:func:`hostile_cases` builds the cases, :func:`send` posts one and reports its status and time;
``tests/fuzz_service.py`` (``make fuzz``) runs thousands, ``test_service_fuzz.py`` a short
version in ``make test``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import requests
from helpers_io import dicom_bytes, mr_dataset, uid
from rankiq.service.bombs import bombs as service_bombs
from test_service_hardening import MARKER, marked_slice, marked_zip

ROUTES = ("/score", "/compare", "/qa/submit")


@dataclass
class Case:
    """One request: multipart ``parts`` ``(field, filename, bytes)`` or a ``raw`` body sent
    with ``content_type``."""

    name: str
    route: str
    parts: list[tuple[str, str | None, bytes]] = field(default_factory=list)
    raw: bytes | None = None
    content_type: str = ""


def bombs() -> dict[str, bytes]:
    """One small file per bomb kind (each a few kB; decoded, each would cost a worker GiBs):
    :func:`rankiq.service.bombs.bombs` with the marker, and a NumberOfFrames=0 file."""
    return {**service_bombs(MARKER), "frames_zero": _frames_zero()}


def _frames_zero() -> bytes:
    ds = mr_dataset(np.ones((16, 16)), series_uid=uid("frames0"))
    ds.NumberOfFrames = 0
    return dicom_bytes(ds)


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption: flipped bytes, a truncation, a duplicated or deleted chunk, or
    a header length field overwritten with large values."""
    b = bytearray(data)
    kind = int(rng.integers(5))
    if kind == 0:
        for _ in range(int(rng.integers(1, 16))):
            b[int(rng.integers(len(b)))] = int(rng.integers(256))
    elif kind == 1:
        b = b[: int(rng.integers(1, len(b)))]
    elif kind == 2:
        i, n = int(rng.integers(len(b))), int(rng.integers(1, 512))
        b[i:i] = b[i:i + n] * int(rng.integers(1, 4))
    elif kind == 3:
        i = int(rng.integers(len(b)))
        del b[i:i + int(rng.integers(1, 256))]
    else:  # the header region (tags, VRs and lengths) gets 0xFF runs
        i = int(rng.integers(128, min(len(b), 1200)))
        b[i:i + 4] = b"\xff\xff\xff\x7f"
    return bytes(b)


def malformed() -> list[Case]:
    """Broken multipart bodies and request shapes."""
    good = marked_slice()
    bnd = "xXx"
    part = (f"--{bnd}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{MARKER}.dcm\"\r\n\r\n").encode() + good + f"\r\n--{bnd}--\r\n".encode()
    mp = f"multipart/form-data; boundary={bnd}"
    return [
        Case("no-boundary", "/score", raw=part, content_type="multipart/form-data"),
        Case("truncated", "/score", raw=part[: len(part) // 2], content_type=mp),
        Case("no-end", "/score", raw=part[:-8], content_type=mp),
        Case("json", "/score", raw=b'{"image": "' + MARKER.encode() + b'"}',
             content_type="application/json"),
        Case("empty", "/score", raw=b"", content_type=mp),
        Case("garbage", "/score", raw=bytes(range(256)) * 4, content_type=mp),
        Case("no-name", "/score", raw=part.replace(b'name="image"; ', b""), content_type=mp),
        Case("huge-header", "/score", raw=part.replace(
            b"Content-Disposition", b"X-" + b"a" * 20000 + b": b\r\nContent-Disposition"),
            content_type=mp),
        Case("text-value", "/score", parts=[("image", None, MARKER.encode())]),
        Case("unknown-field", "/score", parts=[(MARKER, "a.dcm", good)]),
        Case("twice", "/score", parts=[("image", "a", good), ("image", "b", good)]),
        Case("missing", "/compare", parts=[("image_a", "a", good)]),
        Case("long-name", "/score", parts=[("image", f"{MARKER}" + "x" * 400, good)]),
        Case("utf8-name", "/score", parts=[("image", f"{MARKER}-\u00e9\u4e2d\U0001f600.dcm",
                                            good)]),
        Case("path-name", "/score", parts=[("image", f"../../{MARKER}/../etc/passwd", good)]),
        Case("nul-name", "/score", parts=[("image", f"{MARKER}\x00.dcm", good)]),
        Case("bad-flag", "/score", parts=[("image", "a", good), ("saliency", None, b"maybe")]),
        Case("qa-text", "/qa/submit", parts=[("files", None, b"not a file")]),
        Case("qa-empty-file", "/qa/submit", parts=[("files", "e", b"")]),
    ]


def hostile_cases(seed: int = 12, mutated: int = 60) -> list[Case]:
    """The corpus: valid marked inputs, every bomb on every route, malformed requests and
    ``mutated`` byte-mutated DICOMs and zips (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    one, series = marked_slice(), marked_zip(3)
    cases = [Case("valid", "/score", parts=[("image", f"{MARKER}.dcm", one)]),
             Case("valid-zip", "/score", parts=[("image", f"{MARKER}.zip", series)]),
             Case("valid-compare", "/compare", parts=[("image_a", f"{MARKER}a", one),
                                                      ("image_b", f"{MARKER}b", one)]),
             Case("valid-qa", "/qa/submit", parts=[("files", f"{MARKER}.zip", series)])]
    for kind, data in bombs().items():
        cases += [Case(f"bomb-{kind}", "/score", parts=[("image", f"{MARKER}-{kind}", data)]),
                  Case(f"bomb-{kind}-ref", "/score", parts=[("image", "a", one),
                                                            ("reference", "r", data)]),
                  Case(f"bomb-{kind}-qa", "/qa/submit", parts=[("files", MARKER, data)])]
    cases += malformed()
    sources = [one, series, marked_zip(2, truncated=True)]
    for i in range(mutated):
        base = sources[int(rng.integers(len(sources)))]
        data = mutate(base, rng)
        route = "/qa/submit" if i % 10 == 9 else "/score"
        fieldname = "files" if route == "/qa/submit" else "image"
        cases.append(Case(f"mutated-{i}", route, parts=[(fieldname, f"{MARKER}-{i}", data)]))
    return cases


def send(url: str, case: Case, headers: dict[str, str], timeout: float = 300
         ) -> tuple[int, float, str]:
    """POST one case; returns ``(status, seconds, body text)``."""
    t0 = time.perf_counter()
    if case.raw is not None:
        r = requests.post(url + case.route, data=case.raw, timeout=timeout,
                          headers={**headers, "Content-Type": case.content_type})
    else:
        files = [(f, (n, d) if n is not None else (None, d)) for f, n, d in case.parts]
        r = requests.post(url + case.route, files=files, headers=headers, timeout=timeout)
    return r.status_code, time.perf_counter() - t0, r.text
