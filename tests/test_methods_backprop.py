"""Backprop-rule family: guided backprop, DeconvNet, guided Grad-CAM against a layer-by-layer chain rule."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import saliencekit as sk
from reference.ref_backprop import ref_rule_gradient, residual_cnn, small_cnn
from reference.ref_cam import ref_activation_gradient, ref_gradcam, ref_upsample
from saliencekit.errors import InputError
from saliencekit.methods import method_class
from toy_models import Counter

D = torch.float64


def _x(n: int, c: int, size: int = 9, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g, dtype=D)


def _models() -> dict[str, tuple[nn.Module, torch.Tensor, list[int], str]]:
    """name -> (model, inputs, target classes, default layer name)."""
    torch.manual_seed(0)
    return {
        "plain": (small_cnn().to(D).eval(), _x(2, 1), [0, 2], "4"),
        "inplace": (small_cnn(inplace=True).to(D).eval(), _x(2, 1, seed=2), [1, 1], "4"),
        "residual": (residual_cnn().to(D), _x(2, 2, seed=3), [1, 0], "3.1.0.relu2"),
    }


MODELS = _models()


@pytest.mark.parametrize("name", list(MODELS))
def test_rules_match_layer_by_layer_chain_rule(name: str) -> None:
    model, x, classes, _ = MODELS[name]
    out = sk.explain(model, x, methods=["guided_backprop", "deconvnet", "gradient"], target=classes)
    for method, rule in (("guided_backprop", "guided"), ("deconvnet", "deconv"), ("gradient", "plain")):
        ref = ref_rule_gradient(model, x, classes, rule)
        torch.testing.assert_close(out[method].attributions, ref, atol=1e-12, rtol=1e-10, msg=method)
        torch.testing.assert_close(out[method].maps, ref.sum(1), atol=1e-12, rtol=1e-10, msg=method)
        assert out[method].targets.tolist() == classes
    # The three rules really differ on these networks.
    assert not torch.allclose(out["guided_backprop"].attributions, out["gradient"].attributions)
    assert not torch.allclose(out["deconvnet"].attributions, out["guided_backprop"].attributions)


@pytest.mark.parametrize(("name", "layer"), [("plain", None), ("plain", "3"), ("inplace", "3"), ("residual", None),
                                           ("residual", "3.0")])
def test_guided_gradcam_matches_reference(name: str, layer: str | None) -> None:
    # With a layer followed by ReLUs ("3", "3.0"), the Grad-CAM part must use the plain ReLU gradient
    # although the same forward pass carries the guided rule.
    model, x, classes, default = MODELS[name]
    layer_name = layer or default
    e = sk.create_method("guided_gradcam", model, layer=layer).attribute(x, classes)
    assert e.params["layer"] == layer_name
    guided = ref_rule_gradient(model, x, classes, "guided")
    for n in range(x.shape[0]):
        a, g = ref_activation_gradient(model, model.get_submodule(layer_name), x[n:n + 1], classes[n])
        cam, _ = ref_gradcam(a, g)  # Grad-CAM with the plain gradient
        torch.testing.assert_close(e.layer_maps[n], cam, atol=1e-7, rtol=1e-6)
        ref = guided[n] * ref_upsample(cam, x.shape[-2:])
        torch.testing.assert_close(e.attributions[n], ref, atol=1e-7, rtol=1e-6)
    assert e.maps.abs().sum() > 0


def test_hand_derived_rules() -> None:
    # S = relu(x0) - relu(x1) through a 1x1 conv with weight 1 and a linear head (1, -1).
    conv = nn.Conv2d(1, 1, 1, bias=False).to(D)
    conv.weight.data.fill_(1.0)
    head = nn.Linear(2, 1, bias=False).to(D)
    head.weight.data = torch.tensor([[1.0, -1.0]], dtype=D)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), head).eval()
    x = torch.tensor([[[[-1.0, 2.0]]]], dtype=D)
    out = sk.explain(model, x, methods=["gradient", "guided_backprop", "deconvnet"], target=1)
    # gradient: [x0 > 0, -(x1 > 0)] = [0, -1]
    assert out["gradient"].attributions.flatten().tolist() == [0.0, -1.0]
    # guided: incoming (1, -1); pass where input > 0 AND gradient > 0 -> [0, 0]
    assert out["guided_backprop"].attributions.flatten().tolist() == [0.0, 0.0]
    # deconv: relu(incoming) regardless of the input -> [1, 0]
    assert out["deconvnet"].attributions.flatten().tolist() == [1.0, 0.0]
    # class 0 (S = -z): incoming (-1, 1) -> guided [0, 1], deconv [0, 1]
    out = sk.explain(model, x, methods=["guided_backprop", "deconvnet"], target=0)
    assert out["guided_backprop"].attributions.flatten().tolist() == [0.0, 1.0]
    assert out["deconvnet"].attributions.flatten().tolist() == [0.0, 1.0]


def test_guided_backprop_and_guided_gradcam_share_one_forward() -> None:
    first, after = Counter(), Counter()
    model = nn.Sequential(first, nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), after, nn.Linear(4 * 9 * 9, 3)).to(D).eval()
    x = _x(2, 1)
    shared = sk.explain(model, x, methods=["guided_backprop", "guided_gradcam"], layer="3")
    assert first.counts["forward"] == 1
    # One backward pass to the layer (plain ReLU gradient, for Grad-CAM) and one to the input (guided).
    assert after.counts["backward"] == 2 and first.counts["backward"] == 1
    alone_gb = sk.create_method("guided_backprop", model).attribute(x)
    alone_ggc = sk.create_method("guided_gradcam", model, layer="3").attribute(x)
    assert torch.equal(shared["guided_backprop"].attributions, alone_gb.attributions)
    assert torch.equal(shared["guided_gradcam"].attributions, alone_ggc.attributions)
    assert torch.equal(shared["guided_gradcam"].layer_maps, alone_ggc.layer_maps)
    # Grad-CAM inside guided Grad-CAM uses the plain gradient: it equals the gradcam method's map.
    gradcam = sk.create_method("gradcam", model, layer="3").attribute(x)
    torch.testing.assert_close(shared["guided_gradcam"].layer_maps, gradcam.layer_maps, atol=1e-12, rtol=1e-10)


class _FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.head = nn.Linear(3 * 9 * 9, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x)).flatten(1))


def test_functional_relu_keeps_plain_gradient_and_warns() -> None:
    model = _FunctionalNet().to(D).eval()
    x = _x(2, 1)
    for name in ("guided_backprop", "deconvnet", "guided_gradcam"):
        with pytest.warns(UserWarning, match="no nn.ReLU modules"):
            method = sk.create_method(name, model)
        e = method.attribute(x, 1)
        if name != "guided_gradcam":
            grad = sk.create_method("gradient", model).attribute(x, 1)
            torch.testing.assert_close(e.attributions, grad.attributions, atol=1e-12, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sk.create_method("guided_backprop", small_cnn())  # has nn.ReLU modules: no warning
    assert "F.relu" in method_class("guided_backprop").description


def test_no_trace_left_on_the_model() -> None:
    model = small_cnn(inplace=True).to(D).train()
    model[0].weight.requires_grad_(False)
    grad = torch.ones_like(model[3].weight)
    model[3].weight.grad = grad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _x(2, 1)
    sk.explain(model, x, methods=["guided_backprop", "guided_gradcam", "deconvnet"])
    with pytest.raises(InputError):
        sk.explain(model, x, methods=["guided_backprop", "guided_gradcam"], target=7)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        assert m.training
    assert model[3].weight.grad is grad and not model[0].weight.requires_grad and model[3].weight.requires_grad
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_batched_equals_per_image() -> None:
    model, x, classes, _ = MODELS["residual"]
    batched = sk.explain(model, x, methods=["guided_backprop", "deconvnet", "guided_gradcam"], target=classes)
    for n in range(x.shape[0]):
        single = sk.explain(model, x[n:n + 1], methods=["guided_backprop", "deconvnet", "guided_gradcam"],
                            target=classes[n])
        for name, e in batched.items():
            torch.testing.assert_close(e.maps[n], single[name].maps[0], atol=1e-12, rtol=1e-10)
