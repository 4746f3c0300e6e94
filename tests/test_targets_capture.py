"""Targets (what to explain) and the capture engine (hooks on, hooks off, layer resolution)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from saliencekit.errors import InputError, UnknownNameError
from saliencekit.methods._capture import capture, resolve_layer, spatial_layers
from saliencekit.methods.targets import ClassTarget, FunctionTarget, PredictedClass, as_target


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_single_logit_target_is_plus_minus_logit() -> None:
    out = torch.tensor([[1.5], [-0.5], [0.2]])
    t = PredictedClass().resolve(out)
    assert t.classes.tolist() == [1, 0, 1]
    assert t.score(out).tolist() == pytest.approx([1.5, 0.5, 0.2])
    t0 = ClassTarget(0).resolve(out)
    assert t0.score(out).tolist() == pytest.approx([-1.5, 0.5, -0.2])
    assert t0.probability(out).tolist() == pytest.approx((1 - torch.sigmoid(out[:, 0])).tolist())
    # stacked passes: two blocks of the three images
    assert t0.score(torch.cat([out, 2 * out])).tolist() == pytest.approx([-1.5, 0.5, -0.2, -3.0, 1.0, -0.4])


def test_multiclass_targets() -> None:
    out = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 5.0]])
    assert PredictedClass().resolve(out).score(out).tolist() == [3.0, 5.0]
    assert ClassTarget([0, 1]).resolve(out).score(out).tolist() == [0.0, 0.0]
    p = ClassTarget(2).resolve(out).probability(out)
    assert torch.allclose(p, torch.softmax(out, 1)[:, 2])
    assert FunctionTarget(lambda o: o[:, 0] - o[:, 2]).resolve(out).score(out).tolist() == [-1.0, -3.0]


@pytest.mark.parametrize(
    ("target", "message"),
    [(3, "out of range"), (-1, "out of range"), ([0], "one per image"), (torch.tensor([0.5, 1.0]), "integer"),
     ("cat", "callable"), (True, "bool")],
)
def test_bad_targets(target: object, message: str) -> None:
    out = torch.zeros(2, 3)
    with pytest.raises(InputError, match=message):
        as_target(target).resolve(out)


def test_capture_records_and_removes_hooks_even_on_error() -> None:
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(3, 2, 3), nn.ReLU())
    net.train()
    with capture(net, [net[0]], relu_rule="guided") as cap:
        y = net(torch.randn(2, 1, 6, 6))
        assert not net.training
    a = cap.activation(net[0])
    assert (a < 0).any(), "the in-place ReLU after the layer must not change the recorded activation"
    assert y.shape == (2, 2, 4, 4)
    assert _hook_count(net) == 0 and net.training
    with pytest.raises(RuntimeError, match="boom"), capture(net, [net[2]], relu_rule="deconv"):
        raise RuntimeError("boom")
    assert _hook_count(net) == 0 and net.training


def test_guided_rule_gradient_matches_hand_rule() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(inplace=True), nn.Linear(4, 1))
    x = torch.randn(3, 5)
    with capture(net, relu_rule="guided"):
        xg = x.clone().requires_grad_(True)
        net(xg).sum().backward()
    pre = net[0](x)
    g_hidden = net[2].weight.expand(3, 4)
    expected = (g_hidden.clamp_min(0) * (pre > 0)) @ net[0].weight
    assert torch.allclose(xg.grad, expected, atol=1e-6)
    with capture(net, relu_rule="deconv"):
        xd = x.clone().requires_grad_(True)
        net(xd).sum().backward()
    assert torch.allclose(xd.grad, g_hidden.clamp_min(0) @ net[0].weight, atol=1e-6)


@pytest.mark.parametrize(
    ("factory", "size", "expected"),
    [
        (lambda: torchvision.models.resnet18(num_classes=2), 64, "layer4.1"),
        (lambda: torchvision.models.vgg11(num_classes=2), 64, "features.20"),
        (lambda: torchvision.models.densenet121(num_classes=2), 64, "features.norm5"),
    ],
)
def test_default_layer_is_last_feature_map(factory, size: int, expected: str) -> None:
    model = factory()
    x = torch.randn(1, 3, size, size)
    assert spatial_layers(model, x)[-1] == expected
    assert resolve_layer(model, None, x) is dict(model.named_modules())[expected]
    assert _hook_count(model) == 0


def test_layer_errors() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1))
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(UnknownNameError, match="features.9.*valid layers: 0, 1"):
        resolve_layer(net, "features.9", x)
    with pytest.raises(InputError, match="not a submodule"):
        resolve_layer(net, nn.Conv2d(1, 1, 1), x)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    with pytest.raises(InputError, match="no layer with a spatial feature map"):
        resolve_layer(mlp, None, x)


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("name", ["gradient", "gradient_x_input", "guided_backprop", "deconvnet"])
def test_single_pass_methods_run_one_forward_and_fix_the_predicted_class(name: str) -> None:
    import saliencekit as sk
    from saliencekit import _layout

    model = _Counting()
    x = torch.randn(5, 1, 4, 4)
    _layout.uses_channels_last(model, x)  # the once-per-model layout trial (two one-image forwards), not counted
    model.calls = 0
    e = sk.create_method(name, model).attribute(x)
    assert model.calls == 1
    with torch.no_grad():
        out = model.net(x)
    assert e.targets.tolist() == out.argmax(1).tolist() == e.predictions.tolist()
    assert torch.allclose(e.scores, out.max(1).values, atol=1e-6)
    # chunked (batch_size=2): same result, via the separate clean pass
    chunked = sk.create_method(name, model, batch_size=2).attribute(x) if name.startswith("gradient") else e
    assert torch.allclose(chunked.maps, e.maps, atol=1e-6)
