"""Pure trust metrics: similarity, localisation, complexity, statistics, against known values and references."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from skimage.metrics import structural_similarity

from reference import ref_metrics as ref
from saliencekit.errors import InputError, UnknownNameError
from saliencekit.trust.complexity_metrics import complexity, max_sensitivity, sparseness
from saliencekit.trust.localization import (
    energy_pointing_game,
    mask_share,
    pointing_game,
    relevance_mass,
    relevance_rank,
)
from saliencekit.trust.similarity import (
    hog_correlation,
    hog_features,
    minmax_normalize,
    null_level,
    null_level_from_maps,
    pearson,
    random_maps,
    similarity_all,
    spearman,
    ssim,
    topk_iou,
)
from saliencekit.trust.stats import bootstrap_ci, rank_methods, summarize


def _maps(n: int, h: int, w: int, seed: int, device: torch.device, smooth: float = 1.5) -> torch.Tensor:
    return random_maps((h, w), n, generator=seed, smoothing=smooth, device=device)


# --------------------------------------------------------------------------------------------- similarity


def test_spearman_matches_scipy_with_ties(device):
    a = _maps(3, 12, 10, 1, device)
    b = a + 0.5 * _maps(3, 12, 10, 2, device)
    a = torch.round(a * 20) / 20  # many ties
    b[1] = torch.round(b[1] * 5) / 5
    got, got_abs = spearman(a, b).cpu(), spearman(a, b, absolute=True).cpu()
    assert got.device.type == "cpu" and got.dtype == torch.float64
    an, bn = a.cpu().numpy(), b.cpu().numpy()
    for i in range(3):
        want = scipy.stats.spearmanr(an[i].ravel(), bn[i].ravel())[0]
        want_abs = scipy.stats.spearmanr(np.abs(an[i]).ravel(), np.abs(bn[i]).ravel())[0]
        assert got[i].item() == pytest.approx(want, abs=1e-12)
        assert got_abs[i].item() == pytest.approx(want_abs, abs=1e-12)
        assert got[i].item() == pytest.approx(ref.spearman(an[i], bn[i]), abs=1e-12)
    assert spearman(a, b).device == a.device


def test_self_similarity_is_one_and_constant_is_nan(device):
    a = _maps(2, 24, 24, 3, device)
    for name, v in similarity_all(a, a).items():
        assert torch.allclose(v.cpu(), torch.ones(2, dtype=torch.float64), atol=1e-12), name
    assert torch.allclose(topk_iou(a, a).cpu(), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(spearman(a, -a).cpu(), -torch.ones(2, dtype=torch.float64))
    const = torch.zeros_like(a)
    assert torch.isnan(spearman(a, const)).all()
    assert torch.isnan(pearson(const, a)).all()


def test_pearson_matches_numpy(device):
    a, b = _maps(3, 9, 11, 4, device), _maps(3, 9, 11, 5, device)
    got = pearson(a, b).cpu().numpy()
    for i in range(3):
        assert got[i] == pytest.approx(np.corrcoef(a[i].cpu().numpy().ravel(), b[i].cpu().numpy().ravel())[0, 1])


def test_ssim_matches_skimage(device):
    a = _maps(3, 30, 36, 6, device) * 3 + 1
    b = a + _maps(3, 30, 36, 7, device)
    got = ssim(a, b).cpu().numpy()
    got_raw = ssim(a, b, normalize=False, data_range=4.0).cpu().numpy()
    an, bn = minmax_normalize(a).cpu().numpy(), minmax_normalize(b).cpu().numpy()
    for i in range(3):
        want = structural_similarity(an[i], bn[i], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
        want_raw = structural_similarity(a[i].cpu().numpy(), b[i].cpu().numpy(), data_range=4.0,
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert got[i] == pytest.approx(want, abs=1e-10)
        assert got_raw[i] == pytest.approx(want_raw, abs=1e-10)
    assert (got < 0.999).all()
    with pytest.raises(InputError, match="at least 11x11"):
        ssim(a[:, :8, :8], b[:, :8, :8])


@pytest.mark.parametrize("smooth", [0.0, 3.0])
@pytest.mark.parametrize("shape,ppc,orientations,cpb", [((64, 64), None, 9, 2), ((37, 53), 4, 7, 3),
                                                         ((96, 96), 8, 9, 2)])
def test_hog_features_match_skimage(device, smooth, shape, ppc, orientations, cpb):
    from skimage.feature import hog

    maps = _maps(3, *shape, 11, device, smooth=smooth)
    got = hog_features(maps, orientations=orientations, pixels_per_cell=ppc, cells_per_block=cpb)
    assert got.device == maps.device and got.dtype == torch.float64
    got = got.cpu().numpy()
    cell = ppc or max(2, min(shape) // 16)
    for i, m in enumerate(maps.cpu().numpy()):
        want = hog(ref.minmax(m), orientations=orientations, pixels_per_cell=(cell, cell),
                   cells_per_block=(cpb, cpb), block_norm="L2-Hys", feature_vector=True)
        assert got[i].shape == want.shape
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-6)
        assert np.corrcoef(got[i], want)[0, 1] > 0.999999


def test_hog_and_topk_match_reference(device):
    a = _maps(2, 32, 32, 8, device, smooth=2.0)
    b = a + 0.3 * _maps(2, 32, 32, 9, device, smooth=2.0)
    got = hog_correlation(a, b).cpu().numpy()
    iou = topk_iou(a, b, k=0.2).cpu().numpy()
    an, bn = a.cpu().numpy(), b.cpu().numpy()
    for i in range(2):
        # skimage sums cells in single precision: agreement to ~1e-7, not 1e-10
        assert got[i] == pytest.approx(ref.hog_correlation(an[i], bn[i], pixels_per_cell=2), abs=1e-6)
        assert iou[i] == pytest.approx(ref.topk_iou(an[i], bn[i], 0.2))
    assert 0 < iou.min() and iou.max() < 1
    disjoint_a = torch.zeros(1, 4, 4, device=device)
    disjoint_b = torch.zeros(1, 4, 4, device=device)
    disjoint_a[0, 0, :2] = 1
    disjoint_b[0, 3, :2] = 1
    assert topk_iou(disjoint_a, disjoint_b, k=2 / 16).item() == 0.0


def test_null_level_is_low_and_reproducible(device):
    level = null_level((32, 32), n=8, generator=0, device=device)
    again = null_level((32, 32), n=8, generator=0, device=device)
    assert set(level) == {"spearman_abs", "spearman", "ssim", "hog"}
    for k in level:
        assert level[k].shape == (8,)
        assert torch.equal(level[k], again[k])
        assert abs(level[k].mean().item()) < 0.35, k
    # related maps sit clearly above the null level
    a = _maps(8, 32, 32, 11, device, smooth=1.0)
    close = similarity_all(a, a + 0.2 * _maps(8, 32, 32, 12, device, smooth=1.0))
    for k in level:
        assert close[k].mean() > level[k].mean() + 0.3, k
    shuffled = null_level_from_maps(a)
    assert abs(shuffled["spearman"].mean().item()) < 0.35
    with pytest.raises(UnknownNameError):
        similarity_all(a, a, metrics=["nope"])
    with pytest.raises(InputError, match="same shape"):
        spearman(a, a[:, :5])


# --------------------------------------------------------------------------------------------- localisation


def test_relevance_mass_known_values(device):
    masks = torch.zeros(2, 10, 12, dtype=torch.bool, device=device)
    masks[0, 2:5, 3:7] = True
    masks[1, 6:, :] = True
    assert torch.allclose(relevance_mass(masks.double(), masks).cpu(), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(relevance_rank(masks.double(), masks).cpu(), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(energy_pointing_game(masks.float(), masks).cpu(), torch.ones(2, dtype=torch.float64))
    uniform = torch.full((2, 10, 12), 0.3, device=device)
    share = masks.double().mean(dim=(1, 2)).cpu()
    assert torch.allclose(relevance_mass(uniform, masks).cpu(), share)
    assert torch.allclose(mask_share(-uniform, masks).cpu(), share)
    # negative relevance does not count; an empty mask is NaN
    signed = masks.double() - 5 * (~masks).double()
    assert torch.allclose(relevance_mass(signed, masks).cpu(), torch.ones(2, dtype=torch.float64))
    assert mask_share(signed, masks)[0].item() == pytest.approx(12 / (12 + 5 * 108))
    empty = torch.zeros_like(masks)
    assert torch.isnan(relevance_mass(uniform, empty)).all()
    assert torch.isnan(relevance_rank(uniform, empty)).all()
    assert torch.isnan(pointing_game(uniform, empty)).all()


def test_localization_matches_reference(device):
    gen = torch.Generator().manual_seed(3)
    maps = (torch.randn(4, 9, 11, generator=gen, dtype=torch.float64)).to(device)
    masks = (torch.rand(4, 9, 11, generator=gen) > 0.7).to(device)
    masks[3] = False
    mn, kn = maps.cpu().numpy(), masks.cpu().numpy()
    for fn, rf in [(relevance_mass, ref.relevance_mass), (relevance_rank, ref.relevance_rank),
                   (mask_share, ref.mask_share)]:
        got = fn(maps, masks.float()).cpu().numpy()  # float masks: > 0.5 is inside
        want = np.array([rf(mn[i], kn[i]) for i in range(4)])
        np.testing.assert_allclose(got, want, atol=1e-12, equal_nan=True)
    for tol in (0, 1, 2.5):
        got = pointing_game(maps, masks, tolerance=tol).cpu().numpy()
        want = np.array([ref.pointing_game(mn[i], kn[i], tol) for i in range(4)])
        np.testing.assert_array_equal(got, want)


def test_pointing_game_tolerance(device):
    masks = torch.zeros(1, 40, 40, dtype=torch.bool, device=device)
    masks[0, 10:20, 10:20] = True
    maps = torch.zeros(1, 40, 40, device=device)
    maps[0, 15, 15] = 1
    assert pointing_game(maps, masks, tolerance=0).item() == 1
    maps.zero_()
    maps[0, 15, 19 + 6] = 1  # 6 pixels right of the mask's edge
    assert pointing_game(maps, masks, tolerance=0).item() == 0
    assert pointing_game(maps, masks, tolerance=6).item() == 1
    assert pointing_game(maps, masks, tolerance=5.9).item() == 0
    maps.zero_()
    maps[0, 19 + 3, 19 + 4] = 1  # diagonal: distance 5 from the corner pixel
    assert pointing_game(maps, masks, tolerance=5).item() == 1
    assert pointing_game(maps, masks, tolerance=4.9).item() == 0
    maps[0, 39, 0] = 2  # the maximum decides, not any high value
    assert pointing_game(maps, masks, tolerance=15).item() == 0  # (39, 0) is sqrt(20^2 + 10^2) from (19, 10)
    assert pointing_game(maps, masks, tolerance=22.4).item() == 1


def test_pointing_game_default_tolerance_is_15(device):
    masks = torch.zeros(1, 40, 40, dtype=torch.bool, device=device)
    masks[0, 10:20, 10:20] = True
    maps = torch.zeros(1, 40, 40, device=device)
    maps[0, 15, 19 + 15] = 1
    assert pointing_game(maps, masks).item() == 1
    maps.zero_()
    maps[0, 15, 19 + 16] = 1
    assert pointing_game(maps, masks).item() == 0
    assert pointing_game(torch.ones(1, 40, 40, device=device), masks).item() == 0  # a constant map points nowhere


# --------------------------------------------------------------------------------------------- complexity


def test_gini_and_entropy_known_values(device):
    n = 6 * 7
    one_hot = torch.zeros(1, 6, 7, device=device)
    one_hot[0, 2, 3] = -4.0
    const = torch.full((1, 6, 7), 0.5, device=device)
    assert sparseness(one_hot).item() == pytest.approx((n - 1) / n, abs=1e-12)
    assert sparseness(const).item() == pytest.approx(0.0, abs=1e-12)
    assert complexity(one_hot).item() == pytest.approx(0.0, abs=1e-12)
    assert complexity(const).item() == pytest.approx(math.log(n), abs=1e-12)
    assert torch.isnan(sparseness(torch.zeros(1, 3, 3))).all()
    assert torch.isnan(complexity(torch.zeros(1, 3, 3))).all()


def test_gini_and_entropy_match_reference(device):
    maps = _maps(3, 8, 9, 21, device, smooth=0.0)
    maps[1] = maps[1] ** 5
    mn = maps.cpu().numpy()
    np.testing.assert_allclose(sparseness(maps).cpu().numpy(), [ref.gini(m) for m in mn], atol=1e-12)
    np.testing.assert_allclose(complexity(maps).cpu().numpy(), [ref.entropy(m) for m in mn], atol=1e-12)
    assert sparseness(maps)[1] > sparseness(maps)[0]  # a peakier map is sparser


def test_max_sensitivity(device):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 8, 8, generator=gen, dtype=torch.float64).to(device)

    def explain(b: torch.Tensor) -> torch.Tensor:
        return (b ** 2).sum(dim=1)

    got = max_sensitivity(explain, x, radius=0.05, samples=4, generator=7)
    again = max_sensitivity(explain, x, radius=0.05, samples=4, generator=7)
    assert torch.equal(got, again)
    assert got.device == x.device
    # literal: the same noise draws, one image at a time
    g = torch.Generator().manual_seed(7)
    span = (x.flatten(1).max(1).values - x.flatten(1).min(1).values).cpu()
    worst = [0.0] * 3
    for _ in range(4):
        d = (2 * torch.rand(x.shape, generator=g, dtype=torch.float64) - 1)
        for i in range(3):
            xi = x[i].cpu()
            di = d[i] * 0.05 * span[i]
            change = ((xi + di) ** 2).sum(0) - (xi ** 2).sum(0)
            worst[i] = max(worst[i], (change.norm() / (xi ** 2).sum(0).norm()).item())
    np.testing.assert_allclose(got.cpu().numpy(), worst, rtol=1e-10)
    assert torch.equal(max_sensitivity(explain, x, radius=0.0, samples=2).cpu(), torch.zeros(3, dtype=torch.float64))
    assert (max_sensitivity(explain, x, radius=0.2, samples=4, generator=7) > got).all()
    # given base maps: one explain call fewer, the same values
    calls = []

    def counted(b: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return explain(b)

    assert torch.equal(max_sensitivity(counted, x, radius=0.05, samples=4, generator=7, base_maps=explain(x)), got)
    assert len(calls) == 4


# --------------------------------------------------------------------------------------------- statistics


def test_bootstrap_ci_contains_mean_and_shrinks():
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, 20)
    large = rng.normal(1.0, 1.0, 500)
    m, lo, hi = bootstrap_ci(small)
    assert lo < m < hi and m == pytest.approx(small.mean())
    m2, lo2, hi2 = bootstrap_ci(large)
    assert lo2 < m2 < hi2
    assert (hi2 - lo2) < 0.5 * (hi - lo)
    assert bootstrap_ci(small, seed=1) != bootstrap_ci(small, seed=2)
    assert bootstrap_ci(small, seed=1) == bootstrap_ci(small, seed=1)
    with_nan = np.concatenate([small, [np.nan, np.nan]])
    assert bootstrap_ci(torch.tensor(with_nan)) == pytest.approx(bootstrap_ci(small))
    assert all(math.isnan(v) for v in bootstrap_ci([math.nan]))
    assert bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)
    # coverage: the 95% interval of a sample of 50 contains the true mean most of the time
    hits = sum(lo <= 0 <= hi for _, lo, hi in (bootstrap_ci(rng.normal(0, 1, 50), n_boot=300) for _ in range(40)))
    assert hits >= 33


def test_summarize_is_json_friendly():
    s = summarize(torch.tensor([0.5, float("nan"), 1.0]))
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.75)
    assert s["values"] == [0.5, None, 1.0]
    assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    json.dumps(s, allow_nan=False)
    empty = summarize([])
    assert empty["n"] == 0 and empty["mean"] is None
    json.dumps(empty, allow_nan=False)


def test_rank_methods():
    scores = {"a": 0.3, "b": float("nan"), "c": 0.9, "d": None, "e": 0.3}
    assert rank_methods(scores, higher_is_better=True) == ["c", "a", "e", "b", "d"]
    assert rank_methods(scores, higher_is_better=False) == ["a", "e", "c", "b", "d"]


def test_package_exports_are_lazy_and_complete():
    import saliencekit.trust as trust

    missing = [name for name in trust.__all__ if not hasattr(trust, name)]
    assert not missing
    assert callable(trust.complexity) and trust.complexity is complexity  # the function, not the submodule
    # heavy optional libraries are imported inside functions only, never at module level
    heavy = {"skimage", "scipy", "matplotlib", "pandas"}
    for path in (Path(trust.__file__).parent).glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not {n.split(".")[0] for n in names} & heavy, (path.name, names)


def test_remembered_ranks_and_hog_follow_the_tensor():
    from saliencekit.trust import _ops
    from saliencekit.trust.similarity import hog_correlation, spearman

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 24, 24, generator=g, dtype=torch.float64)
    others = [torch.rand(3, 24, 24, generator=g, dtype=torch.float64) for _ in range(3)]
    fresh = [spearman(ref.clone(), o, absolute=True) for o in others]
    cached = [spearman(ref, o, absolute=True) for o in others]  # ranks of ref computed once, then reused
    for f, c in zip(fresh, cached):
        torch.testing.assert_close(c, f, rtol=0, atol=0)
    assert id(ref) in _ops._MEMO
    torch.testing.assert_close(hog_correlation(ref, others[0]), hog_correlation(ref.clone(), others[0]), rtol=0, atol=0)
    # Modified in place: the remembered values are stale and must not be used.
    ref.mul_(-1.0).add_(others[1])
    torch.testing.assert_close(spearman(ref, others[0]), spearman(ref.clone(), others[0]), rtol=0, atol=0)
    torch.testing.assert_close(hog_correlation(ref, others[0]), hog_correlation(ref.clone(), others[0]), rtol=0, atol=0)
    ident = id(ref)
    del ref
    assert ident not in _ops._MEMO  # forgotten with the tensor


def test_separable_filter_matches_a_2d_convolution():
    from saliencekit._filters import separable_filter

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 20, 17, generator=g, dtype=torch.float64)
    k = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1], dtype=torch.float64)
    full = torch.nn.functional.conv2d(x.reshape(-1, 1, 20, 17), torch.outer(k, k)[None, None]).reshape(2, 3, 16, 13)
    torch.testing.assert_close(separable_filter(x, k, "valid"), full, rtol=1e-12, atol=1e-14)
    padded = torch.nn.functional.pad(x.reshape(-1, 1, 20, 17), (2, 2, 2, 2), mode="reflect")
    full_same = torch.nn.functional.conv2d(padded, torch.outer(k, k)[None, None]).reshape(2, 3, 20, 17)
    torch.testing.assert_close(separable_filter(x, k, "reflect"), full_same, rtol=1e-12, atol=1e-14)


def test_remembered_values_follow_the_device_and_skip_inference_tensors():
    from saliencekit.trust.similarity import hog_correlation, spearman

    g = torch.Generator().manual_seed(2)
    a, b, c = (torch.rand(2, 20, 20, generator=g) for _ in range(3))
    with torch.inference_mode():
        inf = a * 1.0
    torch.testing.assert_close(spearman(inf, b), spearman(a, b))  # no version counter: not remembered, still works
    torch.testing.assert_close(hog_correlation(inf, b), hog_correlation(a, b))
    # b is compared on a's device and dtype first, then as the reference on its own: no stale cross-use.
    a64 = a.double()
    first = spearman(a64, b)
    second = spearman(b, c)
    torch.testing.assert_close(second, spearman(b.clone(), c))
    assert first.dtype == second.dtype == torch.float64
