"""The one baseline factory and Gaussian blur shared by integrated gradients and the faithfulness metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

import saliencekit as sk
from saliencekit._filters import gaussian_blur
from saliencekit.baselines import BASELINES, make_baseline
from saliencekit.errors import InputError, UnknownNameError
from saliencekit.methods.integrated import blur_radius
from saliencekit.trust.faithfulness import deletion_curve, insertion_curve
from toy_models import make

D = torch.float64


def _x(n: int = 2, c: int = 2, h: int = 13, w: int = 11) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(3), dtype=D)


@pytest.mark.parametrize(("padding", "mode"),
                         [("reflect", "mirror"), ("replicate", "nearest"), ("constant", "constant")])
@pytest.mark.parametrize("sigma", [0.7, 1.5, 2.2])
def test_gaussian_blur_matches_scipy(padding: str, mode: str, sigma: float) -> None:
    x = _x()
    radius = 3 if padding == "reflect" else None  # the reflection must stay inside the 11-pixel side
    got = gaussian_blur(x, sigma, radius, padding)
    r = radius if radius is not None else int(4 * sigma + 0.5)
    want = ndimage.gaussian_filter(x.numpy(), sigma, mode=mode, radius=r, axes=(2, 3))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14)


def test_blur_and_blurred_are_one_baseline() -> None:
    x = _x()
    torch.testing.assert_close(make_baseline(x, "blur"), make_baseline(x, "blurred"), rtol=0, atol=0)
    assert "blurred" in BASELINES and "blur" not in BASELINES
    # the default kernel is scipy's (radius int(4 sigma + 0.5), mirrored edges): the deletion/insertion numbers
    want = ndimage.gaussian_filter(x.numpy(), 1.2, mode="mirror", truncate=4.0, axes=(2, 3))
    np.testing.assert_allclose(make_baseline(x, "blur", blur_sigma=1.2).numpy(), want, rtol=1e-12)


def test_integrated_gradients_blur_keeps_its_kernel_and_accepts_both_spellings() -> None:
    model = make("residual", classes=1)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=D)
    model = model.to(D)
    a = sk.create_method("integrated_gradients", model, steps=3, baseline="blurred", blur_sigma=1.1).attribute(x)
    b = sk.create_method("integrated_gradients", model, steps=3, baseline="blur", blur_sigma=1.1).attribute(x)
    torch.testing.assert_close(a.maps, b.maps, rtol=0, atol=0)
    # integrated gradients' kernel: radius ceil(3 sigma) (4 here, where scipy's default would be 4 sigma: 4.4 -> 4
    # too, so the replicated edges are what this pins), at least 1
    assert blur_radius(1.1) == 4 and blur_radius(0.1) == 1
    want = ndimage.gaussian_filter(x.numpy(), 1.1, mode="nearest", radius=4, axes=(2, 3))
    np.testing.assert_allclose(a.extras["baselines"].numpy(), want, rtol=1e-12, atol=1e-14)


def test_faithfulness_accepts_both_spellings() -> None:
    x = _x(c=1, h=8, w=8)
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=D)

    def score(b: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(b.flatten(1).sum(1) - 30)

    for curve in (deletion_curve, insertion_curve):
        one = curve(score, x, maps, steps=4, baseline="blur", targets="explained")
        two = curve(score, x, maps, steps=4, baseline="blurred", targets="explained")
        assert torch.equal(one.scores, two.scores)


def test_every_baseline_name_and_bad_values() -> None:
    x = _x()
    lo = x.flatten(1).amin(1).view(2, 1, 1, 1)
    hi = x.flatten(1).amax(1).view(2, 1, 1, 1)
    assert torch.equal(make_baseline(x, "black"), lo.expand_as(x))
    assert torch.equal(make_baseline(x, "white"), hi.expand_as(x))
    assert torch.equal(make_baseline(x, "mean"), x.mean((2, 3), keepdim=True).expand_as(x))
    assert (make_baseline(x, "zero") == 0).all() and (make_baseline(x, 0.5) == 0.5).all()
    u = make_baseline(x, "uniform", seed=1)
    assert ((u >= lo) & (u <= hi)).all() and torch.equal(u, make_baseline(x, "uniform", seed=1))
    with pytest.raises(UnknownNameError, match="unknown baseline 'grey'.*blurred, blur"):
        make_baseline(x, "grey")
    with pytest.raises(InputError, match="unknown baseline 'grey'"):  # also an InputError (a bad option value)
        make_baseline(x, "grey")
    with pytest.raises(InputError, match="must broadcast"):
        make_baseline(x, torch.zeros(3, 5))
    with pytest.raises(InputError, match="NaN"):
        make_baseline(x, torch.full((1,), float("nan")))
    with pytest.raises(InputError, match="got bool"):
        make_baseline(x, True)
    with pytest.raises(InputError, match=r"shape \(N, C, H, W\)"):
        make_baseline(x[0], "zero")
    with pytest.raises(InputError, match="unknown blur padding"):
        gaussian_blur(x, 1.0, padding="wrap")


def test_constant_baselines_are_compact_and_equal_to_the_full_ones() -> None:
    from saliencekit.baselines import CONSTANT_BASELINES, constant_baseline
    from saliencekit.methods.perturbation import fill_values

    x = _x()
    shapes = {"zero": (1, 1, 1, 1), "mean": (2, 2, 1, 1), "black": (2, 1, 1, 1), "white": (2, 1, 1, 1)}
    for name in CONSTANT_BASELINES:
        c = constant_baseline(x, name)
        assert c.shape == shapes[name]
        assert torch.equal(c.expand_as(x), make_baseline(x, name))
    assert torch.equal(fill_values(x, "black"), constant_baseline(x, "black"))
    assert torch.equal(fill_values(x, 0.5).expand_as(x), make_baseline(x, 0.5))
    with pytest.raises(InputError, match="not constant"):
        constant_baseline(x, "blurred")
    with pytest.raises(InputError, match="unknown fill 'white'"):  # the perturbation methods keep their list
        fill_values(x, "white")
