"""Checkpoints that rebuild their model with no other input, written atomically.

A checkpoint is a ``torch.save`` of a plain dict (loadable with ``weights_only=True``)::

    {"format": "saliencekit-checkpoint", "format_version": 1,
     "arch": "effusion_cnn", "arch_kwargs": {"in_channels": 1, "num_classes": 2, ...},
     "state_dict": {...}, "preprocessing": {...}, "class_names": [...], "extra": {...},
     "versions": {"saliencekit": ..., "torch": ...}}
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saliencekit import _atomic
from saliencekit._versions import library_versions
from saliencekit.errors import InputError, RunDirError

FORMAT = "saliencekit-checkpoint"
FORMAT_VERSION = 1


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
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(
            f"{path} is not a saliencekit checkpoint (valid: a checkpoint.pt written by `saliencekit train`)"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"{path} was written by a newer saliencekit (format {payload['format_version']}); upgrade")
    return payload


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the model from a checkpoint (in eval mode, on ``device``) and return it with its metadata."""
    from saliencekit.models.zoo import create

    payload = read_checkpoint(path)
    model = create(payload["arch"], **payload["arch_kwargs"])
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    info = CheckpointInfo(
        arch=payload["arch"], arch_kwargs=payload["arch_kwargs"], preprocessing=payload["preprocessing"],
        class_names=list(payload["class_names"]), extra=payload.get("extra", {}), versions=payload.get("versions", {}),
    )
    return model, info


def load_model_file(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model from a TorchScript file, a whole pickled ``nn.Module`` or a saliencekit checkpoint.

    Pickled modules execute code when loaded: only load files you trust. The model is returned in eval mode.

    Raises:
        InputError: the file is none of these (e.g. a bare ``state_dict``, which needs its architecture).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
            return torch.jit.load(str(path), map_location=device).eval()
    except Exception:  # not TorchScript: try the other formats
        pass
    try:
        obj = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise InputError(
            f"cannot load a model from {path} ({exc.__class__.__name__}: {exc}); valid: a TorchScript file "
            "(torch.jit.save), a whole model saved with torch.save(model, path), or a saliencekit checkpoint.pt"
        ) from exc
    if isinstance(obj, nn.Module):
        return obj.to(device).eval()
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return load_checkpoint(path, device)[0]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(
            f"{path} holds a bare state_dict (weights without an architecture); build the model in Python and call "
            "model.load_state_dict(torch.load(path)), or save the whole model with torch.save(model, path)"
        )
    raise InputError(
        f"{path} holds a {type(obj).__name__}, not a model; valid: a TorchScript file, a whole pickled nn.Module, "
        "or a saliencekit checkpoint.pt"
    )
