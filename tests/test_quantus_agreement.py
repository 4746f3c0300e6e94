"""Our localisation and complexity metrics against Quantus where the definitions agree (docs/checks.md).

Agreement needs: non-negative maps for relevance mass (Quantus uses the signed map), tolerance 0 and a single
maximum for the pointing game (Quantus has no tolerance and counts any tied maximum), no ties for relevance rank
(Quantus breaks ties in numpy's unstable order), and maps without all-zero rows (Quantus adds epsilons).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from saliencekit import trust

quantus = pytest.importorskip("quantus", reason="the comparison needs Quantus (pip install quantus)")


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n, h, w = 12, 20, 24
    a = rng.random((n, 1, h, w))  # non-negative, continuous: no ties
    a[::3] **= 4  # some peaked maps
    s = np.zeros((n, 1, h, w))
    for i in range(n):
        y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
        s[i, 0, y:y + rng.integers(2, 7), x:x + rng.integers(2, 7)] = 1
    # a few maps whose maximum lies inside the mask, so that the pointing game has hits
    for i in (1, 4, 7):
        ys, xs = np.nonzero(s[i, 0])
        a[i, 0, ys[0], xs[0]] = 2.0
    return a, s, rng.random((n, 1, h, w))


def _quantus(metric: object, a: np.ndarray, s: np.ndarray, x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(model=None, x_batch=x, y_batch=np.zeros(len(a), dtype=int), a_batch=a, s_batch=s)
    return np.asarray(out, dtype=np.float64)


@pytest.mark.parametrize(("ours", "theirs"), [
    (lambda a, s: trust.pointing_game(a, s, tolerance=0), lambda: quantus.PointingGame(disable_warnings=True)),
    (trust.relevance_mass, lambda: quantus.RelevanceMassAccuracy(disable_warnings=True)),
    (trust.relevance_rank, lambda: quantus.RelevanceRankAccuracy(disable_warnings=True)),
], ids=["pointing_game", "relevance_mass", "relevance_rank"])
def test_localisation_agrees_with_quantus(batch: tuple, ours: object, theirs: object) -> None:
    a, s, x = batch
    want = _quantus(theirs(), a, s, x)
    got = ours(torch.from_numpy(a[:, 0]), torch.from_numpy(s[:, 0]) > 0).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    if "PointingGame" in type(theirs()).__name__:
        assert 0 < got.sum() < len(got)  # both hits and misses were compared


@pytest.mark.parametrize(("ours", "theirs", "tol"), [
    (trust.sparseness, lambda: quantus.Sparseness(disable_warnings=True), 1e-6),  # Quantus adds 1e-7 to every value
    (trust.complexity, lambda: quantus.Complexity(disable_warnings=True), 1e-8),  # Quantus: log(p + 1e-12)
], ids=["sparseness", "complexity"])
def test_complexity_agrees_with_quantus(batch: tuple, ours: object, theirs: object, tol: float) -> None:
    a, s, x = batch
    want = _quantus(theirs(), a, s, x)
    got = ours(torch.from_numpy(a[:, 0])).numpy()
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_differences_from_quantus_that_the_docs_name(batch: tuple) -> None:
    a, s, x = batch
    # an empty mask: Quantus 0.6 scores a pointing-game hit, we give NaN (no mask, no game)
    s_empty = s.copy()
    s_empty[0] = 0
    q = _quantus(quantus.PointingGame(disable_warnings=True), a, s_empty, x)
    ours = trust.pointing_game(torch.from_numpy(a[:, 0]), torch.from_numpy(s_empty[:, 0]) > 0, tolerance=0)
    assert q[0] == 1.0 and np.isnan(ours[0].item())
    # signed maps: Quantus' relevance mass uses the signed sum, ours only the positive part
    signed = a - 0.5
    q = _quantus(quantus.RelevanceMassAccuracy(disable_warnings=True), signed, s, x)
    ours = trust.relevance_mass(torch.from_numpy(signed[:, 0]), torch.from_numpy(s[:, 0]) > 0).numpy()
    pos = np.clip(signed[:, 0], 0, None).reshape(len(a), -1)
    m = s[:, 0].reshape(len(a), -1)
    np.testing.assert_allclose(ours, (pos * m).sum(1) / pos.sum(1), rtol=1e-12)
    flat = signed[:, 0].reshape(len(a), -1)
    np.testing.assert_allclose(q, (flat * m).sum(1) / flat.sum(1), rtol=1e-9)
    assert not np.allclose(q, ours)
