"""Read-only access to a pairs file (``rankiq simulate`` output) for the reader app, and the
PNG rendering of its images.

The layout is the contract documented in ``rankiq.training.pairs`` (root attrs ``format``,
``format_version``, ``size``, ``n_pairs``; datasets ``/reference``, ``/image1``, ``/image2``
complex64 ``(N, S, S)``, ``/contrast`` str ``(N,)``). Only the first ``n_pairs`` rows are valid.
This reader opens the file with h5py alone (the app never imports torch or training).
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from rankiq.service.errors import RankIQError

FORMAT = "rankiq-pairs"
FORMAT_VERSION = 1
IMAGE_KEYS = ("reference", "image1", "image2")
#: display scale: magnitudes are divided by this percentile of |reference| (shared by the pair,
#: so the two images of a pair are shown on the same grey scale)
DISPLAY_PERCENTILE = 99.5


class PairsSourceError(RankIQError):
    """A pairs file the reader app cannot serve."""

    reason = "bad_pairs_file"


def _attr(v: object) -> object:
    return v.decode() if isinstance(v, bytes) else v


class PairSource:
    """The pairs of a study: count, contrast per pair, and PNG bytes of each image.

    Thread-safe (h5py reads are serialised by one lock; rendered PNGs are kept in a small LRU
    cache). ``fingerprint`` identifies the file's content by its attributes (seed, size, count,
    simulation config), so a database is never served with another pairs file.
    """

    def __init__(self, path: str | Path, cache_size: int = 256) -> None:
        import h5py

        self.path = Path(path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise PairsSourceError("not a readable HDF5 pairs file", source="--pairs") from exc
        attrs = {k: _attr(v) for k, v in self._h5.attrs.items()}
        if attrs.get("format") != FORMAT or int(str(attrs.get("format_version", 0))) != 1:
            self._h5.close()
            raise PairsSourceError(f"not a {FORMAT} file (format_version {FORMAT_VERSION})",
                                   source="--pairs")
        self.n = int(str(attrs["n_pairs"]))
        self.size = int(str(attrs["size"]))
        if self.n < 1:
            self._h5.close()
            raise PairsSourceError("holds no complete pair", source="--pairs")
        ids = np.asarray(self._h5["pair_id"][: self.n], dtype=np.int64)
        #: pair id -> row; pair ids are 0..N-1 in generation order, but the map is authoritative
        self.row_of: dict[int, int] = {int(p): i for i, p in enumerate(ids)}
        self.pair_ids: list[int] = [int(p) for p in ids]
        if "contrast" in self._h5:
            self.contrast = [str(c) for c in self._h5["contrast"].asstr()[: self.n]]
        else:
            self.contrast = ["other"] * self.n
        key = "|".join(str(attrs.get(k, "")) for k in ("seed", "size", "source", "config_json"))
        self.fingerprint = hashlib.sha256(f"{key}|{self.n}".encode()).hexdigest()[:32]
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self._cache_size = cache_size

    def contrast_of(self, pair_id: int) -> str:
        """The contrast family of a pair (``T1``, ``T2``, ``FLAIR``, ...)."""
        return self.contrast[self.row_of[pair_id]]

    def png(self, pair_id: int, which: str) -> bytes:
        """8-bit greyscale PNG of ``|which|`` (``reference``, ``image1`` or ``image2``) of a
        pair, scaled by the pair's reference display percentile and clipped to [0, 1]."""
        if which not in IMAGE_KEYS:
            raise ValueError(which)
        key = (pair_id, which)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            row = self.row_of[pair_id]
            ref = np.abs(np.asarray(self._h5["reference"][row]))
            img = ref if which == "reference" else np.abs(np.asarray(self._h5[which][row]))
        data = _png(img, float(np.percentile(ref, DISPLAY_PERCENTILE)))
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return data

    def close(self) -> None:
        """Close the file (safe to call twice)."""
        if self._h5.id.valid:
            self._h5.close()


def _png(magnitude: np.ndarray, vmax: float) -> bytes:
    """PNG bytes of a float ``(S, S)`` magnitude mapped [0, vmax] -> 0..255."""
    from PIL import Image

    scale = vmax if vmax > 0 else float(magnitude.max()) or 1.0
    grey = np.clip(np.round(255.0 * magnitude / scale), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()
