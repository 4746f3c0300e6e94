"""Slow, literal reference implementations of the trust metrics, written straight from the definitions.

One image at a time, plain Python loops and numpy / scipy; the fast batched tensor versions in
saliencekit.trust must agree with these in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.sparse
import scipy.sparse.linalg


def average_ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mean_rank = (i + 1 + j + 1) / 2
        for k in range(i, j + 1):
            ranks[order[k]] = mean_rank
        i = j + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def spearman(a: np.ndarray, b: np.ndarray, absolute: bool = False) -> float:
    x, y = a.ravel().tolist(), b.ravel().tolist()
    if absolute:
        x, y = [abs(v) for v in x], [abs(v) for v in y]
    return pearson(average_ranks(x), average_ranks(y))


def minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def hog_correlation(a: np.ndarray, b: np.ndarray, pixels_per_cell: int) -> float:
    from skimage.feature import hog

    fa = hog(minmax(a), orientations=9, pixels_per_cell=(pixels_per_cell,) * 2, cells_per_block=(2, 2))
    fb = hog(minmax(b), orientations=9, pixels_per_cell=(pixels_per_cell,) * 2, cells_per_block=(2, 2))
    return pearson(fa.tolist(), fb.tolist())


def topk_iou(a: np.ndarray, b: np.ndarray, k: float) -> float:
    n = a.size
    kk = max(1, round(k * n))
    xa, xb = np.abs(a.ravel()).tolist(), np.abs(b.ravel()).tolist()
    top_a = set(sorted(range(n), key=lambda i: (-xa[i], i))[:kk])
    top_b = set(sorted(range(n), key=lambda i: (-xb[i], i))[:kk])
    return len(top_a & top_b) / len(top_a | top_b)


def pointing_game(m: np.ndarray, mask: np.ndarray, tolerance: float) -> float:
    if not mask.any():
        return math.nan
    if m.max() == m.min():
        return 0.0
    h, w = m.shape
    best = None
    for y in range(h):  # first maximum in row-major order
        for x in range(w):
            if best is None or m[y, x] > m[best]:
                best = (y, x)
    dist = min(math.hypot(y - best[0], x - best[1]) for y in range(h) for x in range(w) if mask[y, x])
    return 1.0 if dist <= tolerance else 0.0


def relevance_mass(m: np.ndarray, mask: np.ndarray) -> float:
    inside = sum(max(v, 0.0) for v, t in zip(m.ravel(), mask.ravel()) if t)
    total = sum(max(v, 0.0) for v in m.ravel())
    return inside / total if total > 0 and mask.any() else math.nan


def relevance_rank(m: np.ndarray, mask: np.ndarray) -> float:
    k = int(mask.sum())
    if k == 0:
        return math.nan
    vals, flags = m.ravel().tolist(), mask.ravel().tolist()
    top = sorted(range(len(vals)), key=lambda i: (-vals[i], i))[:k]
    return sum(1 for i in top if flags[i]) / k


def mask_share(m: np.ndarray, mask: np.ndarray) -> float:
    total = float(np.abs(m).sum())
    return float(np.abs(m)[mask].sum()) / total if total > 0 and mask.any() else math.nan


def gini(m: np.ndarray) -> float:
    """Hurley & Rickard 2009: G = 1 - 2 sum_k (c_(k) / ||c||_1) (n - k + 1/2) / n, c sorted ascending."""
    c = sorted(abs(v) for v in m.ravel().tolist())
    n, total = len(c), sum(c)
    if total == 0:
        return math.nan
    return 1 - 2 * sum((c[k - 1] / total) * (n - k + 0.5) / n for k in range(1, n + 1))


def entropy(m: np.ndarray) -> float:
    a = [abs(v) for v in m.ravel().tolist()]
    total = sum(a)
    if total == 0:
        return math.nan
    return -sum((v / total) * math.log(v / total) for v in a if v > 0)


def deletion_curve(score: Callable[[np.ndarray], float], image: np.ndarray, m: np.ndarray, steps: int,
                   end: np.ndarray) -> tuple[list[float], list[float], float]:
    """One image (C, H, W): move pixels from ``image`` to ``end``, most salient first; trapezoid area."""
    _, h, w = image.shape
    vals = m.ravel().tolist()
    order = sorted(range(h * w), key=lambda i: (-vals[i], i))
    fractions, scores = [], []
    for s in range(steps + 1):
        f = s / steps
        count = round(f * h * w)
        x = image.copy()
        for i in order[:count]:
            y, xx = divmod(i, w)
            x[:, y, xx] = end[:, y, xx]
        fractions.append(f)
        scores.append(score(x))
    auc = sum((fractions[i + 1] - fractions[i]) * (scores[i] + scores[i + 1]) / 2 for i in range(steps))
    return fractions, scores, auc


NEIGHBOURS = [((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
              ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6)]


def linear_imputation(plane: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Rong et al. 2022's sparse system (their setup_sparse_system), solved directly with scipy.

    For each removed pixel i: -s_i x_i + sum_{removed nbr j} w_j x_j = -sum_{kept nbr j} w_j v_j, with s_i the
    weight sum of the neighbours inside the image.
    """
    h, w = plane.shape
    idx = [(y, x) for y in range(h) for x in range(w) if removed[y, x]]
    var = {p: k for k, p in enumerate(idx)}
    a = scipy.sparse.lil_matrix((len(idx), len(idx)))
    b = np.zeros(len(idx))
    for k, (y, x) in enumerate(idx):
        s = 0.0
        for (dy, dx), wt in NEIGHBOURS:
            yy, xx = y + dy, x + dx
            if not (0 <= yy < h and 0 <= xx < w):
                continue
            s += wt
            if removed[yy, xx]:
                a[k, var[(yy, xx)]] = wt
            else:
                b[k] -= wt * plane[yy, xx]
        a[k, k] = -s
    sol = scipy.sparse.linalg.spsolve(a.tocsc(), b)
    out = plane.astype(np.float64).copy()
    for k, (y, x) in enumerate(idx):
        out[y, x] = sol[k]
    return out
