"""Compiled array kernels of the no-reference features (:mod:`rankiq.service.noref`).

Each kernel is one pass (or two) over an analysis-grid slice that replaces a chain of
NumPy/SciPy calls, with the same result: the integer-valued ones (hole filling, distance
maps) exactly, the floating-point ones to round-off (sums taken in another order). The
definitions live in :mod:`rankiq.service.noref`; the tests compare every kernel with the SciPy
computation it replaces.

Compiled with Numba on first use and cached on disk (``cache=True``: the package's
``__pycache__``, or Numba's user-wide cache when that is read-only), so a fresh process
loads them in milliseconds once any process on the machine has compiled them.

Arrays: ``x`` float64 ``(H, W)``; masks bool ``(H, W)``.
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)


@numba.njit(cache=True, inline="always")
def _reflect(i: int, n: int) -> int:
    """Index ``i`` mirrored into ``0..n-1`` about the half-sample edges, repeatedly (SciPy's
    ``mode="reflect"``, NumPy's ``pad(mode="symmetric")``): period ``2n``."""
    i %= 2 * n  # Python semantics: non-negative
    return 2 * n - 1 - i if i >= n else i


@_jit
def smooth(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable correlation of ``x`` with the odd 1D kernel ``w`` along both axes (axis 0
    first), edges reflected: ``scipy.ndimage.gaussian_filter`` when ``w`` is its kernel.
    Float64 ``(H, W)``; the kernel's radius must not exceed either side."""
    n0, n1 = x.shape
    r = (w.size - 1) // 2
    tmp = np.zeros((n0, n1))
    for i in range(n0):
        for k in range(-r, r + 1):
            row = _reflect(i + k, n0)
            wk = w[k + r]
            for j in range(n1):  # contiguous: vectorised
                tmp[i, j] += wk * x[row, j]
    out = np.zeros((n0, n1))
    buf = np.empty(n1 + 2 * r)
    for i in range(n0):
        for j in range(n1 + 2 * r):
            buf[j] = tmp[i, _reflect(j - r, n1)]
        for k in range(2 * r + 1):
            wk = w[k]
            for j in range(n1):
                out[i, j] += wk * buf[j + k]
    return out


@_jit
def fill_holes(m: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(m)``: background (4-connected) not reachable from
    the border is filled. One flood fill from the border pixels."""
    n0, n1 = m.shape
    outside = np.zeros((n0, n1), np.bool_)
    stack = np.empty(2 * n0 * n1, np.int64)  # each pixel is pushed at most once
    top = 0
    for i in range(n0):
        for j in range(n1):
            if (i == 0 or j == 0 or i == n0 - 1 or j == n1 - 1) and not m[i, j]:
                outside[i, j] = True
                stack[top] = i
                stack[top + 1] = j
                top += 2
    while top > 0:
        top -= 2
        i = stack[top]
        j = stack[top + 1]
        for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
            if 0 <= a < n0 and 0 <= b < n1 and not m[a, b] and not outside[a, b]:
                outside[a, b] = True
                stack[top] = a
                stack[top + 1] = b
                top += 2
    return ~outside


@_jit
def taxicab(fg: np.ndarray) -> np.ndarray:
    """City-block distance (px) of every pixel to the nearest ``fg`` pixel, int32 ``(H, W)``
    (``scipy.ndimage.distance_transform_cdt(~fg, metric="taxicab")``; ``fg`` not empty).
    Two raster passes, exact for the 4-neighbour metric."""
    n0, n1 = fg.shape
    d = np.empty((n0, n1), np.int32)
    far = n0 + n1
    for i in range(n0):
        for j in range(n1):
            if fg[i, j]:
                d[i, j] = 0
                continue
            v = far
            if i > 0 and d[i - 1, j] + 1 < v:
                v = d[i - 1, j] + 1
            if j > 0 and d[i, j - 1] + 1 < v:
                v = d[i, j - 1] + 1
            d[i, j] = v
    for i in range(n0 - 1, -1, -1):
        for j in range(n1 - 1, -1, -1):
            v = d[i, j]
            if i < n0 - 1 and d[i + 1, j] + 1 < v:
                v = d[i + 1, j] + 1
            if j < n1 - 1 and d[i, j + 1] + 1 < v:
                v = d[i, j + 1] + 1
            d[i, j] = v
    return d


@_jit
def squared_distance(fg: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance (px², exact integers as float64) of every pixel to the
    nearest ``fg`` pixel, ``(H, W)``; ``-1`` in rows that no foreground column reaches (only
    when ``fg`` is empty). Felzenszwalb and Huttenlocher's two 1D passes: the distance along
    each column, then the lower envelope of parabolas along each row (linear time)."""
    n0, n1 = fg.shape
    # distance along the column (-1: no foreground in the column), row by row (cache order)
    g = np.empty((n0, n1), np.int64)
    last = np.full(n1, -1, np.int64)
    for i in range(n0):
        for j in range(n1):
            if fg[i, j]:
                last[j] = i
            g[i, j] = i - last[j] if last[j] >= 0 else -1
    last[:] = -1
    for i in range(n0 - 1, -1, -1):
        for j in range(n1):
            if fg[i, j]:
                last[j] = i
            if last[j] >= 0 and (g[i, j] < 0 or last[j] - i < g[i, j]):
                g[i, j] = last[j] - i
    out = np.full((n0, n1), -1.0)
    v = np.empty(n1, np.int64)  # columns of the parabolas of the envelope
    z = np.empty(n1 + 1)  # where each parabola of the envelope begins
    f = np.empty(n1)
    for i in range(n0):
        k = -1
        for q in range(n1):
            if g[i, q] < 0:
                continue  # no foreground in this column: no parabola
            f[q] = float(g[i, q] * g[i, q])
            if k < 0:
                k = 0
                v[0] = q
                z[0] = -np.inf
                z[1] = np.inf
                continue
            p = v[k]
            s = ((f[q] + q * q) - (f[p] + p * p)) / (2.0 * (q - p))
            while s <= z[k]:
                k -= 1
                p = v[k]
                s = ((f[q] + q * q) - (f[p] + p * p)) / (2.0 * (q - p))
            k += 1
            v[k] = q
            z[k] = s
            z[k + 1] = np.inf
        if k < 0:
            continue
        k = 0
        for q in range(n1):
            while z[k + 1] < q:
                k += 1
            p = v[k]
            out[i, q] = (q - p) * (q - p) + f[p]
    return out


@_jit
def laplacian(x: np.ndarray) -> np.ndarray:
    """Immerkaer's kernel ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` applied to ``x``, edges extended
    (``scipy.ndimage.convolve(x, kernel, mode="nearest")``), float64 ``(H, W)``."""
    n0, n1 = x.shape
    out = np.empty((n0, n1))
    for i in range(n0):
        up = max(i - 1, 0)
        dn = min(i + 1, n0 - 1)
        for j in range(n1):
            lf = max(j - 1, 0)
            rt = min(j + 1, n1 - 1)
            out[i, j] = ((x[up, lf] + x[up, rt] + x[dn, lf] + x[dn, rt])
                         - 2.0 * (x[up, j] + x[dn, j] + x[i, lf] + x[i, rt]) + 4.0 * x[i, j])
    return out


@_jit
def _select(a: np.ndarray, k: int) -> float:
    """The ``k``-th smallest value of float64 ``(N,)`` ``a`` (0-based; ``a`` is not changed).

    Histogram selection instead of quickselect: tissue and air intensities are often a few
    hundred distinct integers, where partitioning around pivots is slow. Each round bins the
    candidates into 1,024 equal bins between their extremes and keeps the bin that holds the
    ``k``-th value (the same float expression places a value in both passes); it ends when the
    candidates are all equal or few enough to sort."""
    cand = a
    while True:
        n = cand.size
        lo = cand[0]
        hi = cand[0]
        for v in cand:
            if v < lo:
                lo = v
            elif v > hi:
                hi = v
        if lo == hi:
            return lo
        if n <= 64:
            return np.sort(cand)[k]
        bins = 1024
        scale = bins / (hi - lo)
        counts = np.zeros(bins, np.int64)
        for v in cand:
            counts[min(int((v - lo) * scale), bins - 1)] += 1
        below = 0
        b = 0
        while below + counts[b] <= k:
            below += counts[b]
            b += 1
        keep = np.empty(counts[b])
        m = 0
        for v in cand:
            if min(int((v - lo) * scale), bins - 1) == b:
                keep[m] = v
                m += 1
        cand = keep
        k -= below


@_jit
def median(a: np.ndarray) -> float:
    """``numpy.median`` of float64 ``(N,)`` ``a`` (N > 0), by :func:`_select`."""
    n = a.size
    if n % 2:
        return _select(a, n // 2)
    return (_select(a, n // 2 - 1) + _select(a, n // 2)) / 2.0


@_jit
def masked_median(v: np.ndarray, m: np.ndarray, absolute: bool) -> float:
    """Median of ``v[m]`` (of ``|v[m]|`` when ``absolute``); NaN when ``m`` is empty."""
    buf = np.empty(int(m.sum()))
    k = 0
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            if m[i, j]:
                buf[k] = abs(v[i, j]) if absolute else v[i, j]
                k += 1
    if k == 0:
        return np.nan
    return median(buf)


@_jit
def blur_sums(x: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Per axis, the sum of the absolute first differences of ``x`` over pairs of adjacent
    ``fg`` pixels and the part of it that a 9-pixel box mean (edges reflected) removes:
    float64 ``[s_0, v_0, s_1, v_1]``, the Crete-Roffet sums (blur of axis k =
    ``(s_k - v_k) / s_k``)."""
    n0, n1 = x.shape
    out = np.zeros(4)
    for i in range(n0 - 1):  # axis 0: pairs (i, j), (i + 1, j)
        hi = _reflect(i + 5, n0)
        lo = _reflect(i - 4, n0)
        for j in range(n1):
            if fg[i, j] and fg[i + 1, j]:
                d = abs(x[i + 1, j] - x[i, j])
                out[0] += d
                out[1] += max(0.0, d - abs(x[hi, j] - x[lo, j]) / 9.0)
    his = np.empty(n1, np.int64)
    los = np.empty(n1, np.int64)
    for j in range(n1):
        his[j] = _reflect(j + 5, n1)
        los[j] = _reflect(j - 4, n1)
    for i in range(n0):  # axis 1: pairs (i, j), (i, j + 1)
        for j in range(n1 - 1):
            if fg[i, j] and fg[i, j + 1]:
                d = abs(x[i, j + 1] - x[i, j])
                out[2] += d
                out[3] += max(0.0, d - abs(x[i, his[j]] - x[i, los[j]]) / 9.0)
    return out


def efc_entropy(x: np.ndarray) -> float:
    """``-sum p log p`` with ``p = v / sqrt(sum v²)`` over the positive pixels ``v`` of ``x``
    (0 when there are none), as ``-(sum v log v - log(b) sum v) / b`` with ``b = sqrt(sum
    v²)``. Not compiled: NumPy's vectorised logarithm is about ten times Numba's scalar one."""
    v = np.maximum(np.asarray(x, dtype=np.float64), 0.0).ravel()
    # sums of products, not np.dot: BLAS would start its own threads in every QA worker
    ss = float((v * v).sum())
    if ss <= 0:
        return 0.0
    b = float(np.sqrt(ss))
    logs = np.log(v, out=np.zeros_like(v), where=v > 0)  # 0 log 0 = 0
    return -(float((v * logs).sum()) - float(np.log(b)) * float(v.sum())) / b


@_jit
def band_energy(f: np.ndarray, band: np.ndarray, bands: int) -> np.ndarray:
    """Spectral energy per radial band of a real ``n x n`` slice from its half spectrum
    ``f`` (complex ``(n, n // 2 + 1)``, :func:`scipy.fft.rfft2`), DC excluded: float64
    ``(bands,)``. ``band``: int ``(n, n // 2 + 1)``, each frequency's band. A column whose
    mirror ``n - c`` is not in the half counts twice (the energy of the whole spectrum)."""
    n = f.shape[0]
    e = np.zeros(bands)
    for i in range(n):
        for j in range(f.shape[1]):
            if i == 0 and j == 0:
                continue
            v = f[i, j]
            p = v.real * v.real + v.imag * v.imag
            e[band[i, j]] += 2.0 * p if 0 < j < n - j else p
    return e


@_jit
def reach_ratio(x: np.ndarray, air: np.ndarray, d2: np.ndarray) -> float:
    """``air_reach``: over the ``air`` pixels, the excess-weighted mean over the plain mean of
    their distances ``sqrt(d2)``, the excess being ``max(x - median(x[air]), 0)``; 1 when
    there is no excess or no distance, at least 1e-3."""
    n = int(air.sum())
    a = np.empty(n)
    d = np.empty(n)
    k = 0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if air[i, j]:
                a[k] = x[i, j]
                d[k] = np.sqrt(d2[i, j])
                k += 1
    med = median(a)
    ex_sum = 0.0
    ex_dist = 0.0
    dist_sum = 0.0
    for k in range(n):
        dist_sum += d[k]
        e = a[k] - med
        if e > 0:
            ex_sum += e
            ex_dist += e * d[k]
    if ex_sum <= 0 or dist_sum <= 0:
        return 1.0
    return max((ex_dist / ex_sum) / (dist_sum / n), 1e-3)


@_jit
def air_sums(x: np.ndarray, air: np.ndarray, dist: np.ndarray, far_cut: int) -> np.ndarray:
    """Sums over the air pixels: float64 ``[n, sum x, n_far, sum x far, n_live, sum x live,
    sum x² live]``; *far*: ``dist > far_cut``; *live*: ``x > 0`` (what the scanner left
    unmasked)."""
    out = np.zeros(7)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if air[i, j]:
                v = x[i, j]
                out[0] += 1
                out[1] += v
                if dist[i, j] > far_cut:
                    out[2] += 1
                    out[3] += v
                if v > 0:
                    out[4] += 1
                    out[5] += v
                    out[6] += v * v
    return out


@_jit
def ghost_sums(x: np.ndarray, fg: np.ndarray, air: np.ndarray) -> np.ndarray:
    """Air beside the foreground: float64 ``[n, sum x]`` of the air in the foreground's
    columns (above/below it), then ``[n, sum x]`` of the air in its rows (left/right)."""
    n0, n1 = x.shape
    in_col = np.zeros(n1, np.bool_)
    in_row = np.zeros(n0, np.bool_)
    for i in range(n0):
        for j in range(n1):
            if fg[i, j]:
                in_row[i] = True
                in_col[j] = True
    out = np.zeros(4)
    for i in range(n0):
        for j in range(n1):
            if air[i, j]:
                if in_col[j]:
                    out[0] += 1
                    out[1] += x[i, j]
                if in_row[i]:
                    out[2] += 1
                    out[3] += x[i, j]
    return out
