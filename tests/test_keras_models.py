"""Keras 3 models (torch backend): loaded from .keras / .h5 files, fed (N, C, H, W) images, explained exactly like
the same weights copied into the equivalent PyTorch model.

The model is the chest X-ray lesson's CNN as the lesson builds it in Keras: Conv2D with 8/16/32/64 filters and
max-pooling, global average pooling, a Dense layer and Dense(1, sigmoid). Its PyTorch twin has the same weights
(kernels transposed from Keras' (kh, kw, in, out) and (in, out) layouts) and ends in ``nn.Sigmoid``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="Keras support is an optional extra: pip install saliencekit[keras]")
if keras.backend.backend() != "torch":  # pragma: no cover - a session that imported keras with another backend
    pytest.skip("keras was imported with another backend", allow_module_level=True)

import saliencekit as sk  # noqa: E402
from saliencekit.cli import main  # noqa: E402
from saliencekit.errors import InputError  # noqa: E402
from saliencekit.methods.registry import method_class, method_options  # noqa: E402
from saliencekit.models import KerasClassifier, load_model  # noqa: E402
from test_method_contract import assert_unchanged, snapshot  # noqa: E402

layers = keras.layers


def keras_lesson_cnn(size: tuple[int, int] = (32, 32), channels: int = 1, head: str = "sigmoid",
                     seed: int = 0) -> keras.Model:
    """The lesson's CNN in Keras (random weights, non-zero biases)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((*size, channels))
    x = inp
    for i, filters in enumerate((8, 16, 32, 64)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv2d_{i}",
                          bias_initializer="random_normal")(x)
        if i < 3:
            x = layers.MaxPooling2D(2, name=f"max_pooling2d_{i}")(x)
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    x = layers.Dense(32, activation="relu", name="dense", bias_initializer="random_normal")(x)
    if head == "sigmoid":
        out = layers.Dense(1, activation="sigmoid", name="dense_1")(x)
    elif head == "softmax":
        out = layers.Dense(3, activation="softmax", name="dense_1")(x)
    else:  # a separate activation layer
        out = layers.Activation("sigmoid", name="probability")(layers.Dense(1, name="dense_1")(x))
    return keras.Model(inp, out)


def torch_twin(km: keras.Model, channels: int = 1) -> nn.Module:
    """The same network in PyTorch with the Keras weights copied in."""
    mods: list[nn.Module] = []
    c = channels
    for i, filters in enumerate((8, 16, 32, 64)):
        conv = nn.Conv2d(c, filters, 3, padding=1)
        k = km.get_layer(f"conv2d_{i}")
        with torch.no_grad():
            conv.weight.copy_(torch.as_tensor(np.asarray(k.kernel.numpy())).permute(3, 2, 0, 1))
            conv.bias.copy_(torch.as_tensor(np.asarray(k.bias.numpy())))
        mods += [conv, nn.ReLU()] + ([nn.MaxPool2d(2)] if i < 3 else [])
        c = filters
    dense = []
    for name in ("dense", "dense_1"):
        d = km.get_layer(name)
        fc = nn.Linear(*d.kernel.shape)
        with torch.no_grad():
            fc.weight.copy_(torch.as_tensor(np.asarray(d.kernel.numpy())).T)
            fc.bias.copy_(torch.as_tensor(np.asarray(d.bias.numpy())))
        dense.append(fc)
    final = nn.Softmax(dim=-1) if km.get_layer("dense_1").units == 3 else nn.Sigmoid()
    return nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten(), dense[0], nn.ReLU(), dense[1], final).eval()


TWIN_LAYER = {"conv2d_3": "10", "conv2d_2": "7", "conv2d_1": "4"}  # the Keras layer -> the twin's ReLU after it


@pytest.fixture(scope="module")
def lesson(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    km = keras_lesson_cnn()
    folder = tmp_path_factory.mktemp("keras")
    km.save(folder / "lesson.keras")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        km.save(folder / "best_model.hdf5")  # the lesson's ModelCheckpoint file name, legacy HDF5
    return {"keras": km, "twin": torch_twin(km), "folder": folder}


@pytest.fixture(scope="module")
def wide() -> dict[str, object]:
    km = keras_lesson_cnn(size=(32, 48), seed=3)
    return {"keras": km, "twin": torch_twin(km)}


def _x(n: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["lesson.keras", "best_model.hdf5"])
def test_keras_files_load_as_classifiers_that_compute_the_keras_output(lesson: dict, name: str) -> None:
    loaded = load_model(lesson["folder"] / name)
    assert loaded.format == "keras" and isinstance(loaded.model, KerasClassifier)
    assert loaded.input_shape == (1, 32, 32) and loaded.preprocessing_or_default().size == (32, 32)
    model = loaded.model
    assert model.final_activation == "sigmoid" and model.final_layer == "dense_1"
    assert model.layer_names()[:3] == ["conv2d_0", "max_pooling2d_0", "conv2d_1"]
    x = _x()
    with torch.no_grad():
        ours = model(x)
        theirs = torch.as_tensor(np.asarray(lesson["keras"](x.permute(0, 2, 3, 1)).detach()))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours, lesson["twin"](x), atol=1e-6, rtol=1e-5)


def test_the_logit_reaches_the_adapters_sigmoid_module(lesson: dict) -> None:
    """The final sigmoid runs as an nn.Sigmoid of the adapter on the Keras Dense layer's pre-activation."""
    model = KerasClassifier(lesson["keras"])
    seen: list[torch.Tensor] = []
    act = model.get_submodule("dense_1/activation")
    assert isinstance(act, nn.Sigmoid)
    handle = act.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        model(_x())
    finally:
        handle.remove()
    twin = lesson["twin"]
    torch.testing.assert_close(seen[0], twin[:-1](_x()), atol=1e-6, rtol=1e-5)  # the twin's logit


def test_the_output_rule_explains_the_keras_logit(lesson: dict) -> None:
    """The final sigmoid is found through the adapter and bypassed: the explained score is the Dense layer's logit,
    the probability is its sigmoid, the prediction is p >= 0.5."""
    from saliencekit.methods.outputs import resolve_output

    x = _x(4)
    rule = resolve_output(KerasClassifier(lesson["keras"]), example=x)
    assert rule.activation is not None and (rule.activation.kind, rule.activation.name) == ("sigmoid", "dense_1")
    e = sk.create_method("gradient", lesson["keras"]).attribute(x, target=1)
    logit_model = lesson["twin"][:-1]  # the twin without its nn.Sigmoid
    xr = x.clone().requires_grad_(True)
    logit_model(xr)[:, 0].sum().backward()
    torch.testing.assert_close(e.attributions, xr.grad, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(e.scores, logit_model(x)[:, 0].detach(), atol=1e-6, rtol=1e-5)
    assert torch.equal(e.predictions, (logit_model(x)[:, 0] > 0).long())


@pytest.mark.parametrize("head", ["softmax", "activation_layer"])
def test_softmax_and_separate_activation_heads(head: str) -> None:
    km = keras_lesson_cnn(head=head, seed=1)
    model = KerasClassifier(km)
    x = _x(2)
    with torch.no_grad():
        out = model(x)
        ref = torch.as_tensor(np.asarray(km(x.permute(0, 2, 3, 1)).detach()))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    expected = nn.Softmax if head == "softmax" else nn.Sigmoid
    assert model.final_activation == ("softmax" if head == "softmax" else "sigmoid")
    assert isinstance(model.get_submodule(f"{model.final_layer}/activation"), expected)


def _options(name: str) -> dict[str, object]:
    return {"seed": 0} if "seed" in method_options(name) else {}


# lrp, fullgrad and the attention methods refuse Keras models by name (tests/test_method_contract.py)
TWIN_METHODS = [m for m in sk.list_methods()
                if m not in ("deconvnet", "lrp", "fullgrad") and not method_class(m).needs_attention]


def test_lrp_refuses_keras_models_by_name(lesson: dict) -> None:
    """LRP's function-level rules do not cover Keras' ops yet (its maps differed from the twin's, even with the
    epsilon rule everywhere): refused rather than silently different."""
    with pytest.raises(InputError, match="lrp does not support Keras models yet"):
        sk.create_method("lrp", lesson["keras"])


def test_fullgrad_refuses_keras_models_by_name(lesson: dict) -> None:
    """FullGrad reads the biases of torch modules: a Keras model's Conv2D/Dense biases are not such modules, so its
    map missed every bias term (it differed from the twin's): refused rather than silently different."""
    with pytest.raises(InputError, match="fullgrad does not support Keras models yet"):
        sk.create_method("fullgrad", lesson["keras"])


@pytest.mark.parametrize("name", TWIN_METHODS)
def test_every_method_equals_its_map_on_the_pytorch_twin(wide: dict, name: str) -> None:
    """Keras model (given as the Keras object itself) vs the same weights in PyTorch: equal maps, NHWC handled."""
    km, twin = wide["keras"], wide["twin"]
    x = _x(2, 32, 48)  # not square: a wrong permutation cannot hide
    before = snapshot(KerasClassifier(km))
    ours = sk.create_method(name, km, **_options(name)).attribute(x)
    ref = sk.create_method(name, twin, **_options(name)).attribute(x)
    assert ours.maps.shape == (2, 32, 48)
    scale = float(ref.maps.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours.maps, ref.maps, atol=2e-5 * scale, rtol=1e-4)
    if "layer" in ours.params:
        assert ours.params["layer"] == "conv2d_3" and ref.params["layer"] == TWIN_LAYER["conv2d_3"]
    assert_unchanged(KerasClassifier(km), before)


@pytest.mark.parametrize("layer", ["conv2d_1", "conv2d_2"])
def test_keras_layers_by_their_keras_names(lesson: dict, layer: str) -> None:
    x = _x(2)
    for name in ("gradcam", "gradcam++", "scorecam", "layercam"):
        ours = sk.create_method(name, lesson["keras"], layer=layer).attribute(x)
        ref = sk.create_method(name, lesson["twin"], layer=TWIN_LAYER[layer]).attribute(x)
        torch.testing.assert_close(ours.layer_maps, ref.layer_maps, atol=2e-5 * float(ref.layer_maps.abs().max()),
                                   rtol=1e-4)
    with pytest.raises(sk.errors.UnknownNameError, match="conv2d_9.*conv2d_3"):
        sk.create_method("gradcam", lesson["keras"], layer="conv2d_9").attribute(x)


def test_deconvnet_on_fused_relus_warns_and_is_the_plain_gradient(lesson: dict) -> None:
    with pytest.warns(UserWarning, match="fused into Dense/Conv layers"):
        method = sk.create_method("deconvnet", lesson["keras"])
    x = _x(2)
    plain = sk.create_method("gradient", lesson["keras"]).attribute(x).maps
    torch.testing.assert_close(method.attribute(x).maps, plain)


def test_keras_relu_layers_get_both_rules() -> None:
    """Standalone ReLU layers: guided backprop and DeconvNet equal the twin's."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((16, 16, 1))
    x = layers.ReLU(name="relu_a")(layers.Conv2D(4, 3, padding="same", name="c1")(inp))
    x = layers.Activation("relu", name="relu_b")(layers.Conv2D(4, 3, padding="same", name="c2")(x))
    out = layers.Dense(1, name="out")(layers.GlobalAveragePooling2D()(x))
    km = keras.Model(inp, out)
    twin = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    with torch.no_grad():
        for conv, name in ((twin[0], "c1"), (twin[2], "c2")):
            conv.weight.copy_(torch.as_tensor(np.asarray(km.get_layer(name).kernel.numpy())).permute(3, 2, 0, 1))
            conv.bias.copy_(torch.as_tensor(np.asarray(km.get_layer(name).bias.numpy())))
        twin[6].weight.copy_(torch.as_tensor(np.asarray(km.get_layer("out").kernel.numpy())).T)
        twin[6].bias.copy_(torch.as_tensor(np.asarray(km.get_layer("out").bias.numpy())))
    assert KerasClassifier(km).final_activation is None
    x = torch.randn(2, 1, 16, 16)
    for name in ("guided_backprop", "deconvnet"):
        ours = sk.create_method(name, km).attribute(x).maps
        torch.testing.assert_close(ours, sk.create_method(name, twin).attribute(x).maps, atol=1e-6, rtol=1e-4)


def test_wrong_channels_and_shapes_are_refused_by_name(lesson: dict) -> None:
    with pytest.raises(InputError, match="expects 1-channel images .*got 3 channels"):
        sk.create_method("gradient", lesson["keras"]).attribute(torch.randn(1, 3, 32, 32))


def test_cli_explains_the_lessons_hdf5_with_a_keras_layer_name(lesson: dict, tmp_path: Path, capsys) -> None:
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(image)
    out = tmp_path / "maps"
    argv = ["explain", "--model-file", lesson["folder"] / "best_model.hdf5", image, "--methods",
            "gradcam,gradient", "--layer", "conv2d_2", "--classes", "normal,effusion", "--out", out, "--no-progress"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    x = load_model(lesson["folder"] / "best_model.hdf5").preprocessing_or_default().load(image)[None]
    assert x.shape == (1, 1, 32, 32)  # the Keras input size and channels were used
    ref = sk.create_method("gradcam", lesson["twin"], layer=TWIN_LAYER["conv2d_2"]).attribute(x).maps[0].numpy()
    with np.load(out / "img" / "maps.npz") as z:
        np.testing.assert_allclose(z["gradcam"], ref, atol=2e-5 * np.abs(ref).max(), rtol=1e-4)


def test_weights_only_h5_and_custom_layers_are_refused_with_routes(lesson: dict, tmp_path: Path) -> None:
    lesson["keras"].save_weights(tmp_path / "only.weights.h5")
    with pytest.raises(InputError, match="cannot load the Keras model.*weights-only"):
        load_model(tmp_path / "only.weights.h5")


def test_keras_imported_with_another_backend_is_refused(monkeypatch) -> None:
    from saliencekit.models._keras import import_keras

    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    with pytest.raises(InputError, match="already imported with the 'tensorflow' backend.*KERAS_BACKEND"):
        import_keras()


def test_without_keras_the_loader_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "m.keras").write_bytes(b"PK\x03\x04")
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(InputError, match="pip install saliencekit\\[keras\\]"):
        load_model(tmp_path / "m.keras")


@pytest.mark.parametrize("name", ["gradcam", "scorecam", "guided_gradcam"])
def test_no_hook_is_left_when_a_named_layer_cam_is_the_first_call_on_a_fresh_model(name: str) -> None:
    """The first call runs saliencekit's once-per-model layout trial with the capture hooks set aside; on Keras
    layers (whose __setattr__ wraps dicts) setting them back must restore the very dicts the handles remove from."""
    km = keras_lesson_cnn(seed=4)
    adapter = KerasClassifier(km)
    before = snapshot(adapter)
    x = _x(2)
    sk.create_method(name, km, layer="conv2d_2").attribute(x)
    assert_unchanged(adapter, before)
    plain = sk.create_method("gradient", km).attribute(x).maps  # a left-over capture hook would cut this graph
    assert plain.abs().max() > 0
