"""LIME and KernelSHAP on superpixels: literal references (Shapley formula, normal equations), captum, segmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import saliencekit as sk
from reference.ref_shap import (
    ref_coalition_score,
    ref_constrained_fit,
    ref_kernel_shap_draws,
    ref_lime_draws,
    ref_ridge,
    ref_shapley_values,
)
from saliencekit.errors import InputError
from saliencekit.methods import superpixels
from saliencekit.methods.superpixels import grid_segments, segment
from toy_models import LinearModel, make

D = torch.float64


def _x(n: int, c: int = 1, size: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed), dtype=D)


def _model(classes: int = 3, channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return make("plain", classes=classes, in_channels=channels).to(D).eval()


# -------------------------------------------------------------------------------------------- KernelSHAP


@pytest.mark.parametrize("grid,fill", [((2, 2), 0.0), ((2, 3), -0.5)])
def test_kernel_shap_with_every_coalition_gives_the_shapley_values(grid: tuple[int, int], fill: float) -> None:
    model, x = _model(), _x(2)
    classes = [2, 0]
    e = sk.create_method("kernel_shap", model, grid=grid, fill=fill).attribute(x, target=classes)
    labels = grid_segments(8, 8, grid)
    m = grid[0] * grid[1]
    assert e.extras["exact"].tolist() == [1.0, 1.0]
    for i, cls in enumerate(classes):
        def v(z: tuple[bool, ...], i: int = i, cls: int = cls) -> float:
            return ref_coalition_score(model, x[i:i + 1], labels, list(z), fill, cls)

        phi = ref_shapley_values(v, m)
        torch.testing.assert_close(e.extras["coefficients"][i], torch.tensor(phi, dtype=D), atol=1e-10, rtol=1e-8)
        expected_map = torch.tensor(phi, dtype=D)[labels]
        torch.testing.assert_close(e.maps[i], expected_map, atol=1e-10, rtol=1e-8)
        assert float(e.extras["intercept"][i]) == pytest.approx(v((False,) * m), abs=1e-12)


def test_kernel_shap_sampled_matches_the_constrained_fit_and_is_efficient() -> None:
    model, x = _model(), _x(2, size=12)
    grid, samples = (3, 4), 60  # 12 superpixels: 4094 coalitions > 60, so they are sampled
    e = sk.create_method("kernel_shap", model, grid=grid, samples=samples, seed=5, batch_size=7).attribute(x, target=1)
    assert e.extras["exact"].tolist() == [0.0, 0.0]
    labels = grid_segments(12, 12, grid)
    z = ref_kernel_shap_draws(12, samples, 5)
    for i in range(2):
        y = [ref_coalition_score(model, x[i:i + 1], labels, row, 0.0, 1) for row in z.tolist()]
        full = ref_coalition_score(model, x[i:i + 1], labels, [True] * 12, 0.0, 1)
        empty = ref_coalition_score(model, x[i:i + 1], labels, [False] * 12, 0.0, 1)
        phi = ref_constrained_fit(z.double().tolist(), y, [1.0] * samples, full, empty)
        torch.testing.assert_close(e.extras["coefficients"][i], torch.tensor(phi, dtype=D), atol=1e-9, rtol=1e-7)
        assert float(e.extras["coefficients"][i].sum()) == pytest.approx(full - empty, abs=1e-10)


def test_linear_model_is_recovered_exactly_by_both() -> None:
    # S(x * z[L]) = b + sum_m z_m a_m with a_m = sum of w * x over superpixel m: an exactly linear game.
    w = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(3), dtype=D)
    model = LinearModel(w, 0.7)
    x = _x(1, size=6)
    labels = grid_segments(6, 6, (3, 3))
    a = torch.zeros(9, dtype=D).index_add_(0, labels.flatten(), (w * x)[0, 0].flatten())
    for name, opts in (("kernel_shap", {"samples": 30}), ("lime", {"alpha": 0.0, "samples": 60})):
        e = sk.create_method(name, model, grid=3, **opts).attribute(x, target=1)
        torch.testing.assert_close(e.extras["coefficients"][0], a, atol=1e-10, rtol=1e-8)
        assert float(e.extras["intercept"][0]) == pytest.approx(0.7, abs=1e-10)
    assert float(e.extras["fit_r2"][0]) == pytest.approx(1.0)


def test_kernel_shap_agrees_with_captum_on_the_same_coalitions() -> None:
    """captum's KernelShap is a linear regression with weight 1e6 on the empty and full coalitions (its way of
    imposing the constraints); given our coalitions through captum's Lime engine, its values approach ours."""
    ca = pytest.importorskip("captum.attr")
    from captum._utils.models.linear_model import SkLearnLinearRegression

    model, x = _model(), _x(1, size=12)
    grid, samples = (3, 4), 80
    e = sk.create_method("kernel_shap", model, grid=grid, samples=samples, seed=2).attribute(x, target=0)
    labels = grid_segments(12, 12, grid)
    z = ref_kernel_shap_draws(12, samples, 2).long()
    rows = [torch.ones(1, 12, dtype=torch.long), torch.zeros(1, 12, dtype=torch.long), *z.split(1)]

    def perturb(_inp, **_kw):  # type: ignore[no-untyped-def]
        yield from rows

    def similarity(_a, _b, sample, **_kw):  # type: ignore[no-untyped-def]
        k = int(sample.sum())
        return torch.tensor([1e6 if k in (0, 12) else 1.0])

    lime = ca.LimeBase(model, SkLearnLinearRegression(), similarity_func=similarity, perturb_func=perturb,
                       perturb_interpretable_space=True, from_interp_rep_transform=_to_input(x, labels),
                       to_interp_rep_transform=None)
    theirs = lime.attribute(x, target=0, n_samples=len(rows), perturbations_per_eval=1)
    torch.testing.assert_close(theirs.double().flatten(), e.extras["coefficients"][0], atol=2e-3, rtol=2e-2)


def _to_input(x: torch.Tensor, labels: torch.Tensor):  # type: ignore[no-untyped-def]
    def transform(z: torch.Tensor, original: torch.Tensor, **_kw) -> torch.Tensor:  # type: ignore[no-untyped-def]
        keep = z[0].bool()[labels]
        return torch.where(keep, original, torch.zeros_like(original))

    return transform


def test_kernel_shap_agrees_with_captum_statistically() -> None:
    ca = pytest.importorskip("captum.attr")
    model, x = _model(), _x(1, size=12)
    labels = grid_segments(12, 12, (3, 4))
    torch.manual_seed(0)
    theirs = ca.KernelShap(model).attribute(x, target=2, feature_mask=labels[None, None], n_samples=3000)
    ours = sk.create_method("kernel_shap", model, grid=(3, 4), samples=3000).attribute(x, target=2)
    r = np.corrcoef(ours.maps.flatten().numpy(), theirs.double().flatten().numpy())[0, 1]
    assert r > 0.95, r


# -------------------------------------------------------------------------------------------------- LIME


@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_lime_matches_the_normal_equations_and_sklearn(alpha: float) -> None:
    model, x = _model(), _x(2)
    samples, width = 40, 0.25
    e = sk.create_method("lime", model, grid=(2, 3), samples=samples, alpha=alpha, seed=4, batch_size=9
                         ).attribute(x, target=[1, 2])
    labels = grid_segments(8, 8, (2, 3))
    z, weights = ref_lime_draws(6, samples, 4, width)
    for i, cls in enumerate([1, 2]):
        y = [ref_coalition_score(model, x[i:i + 1], labels, row, 0.0, cls) for row in z.tolist()]
        coef, intercept = ref_ridge(z.double().tolist(), y, weights, alpha)
        torch.testing.assert_close(e.extras["coefficients"][i], torch.tensor(coef, dtype=D), atol=1e-9, rtol=1e-7)
        assert float(e.extras["intercept"][i]) == pytest.approx(intercept, abs=1e-9)
        torch.testing.assert_close(e.maps[i], torch.tensor(coef, dtype=D)[labels], atol=1e-9, rtol=1e-7)
        if alpha > 0:
            lm = pytest.importorskip("sklearn.linear_model")
            fit = lm.Ridge(alpha=alpha).fit(z.double().numpy(), np.array(y), sample_weight=np.array(weights))
            np.testing.assert_allclose(e.extras["coefficients"][i].numpy(), fit.coef_, atol=1e-8, rtol=1e-6)
            w_r2 = fit.score(z.double().numpy(), np.array(y), sample_weight=np.array(weights))
            assert float(e.extras["fit_r2"][i]) == pytest.approx(w_r2, abs=1e-9)


def test_lime_matches_captum_with_the_same_coalitions_kernel_and_ridge() -> None:
    ca = pytest.importorskip("captum.attr")
    from captum._utils.models.linear_model import SkLearnRidge

    model, x = _model(), _x(1)
    samples = 50
    e = sk.create_method("lime", model, grid=(2, 3), samples=samples, seed=1).attribute(x, target=0)
    labels = grid_segments(8, 8, (2, 3))
    z, weights = ref_lime_draws(6, samples, 1, 0.25)
    rows = [r[None].long() for r in z]
    it = iter(weights)

    def perturb(_inp, **_kw):  # type: ignore[no-untyped-def]
        yield from rows

    def similarity(_a, _b, _sample, **_kw):  # type: ignore[no-untyped-def]
        return torch.tensor([next(it)])

    lime = ca.Lime(model, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=similarity,
                   perturb_func=perturb)
    theirs = lime.attribute(x, target=0, feature_mask=labels[None, None], baselines=0.0, n_samples=samples)
    torch.testing.assert_close(theirs[0, 0].double(), e.maps[0], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------ segmentations


def test_grid_segments_and_labels_tensors() -> None:
    assert grid_segments(5, 5, (2, 2)).tolist()[0] == [0, 0, 0, 1, 1]
    assert int(grid_segments(3, 3, (8, 8)).max()) == 8  # finer than the image: one superpixel per pixel
    x = _x(2, size=4)
    given = torch.tensor([[5, 5, 9, 9], [5, 5, 9, 9], [2, 2, 2, 2], [2, 2, 2, 2]])
    labels = segment(x, given)
    assert labels.shape == (2, 4, 4) and labels[0].tolist()[0] == [0, 0, 1, 1] and int(labels.max()) == 2
    with pytest.raises(InputError, match=r"do not match the images \(N, H, W\) = \(2, 4, 4\)"):
        segment(x, torch.zeros(3, 4, 4, dtype=torch.long))
    for bad, match in (("quickshift", "segments must be"), (torch.zeros(4, 4), "integer labels"),
                       (torch.zeros(4, 4, dtype=torch.bool), "integer labels")):
        with pytest.raises(InputError, match=match):
            sk.create_method("lime", _model(), segments=bad)
    for key, value in (("grid", 0), ("grid", (2, 0, 1)), ("samples", 0), ("kernel_width", 0.0), ("alpha", -1.0),
                       ("fill", "blur"), ("score", "odds"), ("n_segments", 0), ("seed", 0.5)):
        with pytest.raises(InputError, match=key if key != "fill" else "fill"):
            sk.create_method("lime", _model(), **{key: value})


def test_slic_is_scikit_image_on_the_scaled_image_and_its_absence_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    seg = pytest.importorskip("skimage.segmentation")
    x = _x(2, c=3, size=24)
    labels = segment(x, "slic", n_segments=9, compactness=0.1)
    for i in range(2):
        img = x[i].numpy()
        scaled = (img - img.min()) / (img.max() - img.min())
        want = seg.slic(np.moveaxis(scaled, 0, -1), n_segments=9, compactness=0.1, sigma=1.0, start_label=0,
                        channel_axis=-1)
        # the same partition (our labels are renumbered in raster order)
        pairs = set(zip(labels[i].flatten().tolist(), want.flatten().tolist()))
        assert len(pairs) == len(set(want.flatten().tolist())) == int(labels[i].max()) + 1
    model = _model(channels=3)
    batched = sk.create_method("lime", model, segments="slic", n_segments=9, samples=30).attribute(x, target=1)
    for i in range(2):
        one = sk.create_method("lime", model, segments="slic", n_segments=9, samples=30).attribute(x[i:i + 1], 1)
        torch.testing.assert_close(one.maps[0], batched.maps[i], atol=1e-10, rtol=1e-8)
    monkeypatch.setattr(superpixels, "slic_available", lambda: False)
    with pytest.raises(InputError, match=r"pip install saliencekit\[superpixels\].*segments='grid'"):
        sk.create_method("kernel_shap", model, segments="slic")
    sk.create_method("kernel_shap", model, segments="grid")  # needs nothing


def test_fill_and_probability_score() -> None:
    model, x = _model(), _x(1)
    labels = grid_segments(8, 8, (2, 2))
    mean = float(x.mean())
    e = sk.create_method("kernel_shap", model, grid=2, fill="mean").attribute(x, target=0)
    empty = ref_coalition_score(model, x, labels, [False] * 4, mean, 0)
    assert float(e.extras["intercept"][0]) == pytest.approx(empty, abs=1e-12)
    p = sk.create_method("kernel_shap", model, grid=2, score="probability").attribute(x, target=0)
    with torch.no_grad():
        full_p = torch.softmax(model(x), 1)[0, 0]
        empty_p = torch.softmax(model(torch.zeros_like(x)), 1)[0, 0]
    assert float(p.extras["coefficients"][0].sum()) == pytest.approx(float(full_p - empty_p), abs=1e-12)


# -------------------------------------------------------------------------------------------- check costs


def test_check_caps_the_recomputing_checks_for_costly_methods() -> None:
    """lime and kernel_shap declare their samples as forward passes per image; above ``costly_passes`` the checks that
    recompute maps run on ``costly_method_images`` images (recorded), unless ``costly_images`` is given."""
    from saliencekit.methods import method_class
    from saliencekit.trust.runner import run_checks

    assert method_class("lime").passes_per_image({}) == 500
    assert method_class("kernel_shap").passes_per_image({"samples": 40}) == 41
    assert method_class("gradient").passes_per_image({}) is None
    model, x = _model(classes=2), _x(6, size=12)  # SSIM (input_invariance) needs 11 x 11 maps
    methods = {"lime": {"method": "lime", "grid": 2, "samples": 400}, "gradient": {"method": "gradient"}}
    res = run_checks(model=model, images=x, methods=methods, checks=["input_invariance", "faithfulness"],
                     n_images=6, costly_method_images=3, figures=False)
    settings = res["settings"]
    assert settings["costly_images"] == 3 and settings["costly_methods"] == {"lime": 400.0}
    assert res["checks"]["input_invariance"]["images"] == 3  # recomputes maps: capped
    assert res["checks"]["faithfulness"]["images"] == 6  # uses the maps already computed: every image
    cheap = run_checks(model=model, images=x, methods={"lime": {"method": "lime", "grid": 2, "samples": 40}},
                       checks=["input_invariance"], n_images=6, figures=False)
    assert cheap["settings"]["costly_images"] is None and cheap["settings"]["costly_methods"] == {}
    assert cheap["checks"]["input_invariance"]["images"] == 6
    given = run_checks(model=model, images=x, methods=methods, checks=["input_invariance"], n_images=6,
                       costly_images=4, figures=False)
    assert given["settings"]["costly_images"] == 4 and given["checks"]["input_invariance"]["images"] == 4
