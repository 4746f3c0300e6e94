"""Methods feed the model channels-last input on the CPU, and fall back for models that cannot take it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import saliencekit as sk
from saliencekit import _layout
from saliencekit.errors import InputError
from saliencekit.methods import method_class, method_options
from toy_models import Boom


class ViewNet(nn.Module):
    """Flattens a feature map with ``view``, which channels-last activations do not allow."""

    def __init__(self, side: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * side * side, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


class LayoutSpy(nn.Module):
    """Records the strides its input arrived with."""

    def __init__(self) -> None:
        super().__init__()
        self.strides: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.strides.append(x.stride())
        return x


def plain_gradient(model: nn.Module, x: torch.Tensor, cls: int) -> torch.Tensor:
    xx = x.clone().requires_grad_(True)
    return torch.autograd.grad(model(xx)[:, cls].sum(), xx)[0]


def test_cpu_methods_feed_channels_last_and_get_the_same_maps():
    torch.manual_seed(0)
    spy = LayoutSpy()
    model = nn.Sequential(spy, nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(3, 2, 8, 8)
    sk.explain(model, x, ["gradient"], target=2)  # the first call also runs the one-image layout trial
    spy.strides.clear()
    e = sk.explain(model, x, ["gradient"], target=2)["gradient"]
    assert spy.strides and all(s == x.to(memory_format=torch.channels_last).stride() for s in spy.strides)
    assert e.attributions.is_contiguous()  # the gradient comes back in the caller's layout
    torch.testing.assert_close(e.attributions, plain_gradient(model, x, 2), rtol=1e-5, atol=1e-6)


def test_every_method_returns_row_major_tensors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(2, 3, 8, 8)
    small = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 3}, "rise": {"masks": 8},
             "occlusion": {"patch": 4, "stride": 4}}
    for name in sk.list_methods():
        if method_class(name).needs_attention:  # a CNN has no attention to read (refused by name)
            continue
        opts = {k: v for k, v in small.get(name, {}).items() if k in method_options(name)}
        e = sk.explain(model, x, {name: opts}, target=1, layer="2")[name]
        for t in (e.maps, e.attributions, e.layer_maps):
            assert t is None or t.is_contiguous(), name


def test_model_that_cannot_take_channels_last_falls_back_and_is_remembered():
    torch.manual_seed(0)
    model = ViewNet()
    x = torch.randn(2, 1, 6, 6)
    with pytest.raises(RuntimeError):  # the premise: this model breaks on channels-last input
        model(x.to(memory_format=torch.channels_last))
    calls: list[int] = []
    model.conv.register_forward_hook(lambda *_: calls.append(1))  # the user's own hook
    assert model not in _layout._KEEP_LAYOUT
    e = sk.explain(model, x, ["gradient", "integrated_gradients"], target=1)
    torch.testing.assert_close(e["gradient"].attributions, plain_gradient(model, x, 1))
    assert model in _layout._KEEP_LAYOUT
    assert len(model._forward_hooks) == 0 and len(model.conv._forward_hooks) == 1
    assert all(p.grad is None for p in model.parameters())
    # The layout trial ran with the hooks set aside: the user's hook saw only the real forwards.
    calls.clear()
    sk.explain(model, x, ["gradient"], target=1)
    assert len(calls) == 1


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam", "guided_gradcam"])
def test_layer_methods_work_on_a_fresh_view_model(method):
    """The trial forward must not leave a second recorded call of the CAM layer (a fresh model each time)."""
    torch.manual_seed(0)
    model = ViewNet()
    x = torch.randn(2, 1, 6, 6)
    e = sk.explain(model, x, [method], target=1, layer="conv")[method]
    assert torch.isfinite(e.maps).all() and e.maps.shape == (2, 6, 6)
    assert model in _layout._KEEP_LAYOUT


def test_model_randomization_of_a_view_model_with_a_cam():
    from saliencekit.trust.randomization import model_randomization

    torch.manual_seed(0)
    model = ViewNet(side=12)
    x = torch.randn(3, 1, 12, 12)
    res = model_randomization(model, x, {"gradcam": {"method": "gradcam"}}, layer="conv", progress=False)
    assert "gradcam" in res.methods


def test_a_model_whose_channels_last_output_differs_keeps_its_layout():
    class LayoutDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            flat = torch.as_strided(y, (y.shape[0], y[0].numel()), (y[0].numel(), 1))  # raw memory order
            return flat[:, :2] * 10

    model = LayoutDependent()
    x = torch.randn(2, 1, 5, 5)
    sk.explain(model, x, ["gradient"], target=1)
    assert model in _layout._KEEP_LAYOUT


def test_a_model_that_always_raises_raises_its_own_error():
    model = nn.Sequential(Boom(fail_on=1), nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(InputError, match="boom") as exc:  # named in one line, chained from the model's error
        sk.explain(model, torch.randn(1, 1, 6, 6), ["gradient"], target=0)
    assert isinstance(exc.value.__cause__, RuntimeError) and "boom" in str(exc.value.__cause__)
