"""Paired training-set generation: clean slice -> truth -> corrupted image pairs -> HDF5.

Per work unit (one slice, ``pairs_per_slice`` consecutive pairs):

1. the source gives fully sampled multi-coil k-space (:mod:`rankiq.training.sources`);
2. :func:`prepare_slice` estimates the per-coil noise sigma from the raw k-space edges, removes
   the 2x readout oversampling (everything after works on S x S), computes ESPIRiT maps and
   the truth (SENSE, lambda 0.005, 20 iterations), and scales the k-space so the truth's
   maximum magnitude is 1 (so regularisation weights are relative to a unit image);
3. per pair, :func:`make_pair` draws image 1, then draws image 2 until
   ``|SSIM(img1, ref) - SSIM(img2, ref)| < ssim_max_diff`` (image 1 is redrawn after every
   ``redraw_image1_every`` failed tries; more than ``max_retries`` is an error), then swaps the
   two at random so neither position is the conditioned one. Candidates rejected by one pair
   are tried first as image 2 by the next pairs of the same slice (they are independent draws
   of that slice), which cuts the reconstructions per pair by about a fifth.

Each image (:func:`make_image`): random corruptions (:mod:`rankiq.training.corruptions`), a random
reconstruction (:mod:`rankiq.training.reconstruct`), divided by its max and fitted to the truth by
least squares (:func:`rankiq.service.preprocess.least_squares_scale`; complex for phase-carrying
reconstructions, real against ``|truth|`` for root-sum-of-squares, which has no phase), then
MSE and SSIM of magnitudes against the truth.

Determinism: the slice of unit ``u`` uses ``SeedSequence(seed, spawn_key=(0, u))`` and pair
``p`` uses ``SeedSequence(seed, spawn_key=(1, p))``; every BLAS/FFT call runs single-threaded.
A pair therefore depends only on ``(seed, p)`` and the config, never on the number of workers
or on where a resumed run restarted; the parent writes units in order.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from rankiq.service.errors import RankIQError
from rankiq.training.corruptions import (
    APPLY_ORDER,
    CorruptionConfig,
    apply_plan,
    draw_plan,
    estimate_noise_sigma,
    severity,
)
from rankiq.training.pairs import PairRecord, PairsWriter, summarise
from rankiq.training.reconstruct import (
    ReconConfig,
    draw_method,
    draw_params,
    espirit_maps,
    reconstruct,
    remove_readout_oversampling,
    truth,
)
from rankiq.training.sources import SourceConfig, open_source
from rankiq.training.ssim import mse, ssim

MIN_SIZE, MAX_SIZE = 32, 1024


class SimulationError(RankIQError):
    """A simulation that cannot run or finish (bad size, unsatisfiable pair constraint)."""

    reason = "simulation"


@dataclass(frozen=True)
class SimConfig:
    """Everything that determines the pairs besides seed, source and size.

    Attributes:
        pairs_per_slice: pairs generated from one slice (sharing its truth).
        ssim_max_diff: the pair constraint ``|SSIM1 - SSIM2| < ssim_max_diff``.
        redraw_image1_every: failed tries of image 2 before image 1 is redrawn too.
        max_retries: failed tries per pair before giving up (an error).
        corruption, recon, source: see their modules.
    """

    pairs_per_slice: int = 2
    ssim_max_diff: float = 0.09
    redraw_image1_every: int = 12
    max_retries: int = 120
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    source: SourceConfig = field(default_factory=SourceConfig)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), stored as the file's ``config_json``."""
        d = {
            "pairs_per_slice": self.pairs_per_slice,
            "ssim_max_diff": self.ssim_max_diff,
            "redraw_image1_every": self.redraw_image1_every,
            "max_retries": self.max_retries,
            "corruption": self.corruption.to_dict(),
            "recon": self.recon.to_dict(),
            "source": self.source.to_dict(),
        }
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SimConfig:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(
            pairs_per_slice=d["pairs_per_slice"],
            ssim_max_diff=d["ssim_max_diff"],
            redraw_image1_every=d["redraw_image1_every"],
            max_retries=d["max_retries"],
            corruption=CorruptionConfig.from_dict(d["corruption"]),
            recon=ReconConfig.from_dict(d["recon"]),
            source=SourceConfig.from_dict(d["source"]),
        )


@dataclass
class PreparedSlice:
    """A slice ready for corruption.

    Attributes:
        kspace: complex64 ``(coils, S, S)`` fully sampled, readout oversampling removed,
            scaled so ``max|truth| = 1``.
        sigma: float64 ``(coils,)`` noise sigma estimated from the raw k-space edges (same
            scale as ``kspace``).
        maps: complex64 ``(coils, S, S)`` normalised ESPIRiT maps.
        truth: complex64 ``(S, S)``, ``max |truth| = 1``.
        source_id, slice_index, contrast, info: from the source.
        timings: seconds spent in each preparation step.
    """

    kspace: np.ndarray
    sigma: np.ndarray
    maps: np.ndarray
    truth: np.ndarray
    source_id: str
    slice_index: int
    contrast: str
    info: dict
    timings: dict


@dataclass
class ImageResult:
    """One corrupted, reconstructed and fitted image with its record."""

    image: np.ndarray  # complex64 (S, S)
    method: str
    params: dict
    severity: dict[str, float]
    mse: float
    ssim: float
    seconds: float


def unit_rng(seed: int, unit: int) -> np.random.Generator:
    """Generator of work unit (slice) ``unit``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, unit)))


def pair_rng(seed: int, pair_id: int) -> np.random.Generator:
    """Generator of pair ``pair_id``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, pair_id)))


@contextmanager
def single_threaded():
    """Limit BLAS/OpenMP pools to one thread (bit-identical results whatever the workers)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with the train extra
        yield
        return
    with threadpool_limits(1):
        yield


def prepare_slice(source, unit: int, seed: int, size: int, cfg: SimConfig) -> PreparedSlice:
    """Clean slice of ``unit`` -> noise sigma, ESPIRiT maps, normalised truth."""
    rng = unit_rng(seed, unit)
    t0 = time.perf_counter()
    cs = source.slice(unit, seed, size, rng)
    t1 = time.perf_counter()
    raw = cs.kspace.astype(np.complex64, copy=False)
    # noise from the edges of the raw (oversampled) k-space, then drop the oversampling: the
    # orthonormal crop keeps white noise at the same sigma per sample
    sigma = estimate_noise_sigma(raw, cfg.corruption.noise_edge_fraction)
    k = remove_readout_oversampling(raw, size)
    maps = espirit_maps(k, cfg.recon)
    t2 = time.perf_counter()
    ref = truth(k, maps, cfg.recon)
    peak = float(np.abs(ref).max())
    if not peak > 0:
        raise SimulationError(f"{cs.source_id} slice {cs.slice_index}: the truth is empty")
    k = (k / np.float32(peak)).astype(np.complex64)
    ref = (ref / np.float32(peak)).astype(np.complex64)
    sigma = sigma / peak
    t3 = time.perf_counter()
    return PreparedSlice(k, sigma, maps, ref, cs.source_id, cs.slice_index, cs.contrast,
                         cs.info, {"source": t1 - t0, "espirit": t2 - t1, "truth": t3 - t2})


def fit_to_truth(image: np.ndarray, ref: np.ndarray, method: str) -> tuple[np.ndarray, list]:
    """Divide by the max, then least-squares fit to the truth (the reference pipeline).

    Phase-carrying images get a complex scale against the complex truth; ``rss`` images (no
    phase) a real scale against ``|truth|`` (a complex fit to a phase-varying truth would
    shrink them). Returns ``(fitted complex64 (S, S), [re, im] of the total scale)``.
    """
    from rankiq.service.preprocess import least_squares_scale

    peak = float(np.abs(image).max())
    img = image / np.float32(peak) if peak > 0 else image
    if method == "rss":
        mag = np.abs(img).astype(np.float32)
        a = complex(least_squares_scale(mag[None], np.abs(ref)[None].astype(np.float32))[0])
    else:
        a = complex(least_squares_scale(img[None], ref[None])[0])
    out = (img * np.complex64(a)).astype(np.complex64)
    total = a / peak if peak > 0 else a
    return out, [float(total.real), float(total.imag)]


def make_image(ps: PreparedSlice, rng: np.random.Generator, cfg: SimConfig) -> ImageResult:
    """Draw corruptions and a reconstruction for one image of slice ``ps``."""
    t0 = time.perf_counter()
    plan = draw_plan(rng, ps.kspace.shape[-1], cfg.corruption)
    k, mask, cparams = apply_plan(ps.kspace, plan, ps.sigma, rng)
    method = draw_method(rng, cfg.recon)
    rparams = draw_params(rng, method, cfg.recon)
    img, info = reconstruct(k, mask, ps.maps, rparams)
    fitted, scale = fit_to_truth(img, ps.truth, method)
    params = {
        "corruptions": cparams,
        "order": [n for n in APPLY_ORDER if n in plan],
        "recon": {**rparams, **info},
        "fit_scale": scale,
        "sampled_fraction": float(mask.mean()),
    }
    return ImageResult(
        image=fitted,
        method=method,
        params=params,
        severity=severity(cparams),
        mse=float(mse(fitted, ps.truth)),
        ssim=ssim(fitted, ps.truth),
        seconds=time.perf_counter() - t0,
    )


def make_pair(
    ps: PreparedSlice, pair_id: int, seed: int, cfg: SimConfig,
    pool: list[ImageResult] | None = None,
) -> PairRecord:
    """Generate pair ``pair_id`` of slice ``ps`` under the SSIM constraint.

    Image 1 is a fresh draw. Image 2 is the first candidate within ``ssim_max_diff`` of it:
    first among ``pool`` (images of the same slice rejected by earlier pairs, in generation
    order; the match is removed from it), then fresh draws, each rejected one joining the
    pool. After every ``redraw_image1_every`` rejections image 1 is redrawn (the old one joins
    the pool). ``retries`` counts the rejected fresh draws.

    Raises:
        SimulationError: more than ``cfg.max_retries`` rejections.
    """
    rng = pair_rng(seed, pair_id)
    pool = [] if pool is None else pool
    timings: dict[str, list[float]] = {}

    def draw() -> ImageResult:
        r = make_image(ps, rng, cfg)
        timings.setdefault(r.method, []).append(r.seconds)
        return r

    def close(a: ImageResult, b: ImageResult) -> bool:
        return abs(a.ssim - b.ssim) < cfg.ssim_max_diff

    im1 = draw()
    retries = 0
    from_pool = next((j for j, c in enumerate(pool) if close(c, im1)), None)
    if from_pool is not None:
        im2 = pool.pop(from_pool)
    else:
        while True:
            im2 = draw()
            if close(im1, im2):
                break
            pool.append(im2)
            retries += 1
            if retries > cfg.max_retries:
                raise SimulationError(
                    f"pair {pair_id} ({ps.source_id} slice {ps.slice_index}): no pair within "
                    f"SSIM difference {cfg.ssim_max_diff} after {cfg.max_retries} retries")
            if retries % cfg.redraw_image1_every == 0:
                pool.append(im1)
                im1 = draw()
    im2.params["from_pool"] = from_pool is not None
    im1.params["from_pool"] = False
    if rng.random() < 0.5:
        im1, im2 = im2, im1
    pair = (im1, im2)
    return PairRecord(
        pair_id=pair_id,
        reference=ps.truth,
        image1=im1.image,
        image2=im2.image,
        source_id=ps.source_id,
        slice_index=int(ps.slice_index),
        contrast=ps.contrast,
        recon=(im1.method, im2.method),
        params=tuple(json.dumps(r.params, sort_keys=True) for r in pair),  # type: ignore[arg-type]
        mse=(im1.mse, im2.mse),
        ssim=(im1.ssim, im2.ssim),
        severity={k: (im1.severity[k], im2.severity[k]) for k in im1.severity},
        retries=retries,
        timings={"images": timings},
    )


@lru_cache(maxsize=2)
def _source(spec: str, source_json: str):
    """Per-process cache of opened sources (templates/file lists load once per worker)."""
    return open_source(spec, SourceConfig.from_dict(json.loads(source_json)))


def run_unit(task: tuple) -> tuple[int, list[PairRecord], dict]:
    """Worker entry: ``(spec, size, seed, config_json, unit, first, stop)`` -> records of pairs
    ``first .. stop-1`` of that unit, with preparation timings."""
    spec, size, seed, config_json, unit, first, stop = task
    cfg = SimConfig.from_json(config_json)
    with single_threaded():
        src = _source(spec, json.dumps(cfg.source.to_dict(), sort_keys=True))
        ps = prepare_slice(src, unit, seed, size, cfg)
        pool: list[ImageResult] = []
        # pairs of a unit share the pool of rejected candidates, so a unit always starts at
        # its first pair (a run resumed mid-unit recomputes, but does not rewrite, the earlier)
        records = [make_pair(ps, p, seed, cfg, pool)
                   for p in range(unit * cfg.pairs_per_slice, stop)]
    return unit, [r for r in records if r.pair_id >= first], ps.timings


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up


def check_size(size: int) -> None:
    """The image side must be even and within 32..1024."""
    if size % 2 or not MIN_SIZE <= size <= MAX_SIZE:
        raise SimulationError(f"--size {size}: must be an even number in {MIN_SIZE}..{MAX_SIZE}")


def tasks_for(spec: str, size: int, seed: int, cfg: SimConfig, start: int, n_pairs: int
              ) -> list[tuple]:
    """Work units covering pairs ``start .. n_pairs-1`` (partial first/last units allowed)."""
    pps = cfg.pairs_per_slice
    out = []
    cj = cfg.to_json()
    for unit in range(start // pps, (n_pairs - 1) // pps + 1 if n_pairs > start else 0):
        first = max(unit * pps, start)
        stop = min((unit + 1) * pps, n_pairs)
        if first < stop:
            out.append((spec, size, seed, cj, unit, first, stop))
    return out


def write_png(directory: Path, rec: PairRecord) -> None:
    """``pair_<id>.png``: |reference| | |image1| | |image2|, 8-bit, clipped at 1."""
    from PIL import Image

    row = np.concatenate([np.abs(rec.reference), np.abs(rec.image1), np.abs(rec.image2)], axis=1)
    Image.fromarray((np.clip(row, 0, 1) * 255 + 0.5).astype(np.uint8)).save(
        directory / f"pair_{rec.pair_id:06d}.png")


@contextmanager
def _sigterm_as_interrupt():
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(
    spec: str, n_pairs: int, size: int, seed: int, out: str | Path, *, workers: int = 1,
    cfg: SimConfig | None = None, overwrite: bool = False, progress: bool = False,
    png_dir: str | Path | None = None, collect_timings: list | None = None,
) -> dict:
    """Generate (or resume) ``n_pairs`` pairs into ``out``; returns the summary.

    Args:
        spec: source spec (``brain``, ``phantom``, ``nifti:PATH``, ``fastmri:DIR``).
        n_pairs: total pairs the file should hold.
        size: image side S (even, 32..1024).
        seed: master seed.
        out: HDF5 path; an existing compatible file is resumed.
        workers: processes (1 runs in this process).
        cfg: simulation config (defaults when ``None``).
        overwrite: replace an existing file instead of resuming.
        progress: show a tqdm bar on stderr.
        png_dir: also write one PNG per new pair there.
        collect_timings: if a list, per-unit ``(prep_timings, [records' timings])`` are
            appended (benchmark).

    Returns:
        :func:`rankiq.training.pairs.summarise` of the file plus ``new_pairs``, ``seconds``,
        ``resumed_from``.
    """
    cfg = cfg or SimConfig()
    if n_pairs <= 0:
        raise SimulationError(f"--pairs {n_pairs}: must be positive")
    check_size(size)
    if cfg.pairs_per_slice <= 0:
        raise SimulationError("pairs_per_slice must be positive")
    t0 = time.perf_counter()
    # open the source here too: bad specs fail before any file is touched
    _source(spec, json.dumps(cfg.source.to_dict(), sort_keys=True))
    png = Path(png_dir) if png_dir else None
    if png is not None:
        png.mkdir(parents=True, exist_ok=True)
    writer = PairsWriter(out, seed=seed, source=spec, size=size, config_json=cfg.to_json(),
                         pairs_per_slice=cfg.pairs_per_slice, overwrite=overwrite)
    start = writer.n
    try:
        if start > n_pairs:
            raise SimulationError(f"{out} already holds {start} pairs, more than --pairs "
                                  f"{n_pairs}")
        tasks = tasks_for(spec, size, seed, cfg, start, n_pairs)
        from tqdm import tqdm

        bar = tqdm(total=n_pairs, initial=start, unit="pair", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)
        nproc = max(1, min(workers, len(tasks)))
        pool = None
        results: Iterator[tuple[int, list[PairRecord], dict]]
        with _sigterm_as_interrupt(), bar:
            try:
                if nproc > 1:
                    pool = mp.get_context("spawn").Pool(nproc, initializer=_init_worker)
                    results = pool.imap(run_unit, tasks, chunksize=1)
                else:
                    results = map(run_unit, tasks)
                for _unit, records, prep in results:
                    writer.append(records)
                    if png is not None:
                        for r in records:
                            write_png(png, r)
                    if collect_timings is not None:
                        collect_timings.append((prep, [r.timings for r in records],
                                                [r.retries for r in records]))
                    bar.update(len(records))
            finally:
                if pool is not None:
                    pool.terminate()
                    pool.join()
    finally:
        writer.close()
    summary = summarise(out)
    summary.update({"new_pairs": summary["pairs"] - start, "resumed_from": start,
                    "seconds": round(time.perf_counter() - t0, 3)})
    return summary


def projected_minutes(seconds_per_pair: float, pairs: int = 2916) -> float:
    """Wall minutes for ``pairs`` at a measured wall-clock rate."""
    return seconds_per_pair * pairs / 60.0 if math.isfinite(seconds_per_pair) else math.inf
