"""The pairs file (``rankiq simulate`` output): writer with resume, and reader.

Layout (a contract: readers may rely on it; new datasets/attributes may be added, none changed)::

    / attrs: format="rankiq-pairs", format_version=1, seed, source, size (S), n_pairs
             (complete pairs), config_json (full simulation config incl. ranges),
             preprocess_version, pairs_per_slice, created_by
    /reference    complex64 (N, S, S)  truth per pair (SENSE + ESPIRiT, max |.| = 1); pairs of
                                        one slice share the same truth (stored per pair)
    /image1       complex64 (N, S, S)  corrupted image fitted to the truth by least squares
    /image2       complex64 (N, S, S)
    /pair_id      int64 (N,)           0..N-1 in generation order
    /source_id    str (N,)             subject/volume id ("brain-s0007", "phantom-3", ...)
    /slice_index  int32 (N,)
    /contrast     str (N,)             T1, T1post, T2, FLAIR or other
    /recon        str (N, 2)           rss | combine | sense | cs_l1 | cs_tv per image
    /params       str (N, 2)           JSON per image: corruptions, recon, fit
    /mse          float32 (N, 2)       MSE of |image_k| to |reference|
    /ssim         float32 (N, 2)       SSIM of |image_k| to |reference| (data range 1)
    /severity/<name> float32 (N, 2)    blur_sigma, undersample_1d_fraction,
                                        undersample_2d_fraction, noise_level, motion_shift_px,
                                        motion_start_fraction (0 when absent)
    /retries      int32 (N,)           images regenerated to meet the SSIM constraint (added)

Strings are variable-length UTF-8 (read them with ``ds.asstr()``). Only the first ``n_pairs``
rows are valid (a run killed during a write may leave a longer, partial tail; readers and
resume ignore it).

Reading, for other workers::

    from rankiq.training.pairs import PairsFile, load_pairs
    with PairsFile("pairs.h5") as pf:          # lazy: pf.images(i) -> (ref, img1, img2)
        print(len(pf), pf.size, pf.config["corruption"])
        ref, a, b = pf.images(0)
        meta = pf.meta()                       # dict of the small per-pair arrays
    data = load_pairs("pairs.h5")              # everything in memory as a dict of arrays
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rankiq.service.errors import RankIQError
from rankiq.training.corruptions import SEVERITY_NAMES

FORMAT = "rankiq-pairs"
FORMAT_VERSION = 1
IMAGE_KEYS = ("reference", "image1", "image2")


class PairsFileError(RankIQError):
    """A pairs file that cannot be created, resumed or read."""

    reason = "bad_pairs_file"


@dataclass
class PairRecord:
    """One generated pair (what a worker returns and the writer stores)."""

    pair_id: int
    reference: np.ndarray  # complex64 (S, S)
    image1: np.ndarray  # complex64 (S, S)
    image2: np.ndarray  # complex64 (S, S)
    source_id: str
    slice_index: int
    contrast: str
    recon: tuple[str, str]
    params: tuple[str, str]  # JSON
    mse: tuple[float, float]
    ssim: tuple[float, float]
    severity: dict[str, tuple[float, float]]
    retries: int
    timings: dict = field(default_factory=dict)  # seconds (bench only; never written)


def _str_dtype():
    import h5py

    return h5py.string_dtype("utf-8")


class PairsWriter:
    """Append pairs in generation order; ``n_pairs`` is updated after every flushed chunk.

    Opening an existing file resumes it when its format, seed, source, size and config match
    (else :class:`PairsFileError`); ``overwrite=True`` starts afresh.
    """

    def __init__(
        self, path: str | Path, *, seed: int, source: str, size: int, config_json: str,
        pairs_per_slice: int, overwrite: bool = False,
    ) -> None:
        import h5py
        from rankiq.service.preprocess import PREPROCESS_VERSION

        self.path = Path(path)
        self.size = size
        expected = {"format": FORMAT, "seed": seed, "source": source, "size": size,
                    "config_json": config_json}
        if self.path.exists() and not overwrite:
            try:
                self.h5 = h5py.File(self.path, "r+")
            except OSError as exc:
                raise PairsFileError("exists but cannot be opened as HDF5 for resuming "
                                     "(use --overwrite to replace it)",
                                     source=str(self.path)) from exc
            for k, v in expected.items():
                have = self.h5.attrs.get(k)
                have = have.decode() if isinstance(have, bytes) else have
                if have is None or (have != v if not isinstance(v, int) else int(have) != v):
                    self.h5.close()
                    raise PairsFileError(
                        f"exists with a different {k}; cannot resume (use --overwrite or "
                        "another --out)", source=str(self.path))
            self.n = int(self.h5.attrs["n_pairs"])
            self._truncate(self.n)
            return
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise PairsFileError("output directory does not exist", source=str(self.path))
        try:
            self.h5 = h5py.File(self.path, "w")
        except OSError as exc:
            raise PairsFileError(f"cannot create the output file ({exc.strerror or exc})",
                                 source=str(self.path)) from exc
        h = self.h5
        h.attrs.update(expected)
        h.attrs["format_version"] = FORMAT_VERSION
        h.attrs["preprocess_version"] = PREPROCESS_VERSION
        h.attrs["pairs_per_slice"] = pairs_per_slice
        h.attrs["created_by"] = "rankiq simulate"
        h.attrs["n_pairs"] = 0
        s = size
        for k in IMAGE_KEYS:
            h.create_dataset(k, (0, s, s), maxshape=(None, s, s), dtype=np.complex64,
                             chunks=(1, s, s))
        h.create_dataset("pair_id", (0,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
        h.create_dataset("source_id", (0,), maxshape=(None,), dtype=_str_dtype(), chunks=(1024,))
        h.create_dataset("slice_index", (0,), maxshape=(None,), dtype=np.int32, chunks=(1024,))
        h.create_dataset("contrast", (0,), maxshape=(None,), dtype=_str_dtype(), chunks=(1024,))
        h.create_dataset("recon", (0, 2), maxshape=(None, 2), dtype=_str_dtype(),
                         chunks=(512, 2))
        h.create_dataset("params", (0, 2), maxshape=(None, 2), dtype=_str_dtype(),
                         chunks=(64, 2))
        for k in ("mse", "ssim"):
            h.create_dataset(k, (0, 2), maxshape=(None, 2), dtype=np.float32, chunks=(1024, 2))
        for k in SEVERITY_NAMES:
            h.create_dataset(f"severity/{k}", (0, 2), maxshape=(None, 2), dtype=np.float32,
                             chunks=(1024, 2))
        h.create_dataset("retries", (0,), maxshape=(None,), dtype=np.int32, chunks=(1024,))
        self.n = 0
        h.flush()

    def _datasets(self) -> list:
        names = [*IMAGE_KEYS, "pair_id", "source_id", "slice_index", "contrast", "recon",
                 "params", "mse", "ssim", "retries"] + [f"severity/{k}" for k in SEVERITY_NAMES]
        return [self.h5[n] for n in names]

    def _truncate(self, n: int) -> None:
        for ds in self._datasets():
            if ds.shape[0] != n:
                ds.resize(n, axis=0)

    def append(self, records: list[PairRecord]) -> None:
        """Write ``records`` (consecutive pair ids starting at ``self.n``) and flush."""
        if not records:
            return
        h = self.h5
        m = len(records)
        a, b = self.n, self.n + m
        for i, r in enumerate(records):
            if r.pair_id != a + i:
                raise PairsFileError(f"pair {r.pair_id} written out of order (expected {a + i})",
                                     source=str(self.path))
        for ds in self._datasets():
            ds.resize(b, axis=0)
        for k in IMAGE_KEYS:
            h[k][a:b] = np.stack([getattr(r, k) for r in records]).astype(np.complex64)
        h["pair_id"][a:b] = [r.pair_id for r in records]
        h["source_id"][a:b] = [r.source_id for r in records]
        h["slice_index"][a:b] = [r.slice_index for r in records]
        h["contrast"][a:b] = [r.contrast for r in records]
        h["recon"][a:b] = [list(r.recon) for r in records]
        h["params"][a:b] = [list(r.params) for r in records]
        h["mse"][a:b] = np.asarray([r.mse for r in records], dtype=np.float32)
        h["ssim"][a:b] = np.asarray([r.ssim for r in records], dtype=np.float32)
        for k in SEVERITY_NAMES:
            h[f"severity/{k}"][a:b] = np.asarray([r.severity[k] for r in records],
                                                 dtype=np.float32)
        h["retries"][a:b] = [r.retries for r in records]
        h.flush()  # data first, then the count that makes it valid
        h.attrs["n_pairs"] = b
        h.flush()
        self.n = b

    def close(self) -> None:
        """Flush and close (safe to call twice)."""
        if getattr(self, "h5", None) is not None and self.h5.id.valid:
            self.h5.flush()
            self.h5.close()

    def __enter__(self) -> PairsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PairsFile:
    """Read a pairs file (lazily). Only the first ``n_pairs`` rows are exposed.

    Attributes:
        n: number of complete pairs; ``len(pf)``.
        size: image side S.
        attrs: the root attributes (decoded).
        config: the simulation config (parsed ``config_json``).
    """

    def __init__(self, path: str | Path) -> None:
        import h5py

        self.path = Path(path)
        try:
            self.h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise PairsFileError("not a readable HDF5 file", source=str(self.path)) from exc
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.h5.attrs.items()}
        if attrs.get("format") != FORMAT:
            self.h5.close()
            raise PairsFileError(f"not a {FORMAT} file", source=str(self.path))
        if int(attrs.get("format_version", 0)) != FORMAT_VERSION:
            self.h5.close()
            raise PairsFileError(f"format_version {attrs.get('format_version')} is not "
                                 f"{FORMAT_VERSION}", source=str(self.path))
        self.attrs = attrs
        self.n = int(attrs["n_pairs"])
        self.size = int(attrs["size"])
        self.config = json.loads(attrs["config_json"])

    def __len__(self) -> int:
        return self.n

    def images(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(reference, image1, image2)`` of pair ``i``, complex64 ``(S, S)`` each."""
        if not 0 <= i < self.n:
            raise IndexError(f"pair {i} out of range 0..{self.n - 1}")
        return tuple(self.h5[k][i] for k in IMAGE_KEYS)

    def meta(self) -> dict[str, np.ndarray]:
        """Small per-pair arrays: pair_id, source_id, slice_index, contrast, recon, params,
        mse, ssim, retries and ``severity/<name>`` (strings decoded to ``str`` objects)."""
        n = self.n
        out: dict[str, np.ndarray] = {}
        for k in ("pair_id", "slice_index", "mse", "ssim", "retries"):
            out[k] = self.h5[k][:n]
        for k in ("source_id", "contrast", "recon", "params"):
            out[k] = np.asarray(self.h5[k].asstr()[:n], dtype=object)
        for k in SEVERITY_NAMES:
            out[f"severity/{k}"] = self.h5[f"severity/{k}"][:n]
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """:meth:`meta` plus the three image stacks (complex64 ``(N, S, S)``) in memory."""
        out = self.meta()
        for k in IMAGE_KEYS:
            out[k] = self.h5[k][: self.n]
        return out

    def close(self) -> None:
        if self.h5.id.valid:
            self.h5.close()

    def __enter__(self) -> PairsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_pairs(path: str | Path) -> dict[str, np.ndarray]:
    """Everything in a pairs file as a dict of arrays (see :meth:`PairsFile.arrays`), plus
    ``"attrs"`` (dict) and ``"config"`` (parsed config)."""
    with PairsFile(path) as pf:
        out: dict = pf.arrays()
        out["attrs"] = dict(pf.attrs)
        out["config"] = pf.config
    return out


def summarise(path: str | Path) -> dict:
    """Counts over a pairs file: pairs, max/mean |SSIM difference|, total retries, images per
    corruption type (applied ones; ``motion_skipped`` when the start fell in the centre) and
    per reconstruction method."""
    from rankiq.training.corruptions import CORRUPTIONS
    from rankiq.training.reconstruct import RECON_METHODS

    with PairsFile(path) as pf:
        m = pf.meta()
    n = len(m["pair_id"])
    diff = np.abs(m["ssim"][:, 0].astype(np.float64) - m["ssim"][:, 1]) if n else np.zeros(0)
    corr = dict.fromkeys(CORRUPTIONS, 0)
    corr["motion_skipped"] = 0
    ncorr = [0] * 6
    for row in m["params"]:
        for p in row:
            c = json.loads(p)["corruptions"]
            applied = [k for k in c if k != "motion" or c[k]["applied"]]
            ncorr[min(len(c), 5)] += 1
            for k in applied:
                corr[k] += 1
            if "motion" in c and not c["motion"]["applied"]:
                corr["motion_skipped"] += 1
    recon = dict.fromkeys(RECON_METHODS, 0)
    for row in m["recon"]:
        for r in row:
            recon[r] = recon.get(r, 0) + 1
    return {
        "pairs": n,
        "max_ssim_diff": float(diff.max()) if n else 0.0,
        "mean_ssim_diff": float(diff.mean()) if n else 0.0,
        "mean_ssim": float(m["ssim"].mean()) if n else 0.0,
        "retries": int(m["retries"].sum()) if n else 0,
        "corruptions": corr,
        "n_corruptions": {str(i): ncorr[i] for i in range(6)},
        "recon": recon,
        "contrast": {c: int((m["contrast"] == c).sum()) for c in sorted(set(m["contrast"]))},
        "subjects": len(set(m["source_id"])),
    }
