"""Saving saliencekit checkpoints, and the ONE model loader: a table of formats.

A saliencekit checkpoint is a ``torch.save`` of a plain dict (loadable with ``weights_only=True``)::

    {"format": "saliencekit-checkpoint", "format_version": 1,
     "arch": "effusion_cnn", "arch_kwargs": {"in_channels": 1, "num_classes": 2, ...},
     "state_dict": {...}, "preprocessing": {...}, "class_names": [...], "extra": {...},
     "versions": {"saliencekit": ..., "torch": ...}}

:func:`load_model` opens any model file a user may arrive with. Each format is one entry of :data:`FORMATS`
(how to recognise it, how to load it, which pip extra it needs, what it returns); the Python API and every
command of the CLI go through it. Formats, in the order they are recognised:

========== ====================================================================================
run        a run directory written by ``saliencekit train`` (model, preprocessing, class names)
keras      Keras 3 ``.keras`` and legacy ``.h5`` / ``.hdf5`` files (extra ``keras``; torch backend)
onnx       ``.onnx`` files, converted with onnx2torch (extra ``onnx``)
safetensors ``.safetensors`` weights; needs ``arch=`` (the model registry)
export     ``torch.export`` programs (``torch.export.save``, ``.pt2``)
torchscript ``torch.jit.save`` files (no hooks: gradient-family and perturbation methods only)
checkpoint a saliencekit ``checkpoint.pt``
state_dict ``torch.save(model.state_dict())`` or a checkpoint dict holding one under ``state_dict``,
           ``model_state_dict``, ``model``, ``net`` or ``module``; needs ``arch=``
module     a whole pickled module, ``torch.save(model)`` (runs code from the file: load files you trust)
========== ====================================================================================

Anything else is refused with a one-line :class:`~saliencekit.errors.InputError` that names what the file is
and a route that works.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from saliencekit import _atomic
from saliencekit._versions import library_versions
from saliencekit.errors import InputError, RunDirError, SaliencekitError

if TYPE_CHECKING:
    from saliencekit.data.preprocess import Preprocessing
    from saliencekit.run import Run

FORMAT = "saliencekit-checkpoint"
FORMAT_VERSION = 1

# Keys under which training scripts keep the weights inside a checkpoint dict, in the order they are tried.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
# The registry's own architectures (trained with per-image standardisation); others default to ImageNet statistics.
LESSON_ARCHS = ("effusion_cnn", "rps_cnn")
# Prefixes that wrappers add to every key (DataParallel/DDP, Lightning, torch.compile, EMA copies).
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.", "net.")


@dataclass
class CheckpointInfo:
    """Everything a checkpoint holds besides the weights.

    Attributes:
        arch: registry name of the architecture.
        arch_kwargs: arguments of :func:`saliencekit.models.create` (``in_channels``, ``num_classes``, ...).
        preprocessing: :meth:`saliencekit.data.Preprocessing.to_dict` of the inputs the model expects.
        class_names: class names in label order.
        extra: free-form metadata (e.g. the best epoch and its validation loss).
        versions: library versions that wrote the file.
    """

    arch: str
    arch_kwargs: dict[str, Any]
    preprocessing: dict[str, Any]
    class_names: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch, "arch_kwargs": dict(self.arch_kwargs), "preprocessing": dict(self.preprocessing),
            "class_names": list(self.class_names), "extra": dict(self.extra), "versions": dict(self.versions),
        }


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    arch: str,
    arch_kwargs: dict[str, Any],
    preprocessing: dict[str, Any],
    class_names: list[str],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the model's weights with what is needed to rebuild it (temporary file, then rename).

    Args:
        path: file to write (conventionally ``RUN/checkpoint.pt``).
        model: the model; its ``state_dict`` is stored (moved to CPU).
        arch: registry name, so that ``create(arch, **arch_kwargs)`` rebuilds the architecture.
        arch_kwargs: arguments of :func:`saliencekit.models.create`.
        preprocessing: :meth:`Preprocessing.to_dict` of the inputs the model expects.
        class_names: class names in label order.
        extra: other plain-data metadata (numbers, strings, lists, dicts).

    >>> import tempfile, pathlib
    >>> from saliencekit.models import create
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pt"
    >>> _ = save_checkpoint(p, create("effusion_cnn"), "effusion_cnn", {"in_channels": 1, "num_classes": 2},
    ...                     {"grayscale": True, "size": [64, 64], "standardize": "per_image"}, ["normal", "effusion"])
    >>> model, info = load_checkpoint(p)
    >>> info.class_names
    ['normal', 'effusion']
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "preprocessing": dict(preprocessing),
        "class_names": list(class_names),
        "extra": dict(extra or {}),
        "versions": library_versions(),
    }
    with _atomic.atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file's raw dict (weights on CPU), with clear errors for other files."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"checkpoint file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise InputError(
            f"{path} is not a saliencekit checkpoint (cannot read it: {exc.__class__.__name__}); "
            "valid: a checkpoint.pt written by `saliencekit train`"
        ) from exc
    if not _is_checkpoint(payload):
        raise InputError(
            f"{path} is not a saliencekit checkpoint (valid: a checkpoint.pt written by `saliencekit train`)"
        )
    _check_payload(payload, path)
    return payload


# The fields of a checkpoint and their types (format 1); anything else was not written by saliencekit or was edited.
_PAYLOAD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format_version": int, "arch": str, "arch_kwargs": dict, "state_dict": dict, "preprocessing": dict,
    "class_names": (list, tuple),
}


def _check_payload(payload: Mapping[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint of a newer format, or one with a missing or mistyped field, naming the field."""
    version = payload.get("format_version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise InputError(f"{path} was written by a newer saliencekit (checkpoint format {version}, this version "
                         f"reads up to {FORMAT_VERSION}; written by saliencekit "
                         f"{_written_by(payload)}); upgrade saliencekit")
    for key, kind in _PAYLOAD_FIELDS.items():
        if key not in payload or not isinstance(payload[key], kind) or isinstance(payload[key], bool):
            what = "lacks" if key not in payload else f"has a {type(payload[key]).__name__} as"
            raise InputError(f"{path} {what} the checkpoint field {key!r} (written by saliencekit "
                             f"{_written_by(payload)}); it is damaged or was edited: retrain with `saliencekit train`")
    if not all(isinstance(c, str) for c in payload["class_names"]):
        raise InputError(f"{path}: the checkpoint's class_names are not all text; it is damaged or was edited")


def _written_by(payload: Mapping[str, Any]) -> str:
    versions = payload.get("versions")
    return str(versions.get("saliencekit", "?")) if isinstance(versions, Mapping) else "?"


def _is_checkpoint(payload: object) -> bool:
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the model from a checkpoint (in eval mode, on ``device``) and return it with its metadata."""
    return _from_checkpoint_payload(read_checkpoint(path), device, path)


def _from_checkpoint_payload(payload: dict[str, Any], device: str | torch.device,
                             path: str | Path = "the checkpoint") -> tuple[nn.Module, CheckpointInfo]:
    from saliencekit.models.zoo import create

    _check_payload(payload, path)
    arch, kwargs = payload["arch"], payload["arch_kwargs"]
    try:
        model = create(arch, **kwargs)
    except SaliencekitError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: architecture {arch!r} of this saliencekit does not take the checkpoint's "
                         f"arguments {kwargs} ({exc}; written by saliencekit {_written_by(payload)}); retrain with "
                         "`saliencekit train`, or use the saliencekit version that wrote it") from exc
    mismatch = _weights_mismatch(model, payload["state_dict"])
    if mismatch:
        raise InputError(f"{path}: the weights do not fit architecture {arch!r} of this saliencekit "
                         f"({'; '.join(mismatch)}; written by saliencekit {_written_by(payload)}); retrain with "
                         "`saliencekit train`, or use the saliencekit version that wrote it")
    from saliencekit.data.preprocess import Preprocessing

    try:
        Preprocessing.from_dict(payload["preprocessing"])
    except SaliencekitError as exc:
        raise InputError(f"{path}: the checkpoint's preprocessing settings are not valid here ({exc}; written by "
                         f"saliencekit {_written_by(payload)}); retrain with `saliencekit train`, or use the "
                         "saliencekit version that wrote it") from exc
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    info = CheckpointInfo(
        arch=arch, arch_kwargs=kwargs, preprocessing=payload["preprocessing"],
        class_names=list(payload["class_names"]), extra=dict(payload.get("extra") or {}),
        versions=dict(payload.get("versions") or {}),
    )
    return model, info


# ------------------------------------------------------------------------------------------- the loader


@dataclass
class LoadedModel:
    """A model ready to explain, with what its file says about its inputs and classes.

    Attributes:
        model: a PyTorch classifier taking ``(N, C, H, W)`` images, in eval mode (a Keras model is wrapped in a
            :class:`~saliencekit.models.KerasClassifier`, an ONNX file converted).
        format: the :data:`FORMATS` entry that loaded it (``"keras"``, ``"state_dict"``, ...).
        path: the file or run directory.
        preprocessing: :meth:`Preprocessing.to_dict` from the file (run directory, checkpoint), or None when the
            file does not say (see :meth:`preprocessing_or_default`).
        class_names: class names in label order from the file, or None (callers use ``class_0``, ``class_1``...).
        input_shape: ``(C, H, W)`` the model expects, each None where the file does not fix it.
        arch: registry name when the model was built from the registry (checkpoint, state_dict, safetensors).
        arch_kwargs: the arguments it was built with.
        notes: what the loader inferred or adjusted (e.g. a stripped ``module.`` key prefix, in_channels read from
            the weights), one sentence each.
        run: the :class:`~saliencekit.run.Run` for a run directory, else None.
        output: what the model's outputs are, when the file declares it (a multi-label run or checkpoint:
            ``"multilabel"``; see :mod:`saliencekit.methods.outputs`), else None (``"auto"``).
        threshold: the multi-label threshold the file declares, else None.
    """

    model: nn.Module
    format: str
    path: Path
    preprocessing: dict[str, Any] | None = None
    class_names: list[str] | None = None
    input_shape: tuple[int | None, int | None, int | None] = (None, None, None)
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    run: Run | None = None
    output: str | None = None
    threshold: float | None = None

    def preprocessing_or_default(self, **overrides: Any) -> Preprocessing:
        """The preprocessing to feed this model: the file's, else the documented defaults, with ``overrides``.

        Defaults where the file says nothing: greyscale when the model takes one channel (RGB for three), the
        model's fixed input size if it has one else 256 x 256, ImageNet normalisation for a torchvision or timm
        architecture and per-image standardisation (the lesson's) otherwise, aspect ratio kept by padding.

        Args:
            **overrides: :class:`~saliencekit.data.Preprocessing` fields to set (``size``, ``grayscale``,
                ``normalize``, ``resize``, ``mean``, ``std``, ``bit_depth``); None values are ignored.
        """
        import dataclasses

        from saliencekit.data.preprocess import Preprocessing

        given = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(given.get("size"), int):
            given["size"] = (given["size"], given["size"])
        if self.preprocessing is not None:
            return dataclasses.replace(Preprocessing.from_dict(self.preprocessing), **given)
        channels, height, width = self.input_shape
        merged: dict[str, Any] = {"grayscale": channels != 3, "size": (height or 256, width or height or 256),
                                  **given}
        if "normalize" not in given and not {"mean", "std"} & set(given):
            # ImageNet statistics are per RGB channel: only for colour inputs of torchvision/timm architectures
            pretrained = self.arch is not None and self.arch not in LESSON_ARCHS
            merged["normalize"] = "imagenet" if pretrained and not merged["grayscale"] else "per-image"
        return Preprocessing(**merged)


@dataclass(frozen=True)
class LoadRequest:
    """What the caller knows besides the file: the architecture for bare weights, and where to put the model."""

    arch: str | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class _Probe:
    """What a path looks like, read once: folder or file, suffix, first bytes, zip member names, torch payload."""

    def __init__(self, path: Path):
        self.path = path
        self.suffix = path.suffix.lower()

    @cached_property
    def head(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read(16)

    @cached_property
    def zip_names(self) -> list[str]:
        if not self.head.startswith(b"PK"):
            return []
        try:
            with zipfile.ZipFile(self.path) as z:
                return z.namelist()
        except (zipfile.BadZipFile, OSError):
            return []

    def zip_has(self, *endings: str) -> bool:
        return any(n.endswith(e) for n in self.zip_names for e in endings)

    @property
    def is_torch_save(self) -> bool:
        """A ``torch.save`` file: a zip with ``data.pkl`` (and no compiled code) or a legacy pickle."""
        if self.zip_names:
            return self.zip_has("/data.pkl") and not self.zip_has("/constants.pkl") and not self.is_export
        return self.head[:1] == b"\x80"  # pickle protocol 2+

    @property
    def is_export(self) -> bool:
        return self.zip_has("/archive_format") and self.zip_has("/models/model.json")

    @cached_property
    def safe_payload(self) -> tuple[Any, Exception | None]:
        """The file read with ``torch.load(weights_only=True)`` (no code runs), or the error it raised."""
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True), None
        except Exception as exc:  # not plain data: a pickled module or something else
            return None, exc


@dataclass(frozen=True)
class ModelFormat:
    """One entry of the loader's table.

    Attributes:
        name: short name (``LoadedModel.format``).
        description: what the file is and how it is made, for messages and ``saliencekit models --formats``.
        recognise: ``probe -> bool``; the first entry that recognises a path loads it.
        load: ``(path, probe, request) -> LoadedModel``.
        extra: the pip extra it needs (``pip install saliencekit[extra]``), or None.
        needs_arch: whether ``arch=`` (``--arch``) must say which architecture the weights belong to.
    """

    name: str
    description: str
    recognise: Callable[[_Probe], bool]
    load: Callable[[Path, _Probe, LoadRequest], LoadedModel]
    extra: str | None = None
    needs_arch: bool = False


def _load_run(path: Path, probe: _Probe, req: LoadRequest) -> LoadedModel:
    from saliencekit.run import is_run_dir, load_run

    if (path / "saved_model.pb").is_file():
        raise InputError(f"{path} is a TensorFlow SavedModel folder, which saliencekit cannot load; save the model "
                         "as a Keras file instead (model.save('model.keras')) and load that")
    if not is_run_dir(path):
        raise RunDirError(f"{path} is a folder but not a saliencekit run directory (it lacks checkpoint.pt, "
                          "config.json or split.json); give a run directory written by `saliencekit train`, or a "
                          "model file")
    run = load_run(path, device=req.device)
    prep = run.info.preprocessing
    return LoadedModel(run.model, "run", path, dict(prep), list(run.class_names), _prep_shape(prep, run.info),
                       run.info.arch, dict(run.info.arch_kwargs), run=run, **_declared_output(run.info))


def _declared_output(info: CheckpointInfo) -> dict[str, Any]:
    """``output`` / ``threshold`` a checkpoint declares (``extra``; a multi-label run: ``"multilabel"``, 0.5)."""
    out, thr = info.extra.get("output"), info.extra.get("threshold")
    return {"output": str(out) if out else None, "threshold": float(thr) if thr is not None else None}


def _prep_shape(prep: Mapping[str, Any], info: CheckpointInfo) -> tuple[int | None, int | None, int | None]:
    size = prep.get("size") or [None, None]
    return info.arch_kwargs.get("in_channels", 1 if prep.get("grayscale", True) else 3), size[0], size[1]


def _load_checkpoint_file(path: Path, probe: _Probe, req: LoadRequest) -> LoadedModel:
    model, info = _from_checkpoint_payload(probe.safe_payload[0], req.device, path)
    return LoadedModel(model, "checkpoint", path, dict(info.preprocessing), list(info.class_names),
                       _prep_shape(info.preprocessing, info), info.arch, dict(info.arch_kwargs),
                       **_declared_output(info))


def _load_torchscript(path: Path, probe: _Probe, req: LoadRequest) -> LoadedModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        try:
            model = torch.jit.load(str(path), map_location=req.device)
        except Exception as exc:
            raise InputError(f"{path} looks like a TorchScript file but cannot be loaded "
                             f"({exc.__class__.__name__}: {_first_line(exc)})") from exc
    return LoadedModel(model.eval(), "torchscript", path, input_shape=(_first_conv_channels(model), None, None))


def _load_export(path: Path, probe: _Probe, req: LoadRequest) -> LoadedModel:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise InputError(f"{path} looks like a torch.export program (.pt2) but cannot be loaded "
                         f"({exc.__class__.__name__}: {_first_line(exc)}); re-export it with this torch version "
                         f"({torch.__version__})") from exc
    shape = _export_input_shape(program, path)
    try:
        model = torch.export.unflatten(program)  # the original module tree: layers addressable by name for CAMs
    except Exception:  # pragma: no cover - programs that cannot be unflattened still run as one graph
        model = program.module()
    model = model.to(req.device)
    return LoadedModel(model, "export", path, input_shape=shape)


def _export_input_shape(program: Any, path: Path) -> tuple[int | None, int | None, int | None]:
    """``(C, H, W)`` the program fixes; refuses a program exported for one fixed batch size."""
    inputs = [n for n in program.graph.nodes if n.op == "placeholder"
              and n.name in set(program.graph_signature.user_inputs)]
    if len(inputs) != 1:
        raise InputError(f"{path} is a torch.export program with {len(inputs)} inputs; saliencekit explains "
                         "image classifiers called as model(images), with one (N, C, H, W) input")
    val = inputs[0].meta.get("val")
    dims = list(getattr(val, "shape", []))
    if len(dims) != 4:
        raise InputError(f"{path} is a torch.export program whose input has shape {tuple(dims)}, not (N, C, H, W)")
    if isinstance(dims[0], int):
        raise InputError(
            f"{path} was exported for batches of exactly {dims[0]} image(s) (a static batch dimension), but "
            "saliencekit runs the model on batches of other sizes; re-export with a dynamic batch: "
            "torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))"
        )
    fixed = [d if isinstance(d, int) else None for d in dims[1:]]
    return fixed[0], fixed[1], fixed[2]


def _load_module(path: Path, probe: _Probe, req: LoadRequest) -> LoadedModel:
    try:
        obj = torch.load(path, map_location=req.device, weights_only=False)  # runs code from the file
    except (AttributeError, ModuleNotFoundError) as exc:
        raise InputError(
            f"{path} is a whole pickled model whose class cannot be imported here ({_first_line(exc)}); the code "
            "that defines it must be importable to unpickle it. Save its weights instead "
            "(torch.save(model.state_dict(), path)) and load them with --arch NAME, or export the model "
            "(torch.export.save or torch.jit.save), which needs no code"
        ) from exc
    except Exception as exc:
        raise InputError(f"cannot load a model from {path} ({exc.__class__.__name__}: {_first_line(exc)}); "
                         f"{_VALID}") from exc
    if isinstance(obj, dict):
        module = next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), nn.Module)), None)
        if module is None:
            raise InputError(f"{path} holds a dict with keys {_keys(obj)} and no model or weights; {_VALID}")
        obj = module
    if not isinstance(obj, nn.Module):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a model; {_VALID}")
    obj = obj.to(req.device).eval()
    return LoadedModel(obj, "module", path, input_shape=(_first_conv_channels(obj), *_input_size(obj)))


def _load_state_dict(path: Path, probe: _Probe, req: LoadRequest) -> LoadedModel:
    state, where = _find_state_dict(probe.safe_payload[0])
    if state is None:
        raise InputError(f"{path} holds a {type(probe.safe_payload[0]).__name__} with keys "
                         f"{_keys(probe.safe_payload[0])} and no model weights; {_VALID}")
    return _build_from_weights(path, "state_dict", state, req, where)


def _load_safetensors(path: Path, probe: _Probe, req: LoadRequest) -> LoadedModel:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:  # a declared dependency, but it may be missing from a hand-made environment
        raise InputError(f"{path} is a safetensors file; pip install saliencekit[safetensors]") from exc
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise InputError(f"{path} is not a readable safetensors file ({exc.__class__.__name__}: "
                         f"{_first_line(exc)})") from exc
    return _build_from_weights(path, "safetensors", state, req, None)


def _find_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """A state_dict itself, or one held under a usual key of a checkpoint dict (and that key)."""
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return obj[key], key
    return None, None


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def _build_from_weights(path: Path, fmt: str, state: Mapping[str, torch.Tensor], req: LoadRequest,
                        where: str | None) -> LoadedModel:
    """Build ``req.arch`` and load ``state`` into it strictly; channels and outputs read from the weights when
    not given; refusals name the missing, unexpected and mis-sized keys."""
    from saliencekit.models.zoo import create

    inside = f" (under {where!r})" if where else ""
    if req.arch is None:
        raise InputError(
            f"{path} is a {fmt}{inside} with keys like {_keys(state)}: weights without an architecture; pass "
            "--arch NAME (Python: arch='NAME'), e.g. --arch resnet18, with --num-classes and --in-channels if they "
            "differ from the weights (see `saliencekit models`)"
        )
    notes: list[str] = []
    state, prefix = _strip_wrapper_prefix(state, req, create)
    if prefix:
        notes.append(f"stripped the prefix {prefix!r} that a wrapper added to every key")
    kwargs = dict(req.arch_kwargs)
    in_channels = req.in_channels
    num_classes = req.num_classes
    outputs: int | None = None
    probe_model = create(req.arch, in_channels=in_channels or 3, num_classes=num_classes or 2, **kwargs)
    first, last = _first_and_last_weights(probe_model)
    if in_channels is None:
        in_channels = 3
        if first is not None and first in state and state[first].ndim >= 2:
            in_channels = int(state[first].shape[1])
            notes.append(f"in_channels={in_channels} read from {first} {tuple(state[first].shape)}")
    if last is not None and last in state and state[last].ndim == 2:
        units = int(state[last].shape[0])
        if num_classes is None:
            num_classes = 2 if units == 1 else units
            notes.append(f"{units} output unit(s) read from {last} {tuple(state[last].shape)}: num_classes="
                         f"{num_classes}{' (one sigmoid logit)' if units == 1 else ''}")
        from saliencekit.models.zoo import output_units

        if units != output_units(num_classes) and units == num_classes:
            outputs = units  # e.g. two softmax logits for two classes
    num_classes = num_classes or 2
    model = create(req.arch, in_channels=in_channels, num_classes=num_classes, outputs=outputs, **kwargs)
    _load_strict(model, state, path, req.arch, in_channels, num_classes)
    model = model.to(req.device).eval()
    arch_kwargs = {"in_channels": in_channels, "num_classes": num_classes, **kwargs}
    if outputs is not None:
        arch_kwargs["outputs"] = outputs
    height, width = _input_size(model)
    return LoadedModel(model, fmt, path, input_shape=(in_channels, height, width), arch=req.arch,
                       arch_kwargs=arch_kwargs, notes=notes)


def _input_size(model: nn.Module) -> tuple[int | None, int | None]:
    """The input size an architecture is built for, where it says (a timm model's config, torchvision's ViT)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, Mapping) and len(cfg.get("input_size") or ()) == 3:
        embed = getattr(getattr(model, "patch_embed", None), "img_size", None)  # timm ViTs built at another size
        h, w = embed if isinstance(embed, tuple | list) and len(embed) == 2 else cfg["input_size"][1:]
        return int(h), int(w)
    size = getattr(model, "image_size", None)  # torchvision VisionTransformer (its patch grid is fixed)
    return (int(size), int(size)) if isinstance(size, int) else (None, None)


def _strip_wrapper_prefix(state: Mapping[str, torch.Tensor], req: LoadRequest,
                          create: Callable[..., nn.Module]) -> tuple[Mapping[str, torch.Tensor], str | None]:
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            reference = create(req.arch, in_channels=req.in_channels or 3, num_classes=req.num_classes or 2,
                               **dict(req.arch_kwargs)).state_dict()
            if not any(k.startswith(prefix) for k in reference):
                return {k[len(prefix):]: v for k, v in state.items()}, prefix
    return state, None


def _first_and_last_weights(model: nn.Module) -> tuple[str | None, str | None]:
    """State-dict keys of the first convolution's weight and the last linear layer's weight."""
    first = last = None
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if first is None and isinstance(m, nn.Conv2d | nn.Conv1d | nn.Conv3d):
            first = f"{prefix}weight"
        if isinstance(m, nn.Linear):
            last = f"{prefix}weight"
    return first, last


def _weights_mismatch(model: nn.Module, state: Mapping[str, Any]) -> list[str]:
    """How ``state`` fails to fit ``model``: its missing, unexpected and mis-sized keys (empty when it fits)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    sizes = [f"{k} (file {tuple(getattr(state[k], 'shape', ()))}, model {tuple(own[k].shape)})"
             for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if sizes:
        parts.append(f"size mismatch: {_listing(sizes, 3)}")
    return parts


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, arch: str,
                 in_channels: int, num_classes: int) -> None:
    parts = _weights_mismatch(model, state)
    if parts:
        raise InputError(
            f"the weights in {path} do not fit --arch {arch} (in_channels={in_channels}, num_classes={num_classes}): "
            f"{'; '.join(parts)}; check the architecture name (see `saliencekit models`), --in-channels and "
            "--num-classes"
        )
    model.load_state_dict(state, strict=True)


def _load_onnx(path: Path, probe: _Probe, req: LoadRequest) -> LoadedModel:
    from saliencekit.models._onnx import load_onnx

    model, shape, notes = load_onnx(path)
    return LoadedModel(model.to(req.device).eval(), "onnx", path, input_shape=shape, notes=notes)


def _load_keras(path: Path, probe: _Probe, req: LoadRequest) -> LoadedModel:
    from saliencekit.models._keras import load_keras

    model = load_keras(path, req.device)
    return LoadedModel(model, "keras", path, input_shape=model.input_shape_chw)


def _keras_recognised(p: _Probe) -> bool:
    if p.suffix == ".keras":
        return True
    return p.suffix in (".h5", ".hdf5") or p.head.startswith(b"\x89HDF\r\n\x1a\n")


FORMATS: tuple[ModelFormat, ...] = (
    ModelFormat("run", "a run directory written by `saliencekit train`", lambda p: p.path.is_dir(), _load_run),
    ModelFormat("keras", "a Keras 3 .keras file or a legacy .h5/.hdf5 model (model.save; Keras runs on its torch "
                "backend)", _keras_recognised, _load_keras, extra="keras"),
    ModelFormat("onnx", "an ONNX model (.onnx), converted to PyTorch with onnx2torch",
                lambda p: p.suffix == ".onnx", _load_onnx, extra="onnx"),
    ModelFormat("safetensors", "weights in a .safetensors file, with --arch NAME",
                lambda p: p.suffix == ".safetensors", _load_safetensors, needs_arch=True),
    ModelFormat("export", "a torch.export program (torch.export.save, .pt2)", lambda p: p.is_export, _load_export),
    ModelFormat("torchscript", "a TorchScript file (torch.jit.save)", lambda p: p.zip_has("/constants.pkl"),
                _load_torchscript),
    ModelFormat("checkpoint", "a saliencekit checkpoint.pt (weights, architecture, preprocessing, class names)",
                lambda p: p.is_torch_save and _is_checkpoint(p.safe_payload[0]), _load_checkpoint_file),
    ModelFormat("state_dict", "torch.save(model.state_dict()) or a checkpoint dict holding one under "
                f"{'/'.join(STATE_DICT_KEYS)}, with --arch NAME",
                lambda p: p.is_torch_save and _find_state_dict(p.safe_payload[0])[0] is not None, _load_state_dict,
                needs_arch=True),
    ModelFormat("module", "a whole model saved with torch.save(model) (unpickling runs code: load files you trust)",
                lambda p: p.is_torch_save, _load_module),
)

_VALID = ("valid: " + "; ".join(f.description for f in FORMATS)
          + " (see saliencekit.models.list_formats())")


def list_formats() -> list[ModelFormat]:
    """The loader's table, in the order formats are recognised."""
    return list(FORMATS)


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    device: str | torch.device = "cpu",
    **arch_kwargs: Any,
) -> LoadedModel:
    """Load a model from any supported file (see :data:`FORMATS`) as a PyTorch classifier in eval mode.

    Args:
        path: a run directory or a model file.
        arch: the architecture of bare weights (state_dict, checkpoint dict, safetensors): a name from
            ``saliencekit models``, any torchvision model name, or a timm name (``timm:NAME``) when timm is
            installed. Giving it for a file that carries its own architecture is an error.
        num_classes: classes of ``arch`` (default: read from the weights' output layer; one output unit means two
            classes with one sigmoid logit).
        in_channels: image channels of ``arch`` (default: read from the weights' first convolution).
        device: where to put the model.
        **arch_kwargs: further arguments of the architecture's factory.

    Returns:
        A :class:`LoadedModel`: the model, the format, and what the file says about preprocessing and classes.

    Raises:
        InputError: the file is missing, of no supported format, needs ``arch=``, or its weights do not fit
            ``arch``; the message says which and what would work.

    >>> import tempfile, pathlib
    >>> from saliencekit.models import create
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "weights.pt"
    >>> torch.save(create("effusion_cnn").state_dict(), p)
    >>> loaded = load_model(p, arch="effusion_cnn")
    >>> loaded.format, loaded.arch_kwargs["in_channels"], loaded.arch_kwargs["num_classes"]
    ('state_dict', 1, 2)
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"model file not found: {path}")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N, mps") from exc
    req = LoadRequest(arch, num_classes, in_channels, dict(arch_kwargs), dev)
    probe = _Probe(path)
    if not path.is_dir() and path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes); {_VALID}")
    for fmt in FORMATS:
        if fmt.recognise(probe):
            if arch is not None and not fmt.needs_arch and fmt.name != "run":
                raise InputError(f"{path} is {fmt.description}, which carries its own architecture; drop --arch "
                                 f"{arch} (--arch is for bare weights: state_dict, checkpoint dicts, safetensors)")
            try:
                return fmt.load(path, probe, req)
            except SaliencekitError:
                raise
            except ImportError as exc:
                raise InputError(f"{path} is {fmt.description}: it needs {exc.name or 'a missing package'}; "
                                 f"pip install saliencekit[{fmt.extra}]") from exc
    hint = ""
    if probe.zip_names and probe.zip_has("/data.pkl"):
        hint = " (a torch.save file holding no model or weights)"
    raise InputError(f"cannot load a model from {path}{hint}: it is none of the supported formats; {_VALID}")


def load_model_file(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of :func:`load_model` alone (formats that need no ``arch=``), kept for older callers."""
    return load_model(path, device=device).model


# --------------------------------------------------------------------------------------------- helpers


def _first_conv_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else exc.__class__.__name__


def _listing(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _keys(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return "(none)"
    keys = [str(k) for k in obj]
    return _listing(keys, 4)
