"""Perturbation family: occlusion and RISE against literal loops and hand-derived maps."""

from __future__ import annotations

import pytest
import torch

import saliencekit as sk
from reference.ref_perturbation import ref_occlusion, ref_rise, ref_rise_masks
from saliencekit.errors import InputError
from saliencekit.methods.perturbation import patch_positions, rise_masks
from toy_models import LinearModel, make
from toy_models import predicted_classes as _classes

D = torch.float64


def _x(n: int = 3, c: int = 1, size: int = 10, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g, dtype=D)


@pytest.mark.parametrize("patch,stride,fill", [(4, 3, "zero"), (3, 3, "mean"), (5, 2, "black"), (12, 4, 0.7),
                                               (2, 3, "zero")])
def test_occlusion_matches_reference(patch: int, stride: int, fill: str | float) -> None:
    model = make("residual", in_channels=2, classes=3)
    x = _x(n=2, c=2)
    cls = _classes(model, x)
    e = sk.create_method("occlusion", model, patch=patch, stride=stride, fill=fill).attribute(x)
    if fill == "zero":
        f = torch.zeros(2, 2, 1, 1, dtype=D)
    elif fill == "mean":
        f = x.mean(dim=(2, 3), keepdim=True)
    elif fill == "black":
        f = x.flatten(1).amin(1).view(2, 1, 1, 1).expand(2, 2, 1, 1)
    else:
        f = torch.full((2, 2, 1, 1), 0.7, dtype=D)
    ref = ref_occlusion(model, x, cls, min(patch, 10), stride, f)
    torch.testing.assert_close(e.maps, ref, atol=1e-12, rtol=1e-9)
    assert e.attributions is None and e.maps.dtype == D


def test_occlusion_linear_model_by_hand() -> None:
    w = torch.randn(1, 1, 6, 6, dtype=D)
    model = LinearModel(w, bias=0.3)
    x = _x(n=2, size=6)
    # 1x1 patches filled with 0: the drop at a pixel is w * x (= gradient x input), class 1 = z.
    e = sk.create_method("occlusion", model, patch=1, stride=1, fill="zero").attribute(x, target=1)
    torch.testing.assert_close(e.maps, (w * x)[:, 0])
    # 2x2 patches, stride 2: every pixel is covered once; the map is the patch's total drop.
    e = sk.create_method("occlusion", model, patch=2, stride=2, fill=0.5).attribute(x, target=0)
    drop = -(w * (x - 0.5))[:, 0]  # class 0 explains -z
    blocks = drop.unfold(1, 2, 2).unfold(2, 2, 2).sum((-1, -2))
    torch.testing.assert_close(e.maps, blocks.repeat_interleave(2, 1).repeat_interleave(2, 2))


def test_occlusion_probability_score_and_positions() -> None:
    assert patch_positions(10, 4, 3) == [0, 3, 6]
    assert patch_positions(11, 4, 3) == [0, 3, 6, 7]
    assert patch_positions(4, 8, 2) == [0]
    model = make("plain")
    x = _x(n=2)
    e = sk.create_method("occlusion", model, patch=3, stride=2, score="probability").attribute(x)
    logit = sk.create_method("occlusion", model, patch=3, stride=2).attribute(x)
    assert e.maps.abs().max() < 1 and not torch.allclose(e.maps, logit.maps)


def test_rise_masks_match_the_literal_generation() -> None:
    gen = torch.Generator().manual_seed(5)
    m = rise_masks(40, (13, 11), 4, 0.3, gen, torch.device("cpu"), D)
    ref = torch.stack(ref_rise_masks(40, 13, 11, 4, 0.3, 5, D))
    torch.testing.assert_close(m, ref, atol=0, rtol=0)
    assert m.shape == (40, 13, 11) and m.min() >= 0 and m.max() <= 1
    assert abs(float(m.mean()) - 0.3) < 0.1


@pytest.mark.parametrize("kind,classes", [("residual", 1), ("nested", 3)])
def test_rise_matches_reference(kind: str, classes: int) -> None:
    model = make(kind, classes=classes)
    x = _x(n=2)
    cls = _classes(model, x)
    e = sk.create_method("rise", model, masks=30, grid=4, p=0.4, seed=3).attribute(x)
    torch.testing.assert_close(e.maps, ref_rise(model, x, cls, 30, 4, 0.4, 3), atol=1e-12, rtol=1e-9)


def test_rise_single_logit_class_zero_is_the_complement() -> None:
    model = make("plain")
    x = _x(n=2)
    opts = {"masks": 25, "grid": 3, "seed": 0}
    m1 = sk.create_method("rise", model, **opts).attribute(x, target=1).maps
    m0 = sk.create_method("rise", model, **opts).attribute(x, target=0).maps
    masks = torch.stack(ref_rise_masks(25, 10, 10, 3, 0.5, 0, D))
    # P(class 0) = 1 - P(class 1), so the two maps add up to sum_j M_j / (n p).
    torch.testing.assert_close(m0 + m1, (masks.sum(0) / (25 * 0.5)).expand(2, -1, -1))
    # With the logit score the class-0 map is minus the class-1 map.
    l1 = sk.create_method("rise", model, score="logit", **opts).attribute(x, target=1).maps
    l0 = sk.create_method("rise", model, score="logit", **opts).attribute(x, target=0).maps
    torch.testing.assert_close(l0, -l1)


@pytest.mark.parametrize("name,opts", [("occlusion", {"patch": 3, "stride": 2}), ("rise", {"masks": 20, "grid": 3})])
def test_perturbation_batched_equals_per_image(name: str, opts: dict) -> None:
    model = make("inplace", classes=3)
    x = _x(n=4)
    batched = sk.create_method(name, model, **opts).attribute(x)
    chunked = sk.create_method(name, model, batch_size=7, **opts).attribute(x)
    torch.testing.assert_close(chunked.maps, batched.maps, atol=1e-12, rtol=1e-9)
    for i in range(4):
        single = sk.create_method(name, model, **opts).attribute(x[i : i + 1])
        torch.testing.assert_close(single.maps[0], batched.maps[i], atol=1e-12, rtol=1e-9)


def test_perturbation_runs_without_autograd_graph() -> None:
    model = make("plain")
    x = _x(n=2)
    for name in ("occlusion", "rise"):
        e = sk.create_method(name, model).attribute(x)
        assert not e.maps.requires_grad
        assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name,opts,match", [
    ("occlusion", {"patch": 0}, "patch"),
    ("occlusion", {"stride": (2, 2, 2)}, "stride"),
    ("occlusion", {"fill": "grey"}, "unknown fill 'grey'"),
    ("occlusion", {"score": "softmax"}, "score must be one of logit, probability"),
    ("rise", {"masks": 0}, "masks"),
    ("rise", {"p": 1.5}, "p must be in"),
    ("rise", {"grid": 0}, "grid"),
    ("rise", {"window": 3}, r"no option\(s\) \['window'\]"),
])
def test_bad_options(name: str, opts: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        sk.create_method(name, make("plain"), **opts)


@pytest.mark.parametrize("name", ["occlusion", "rise"])
def test_bad_inputs(name: str) -> None:
    model = make("plain")
    x = _x()
    m = sk.create_method(name, model)
    with pytest.raises(InputError, match="expects 1-channel"):
        m.attribute(x.expand(-1, 3, -1, -1))
    with pytest.raises(InputError, match="empty batch"):
        m.attribute(x[:0])
    with pytest.raises(InputError, match="NaN"):
        m.attribute(x / 0 * 0)
    with pytest.raises(InputError, match="floating point"):
        m.attribute(x.to(torch.uint8))
    with pytest.raises(InputError, match="target class 7"):
        m.attribute(x, target=7)
