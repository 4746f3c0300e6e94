"""ONNX models as PyTorch modules, through onnx2torch (the ``onnx`` extra).

onnx2torch turns each ONNX node into a module of a ``torch.fx.GraphModule`` (ONNX ``Conv`` -> ``nn.Conv2d``,
``Relu`` -> ``nn.ReLU``...), so every saliencekit method works on the result and CAM layers are addressed by the
converted node names (``saliencekit explain ... --layer NAME``; a wrong name lists the valid ones).

onnx2torch converts the operator versions of ONNX opset 17 and older, and not a few attributes that current
exporters write. Before converting, the graph is normalised in ways that do not change what it computes:

- opset 18+ models are converted to opset 17 with ``onnx.version_converter`` when the operators allow it;
- ``Conv`` with ``auto_pad="SAME_UPPER"/"SAME_LOWER"`` and stride 1 gets the explicit pads it stands for;
- ``Reshape`` with ``allowzero=1`` becomes ``allowzero=0`` where the target shape is a constant without zeros
  (the two settings differ only for zeros in the shape);
- ``Identity`` nodes on weights (the exporter's way of sharing equal tensors) become copies of those weights.

When onnxruntime is installed (it is part of the extra), the converted module is run beside onnxruntime on one
random input at load time, and a model whose outputs differ is refused.

What still cannot be converted is refused with the operator's name and a route that works. A model whose input is
channels-last (N, H, W, C), as tf2onnx writes Keras models, is fed (N, C, H, W) images through a permutation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from saliencekit.errors import InputError

_EXTRA = "pip install saliencekit[onnx]"
_MAX_OPSET = 17


class ChannelsLastInput(nn.Module):
    """Feeds a channels-last model (N, H, W, C) with (N, C, H, W) images.

    Args:
        model: the model taking (N, H, W, C).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 2, 3, 1))


def load_onnx(path: Path) -> tuple[nn.Module, tuple[int | None, int | None, int | None], list[str]]:
    """Convert an ONNX file; returns the module, the input's ``(C, H, W)`` (None where dynamic) and notes."""
    try:
        import onnx
        from onnx2torch import convert
    except ImportError as exc:
        raise InputError(f"{path} is an ONNX model; converting it needs onnx and onnx2torch: {_EXTRA}") from exc
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise InputError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)})") from exc
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise InputError(f"{path} has {len(inputs)} inputs and {len(proto.graph.output)} outputs; saliencekit "
                         "explains image classifiers with one (N, C, H, W) input and one output")
    dims: list[int | None] = [d.dim_value if d.HasField("dim_value") else None
                              for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise InputError(f"{path}: the model's input has {len(dims)} dimensions ({dims}), not (N, C, H, W)")
    channels_last = dims[3] in (1, 3, 4) and dims[1] not in (1, 3, 4) and dims[1] is not None
    notes: list[str] = []
    model = _convert(proto, convert, path, notes)
    _compare_with_onnxruntime(model, proto, dims, path, notes)
    if channels_last:
        notes.append(f"the ONNX input is channels-last {tuple(dims)}; images are given as (N, C, H, W)")
        return ChannelsLastInput(model), (dims[3], dims[1], dims[2]), notes
    return model, (dims[1], dims[2], dims[3]), notes


def _convert(proto: Any, convert: Any, path: Path, notes: list[str]) -> nn.Module:
    try:
        return convert(_copy(proto))  # onnx2torch consumes parts of the graph it is given
    except NotImplementedError:
        pass
    except Exception as exc:
        raise InputError(f"onnx2torch cannot convert {path} ({type(exc).__name__}: {_first_line(exc)}); "
                         f"{_ROUTE}") from exc
    proto = _normalise(proto, notes)
    try:
        return convert(proto)
    except NotImplementedError as exc:
        raise InputError(f"onnx2torch cannot convert {path}: {_first_line(exc)}; {_ROUTE}") from exc
    except Exception as exc:
        raise InputError(f"onnx2torch cannot convert {path} ({type(exc).__name__}: {_first_line(exc)}); "
                         f"{_ROUTE}") from exc


_ROUTE = ("re-export the model with opset 17 (torch.onnx.export(model, (x,), path, dynamo=False, "
          "opset_version=17)), or give saliencekit the PyTorch model itself (a .pt2 from torch.export, TorchScript, "
          "or weights with --arch)")


def _normalise(proto: Any, notes: list[str]) -> Any:
    """The graph rewritten into what onnx2torch converts, without changing what it computes."""
    import onnx
    from onnx import helper, numpy_helper, version_converter

    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > _MAX_OPSET:
        try:
            proto = version_converter.convert_version(proto, _MAX_OPSET)
            notes.append(f"converted from ONNX opset {opset} to {_MAX_OPSET} for onnx2torch")
        except Exception as exc:
            raise InputError(f"the model uses ONNX opset {opset}, newer than onnx2torch converts, and cannot be "
                             f"converted to opset {_MAX_OPSET} ({_first_line(exc)}); {_ROUTE}") from exc
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in list(proto.graph.node):
        if node.op_type == "Identity" and node.input[0] in constants and node.output[0] not in constants:
            copy = numpy_helper.from_array(constants[node.input[0]], name=node.output[0])
            proto.graph.initializer.append(copy)
            constants[node.output[0]] = constants[node.input[0]]
            proto.graph.node.remove(node)
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(a.t)
    same_pads = 0
    for node in proto.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Conv" and "auto_pad" in attrs and attrs["auto_pad"].s in (b"SAME_UPPER", b"SAME_LOWER"):
            strides = list(attrs["strides"].ints) if "strides" in attrs else []
            kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else []
            dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * len(kernel)
            if not kernel or any(s != 1 for s in strides):
                continue  # needs the input size; left for onnx2torch to refuse by name
            total = [d * (k - 1) for k, d in zip(kernel, dilations)]
            if attrs["auto_pad"].s == b"SAME_UPPER":
                begin = [t // 2 for t in total]
            else:
                begin = [t - t // 2 for t in total]
            end = [t - b for t, b in zip(total, begin)]
            node.attribute.remove(attrs["auto_pad"])
            node.attribute.append(helper.make_attribute("pads", begin + end))
            same_pads += 1
        elif node.op_type.startswith("Reduce") and "noop_with_empty_axes" in attrs and opset > _MAX_OPSET \
                and node.op_type != "ReduceSum" and attrs["noop_with_empty_axes"].i == 0:
            node.attribute.remove(attrs["noop_with_empty_axes"])  # left by the opset 18 -> 17 conversion (default 0)
        elif node.op_type == "Reshape" and "allowzero" in attrs and attrs["allowzero"].i == 1:
            shape = constants.get(node.input[1]) if len(node.input) > 1 else None
            if shape is not None and (shape != 0).all():
                node.attribute.remove(attrs["allowzero"])
                node.attribute.append(helper.make_attribute("allowzero", 0))
    if same_pads:
        notes.append(f"{same_pads} Conv node(s) with auto_pad SAME given their explicit pads")
    onnx.checker.check_model(proto)
    return proto


def _compare_with_onnxruntime(model: nn.Module, proto: Any, dims: list[int | None], path: Path,
                               notes: list[str]) -> None:
    """Run the converted module and onnxruntime on one random input; refuse the model when they differ."""
    try:
        import onnxruntime
    except ImportError:
        notes.append("not checked against onnxruntime (not installed)")
        return
    shape = [1, *[d or 224 for d in dims[1:]]]
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    try:
        session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        reference = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    except Exception as exc:  # a size the model does not take, an operator onnxruntime lacks...
        notes.append(f"not checked against onnxruntime ({type(exc).__name__})")
        return
    with torch.no_grad():
        ours = model.eval()(x)
    scale = float(reference.abs().max()) + 1e-6
    gap = float((ours.float() - reference.float()).abs().max()) if ours.shape == reference.shape else float("inf")
    if gap > 1e-3 * scale + 1e-5:
        raise InputError(f"onnx2torch converted {path}, but the converted model's output differs from onnxruntime's "
                         f"(largest difference {gap:.3g} for outputs up to {scale:.3g}); {_ROUTE}")
    notes.append(f"checked against onnxruntime on one input (largest difference {gap:.2g})")


def _copy(proto: Any) -> Any:
    out = type(proto)()
    out.CopyFrom(proto)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


__all__ = ["ChannelsLastInput", "load_onnx"]
