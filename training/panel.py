"""A simulated reader panel: simulated readers calibrated to the paper's agreement, standing in
for the votes of real readers (radiologists, collected by the reader app) until they exist.

Observer model (all arrays over pairs ``n`` and the two images ``j``; "Q units" throughout):

    Q[r, n, j] = - sum_t w[r, t] h_t(sev_t[n, j])          artifact types t
                 - sum_f v[r, f] g_f(img[n, j], ref[n])      image features f (not MSE/SSIM)
                 - tex[r, recon[n, j]]                       recon-texture preference
                 + eta[r, n, j]                              reader's own taste per image

- ``h_t(s) = log2(1 + s / s90_t)``: saturating, with ``s90_t`` the 90th percentile of the
  non-zero severities of type t in the file (so units and ranges of the simulator don't matter).
  Types: motion (``motion_shift_px``), blur (``blur_sigma``), 1D and 2D undersampling (their
  fractions) and noise (``noise_level``). Panel-mean weights :data:`ARTIFACT_WEIGHTS`, motion
  the largest (the paper's discussion: motion is the most destructive).
- ``g_f``: three perceptual measures computed on the magnitudes (see :func:`image_features`):
  edge-sharpness loss, background artifact level (ghosting/aliasing/noise outside the head) and
  grain (Laplacian energy in flat tissue), each divided by its 90th percentile in the file.
- Reader r: ``w[r,t] = W_t exp(0.5 k z)``, ``v[r,f] = V_f exp(0.5 k z)``,
  ``tex[r,m] = TEX_m + 0.15 k z``, ``eta = 0.3 k z`` (z standard normal, fixed per reader and
  image), where ``k`` is the panel's idiosyncrasy scale.
- A presentation shows the pair with image 1 on the left or right at random; the reader sees
  ``D = Q1 - Q2 + b_r side + sigma_r eps`` and answers "similar" when ``|D| < jnd_r``, else
  the better image; with probability ``lapse_r`` (1-3 %) a uniformly random answer instead;
  0.5 % of presentations are skipped. ``sigma_r = sigma u_r``, ``jnd_r = jnd0 u_r exp(0.4 z)``
  and the left/right bias ``b_r = 0.3 sigma_r z``, with ``u_r`` the reader's median
  ``|Q1 - Q2|`` over the file (so sigma and jnd0 keep their meaning whatever k does to Q).
- Calibration: ``sigma``, ``k`` and ``jnd0`` are found by coordinate-wise bisection so that the
  *expected* statistics of :mod:`rankiq.service.readers.agreement` (computed in closed form from the
  outcome
  probabilities, with the reader draws fixed by the seed) hit the targets: intra-reader 94.9 %,
  mean inter-reader 67.5 % (the paper's Table 1: its off-diagonal entries average 67.47 %; the
  text's "61.47 %" with the same SD and range is a typo) and a 12 % "similar" rate (the
  paper's readers said similar for 4-7 of 52 pairs).

Likert scores (:meth:`Panel.simulate_likert`): each image alone, from the reader's own Q as a
normal score over the file, with less within-pair contrast, a reader baseline shift and noise,
cut into five levels (constants hand-tuned to resemble the paper's Table 2, not calibrated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from rankiq.service.errors import UnreadableInput, UnsupportedInput
from rankiq.service.readers.rankings import OUTCOMES, SKIP, LikertScore, Vote
from scipy.special import ndtr, ndtri

SEVERITY_NAMES = ("blur_sigma", "undersample_1d_fraction", "undersample_2d_fraction",
                  "noise_level", "motion_shift_px", "motion_start_fraction")
#: artifact type -> severity dataset
ARTIFACTS = {"motion": "motion_shift_px", "blur": "blur_sigma",
             "undersample_1d": "undersample_1d_fraction",
             "undersample_2d": "undersample_2d_fraction", "noise": "noise_level"}
#: panel-mean weight per artifact type (Q units per h unit): motion most destructive
ARTIFACT_WEIGHTS = {"motion": 1.6, "blur": 1.0, "undersample_1d": 0.9, "undersample_2d": 0.6,
                    "noise": 0.8}
FEATURES = ("edge_loss", "background", "grain")
FEATURE_WEIGHTS = {"edge_loss": 0.5, "background": 0.5, "grain": 0.4}
#: panel-mean texture penalty per recon method (CS textures look waxy/cartoonish)
RECON_TEXTURE = {"rss": 0.0, "combine": 0.0, "sense": 0.05, "cs_l1": 0.25, "cs_tv": 0.35}
PAPER_VOTES = (6797, 2108, 2108, 2102, 3585, 1722, 2644)  # readers 1-7, of 2916 pairs
PAPER_PAIRS = 2916
SKIP_RATE = 0.005
W_SPREAD, V_SPREAD, TEX_SPREAD, ETA_SPREAD, JND_SPREAD, BIAS_SPREAD = 0.5, 0.5, 0.15, 0.3, 0.4, 0.3
LAPSE_RANGE = (0.01, 0.03)
#: calibration targets: the paper's Table 1 diagonal (94.88 %) and off-diagonal mean (67.47 %;
#: the text's 61.47 % is a typo: same SD 5.51 and range 53.9-77.8 %)
TARGET_INTRA, TARGET_INTER, TARGET_SIMILAR = 0.949, 0.675, 0.12
# reader baseline shift, noise and within-pair contrast of Likert scoring (normal-score units)
LIKERT_SHIFT, LIKERT_NOISE, LIKERT_WITHIN = 0.4, 0.2, 0.3
LIKERT_CUTS = (0.10, 0.30, 0.55, 0.80)  # quantiles between the five levels


# --- pairs file -------------------------------------------------------------------------------

@dataclass
class PairsData:
    """What the panel needs from a pairs file. ``severity[name]`` float ``(N, 2)``; ``recon``
    str ``(N, 2)``; ``mse``, ``ssim`` ``(N, 2)``; ``features`` ``(N, 2, F)`` (raw)."""

    pair_id: np.ndarray
    severity: dict[str, np.ndarray]
    recon: np.ndarray
    contrast: np.ndarray
    mse: np.ndarray
    ssim: np.ndarray
    features: np.ndarray

    @property
    def n(self) -> int:
        return len(self.pair_id)


def _magnitude_terms(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient magnitude and 4-neighbour Laplacian of real ``(n, S, S)`` images."""
    gx, gy = np.gradient(x, axis=(1, 2))
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    lap = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 4 * x
    return np.hypot(gx, gy), lap


def image_features(reference: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Perceptual measures of corrupted images against their reference's anatomy.

    Args:
        reference: complex or real ``(n, S, S)``.
        images: same shape, the corrupted images.

    Returns:
        float64 ``(n, 3)``: ``edge_loss`` (1 - gradient magnitude on the reference's strongest
        10 % edges relative to the reference's, floored at 0: blur), ``background`` (RMS of the
        image where the reference is below 2 % of its max, minus the reference's own, relative
        to the mean tissue signal: ghosting, aliasing and noise outside the head) and ``grain``
        (excess RMS Laplacian in flat tissue relative to tissue signal: noise and CS texture).
        Magnitudes only, after a least-squares magnitude scale onto the reference; none of
        them is MSE or SSIM.
    """
    R = np.abs(reference).astype(np.float64)
    m = np.percentile(R.reshape(len(R), -1), 99.5, axis=1)[:, None, None]
    R = R / np.maximum(m, 1e-12)
    M = np.abs(images).astype(np.float64)
    a = np.sum(M * R, axis=(1, 2)) / np.maximum(np.sum(M * M, axis=(1, 2)), 1e-12)
    M = M * a[:, None, None]
    gR, lR = _magnitude_terms(R)
    gI, lI = _magnitude_terms(M)
    fg = R > 0.1
    bg = R < 0.02
    tissue = np.maximum(np.sum(R * fg, axis=(1, 2)) / np.maximum(fg.sum((1, 2)), 1), 1e-6)
    thr = np.percentile(gR.reshape(len(R), -1), 90, axis=1)[:, None, None]
    edge = gR >= thr
    edge_loss = 1 - np.sum(gI * edge, (1, 2)) / np.maximum(np.sum(gR * edge, (1, 2)), 1e-12)

    def rms(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.sqrt(np.sum(x * x * mask, (1, 2)) / np.maximum(mask.sum((1, 2)), 1))

    background = (rms(M, bg) - rms(R, bg)) / tissue
    med = np.array([np.median(g[f]) if f.any() else 0.0 for g, f in zip(gR, fg, strict=True)])
    flat = fg & (gR <= med[:, None, None])
    grain = (rms(lI, flat) - rms(lR, flat)) / tissue
    return np.clip(np.stack([edge_loss, background, grain], axis=1), 0, None)


def _valid_rows(f) -> int:
    """Rows to read: the ``n_pairs`` attribute (a killed simulator run may leave a longer,
    partial tail), capped by the datasets' length."""
    rows = f["pair_id"].shape[0]
    n = f.attrs.get("n_pairs")
    return rows if n is None else min(rows, int(n))


def load_pairs(path: Path | str, chunk: int = 64) -> PairsData:
    """Read a pairs HDF5 file (``rankiq simulate`` layout: its first ``n_pairs`` rows) and
    compute the image features, ``chunk`` pairs at a time. Missing severities count as 0;
    unknown recons have no texture."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise UnreadableInput(f"not a readable HDF5 file ({exc})", source=str(path)) from None
    with f:
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != "rankiq-pairs":
            raise UnsupportedInput(f"not a pairs file (format attribute {fmt!r}, expected "
                                   "'rankiq-pairs')", source=str(path))
        for name in ("reference", "image1", "image2", "pair_id"):
            if name not in f:
                raise UnreadableInput(f"missing dataset /{name}", source=str(path))
        n = _valid_rows(f)

        def pair_array(name: str, default: float = 0.0) -> np.ndarray:
            return (f[name][:n].astype(np.float64) if name in f
                    else np.full((n, 2), default))

        def strings(name: str, shape: tuple[int, ...]) -> np.ndarray:
            return f[name].asstr()[:n] if name in f else np.full(shape, "", object)

        sev = {s: pair_array(f"severity/{s}") for s in SEVERITY_NAMES}
        feats = np.zeros((n, 2, len(FEATURES)))
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            ref = f["reference"][lo:hi]
            for j, name in enumerate(("image1", "image2")):
                feats[lo:hi, j] = image_features(ref, f[name][lo:hi])
        return PairsData(pair_id=f["pair_id"][:n].astype(np.int64), severity=sev,
                         recon=strings("recon", (n, 2)), contrast=strings("contrast", (n,)),
                         mse=pair_array("mse", np.nan), ssim=pair_array("ssim", np.nan),
                         features=feats)


# --- observers --------------------------------------------------------------------------------

def _p90_scale(x: np.ndarray) -> float:
    nz = x[x > 0]
    return float(np.percentile(nz, 90)) if nz.size else 1.0


def normalised_terms(data: PairsData) -> tuple[np.ndarray, np.ndarray]:
    """``h`` ``(N, 2, T)`` (saturating artifact severities) and ``g`` ``(N, 2, F)``
    (features / their 90th percentile)."""
    h = np.stack([np.log2(1 + data.severity[s] / _p90_scale(data.severity[s]))
                  for s in ARTIFACTS.values()], axis=-1)
    g = np.stack([data.features[..., i] / _p90_scale(data.features[..., i])
                  for i in range(len(FEATURES))], axis=-1)
    return h, g


@dataclass
class ReaderDraws:
    """A reader's standard-normal draws (fixed by the seed; scaled by the panel parameters)."""

    name: str
    z_w: np.ndarray  # (T,)
    z_v: np.ndarray  # (F,)
    z_tex: np.ndarray  # (M + 1,) per recon method in RECON_TEXTURE order, then "unknown" (0)
    z_eta: np.ndarray  # (N, 2)
    z_jnd: float
    z_bias: float
    lapse: float
    coverage: float


@dataclass
class PanelParams:
    """Calibrated panel scales, in Q units (``kappa`` is dimensionless)."""

    sigma: float
    kappa: float
    jnd0: float
    expected: dict[str, float] = field(default_factory=dict)


def draw_readers(n_readers: int, n_pairs: int, rng: np.random.Generator,
                 coverage: float | None = None) -> list[ReaderDraws]:
    """Reader draws. Coverage (fraction of pairs a reader sees) follows the paper's vote counts
    for readers 1-7 (capped at 1) and U(0.5, 1) beyond, unless ``coverage`` is given."""
    readers = []
    for i in range(n_readers):
        cov = coverage if coverage is not None else (
            min(1.0, PAPER_VOTES[i] / PAPER_PAIRS) if i < len(PAPER_VOTES)
            else float(rng.uniform(0.5, 1.0)))
        readers.append(ReaderDraws(
            name=f"R{i + 1}", z_w=rng.standard_normal(len(ARTIFACTS)),
            z_v=rng.standard_normal(len(FEATURES)),
            z_tex=np.append(rng.standard_normal(len(RECON_TEXTURE)), 0.0),
            z_eta=rng.standard_normal((n_pairs, 2)), z_jnd=float(rng.standard_normal()),
            z_bias=float(rng.standard_normal()), lapse=float(rng.uniform(*LAPSE_RANGE)),
            coverage=cov))
    return readers


def recon_index(recon: np.ndarray) -> np.ndarray:
    """Index ``(N, 2)`` of each image's recon method in :data:`RECON_TEXTURE` (unknown: M)."""
    names = list(RECON_TEXTURE)
    return np.array([names.index(m) if m in names else len(names) for m in recon.ravel()],
                    np.int64).reshape(recon.shape)


def reader_quality(h: np.ndarray, g: np.ndarray, recon_idx: np.ndarray, d: ReaderDraws,
                   kappa: float) -> np.ndarray:
    """Reader's perceived quality ``Q`` ``(N, 2)`` (higher = better), see module docstring.

    Args:
        h: ``(N, 2, T)`` from :func:`normalised_terms`; g: ``(N, 2, F)``.
        recon_idx: ``(N, 2)`` from :func:`recon_index`.
        d: the reader's draws; kappa: the panel's idiosyncrasy scale.
    """
    w = np.array(list(ARTIFACT_WEIGHTS.values())) * np.exp(W_SPREAD * kappa * d.z_w)
    v = np.array(list(FEATURE_WEIGHTS.values())) * np.exp(V_SPREAD * kappa * d.z_v)
    tex_m = np.append(list(RECON_TEXTURE.values()), 0.0) + TEX_SPREAD * kappa * d.z_tex
    tex = tex_m[recon_idx]
    return -(h @ w) - (g @ v) - tex + ETA_SPREAD * kappa * d.z_eta


def outcome_probs(dq: np.ndarray, sigma: np.ndarray, jnd: np.ndarray, bias: np.ndarray,
                  lapse: np.ndarray) -> np.ndarray:
    """Probabilities ``(R, N, 3)`` (class order) of one presentation, averaged over the random
    left/right side: ``D = dq + bias*side + sigma*eps``, similar when ``|D| < jnd``.

    Args:
        dq: ``Q1 - Q2`` per reader and pair, ``(R, N)``.
        sigma, jnd, bias, lapse: per reader, ``(R,)`` (sigma > 0).
    """
    p1 = np.zeros_like(dq)
    p2 = np.zeros_like(dq)
    for side in (-1.0, 1.0):
        mu = dq + (bias * side)[:, None]
        p1 += 0.5 * ndtr((mu - jnd[:, None]) / sigma[:, None])
        p2 += 0.5 * ndtr((-mu - jnd[:, None]) / sigma[:, None])
    p = np.stack([p1, 1 - p1 - p2, p2], axis=-1)
    lam = lapse[:, None, None]
    return (1 - lam) * p + lam / 3


def expected_stats(probs: np.ndarray) -> dict[str, float]:
    """Expected intra (paper formula on a pair seen twice: ``(1 + sum p^2) / 2``), mean inter
    (``sum pA pB``) and "similar" rate of outcome probabilities ``(R, N, 3)``."""
    r = probs.shape[0]
    intra = float(np.mean((1 + np.sum(probs**2, -1)) / 2))
    m = np.einsum("anc,bnc->ab", probs, probs) / probs.shape[1]
    inter = float(m[np.triu_indices(r, 1)].mean()) if r > 1 else float("nan")
    return {"intra": intra, "inter": inter, "similar": float(probs[..., 1].mean())}


class Panel:
    """Readers, their perceived qualities and calibrated parameters for one pairs file."""

    def __init__(self, data: PairsData, n_readers: int, seed: int,
                 coverage: float | None = None) -> None:
        self.data = data
        self.rng = np.random.default_rng(seed)
        self.h, self.g = normalised_terms(data)
        self.recon_idx = recon_index(data.recon)
        self.draws = draw_readers(n_readers, data.n, self.rng, coverage)
        self.params: PanelParams | None = None
        self._dq_cache: tuple[float, np.ndarray] | None = None

    def quality(self, kappa: float) -> np.ndarray:
        """Every reader's ``Q`` ``(R, N, 2)``."""
        return np.stack([reader_quality(self.h, self.g, self.recon_idx, d, kappa)
                         for d in self.draws])

    def dq(self, kappa: float) -> np.ndarray:
        """``Q1 - Q2`` ``(R, N)`` (the last kappa's result is cached)."""
        if self._dq_cache is None or self._dq_cache[0] != kappa:
            q = self.quality(kappa)
            self._dq_cache = (kappa, q[..., 0] - q[..., 1])
        return self._dq_cache[1]

    def reader_arrays(self, sigma: float, kappa: float, jnd0: float) -> tuple[np.ndarray, ...]:
        """Per-reader noise SD, ``jnd``, ``bias`` and ``lapse`` ``(R,)`` in Q units: ``sigma``
        and ``jnd0`` are relative to each reader's median ``|Q1 - Q2|`` (``u_r``), so they keep
        their meaning whatever the idiosyncrasy ``kappa`` does to the scale of Q."""
        u = np.median(np.abs(self.dq(kappa)), axis=1)
        u = np.where(u > 0, u, 1.0)
        sd = sigma * u
        jnd = jnd0 * u * np.exp(JND_SPREAD * np.array([d.z_jnd for d in self.draws]))
        bias = BIAS_SPREAD * sd * np.array([d.z_bias for d in self.draws])
        lapse = np.array([d.lapse for d in self.draws])
        return sd, jnd, bias, lapse

    def expected(self, sigma: float, kappa: float, jnd0: float) -> dict[str, float]:
        """Closed-form expected statistics for these panel parameters."""
        return expected_stats(outcome_probs(self.dq(kappa),
                                            *self.reader_arrays(sigma, kappa, jnd0)))

    def calibrate(self, intra: float = TARGET_INTRA, inter: float = TARGET_INTER,
                  similar: float = TARGET_SIMILAR, rounds: int = 5,
                  steps: int = 24) -> PanelParams:
        """Coordinate-wise bisection of (jnd0 -> similar rate, sigma -> intra, kappa -> inter).

        With ``sigma`` and ``jnd0`` relative to each reader's typical difference, each statistic
        is monotone in its own parameter (similar up with jnd0, intra down with sigma, inter
        down with kappa) and nearly independent of the others, so a few rounds converge.
        Targets that cannot be reached end at the bracket's edge; the achieved values are in
        ``expected``.
        """
        sigma, kappa, jnd0 = 0.2, 1.0, 0.2

        def bisect(fn, lo: float, hi: float, target: float, increasing: bool,
                   log: bool) -> float:
            for _ in range(steps):
                mid = math.sqrt(lo * hi) if log else 0.5 * (lo + hi)
                if (fn(mid) < target) == increasing:
                    lo = mid
                else:
                    hi = mid
            return math.sqrt(lo * hi) if log else 0.5 * (lo + hi)

        for _ in range(rounds):
            jnd0 = bisect(lambda x, s=sigma, k=kappa: self.expected(s, k, x)["similar"],
                          1e-4, 20.0, similar, True, True)
            sigma = bisect(lambda x, k=kappa, j=jnd0: self.expected(x, k, j)["intra"],
                           1e-4, 20.0, intra, False, True)
            kappa = bisect(lambda x, s=sigma, j=jnd0: self.expected(s, x, j)["inter"],
                           0.0, 4.0, inter, False, False)
        self.params = PanelParams(sigma, kappa, jnd0, self.expected(sigma, kappa, jnd0))
        return self.params

    def simulate(self, repeat_fraction: float = 0.1, force: dict[str, Sequence[int]] | None = None,
                 start: datetime | None = None) -> list[Vote]:
        """Votes of every reader: a random subset of pairs (its coverage; plus pair indices in
        ``force[name]``), ``repeat_fraction`` of them shown a second time, in random order."""
        if self.params is None:
            self.calibrate()
        p = self.params
        assert p is not None
        dq = self.dq(p.kappa)
        sd, jnd, bias, lapse = self.reader_arrays(p.sigma, p.kappa, p.jnd0)
        rng, n = self.rng, self.data.n
        t = start or datetime(2024, 1, 8, 9, 0, 0)
        votes: list[Vote] = []
        for r, d in enumerate(self.draws):
            seen = rng.choice(n, size=max(1, round(d.coverage * n)), replace=False)
            if force and d.name in force:
                seen = np.union1d(seen, np.asarray(force[d.name], np.int64))
            reps = rng.choice(seen, size=round(repeat_fraction * len(seen)), replace=False)
            shows = rng.permutation(np.concatenate([seen, reps]))
            side = rng.choice([-1.0, 1.0], len(shows))
            D = dq[r, shows] + bias[r] * side + sd[r] * rng.standard_normal(len(shows))
            out = np.where(np.abs(D) < jnd[r], 1, np.where(D > 0, 0, 2))
            lapsed = rng.random(len(shows)) < lapse[r]
            out[lapsed] = rng.integers(0, 3, lapsed.sum())
            skipped = rng.random(len(shows)) < SKIP_RATE
            # close calls take longer (paper: 3.95 s per pair on average)
            secs = (2.0 + rng.lognormal(0.4, 0.5, len(shows))
                    + 2.0 * np.exp(-np.abs(dq[r, shows]) / max(jnd[r], 1e-9)))
            for i, idx in enumerate(shows):
                t += timedelta(seconds=float(secs[i]) + 0.5)
                votes.append(Vote(d.name, int(self.data.pair_id[idx]),
                                  SKIP if skipped[i] else OUTCOMES[out[i]],
                                  round(float(secs[i]), 2), t.isoformat(timespec="seconds")))
            t += timedelta(hours=20)  # next reader, another day
        return votes

    def simulate_likert(self, readers: Sequence[str], pairs: Sequence[int],
                        shift: float = LIKERT_SHIFT, noise: float = LIKERT_NOISE,
                        within: float = LIKERT_WITHIN) -> list[LikertScore]:
        """Likert 1-5 scores of both images of pair indices ``pairs`` by ``readers``.

        Each reader's own Q is turned into a normal score over all images of the file
        (``z = Phi^-1(rank / (2N + 1))``, the reader's internal scale); seen alone, the two
        images of a pair are told apart less well: ``z' = zbar + within * (z - zbar)`` (zbar
        the pair's mean); then ``L = z' + shift_r + noise * eps`` with ``shift_r`` spread
        evenly in ``[-shift, shift]`` over the readers (baseline shifts between readers), cut
        at the normal quantiles of 10/30/55/80 %. Images are scored one at a time, in random
        order per reader.
        """
        p = self.params or self.calibrate()
        rng = self.rng
        names = [d.name for d in self.draws]
        q_all = self.quality(p.kappa)
        cuts = ndtri(np.array(LIKERT_CUTS))
        shifts = np.linspace(-shift, shift, len(readers)) if len(readers) > 1 else [0.0]
        scores = []
        for name, sh in zip(readers, shifts, strict=True):
            q = q_all[names.index(name)].ravel()
            z = ndtri((np.argsort(np.argsort(q)) + 1) / (q.size + 1)).reshape(-1, 2)
            zbar = z.mean(1, keepdims=True)
            z = zbar + within * (z - zbar)
            items = [(int(i), j) for i in pairs for j in (0, 1)]
            for k in rng.permutation(len(items)):
                i, j = items[k]
                val = z[i, j] + sh + noise * rng.standard_normal()
                scores.append(LikertScore(name, int(self.data.pair_id[i]), j + 1,
                                          int(np.searchsorted(cuts, val)) + 1,
                                          round(float(2.5 + rng.lognormal(0.5, 0.4)), 2)))
        return scores


def metric_labels(data: PairsData) -> dict[str, dict[int, str]]:
    """Pair ranks by MSE (lower better) and SSIM (higher better): name -> pair_id -> outcome."""
    from rankiq.service.readers.agreement import metric_outcome

    out: dict[str, dict[int, str]] = {"mse": {}, "ssim": {}}
    for k, pid in enumerate(data.pair_id):
        if np.all(np.isfinite(data.mse[k])):
            m1, m2 = data.mse[k]
            out["mse"][int(pid)] = metric_outcome(m1, m2, lower_is_better=True)
        if np.all(np.isfinite(data.ssim[k])):
            s1, s2 = data.ssim[k]
            out["ssim"][int(pid)] = metric_outcome(s1, s2, lower_is_better=False)
    return out


def observer_labels(panel: Panel) -> dict[str, dict[int, str]]:
    """Pair ranks of the noise-free panel-mean observer and of its parts: name -> pair_id ->
    outcome (``"1"``/``"2"``, ``"similar"`` on an exact tie).

    The observer is every reader at ``kappa = 0`` (the panel-mean weights, no idiosyncrasy, no
    vote noise, no just-noticeable difference): its agreement with the consensus is the ceiling
    of what a metric that perceived exactly as the average simulated reader would reach. Its
    parts say what that ceiling rests on: ``"observer"`` (all terms), ``"severities"`` (the
    artefact terms ``h``, which need to know how strongly each corruption was applied),
    ``"image_measures"`` (the reference-based terms ``g``) and each image measure alone
    (:data:`FEATURES`).
    """
    from rankiq.service.readers.agreement import metric_outcome

    h, g = panel.h, panel.g
    w = np.array(list(ARTIFACT_WEIGHTS.values()))
    v = np.array(list(FEATURE_WEIGHTS.values()))
    # every reader at kappa 0 perceives the same: the panel-mean weights, no taste
    observer = -reader_quality(h, g, panel.recon_idx, panel.draws[0], 0.0)
    badness = {"observer": observer, "severities": h @ w, "image_measures": g @ v}
    badness |= {name: g[..., k] for k, name in enumerate(FEATURE_WEIGHTS)}
    return {name: {int(pid): metric_outcome(float(b[i, 0]), float(b[i, 1]), lower_is_better=True)
                   for i, pid in enumerate(panel.data.pair_id)}
            for name, b in badness.items()}


def read_metric_labels(path: Path | str) -> dict[str, dict[int, str]]:
    """MSE and SSIM pair ranks from a pairs file without reading its images."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise UnreadableInput(f"not a readable HDF5 file ({exc})", source=str(path)) from None
    with f:
        if "pair_id" not in f or "mse" not in f or "ssim" not in f:
            raise UnreadableInput("missing /pair_id, /mse or /ssim", source=str(path))
        n = _valid_rows(f)
        data = PairsData(pair_id=f["pair_id"][:n].astype(np.int64), severity={},
                         recon=np.full((n, 2), "", object), contrast=np.full(n, "", object),
                         mse=f["mse"][:n].astype(np.float64),
                         ssim=f["ssim"][:n].astype(np.float64),
                         features=np.zeros((n, 2, len(FEATURES))))
    return metric_labels(data)
