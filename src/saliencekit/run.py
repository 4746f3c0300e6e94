"""Run directories: the folder ``saliencekit train`` writes and every later command reads.

Layout (every file written atomically)::

    RUN/checkpoint.pt     weights + architecture name/arguments + preprocessing + class names (best epoch)
    RUN/config.json       training settings, absolute data root, seed, versions, device, the command
    RUN/split.json        which file (relative to the data root) went to train / val / test
    RUN/history.json      per-epoch train/val loss and accuracy, the best epoch
    RUN/curves.png        loss and accuracy curves
    RUN/metrics.json      test-split metrics (and per-file probabilities)
    RUN/confusion.png     test-split confusion matrix
    RUN/roc.png           test-split ROC curve
    RUN/metrics_<name>.json (+ confusion_<name>.png, roc_<name>.png)   metrics on another folder (--data)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from saliencekit.data.folder import FolderIndex, ImageFolderDataset, scan_folder
from saliencekit.data.labels import LabelSpec, read_labels
from saliencekit.data.preprocess import Preprocessing
from saliencekit.data.split import Split, load_split
from saliencekit.errors import DataError, RunDirError
from saliencekit.models.io import CheckpointInfo, load_checkpoint
from saliencekit.predict import predict_proba

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
SPLIT = "split.json"
HISTORY = "history.json"
CURVES = "curves.png"
METRICS = "metrics.json"
CONFUSION = "confusion.png"
ROC = "roc.png"

REQUIRED = (CHECKPOINT, CONFIG, SPLIT)
PARTS = ("train", "val", "test")


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` holds the files of a run directory."""
    path = Path(path)
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirError(f"cannot read {path}: {exc}") from exc


class History(dict):
    """The training history (``history.json``): the file's dict (``{"epochs": [{"epoch", "train_loss", "train_acc",
    "val_loss", "val_acc", "seconds"}, ...], "best_epoch", "best_val_loss", ...}``) that also draws its curves; a
    notebook shows them.

    >>> h = History({"epochs": [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69}], "best_epoch": 1})
    >>> h.best_epoch, len(h.plot().axes)
    (1, 2)
    """

    @property
    def best_epoch(self) -> int | None:
        """The epoch whose weights were kept (lowest validation loss)."""
        return self.get("best_epoch")

    def plot(self, title: str | None = None) -> Figure:
        """Loss and accuracy per epoch, training and validation, the best epoch marked
        (:func:`saliencekit.viz.training.plot_history`)."""
        from saliencekit.viz.training import plot_history

        return plot_history(self, title=title)

    def _repr_png_(self) -> bytes:
        from saliencekit.viz.inline import figure_png

        return figure_png(self.plot())


class Run:
    """A trained model with everything needed to explain and check it.

    Use :func:`load_run` to open one.

    Attributes:
        path: the run directory.
        model: the model (eval mode) on ``device``.
        info: the checkpoint's metadata (:class:`CheckpointInfo`).
        preprocessing: how files become model inputs.
        class_names: class names in label order (for one-logit models the logit scores class 1).
        config: the training settings (``config.json``).
        data_root: the data folder (the one trained on, or the ``data`` given to :func:`load_run`).
        history: per-epoch history (``history.json`` as a :class:`History`: a dict with
            ``.plot()``), or ``None``.
        metrics: test metrics (``metrics.json``), or ``None``.
        device: where the model lives.

    >>> run = load_run("runs/cxr")  # doctest: +SKIP
    >>> x, y = run.dataset("test")[0]  # doctest: +SKIP
    >>> run.model(x[None].to(run.device))  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", data: str | Path | None = None):
        self.path = Path(path)
        missing = [name for name in REQUIRED if not (self.path / name).is_file()]
        if not self.path.is_dir() or missing:
            what = "the folder does not exist" if not self.path.is_dir() else f"missing {', '.join(missing)}"
            raise RunDirError(
                f"{self.path} is not a saliencekit run directory ({what}); "
                "a run directory is written by `saliencekit train DATA --out RUN`"
            )
        self.device = torch.device(device)
        model, info = load_checkpoint(self.path / CHECKPOINT, self.device)
        self.model: nn.Module = model
        self.info: CheckpointInfo = info
        self.preprocessing = Preprocessing.from_dict(info.preprocessing)
        self.class_names: list[str] = list(info.class_names)
        self.config: dict[str, Any] = _read_json(self.path / CONFIG)
        if not isinstance(self.config, dict) or not isinstance(self.config.get("data_root", ""), str):
            raise RunDirError(f"{self.path / CONFIG} is not the config.json of a run (expected a JSON object with "
                              "data_root, as `saliencekit train` writes); it was edited or damaged")
        if data is None and "data_root" not in self.config:
            raise RunDirError(f"{self.path / CONFIG} does not say where the data is (no data_root); give the data "
                              "folder (--data DIR, or load_run(..., data=DIR))")
        self.data_root = Path(data) if data is not None else Path(self.config["data_root"])
        self.history: History | None = (
            History(_read_json(self.path / HISTORY)) if (self.path / HISTORY).is_file() else None
        )
        self.metrics: dict[str, Any] | None = (
            _read_json(self.path / METRICS) if (self.path / METRICS).is_file() else None
        )
        self._index: FolderIndex | None = None
        self._split: Split | None = None
        self._datasets: dict[str, ImageFolderDataset] = {}

    @property
    def multilabel(self) -> bool:
        """Whether the model has one sigmoid logit per label (``class_names`` are then the labels); the checkpoint
        says so in ``extra["output"] == "multilabel"``."""
        return self.info.extra.get("output") == "multilabel"

    @property
    def binary(self) -> bool:
        """Whether the model has a single logit (two classes)."""
        return len(self.class_names) == 2 and not self.multilabel

    @property
    def labels(self) -> LabelSpec | None:
        """How the labels were read from a CSV (``config.json``), or None for class sub-folders."""
        spec = self.config.get("labels")
        return None if not spec else LabelSpec.from_dict(spec)

    @property
    def index(self) -> FolderIndex:
        """The data's index (scanned on first use, with the run's class order; from the label CSV for runs
        trained with one)."""
        if self._index is None:
            spec = self.labels
            if spec is not None:
                self._index = read_labels(self.data_root, spec)
                if list(self._index.classes) != self.class_names:
                    raise DataError(f"the labels of {spec.csv} under {self.data_root} give the classes "
                                    f"{self._index.classes}, the model was trained on {self.class_names}")
            else:
                self._index = scan_folder(self.data_root, classes=self.class_names)
        return self._index

    @property
    def split(self) -> Split:
        """The saved train / val / test split, as indices into :attr:`index`."""
        if self._split is None:
            self._split = load_split(self.path / SPLIT, self.index.relpaths)
        return self._split

    def dataset(self, part: str = "test") -> ImageFolderDataset:
        """Preprocessed images of one part of the split (``"train"``, ``"val"``, ``"test"`` or ``"all"``).

        The tensors are computed once and cached.
        """
        if part not in (*PARTS, "all"):
            raise DataError(f"unknown split part {part!r}; valid: {', '.join((*PARTS, 'all'))}")
        if part not in self._datasets:
            indices = None if part == "all" else self.split.parts()[part]
            if indices is not None and not indices:
                raise DataError(f"the {part} split of {self.path} is empty ({SPLIT} lists no {part} images); "
                                "evaluate on a folder instead (--data DIR), or retrain")
            self._datasets[part] = ImageFolderDataset(self.index, self.preprocessing, indices, cache=True)
        return self._datasets[part]

    def predict(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Class probabilities ``(N, num_classes)`` for a batch of preprocessed images (per-label sigmoids for a
        multi-label run)."""
        return predict_proba(self.model, images, batch_size=batch_size, device=self.device,
                             multilabel=self.multilabel)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, arch={self.info.arch!r}, classes={self.class_names})"


def load_run(path: str | Path, device: str | torch.device = "cpu", data: str | Path | None = None) -> Run:
    """Open a run directory.

    Args:
        path: the folder written by ``saliencekit train``.
        device: where to put the model.
        data: the data folder, when it moved since training (default: the one in ``config.json``).

    Raises:
        RunDirError: ``path`` is not a run directory; the message names the missing files.
    """
    return Run(path, device=device, data=data)
