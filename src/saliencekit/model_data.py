"""A model file and a labelled image folder: what ``saliencekit check --model-file MODEL DATA`` checks, and what the
report reopens from ``checks.json`` (the counterpart of a run directory for a model saliencekit did not train).

The model comes from any file the one loader takes (:func:`saliencekit.models.load_model`); the data is a folder of
class sub-folders (masks beside them as for training) or the images of a label CSV
(:mod:`saliencekit.data.labels`), read as the data commands read them. The data's classes are matched to the
model's outputs by name: the model's class names come from ``classes=`` (``--classes``), else from the file (a
saliencekit checkpoint or run), and a data class that is not one of them is refused by name. A model whose file names
no classes is assumed to have the data's classes in the data's order (class folders sorted, a "normal" folder first
for two; the CSV's findings sorted); the assumption is recorded in :attr:`ModelData.notes` and ``checks.json``. There
is no train / test split: every image of the folder can be checked.

>>> md = open_model_data("model.pt", "data/cxr", classes=["normal", "effusion"])  # doctest: +SKIP
>>> result = saliencekit.run_checks(md, out_dir="checks")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saliencekit.errors import DataError, InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from saliencekit.data.folder import FolderIndex, ImageFolderDataset
    from saliencekit.data.labels import LabelSpec
    from saliencekit.data.preprocess import Preprocessing
    from saliencekit.models.io import LoadedModel

#: formats whose architecture the random-label model of data randomisation can be built from: the registry (from the
#: file or ``--arch``), or a deep copy of a whole pickled module with its layers re-initialised
REBUILDABLE = ("run", "checkpoint", "state_dict", "safetensors", "module")


@dataclasses.dataclass
class ModelData:
    """A loaded model with the labelled images it is checked on.

    Use :func:`open_model_data` to make one.

    Attributes:
        loaded: the model as the loader returned it (:class:`~saliencekit.models.io.LoadedModel`).
        preprocessing: how the data's files become the model's inputs.
        index: the data's images and their labels, in the model's class order.
        class_names: the model's classes (labels) in output order.
        labels: the label CSV's spec, or None for class sub-folders.
        load: how the model was loaded (``arch``, ``num_classes``, ``in_channels``), to reopen it.
        notes: what was inferred or assumed (class order, the loader's notes), one sentence each.
    """

    loaded: LoadedModel
    preprocessing: Preprocessing
    index: FolderIndex
    class_names: list[str]
    labels: LabelSpec | None = None
    load: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        """The classifier (eval mode)."""
        return self.loaded.model

    @property
    def path(self) -> Path:
        """The model file."""
        return self.loaded.path

    @property
    def data_root(self) -> Path:
        """The data folder."""
        return Path(self.index.root)

    @property
    def multilabel(self) -> bool:
        """Whether the data has independent labels (a multi-label CSV)."""
        return bool(self.index.multilabel)

    @property
    def output(self) -> str | None:
        """What the model returns, as far as the file or the data say: the file's declaration, else
        ``"multilabel"`` for multi-label data, else None (``"auto"``)."""
        return self.loaded.output or ("multilabel" if self.multilabel else None)

    @property
    def threshold(self) -> float | None:
        """The multi-label threshold the file declares, or None."""
        return self.loaded.threshold

    @property
    def name(self) -> str:
        """A short name of the model: its architecture, else its file name."""
        return self.loaded.arch or self.path.name

    def dataset(self, indices: Sequence[int] | None = None, cache: bool = False) -> ImageFolderDataset:
        """The preprocessed images (all, or ``indices``), loaded on use (``cache``: all at once, now)."""
        from saliencekit.data.folder import ImageFolderDataset

        return ImageFolderDataset(self.index, self.preprocessing, indices=indices, cache=cache)

    def random_label_factory(self) -> tuple[Callable[[], nn.Module] | None, str | None]:
        """How data randomisation builds its random-label model: ``(factory, None)`` for a registry architecture,
        ``(None, None)`` for a whole module (a re-initialised deep copy), ``(None, reason)`` when the architecture
        cannot be rebuilt for training."""
        if self.loaded.arch is not None and self.loaded.format in REBUILDABLE:
            return architecture_factory(self.loaded.arch, self.loaded.arch_kwargs), None
        if self.loaded.format == "module":
            return None, None
        return None, (f"a {self.loaded.format} model's architecture cannot be rebuilt and trained on shuffled "
                      "labels; give its weights as a state_dict or .safetensors file with --arch NAME, a whole "
                      "module (torch.save(model)), a saliencekit checkpoint or a run directory")

    def to_json(self) -> dict[str, Any]:
        """The ``model`` block of ``checks.json``: enough to reopen the model and the data."""
        return {
            "file": str(self.path.resolve()), "format": self.loaded.format, "arch": self.loaded.arch,
            "arch_kwargs": _plain(self.loaded.arch_kwargs), "load": dict(self.load),
            "class_names": list(self.class_names), "preprocessing": self.preprocessing.to_dict(),
            "data": str(self.data_root.resolve()), "labels": None if self.labels is None else self.labels.to_dict(),
            "output": self.output, "threshold": self.threshold, "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any], device: str | torch.device = "cpu", data: str | Path | None = None,
                  model_file: str | Path | None = None) -> ModelData:
        """Reopen a ``model`` block of ``checks.json`` (``data`` / ``model_file``: where they moved to)."""
        from saliencekit.data.labels import LabelSpec
        from saliencekit.data.preprocess import Preprocessing

        spec = d.get("labels")
        load = dict(d.get("load") or {})
        return open_model_data(model_file or d["file"], data or d["data"], labels=LabelSpec.from_dict(spec) if spec
                               else None, classes=d.get("class_names"),
                               preprocessing=Preprocessing.from_dict(d["preprocessing"]), device=device,
                               arch=load.get("arch"), num_classes=load.get("num_classes"),
                               in_channels=load.get("in_channels"))


def architecture_factory(arch: str, arch_kwargs: Mapping[str, Any]) -> Callable[[], nn.Module]:
    """A fresh model of the registry architecture ``arch``, with dropout off when the factory has that option (so
    that a random-label model can memorise its labels in an affordable number of epochs; dropout has no weights)."""

    def factory() -> nn.Module:
        from saliencekit import models

        try:
            return models.create(arch, **{**arch_kwargs, "dropout": 0.0})
        except TypeError:
            return models.create(arch, **arch_kwargs)

    return factory


def open_model_data(
    model: str | Path | LoadedModel,
    data: str | Path,
    *,
    labels: LabelSpec | str | Path | None = None,
    classes: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    device: str | torch.device = "cpu",
) -> ModelData:
    """Load a model file and index the labelled images to check it on.

    Args:
        model: a model file or run directory (any format of :func:`saliencekit.models.load_model`), or an already
            loaded :class:`~saliencekit.models.io.LoadedModel`.
        data: a folder with one sub-folder of images per class (mask folders as for training), or with ``labels``
            the folder of the CSV's images.
        labels: a label CSV (path: one label per image; a :class:`~saliencekit.data.labels.LabelSpec` for a finding
            against the rest or multi-label).
        classes: the model's classes in output order (default: the file's, else the data's).
        preprocessing: how files become inputs (default: the file's, else the loader's documented defaults,
            :meth:`~saliencekit.models.io.LoadedModel.preprocessing_or_default`).
        arch, num_classes, in_channels: for bare weights (see :func:`saliencekit.models.load_model`).
        device: where the model goes.

    Raises:
        InputError: the model cannot be loaded, or the data's classes are not the model's.
        DataError: the data folder or the CSV cannot be read.
    """
    from saliencekit.data.folder import default_class_order, scan_folder
    from saliencekit.data.labels import LabelSpec, read_labels
    from saliencekit.models.io import LoadedModel, load_model

    load = {"arch": arch, "num_classes": num_classes, "in_channels": in_channels}
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        loaded = load_model(model, arch=arch, num_classes=num_classes, in_channels=in_channels, device=device)
    if isinstance(labels, str | Path):
        labels = LabelSpec(str(labels))
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root} (give a folder of class sub-folders, or the folder of the "
                        "images a --labels CSV lists)")
    names = list(classes) if classes is not None else loaded.class_names
    notes = list(loaded.notes)
    if labels is not None:
        index = read_labels(root, dataclasses.replace(labels, classes=None) if labels.mode != "finding" else labels)
    else:
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                       and p.name != "masks" and not p.name.endswith("_masks"))
        if names is not None:
            unknown = [c for c in found if c not in names]
            if unknown:
                raise InputError(f"class folder(s) {unknown} of {root} are not among the model's classes "
                                 f"({_listing(names)}); give the model's classes in output order with --classes "
                                 "(Python classes=), or leave other folders out")
            index = scan_folder(root, classes=[c for c in names if c in found], min_classes=1)
        else:
            index = scan_folder(root, classes=default_class_order(found), min_classes=1)
    if names is None:
        names = list(index.classes)
        notes.append(f"the model file names no classes: its outputs are taken to be the data's classes in this "
                     f"order: {', '.join(names)} (give --classes to set them)")
    elif labels is not None and labels.mode == "finding":
        if len(names) != 2:
            raise InputError(f"--finding {labels.finding} makes two classes, but the model has {len(names)} "
                             f"({_listing(names)})")
        notes.append(f"class 0 ({index.classes[0]}) and 1 ({index.classes[1]}) of the data are the model's "
                     f"{names[0]} and {names[1]}")
    index = _in_model_order(index, list(names), root)
    if preprocessing is None:
        preprocessing = loaded.preprocessing_or_default()
    return ModelData(loaded, preprocessing, index, list(names), labels, load, notes)


def _in_model_order(index: FolderIndex, names: list[str], root: Path) -> FolderIndex:
    """The index with its labels renumbered to the model's class order (a finding task's two classes by position)."""
    spec = getattr(index, "spec", None)
    if spec is not None and spec.mode == "finding":
        return dataclasses.replace(index, classes=names)
    unknown = [c for c in index.classes if c not in names]
    if unknown:
        raise InputError(f"label(s) {unknown} of the data under {root} are not among the model's classes "
                         f"({_listing(names)}); give the model's classes in output order with --classes "
                         "(Python classes=)")
    where = [names.index(c) for c in index.classes]
    if index.multilabel:
        rows = []
        for row in index.target_rows:
            full = [0] * len(names)
            for k, v in zip(where, row):
                full[k] = int(v)
            rows.append(tuple(full))
        return dataclasses.replace(index, classes=names, target_rows=rows)
    samples = [dataclasses.replace(s, label=where[s.label]) for s in index.samples]
    return dataclasses.replace(index, classes=names, samples=samples)


def _listing(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): (v if isinstance(v, str | int | float | bool | type(None)) else repr(v)) for k, v in d.items()}


__all__ = ["REBUILDABLE", "ModelData", "architecture_factory", "open_model_data"]
