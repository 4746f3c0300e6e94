"""The model registry: the lesson's effusion CNN, the rock-paper-scissors CNN, torchvision and timm models.

Every model maps a ``(N, in_channels, H, W)`` batch to logits: ONE logit per image for a binary
task (``num_classes == 2``; sigmoid gives the probability of class 1) and ``num_classes`` logits
otherwise (softmax). ``outputs=`` overrides the number of output units (e.g. a two-logit softmax model
for two classes, as some training scripts save it).

Names: the registered ones (:func:`list_models`), then any torchvision classification model name, then any
timm model name when timm is installed (``timm:NAME`` picks timm explicitly where torchvision has the same name).
Nothing is downloaded: every model starts with random weights.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from saliencekit.errors import InputError, UnknownNameError

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}

# torchvision classification models exposed by name (any other torchvision classification model name
# is accepted by :func:`create` too; these are the ones listed and tested).
TORCHVISION_MODELS = (
    "resnet18", "resnet34", "resnet50", "densenet121", "vgg11", "vgg16", "mobilenet_v3_small", "efficientnet_b0",
)


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding a model factory ``f(in_channels, num_classes, **kwargs) -> nn.Module`` to the registry.

    >>> @register_model("tiny_test_net")
    ... def _tiny(in_channels: int = 1, num_classes: int = 2) -> nn.Module:
    ...     return nn.Sequential(nn.Flatten(), nn.LazyLinear(output_units(num_classes)))
    >>> "tiny_test_net" in list_models()
    True
    >>> _ = _REGISTRY.pop("tiny_test_net")
    """

    def deco(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    """One-line description of a registered model (the first line of its factory's docstring)."""
    if name not in _REGISTRY:
        raise UnknownNameError("model", name, list_models())
    doc = (_REGISTRY[name].__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def output_units(num_classes: int) -> int:
    """Logits a model has for ``num_classes`` classes: 1 for a binary task, else ``num_classes``."""
    if num_classes < 2:
        raise InputError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
    return 1 if num_classes == 2 else num_classes


def create(name: str, in_channels: int = 1, num_classes: int = 2, *, outputs: int | None = None,
           **kwargs: Any) -> nn.Module:
    """Build a model with random weights (nothing is downloaded).

    Args:
        name: a name from :func:`list_models`, any torchvision classification model name, or a timm model name
            (``timm:NAME`` or plain ``NAME`` when neither saliencekit nor torchvision has it; needs timm).
        in_channels: image channels (1 for greyscale, 3 for RGB).
        num_classes: number of classes; 2 gives a single-logit model.
        outputs: number of output units when it differs from that convention (e.g. 2 for a two-logit softmax
            model of two classes); None follows :func:`output_units`.
        **kwargs: extra arguments of the model factory.

    Raises:
        UnknownNameError: the name is none of these; the message lists the registered names.

    >>> m = create("effusion_cnn")
    >>> m(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 1])
    >>> create("effusion_cnn", outputs=2)(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 2])
    """
    if in_channels < 1:
        raise InputError(f"in_channels must be >= 1, got {in_channels}")
    units = output_units(num_classes) if outputs is None else int(outputs)
    if units < 1:
        raise InputError(f"outputs must be >= 1, got {outputs}")
    if name.startswith("timm:"):
        return _timm(name[len("timm:"):], in_channels, units, **kwargs)
    factory = _REGISTRY.get(name)
    if factory is None:
        if name in _torchvision_names():
            return _torchvision(name, in_channels, units, **kwargs)
        if _timm_has(name):
            return _timm(name, in_channels, units, **kwargs)
        hint = "" if timm_available() else " (timm model names need `pip install saliencekit[timm]`)"
        raise UnknownNameError("model", name, [*list_models(), f"any torchvision or timm model name{hint}"])
    model = factory(in_channels=in_channels, num_classes=num_classes, **kwargs)
    if units != output_units(num_classes):
        _replace_last_linear(model, units)
    return model


def last_conv_layer(model: nn.Module) -> str:
    """Qualified name of the last ``nn.Conv2d`` of a model (the default Grad-CAM layer).

    >>> last_conv_layer(create("effusion_cnn"))
    'features.conv7'
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise InputError(f"{model.__class__.__name__} has no Conv2d layer")
    return names[-1]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def relu_init(model: nn.Module) -> nn.Module:
    """He-normal convolutions (fan-in, ReLU gain), Glorot-uniform dense layers, zero biases.

    With Keras' Glorot init or PyTorch's default, the activations of a plain 7-convolution ReLU stack
    shrink layer by layer, the logit starts out independent of the image and training sits on the
    0.693 loss plateau for many epochs; He init keeps the activation scale and escapes it much sooner.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
        if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


class EffusionCNN(nn.Module):
    """The classic effusion-vs-normal teaching CNN (54,627 parameters for one input channel).

    Seven convolutions with 'same' padding and ReLU (3x3 with 8, 8, 12, 12 filters, then 5x5 with
    20, 20, 50 filters), 2x2 max-pooling after each of the first six, global average pooling,
    dense 128 + ReLU, dropout 0.6, dense 32 + ReLU, and the output layer. Weights: see :func:`relu_init`.
    The input must be at least 64x64 (six 2x2 poolings).

    Submodules: ``features`` (``conv1`` ... ``conv7``, ``relu1`` ..., ``pool1`` ...), ``pool``
    (global average pooling) and ``classifier``.

    >>> m = EffusionCNN()
    >>> sum(p.numel() for p in m.parameters())
    54627
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, dropout: float = 0.6):
        super().__init__()
        spec = [(8, 3), (8, 3), (12, 3), (12, 3), (20, 5), (20, 5), (50, 5)]
        layers: list[tuple[str, nn.Module]] = []
        c = in_channels
        for i, (out, k) in enumerate(spec, start=1):
            layers.append((f"conv{i}", nn.Conv2d(c, out, k, padding="same")))
            layers.append((f"relu{i}", nn.ReLU()))
            if i < len(spec):
                layers.append((f"pool{i}", nn.MaxPool2d(2)))
            c = out
        self.features = nn.Sequential(OrderedDict(layers))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(c, 128), relu1=nn.ReLU(), dropout=nn.Dropout(dropout),
                fc2=nn.Linear(128, 32), relu2=nn.ReLU(), out=nn.Linear(32, output_units(num_classes)),
            )
        )
        relu_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class RpsCNN(nn.Module):
    """The rock-paper-scissors teaching CNN.

    3x3 convolutions with 32, 64 filters, max-pool, 128, 128, max-pool, 256, 256, max-pool (ReLU after
    each), global average pooling, dense 1024, dense 512, output layer (:func:`relu_init`).

    >>> RpsCNN(in_channels=3, num_classes=3)(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 3])
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 3, dropout: float = 0.5):
        super().__init__()
        layers: list[tuple[str, nn.Module]] = []
        c, n_conv, n_pool = in_channels, 0, 0
        for item in (32, 64, "pool", 128, 128, "pool", 256, 256, "pool"):
            if item == "pool":
                n_pool += 1
                layers.append((f"pool{n_pool}", nn.MaxPool2d(2)))
                continue
            n_conv += 1
            layers.append((f"conv{n_conv}", nn.Conv2d(c, int(item), 3, padding=1)))
            layers.append((f"relu{n_conv}", nn.ReLU()))
            c = int(item)
        self.features = nn.Sequential(OrderedDict(layers))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(c, 1024), relu1=nn.ReLU(), dropout1=nn.Dropout(dropout),
                fc2=nn.Linear(1024, 512), relu2=nn.ReLU(), dropout2=nn.Dropout(dropout),
                out=nn.Linear(512, output_units(num_classes)),
            )
        )
        relu_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@register_model("effusion_cnn")
def effusion_cnn(in_channels: int = 1, num_classes: int = 2, dropout: float = 0.6) -> nn.Module:
    """The lesson's effusion CNN: 7 convs (8-50 filters), global pooling, dense 128/32 (54,627 parameters)."""
    return EffusionCNN(in_channels, num_classes, dropout)


@register_model("rps_cnn")
def rps_cnn(in_channels: int = 3, num_classes: int = 3, dropout: float = 0.5) -> nn.Module:
    """The rock-paper-scissors CNN: 6 convs (32-256 filters), global pooling, dense 1024/512."""
    return RpsCNN(in_channels, num_classes, dropout)


def _torchvision_names() -> set[str]:
    import torchvision

    return set(torchvision.models.list_models(module=torchvision.models))


def _torchvision(name: str, in_channels: int, units: int, **kwargs: Any) -> nn.Module:
    """A torchvision classification model with random weights, ``units`` outputs, its first conv adapted."""
    import torchvision

    kwargs.pop("weights", None)  # never download weights
    if name in ("inception_v3", "googlenet"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    model = torchvision.models.get_model(name, weights=None, num_classes=units, **kwargs)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def timm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("timm") is not None


def _timm_has(name: str) -> bool:
    if not timm_available():
        return False
    import timm

    return timm.is_model(name)


def _timm(name: str, in_channels: int, units: int, **kwargs: Any) -> nn.Module:
    """A timm model with random weights (``pretrained=False``: nothing is downloaded)."""
    if not timm_available():
        raise InputError(f"model {name!r} comes from timm, which is not installed; pip install saliencekit[timm]")
    import timm

    if not timm.is_model(name):
        raise UnknownNameError("timm model", name, [*timm.list_models()[:20], "... (timm.list_models())"])
    kwargs.pop("pretrained", None)
    return timm.create_model(name, pretrained=False, num_classes=units, in_chans=in_channels, **kwargs)


def _replace_last_linear(model: nn.Module, units: int) -> None:
    """Give a registered model ``units`` outputs by replacing its last ``nn.Linear`` (a freshly built model)."""
    for name, module in reversed(list(model.named_modules())):
        if isinstance(module, nn.Linear):
            new = nn.Linear(module.in_features, units, bias=module.bias is not None)
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
            return
    raise InputError(f"{model.__class__.__name__} has no nn.Linear output layer to give {units} outputs")


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            new = nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, 1,
                module.bias is not None, module.padding_mode,
            )
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    raise InputError(f"{model.__class__.__name__} has no Conv2d layer to adapt to {in_channels} channels")


def _register_torchvision(name: str) -> None:
    def factory(in_channels: int = 1, num_classes: int = 2, **kwargs: Any) -> nn.Module:
        return _torchvision(name, in_channels, output_units(num_classes), **kwargs)

    factory.__doc__ = f"torchvision {name}, random weights, first conv and output layer adapted."
    register_model(name)(factory)


for _name in TORCHVISION_MODELS:
    _register_torchvision(_name)
