"""The method contract, checked for every registered method (iterates over ``list_methods()``).

A new method gets these tests without writing any: it runs with its default options on CNNs with
in-place ReLUs, batch norm, a residual block, functional ReLUs and nested ``nn.Sequential``; leaves
no hook, mode, flag, gradient or weight changed (also when the target is bad or a layer raises);
returns finite (N, H, W) maps on the input's device; and explains a batch as it explains each image.

Methods that read a transformer's attention (``needs_attention``) are checked the same way on tiny ViTs (attention
through ``F.scaled_dot_product_attention``, an explicit softmax and ``nn.MultiheadAttention`` in place of the CNN
kinds), and must refuse every CNN by name.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

import saliencekit as sk
from saliencekit.errors import SaliencekitError
from saliencekit.methods.registry import method_class, method_options
from toy_models import Boom, ResidualCNN, TinyViT, make

METHODS = sk.list_methods()
ATTENTION_METHODS = [m for m in METHODS if method_class(m).needs_attention]
SIZE = 16
# The tiny ViT an attention method is checked on in place of each CNN kind.
_VIT_FOR = {"residual": "vit_sdpa", "inplace": "vit_sdpa", "plain": "vit_sdpa", "functional": "vit_softmax",
            "nested": "vit_mha"}


def kind_for(name: str, kind: str) -> str:
    """The toy model kind ``name`` is checked on: a tiny ViT for attention methods, else ``kind``."""
    return _VIT_FOR[kind] if method_class(name).needs_attention else kind

_MODULE_HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)
_GLOBAL_HOOK_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                      "_global_backward_pre_hooks", "_global_forward_hooks_always_called",
                      "_global_forward_hooks_with_kwargs")


def hook_inventory(model: nn.Module) -> dict[str, Any]:
    """Every hook registered anywhere on the model (modules, parameters, buffers) or globally."""
    inv: dict[str, Any] = {}
    for name, m in model.named_modules():
        for attr in _MODULE_HOOK_DICTS:
            d = getattr(m, attr, None)
            if d:
                inv[f"{name or '<model>'}.{attr}"] = list(d)
        if getattr(m, "_is_full_backward_hook", None) is not None:
            inv[f"{name}._is_full_backward_hook"] = m._is_full_backward_hook
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if getattr(t, "_backward_hooks", None):
            inv[f"{name}._backward_hooks"] = list(t._backward_hooks)
        if getattr(t, "_post_accumulate_grad_hooks", None):
            inv[f"{name}._post_accumulate_grad_hooks"] = list(t._post_accumulate_grad_hooks)
    import torch.nn.modules.module as mm

    for attr in _GLOBAL_HOOK_DICTS:
        d = getattr(mm, attr, None)
        if d:
            inv[f"global.{attr}"] = list(d)
    return inv


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a method must leave exactly as it was."""
    return {
        "hooks": hook_inventory(model),
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad_ids": {n: id(p.grad) for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modules": [(n, type(m)) for n, m in model.named_modules()],
        "forward": type(model).forward,
        "relu": (torch.relu, torch.nn.functional.relu),
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["hooks"] == {}, f"hooks left on the model: {after['hooks']}"
    assert after["training"] == before["training"], "train/eval flags changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad flags changed"
    assert after["grad_ids"] == before["grad_ids"], ".grad tensors replaced"
    for n, g in before["grads"].items():
        now = dict(model.named_parameters())[n].grad
        assert (g is None and now is None) or torch.equal(g, now), f".grad of {n} changed"
    for k, v in before["state"].items():
        assert torch.equal(v, model.state_dict()[k]), f"weight/buffer {k} changed"
    assert after["modules"] == before["modules"], "modules swapped"
    assert after["forward"] is before["forward"] and after["relu"] == before["relu"], "torch patched"


def prepared_model(model: nn.Module, device: torch.device) -> nn.Module:
    """A model in a deliberately mixed state: train mode with one module in eval, some frozen parameters,
    some existing ``.grad`` values."""
    model = model.to(device).train()
    modules = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if modules:
        modules[0].eval()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    for p in params[1::2]:
        p.grad = torch.randn_like(p)
    return model


def _x(device: torch.device, n: int = 3, c: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.randn(n, c, SIZE, SIZE, generator=g, dtype=dtype).to(device)


def _check_explanation(e: sk.Explanation, name: str, x: torch.Tensor) -> None:
    n, _c, h, w = x.shape
    assert isinstance(e, sk.Explanation)
    assert e.method == name
    assert e.maps.shape == (n, h, w), f"{name}: maps {tuple(e.maps.shape)}"
    assert e.maps.device == x.device, f"{name}: maps on {e.maps.device}, input on {x.device}"
    assert e.maps.is_floating_point() and torch.isfinite(e.maps).all(), f"{name}: non-finite maps"
    if e.attributions is not None:
        assert e.attributions.shape == x.shape and e.attributions.device == x.device
    for field in ("scores", "targets", "predictions"):
        t = getattr(e, field)
        assert t is not None and t.shape == (n,) and t.device == x.device, f"{name}: {field}"
    for k, v in e.extras.items():
        assert v.device == x.device, f"{name}: extras[{k!r}] on {v.device}"
    json.dumps(e.params)


def test_registry_is_complete_and_documented() -> None:
    assert len(METHODS) == len(set(METHODS)) and len(METHODS) >= 8
    for name in METHODS:
        cls = method_class(name)
        assert cls.name == name and cls.description and cls.__doc__, name
        assert cls.family, name
        for flag in ("uses_gradients", "multiplies_by_inputs", "needs_layer", "satisfies_completeness",
                     "works_on_torchscript", "needs_attention"):
            assert isinstance(getattr(cls, flag), bool), (name, flag)
        missing = [k for k, v in method_options(name).items() if v is __import__("inspect").Parameter.empty]
        assert not missing, f"{name}: options without defaults {missing}"


@pytest.mark.parametrize("name", METHODS)
def test_hygiene_after_normal_run_bad_target_and_raising_layer(name: str, device: torch.device) -> None:
    model = prepared_model(make(kind_for(name, "residual"), classes=1), device)
    x = _x(device)
    before = snapshot(model)
    e = sk.create_method(name, model).attribute(x)
    _check_explanation(e, name, x)
    assert_unchanged(model, before)

    with pytest.raises(SaliencekitError, match="target class 7"):
        sk.create_method(name, model).attribute(x, target=7)
    assert_unchanged(model, before)

    for fail_on in (1, 2, 3):
        boom = Boom(fail_on)
        if method_class(name).needs_attention:
            net = TinyViT()
            net.blocks[1] = nn.Sequential(boom, net.blocks[1])  # raises inside a nested module, before the last block
        else:
            net = ResidualCNN()
            net.block = nn.Sequential(boom, net.block)  # raises inside a nested module, before the last conv stage
        net = prepared_model(net.double(), device)
        before_net = snapshot(net)
        try:
            sk.create_method(name, net).attribute(x)
        except SaliencekitError as exc:
            # a failure inside the model's forward becomes one line naming it, chained from the model's exception
            assert "the model failed on input of shape" in str(exc) and "boom" in str(exc)
            assert isinstance(exc.__cause__, RuntimeError) and "boom" in str(exc.__cause__)
        else:
            assert fail_on > 1, "the first forward pass raised, so the method must raise"
        assert_unchanged(net, before_net)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("kind,classes,channels", [("inplace", 1, 1), ("functional", 3, 1), ("nested", 3, 3),
                                                   ("plain", 3, 3)])
def test_runs_on_every_toy_architecture(name: str, kind: str, classes: int, channels: int,
                                        device: torch.device) -> None:
    model = make(kind_for(name, kind), in_channels=channels, classes=classes).to(device)
    x = _x(device, n=2, c=channels)
    before = snapshot(model)
    e = sk.create_method(name, model).attribute(x)
    _check_explanation(e, name, x)
    assert_unchanged(model, before)
    with torch.no_grad():
        out = model(x)
    expected = (out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(1)
    assert torch.equal(e.predictions, expected) and torch.equal(e.targets, expected)


@pytest.mark.parametrize("name", METHODS)
def test_batched_equals_per_image_for_every_method(name: str, device: torch.device) -> None:
    model = make(kind_for(name, "residual"), classes=3).to(device)
    x = _x(device, n=3)
    batched = sk.create_method(name, model).attribute(x, target=[0, 2, 1])
    for i, cls in enumerate([0, 2, 1]):
        single = sk.create_method(name, model).attribute(x[i : i + 1], target=cls)
        torch.testing.assert_close(single.maps[0], batched.maps[i], atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("kind", ["residual", "vit_sdpa"])
def test_explain_all_methods_together_is_hygienic_and_equal_to_separate(kind: str, device: torch.device) -> None:
    """Every method that applies (on the tiny ViT: every method) at once, as separately."""
    import warnings

    model = prepared_model(make(kind, classes=3), device)
    methods = [m for m in METHODS if kind.startswith("vit") or m not in ATTENTION_METHODS]
    x = _x(device, n=2)
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # on the ViT: no ReLU for the ReLU rules, no LRP rule for matmul
        together = sk.explain(model, x, methods=methods, target=1)
        assert list(together) == methods
        assert_unchanged(model, before)
        for name in methods:
            alone = sk.create_method(name, model).attribute(x, target=1)
            torch.testing.assert_close(together[name].maps, alone.maps, atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("name", ATTENTION_METHODS)
@pytest.mark.parametrize("kind", ["residual", "inplace", "functional", "nested", "plain"])
def test_attention_methods_refuse_models_without_attention(name: str, kind: str) -> None:
    model = prepared_model(make(kind, classes=3), torch.device("cpu"))
    before = snapshot(model)
    with pytest.raises(SaliencekitError, match=f"{name} explains vision transformers: .* computes no attention"):
        sk.create_method(name, model).attribute(_x(torch.device("cpu"), n=2))
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", METHODS)
def test_gradients_stay_off_parameters_and_inputs(name: str) -> None:
    model = make(kind_for(name, "plain"), classes=3)
    x = _x(torch.device("cpu"), n=2)
    x_before = x.clone()
    sk.create_method(name, model).attribute(x)
    assert torch.equal(x, x_before) and x.grad is None and not x.requires_grad
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.parametrize("name", METHODS)
def test_cuda_matches_cpu(name: str) -> None:
    cpu_model = make(kind_for(name, "residual"), classes=3, dtype=torch.float32)
    x = _x(torch.device("cpu"), n=2, dtype=torch.float32)
    gpu_model = make(kind_for(name, "residual"), classes=3, dtype=torch.float32).cuda()
    before = snapshot(gpu_model)
    e_gpu = sk.create_method(name, gpu_model).attribute(x.cuda())
    _check_explanation(e_gpu, name, x.cuda())
    assert_unchanged(gpu_model, before)
    if "seed" in method_options(name) or "base" in method_options(name):
        return  # seeded noise / masks are drawn by a generator on the input's device
    e_cpu = sk.create_method(name, cpu_model).attribute(x)
    a, b = e_gpu.maps.cpu().flatten(), e_cpu.maps.flatten()
    # cuDNN may use TF32 convolutions: compare relative to the map's scale, not element-wise to 1e-6.
    assert (a - b).abs().max() <= 1e-2 * b.abs().max() + 1e-6, name


def test_the_checker_itself_sees_leftovers() -> None:
    """The hygiene checks above can fail: each kind of leftover is detected."""
    cases = [
        lambda m: m[0].register_forward_hook(lambda *a: None),
        lambda m: m[3].register_full_backward_hook(lambda *a: None),
        lambda m: m[0].register_forward_pre_hook(lambda *a: None),
        lambda m: m[0].weight.register_hook(lambda g: g),
        lambda m: m[4].eval() if m[4].training else m[4].train(),
        lambda m: m[3].weight.requires_grad_(False),
        lambda m: setattr(m[0].bias, "grad", torch.zeros_like(m[0].bias)),
        lambda m: m[3].weight.data.add_(1e-12),
    ]
    for spoil in cases:
        model = make("plain")
        before = snapshot(model)
        spoil(model)
        with pytest.raises(AssertionError):
            assert_unchanged(model, before)


class _FunctionalSigmoid(nn.Module):
    """A logit model whose forward ends in ``torch.sigmoid`` (no module to bypass)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("head,classes", [("sigmoid", 1), ("sigmoid", 3), ("softmax", 3), ("log_softmax", 3)])
def test_final_activation_is_bypassed_so_maps_equal_the_logit_twin(name: str, head: str, classes: int,
                                                                   device: torch.device) -> None:
    """A model ending in nn.Sigmoid (binary or 3 independent labels), nn.Softmax or nn.LogSoftmax is explained by
    its logit: every method's maps, scores, targets and predictions equal those of the same network without the
    activation (declared multi-label for 3 sigmoid labels), and the model is left exactly as it was."""
    net = make(kind_for(name, "residual"), classes=classes).to(device)
    act = {"sigmoid": nn.Sigmoid(), "softmax": nn.Softmax(dim=1), "log_softmax": nn.LogSoftmax(dim=1)}[head]
    model = prepared_model(nn.Sequential(net, act), device)
    twin_output = "multilabel" if (head == "sigmoid" and classes > 1) else "logits"
    x = _x(device, n=2)
    before = snapshot(model)
    e = sk.create_method(name, model).attribute(x)
    _check_explanation(e, name, x)
    assert_unchanged(model, before)
    twin = sk.create_method(name, net, output=twin_output).attribute(x)
    torch.testing.assert_close(e.maps, twin.maps, atol=1e-9, rtol=1e-6)
    torch.testing.assert_close(e.scores, twin.scores, atol=1e-9, rtol=1e-6)
    assert torch.equal(e.targets, twin.targets) and torch.equal(e.predictions, twin.predictions)
    fixed = sk.create_method(name, model).attribute(x, target=0)
    torch.testing.assert_close(fixed.maps, sk.create_method(name, net, output=twin_output).attribute(x, target=0).maps,
                               atol=1e-9, rtol=1e-6)
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", METHODS)
def test_multilabel_model_without_activation_explains_the_most_probable_label(name: str,
                                                                             device: torch.device) -> None:
    """A declared multi-label model: default target = the label with the highest sigmoid (not a softmax rule)."""
    model = prepared_model(make(kind_for(name, "residual"), classes=4), device)
    x = _x(device, n=2)
    before = snapshot(model)
    e = sk.create_method(name, model, output="multilabel").attribute(x)
    _check_explanation(e, name, x)
    assert_unchanged(model, before)
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(x)).argmax(1)
    model.train()
    assert torch.equal(e.targets, expected) and torch.equal(e.predictions, expected)


@pytest.mark.parametrize("name", METHODS)
def test_declared_probabilities_explain_their_log_odds(name: str, device: torch.device) -> None:
    """A functional sigmoid cannot be bypassed: declared ``output='probabilities'``, the score is logit(p), which
    for a sigmoid output is the logit itself, so the maps equal the logit twin's (float64, p not saturated)."""
    net = make(kind_for(name, "residual"), classes=1).to(device)
    model = _FunctionalSigmoid(net)
    x = _x(device, n=2)
    before = snapshot(model)
    e = sk.create_method(name, model, output="probabilities").attribute(x)
    assert_unchanged(model, before)
    twin = sk.create_method(name, net).attribute(x)
    torch.testing.assert_close(e.maps, twin.maps, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(e.scores, twin.scores, atol=1e-9, rtol=1e-6)
    assert torch.equal(e.predictions, twin.predictions)


def _keras_cnn() -> nn.Module:
    """A small Keras 3 CNN ending in Dense(1, sigmoid), as the adapter every method sees (skips without keras)."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="Keras support is an optional extra: pip install saliencekit[keras]")
    if keras.backend.backend() != "torch":  # pragma: no cover
        pytest.skip("keras was imported with another backend")
    from saliencekit.models import KerasClassifier

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return KerasClassifier(keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(x)))


def _tiny_vit() -> nn.Module:
    timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install saliencekit[timm]")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=2,
                             in_chans=1).double()


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("kind", ["keras", "vit"])
def test_hygiene_on_a_keras_model_and_a_vision_transformer(name: str, kind: str) -> None:
    """The contract on models that are not plain CNNs: a Keras model (through its adapter; no hook, flag or .grad
    left on any Keras layer) and a timm ViT (token layers)."""
    import warnings

    model = _keras_cnn() if kind == "keras" else prepared_model(_tiny_vit(), torch.device("cpu"))
    x = _x(torch.device("cpu"), n=2, dtype=torch.float32 if kind == "keras" else torch.float64)
    if kind == "vit":
        x = torch.nn.functional.interpolate(x, size=32)
    before = snapshot(model)
    if kind == "keras" and (name in ("lrp", "fullgrad") or name in ATTENTION_METHODS):  # refused by name
        with pytest.raises(SaliencekitError, match="does not support Keras"):
            sk.create_method(name, model)
        assert_unchanged(model, before)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ReLU-rule methods warn where no ReLU can be reached
        e = sk.create_method(name, model).attribute(x)
        _check_explanation(e, name, x)
        assert_unchanged(model, before)
        with pytest.raises(SaliencekitError, match="target class 7"):
            sk.create_method(name, model).attribute(x, target=7)
    assert_unchanged(model, before)
