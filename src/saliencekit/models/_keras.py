"""Keras 3 models explained through PyTorch: Keras runs on its torch backend, and a thin adapter makes the model
look like any other PyTorch classifier to saliencekit's methods.

With ``KERAS_BACKEND=torch`` a Keras 3 model is a ``torch.nn.Module`` whose layers are ``nn.Module`` objects too
(``keras.src.backend.torch.layer.TorchLayer``) holding ``torch.nn.Parameter`` weights; calling a layer goes through
``nn.Module.__call__``, so forward hooks on it fire. But the layers are not registered as submodules of the model
(``model.named_modules()`` lists only its parameter dict), Keras feeds images channels-last (N, H, W, C), and a
final ``sigmoid`` / ``softmax`` is usually fused into the last ``Dense`` layer. :class:`KerasClassifier` bridges
the three without touching the Keras model:

- it takes (N, C, H, W) images like every saliencekit model and hands Keras (N, H, W, C) (a permuted view; input
  gradients come back in image layout through autograd);
- it registers every Keras layer as its own submodule under the layer's Keras name (``conv2d_3``; a nested model's
  layers as ``outer/inner``: ``/`` cannot occur in a Keras name), so CAM methods address layers by those names and
  find the last feature map automatically; :meth:`KerasClassifier.activation_layout` tells the capture engine that
  the 4-D activations are channels-last;
- a final ``sigmoid`` / ``softmax`` (fused into ``Dense`` or a separate ``Activation`` / ``Softmax`` layer) is run as
  a real ``nn.Sigmoid`` / ``nn.Softmax`` module of the adapter, on the logit that Keras computes (a forward hook on
  the last layer, present only during the adapter's own forward, returns the pre-activation instead of the
  probability). The output is the Keras model's own output; :meth:`KerasClassifier.saliencekit_final_activation`
  hands the activation to saliencekit's output rule (:mod:`saliencekit.methods.outputs`), which explains the logit;
- :meth:`KerasClassifier.relu_sites` lists where guided backprop's ReLU rule can act: Keras layers with a ``relu``
  activation (fused or standalone ``ReLU`` / ``Activation("relu")`` layers).

Keras computes in its own dtype (float32 by default) whatever the input dtype.
"""

from __future__ import annotations

import contextlib
import os
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saliencekit.errors import InputError

_EXTRA = "pip install saliencekit[keras]"
_ADAPTERS: weakref.WeakKeyDictionary[Any, KerasClassifier] = weakref.WeakKeyDictionary()


def is_keras_model(obj: object) -> bool:
    """Whether ``obj`` is a Keras model (checked without importing keras)."""
    keras = sys.modules.get("keras")
    if keras is None:
        return False
    return any(c.__module__.startswith("keras.") and c.__name__ == "Model" for c in type(obj).__mro__)


def import_keras() -> Any:
    """Import keras on its torch backend (setting ``KERAS_BACKEND=torch`` first).

    Raises:
        InputError: keras is not installed, or it was already imported with another backend.
    """
    keras = sys.modules.get("keras")
    if keras is None:
        os.environ["KERAS_BACKEND"] = "torch"
        try:
            import keras
        except ImportError as exc:
            raise InputError(f"loading Keras models needs keras 3; {_EXTRA}") from exc
    backend = keras.backend.backend()
    if backend != "torch":
        raise InputError(
            f"keras is already imported with the {backend!r} backend; saliencekit runs Keras models on the torch "
            "backend: start a new Python process and set os.environ['KERAS_BACKEND'] = 'torch' before importing "
            "keras (or load the model with saliencekit first)"
        )
    return keras


def load_keras(path: Path, device: torch.device) -> KerasClassifier:
    """Load a ``.keras`` / ``.h5`` / ``.hdf5`` model file (not compiled) and wrap it."""
    keras = import_keras()
    try:
        with keras.device(_device_name(device)):
            model = keras.saving.load_model(str(path), compile=False)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        hint = ""
        if "config" in text.lower() and path.suffix.lower() in (".h5", ".hdf5"):
            hint = (" (a weights-only file, model.save_weights, has no architecture: save the whole model with "
                    "model.save('model.keras'))")
        elif "unknown" in text.lower() or "custom" in text.lower():
            hint = (" (the model uses custom layers or functions: register them with "
                    "keras.saving.register_keras_serializable before loading, in Python)")
        raise InputError(f"cannot load the Keras model {path}: {type(exc).__name__}: {text}{hint}") from exc
    return KerasClassifier(model).to(device)


def as_classifier(model: Any) -> KerasClassifier:
    """The adapter of a Keras model (one per model, reused)."""
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = KerasClassifier(model)
        _ADAPTERS[model] = adapter
    return adapter


def _device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return device.type if device.index is None else f"{device.type}:{device.index}"


def _is_relu(fn: Any) -> bool:
    return getattr(fn, "__name__", None) == "relu" and getattr(fn, "__module__", "").startswith("keras.")


def _activation_name(fn: Any) -> str | None:
    name = getattr(fn, "__name__", None)
    return name if getattr(fn, "__module__", "").startswith("keras.") else None


class KerasClassifier(nn.Module):
    """A Keras 3 image classifier (torch backend) as a PyTorch module taking (N, C, H, W) images.

    The Keras model is neither modified nor copied: the adapter registers its layers as submodules under their Keras
    names, permutes the input to the layout Keras expects, and ends in an ``nn.Sigmoid`` / ``nn.Softmax`` module when
    the Keras model ends in that activation (see the module docstring).

    Args:
        keras_model: a built Keras 3 model with one image input and one output.

    Attributes:
        keras_model: the wrapped model.
        data_format: ``"channels_last"`` (Keras' default) or ``"channels_first"``.
        input_shape_chw: ``(C, H, W)`` of the Keras input, None where the model leaves a size open.
        final_activation: ``"sigmoid"``, ``"softmax"`` or None (the Keras model returns logits).
        final_layer: Keras name of the layer producing the output.

    >>> import os; os.environ["KERAS_BACKEND"] = "torch"  # doctest: +SKIP
    >>> import keras  # doctest: +SKIP
    >>> net = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
    ...                         keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1, activation="sigmoid")])
    >>> model = KerasClassifier(net)  # doctest: +SKIP
    >>> model(torch.zeros(2, 1, 32, 32)).shape, model.final_activation  # doctest: +SKIP
    (torch.Size([2, 1]), 'sigmoid')
    """

    def __init__(self, keras_model: Any):
        super().__init__()
        keras = import_keras()
        if not isinstance(keras_model, keras.Model):
            raise InputError(f"expected a Keras model, got {type(keras_model).__name__}")
        if not keras_model.built or not getattr(keras_model, "inputs", None):
            raise InputError("the Keras model is not built (it has no input shape); call it once on a batch or build "
                             "it with keras.Input(shape=...) first")
        if len(keras_model.inputs) != 1 or len(keras_model.outputs) != 1:
            raise InputError(f"the Keras model has {len(keras_model.inputs)} inputs and {len(keras_model.outputs)} "
                             "outputs; saliencekit explains image classifiers with one image input and one output")
        object.__setattr__(self, "keras_model", keras_model)  # held, not registered: its layers are registered
        shape = tuple(keras_model.inputs[0].shape)
        if len(shape) != 4:
            raise InputError(f"the Keras model's input has shape {shape}; saliencekit explains image models with "
                             "(batch, height, width, channels) inputs")
        self._layers: dict[int, str] = {}
        self._register(keras_model, "")
        formats = [getattr(layer, "data_format", None) for layer in self._keras_layers()]
        self.data_format = next((f for f in formats if f), keras.config.image_data_format())
        if self.data_format == "channels_last":
            self.input_shape_chw: tuple[int | None, int | None, int | None] = (shape[3], shape[1], shape[2])
        else:
            self.input_shape_chw = (shape[1], shape[2], shape[3])
        last = keras_model.outputs[0]._keras_history.operation
        self.final_layer = self._layers.get(id(last), getattr(last, "name", ""))
        self._logit_of: Any = None
        self.final_activation: str | None = None
        act = _activation_name(getattr(last, "activation", None))
        if type(last).__name__ == "Softmax" and getattr(last, "axis", -1) in (-1, 1):
            self.final_activation, self._logit_of = "softmax", _input_of
        elif type(last).__name__ == "Activation" and act in ("sigmoid", "softmax"):
            self.final_activation, self._logit_of = act, _input_of
        elif type(last).__name__ == "Dense" and act in ("sigmoid", "softmax"):
            self.final_activation, self._logit_of = act, _dense_logit
        activation: nn.Module
        if self.final_activation == "sigmoid":
            activation = nn.Sigmoid()
        elif self.final_activation == "softmax":
            activation = nn.Softmax(dim=-1)
        else:
            activation = nn.Identity()
        # "/" cannot occur in a Keras name, so this name never collides with a layer's.
        self._activation_name = f"{self.final_layer}/activation"
        self._bypassed = False
        self.add_module(self._activation_name, activation)

    def _register(self, model: Any, prefix: str) -> None:
        for layer in model.layers:
            if type(layer).__name__ == "InputLayer":
                continue
            name = f"{prefix}{layer.name}"
            if "." in name:
                raise InputError(f"Keras layer name {layer.name!r} contains '.', which PyTorch module names cannot "
                                 "hold; rename the layer")
            self.add_module(name, layer)
            self._layers[id(layer)] = name
            if hasattr(layer, "layers") and getattr(layer, "inputs", None):  # a nested model
                self._register(layer, f"{name}/")

    def _keras_layers(self) -> list[nn.Module]:
        return [self.get_submodule(name) for name in self._layers.values()]

    def layer_names(self) -> list[str]:
        """Keras names of the layers, in the model's order (nested models' layers as ``outer/inner``)."""
        return list(self._layers.values())

    def activation_layout(self, module: nn.Module) -> str | None:
        """Layout of a layer's 4-D output: ``"nhwc"`` for the Keras layers of a channels-last model."""
        if id(module) in self._layers:
            fmt = getattr(module, "data_format", None) or self.data_format
            return "nhwc" if fmt == "channels_last" else "nchw"
        return None

    def relu_sites(self) -> list[tuple[nn.Module, bool]]:
        """``(layer, fused)`` for every Keras layer that applies a plain ReLU to its output: ``fused`` when the ReLU
        is the activation of a ``Dense`` / ``Conv`` layer (the rule can act on its output gradient only)."""
        sites = []
        for module in self._keras_layers():
            kind = type(module).__name__
            if kind == "ReLU":
                plain = (getattr(module, "max_value", None) is None and not getattr(module, "negative_slope", 0)
                         and not getattr(module, "threshold", 0))
                if plain:
                    sites.append((module, False))
            elif kind == "Activation" and _is_relu(getattr(module, "activation", None)):
                sites.append((module, False))
            elif _is_relu(getattr(module, "activation", None)):
                sites.append((module, True))
        return sites

    def saliencekit_final_activation(self) -> Any:
        """The Keras model's final sigmoid/softmax for saliencekit's output rule (a
        :class:`~saliencekit.methods.outputs.FinalActivation`, or None when the model returns logits): inside its
        ``bypass()`` the adapter returns the logit that Keras computed before the activation."""
        if self.final_activation is None:
            return None
        from saliencekit.methods.outputs import FinalActivation

        columns = self.keras_model.outputs[0].shape[-1]
        return FinalActivation(kind=self.final_activation, name=self.final_layer, bypass=self._bypass,
                               columns=int(columns) if columns is not None else None)

    @contextlib.contextmanager
    def _bypass(self) -> Iterator[None]:
        saved = self._bypassed
        self._bypassed = True
        try:
            yield
        finally:
            self._bypassed = saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise InputError(f"the Keras model takes (N, C, H, W) images, got {getattr(x, 'shape', type(x))}")
        channels, height, width = self.input_shape_chw
        keras_shape = tuple(self.keras_model.inputs[0].shape)
        if channels is not None and x.shape[1] != channels:
            raise InputError(f"the Keras model expects {channels}-channel images (Keras input shape {keras_shape}), "
                             f"got {x.shape[1]} channels (inputs shape {tuple(x.shape)}); give (N, C, H, W) images, "
                             "saliencekit hands Keras (N, H, W, C)")
        if (height is not None and x.shape[2] != height) or (width is not None and x.shape[3] != width):
            raise InputError(f"the Keras model takes {height}x{width} images (Keras input shape {keras_shape}), got "
                             f"{x.shape[2]}x{x.shape[3]}; resize them (--image-size {height} on the command line)")
        feed = x.permute(0, 2, 3, 1) if self.data_format == "channels_last" else x
        keras = sys.modules["keras"]
        with keras.device(_device_name(x.device)), self._logit_hook():
            out = self.keras_model(feed)
        if not isinstance(out, torch.Tensor):
            raise InputError(f"the Keras model returned {type(out).__name__}, not one tensor")
        return out if self._bypassed else self.get_submodule(self._activation_name)(out)

    @contextlib.contextmanager
    def _logit_hook(self) -> Iterator[None]:
        """During one forward pass, make the last layer return its pre-activation (the logit)."""
        if self._logit_of is None:
            yield
            return
        layer = self.get_submodule(self.final_layer)
        logit_of = self._logit_of
        handle = layer.register_forward_hook(lambda module, args, _out: logit_of(module, args))
        try:
            yield
        finally:
            handle.remove()

    def extra_repr(self) -> str:
        return (f"keras_model={self.keras_model.name!r}, data_format={self.data_format!r}, "
                f"final_activation={self.final_activation!r}")


def _input_of(_layer: Any, args: tuple[Any, ...]) -> torch.Tensor:
    return args[0]


def _dense_logit(layer: Any, args: tuple[Any, ...]) -> torch.Tensor:
    """``Dense.call`` without its activation: ``x @ kernel + bias``."""
    z = torch.matmul(args[0], _value(layer.kernel))
    if layer.bias is not None:
        z = z + _value(layer.bias)
    return z


def _value(variable: Any) -> torch.Tensor:
    """The torch tensor of a Keras variable (or of a tensor a Keras property computed)."""
    return variable.value if hasattr(variable, "value") else variable


__all__ = ["KerasClassifier", "as_classifier", "import_keras", "is_keras_model", "load_keras"]
