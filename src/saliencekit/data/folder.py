"""Datasets stored as one sub-folder per class, with optional mask folders.

Layout (the synthetic generator writes exactly this; the NIH subset works the same)::

    ROOT/effusion/x.png            ROOT/normal/y.png          images, one folder per class
    ROOT/masks/effusion/x.png                                 lesion masks (optional)
    ROOT/lung_masks/effusion/x.png                            other masks: ROOT/<kind>_masks/<class>/<stem>.png

Folders named ``masks`` or ending in ``_masks`` are never classes. Hidden folders are ignored.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from saliencekit.data.preprocess import Preprocessing
from saliencekit.data.reader import IMAGE_EXTENSIONS, read_image
from saliencekit.errors import DataError
from saliencekit.limits import MAX_CLASSES

__all__ = ["IMAGE_EXTENSIONS", "NEGATIVE_CLASS_NAMES", "FolderIndex", "ImageFolderDataset", "Sample", "check_classes",
           "check_images", "default_class_order", "scan_folder"]

# Names that mean "no finding": with two classes such a class becomes class 0, so that the single logit
# scores the finding (e.g. effusion = class 1, normal = class 0).
NEGATIVE_CLASS_NAMES = ("normal", "healthy", "negative", "control", "no_finding", "nofinding", "no finding", "benign")
LESION_MASK_DIR = "masks"


def _is_mask_dir(name: str) -> bool:
    return name == LESION_MASK_DIR or name.endswith("_masks")


def _mask_kind(dir_name: str) -> str:
    return "lesion" if dir_name == LESION_MASK_DIR else dir_name[: -len("_masks")]


@dataclass
class Sample:
    """One image file, its class and the mask files found for it (kind -> path)."""

    path: Path
    label: int
    class_name: str
    relpath: str
    masks: dict[str, Path] = field(default_factory=dict)


@dataclass
class FolderIndex:
    """The classes and samples found under a dataset folder (or listed in a label CSV, see
    :mod:`saliencekit.data.labels`).

    Attributes:
        root: the data folder.
        classes: class names in label order; for multi-label data, the labels.
        samples: the images.
        multilabel: each image has a 0/1 target per label (``target_rows``) instead of one class.
        target_rows: the multi-hot targets of multi-label data, one tuple per sample (empty otherwise).
        groups: a group (patient) per sample, kept together by the split, or None.
    """

    root: Path
    classes: list[str]
    samples: list[Sample]
    multilabel: bool = False
    target_rows: list[tuple[int, ...]] = field(default_factory=list)
    groups: list[str] | None = None

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    @property
    def relpaths(self) -> list[str]:
        return [s.relpath for s in self.samples]

    @property
    def mask_kinds(self) -> list[str]:
        return sorted({k for s in self.samples for k in s.masks})

    @property
    def targets(self) -> np.ndarray:
        """``(N, num_labels)`` 0/1 targets (multi-label), or the ``(N,)`` class indices."""
        if self.multilabel:
            return np.asarray(self.target_rows, dtype=np.int64).reshape(len(self.samples), len(self.classes))
        return np.asarray(self.labels, dtype=np.int64)

    def without(self, bad: set[Path]) -> FolderIndex:
        """A copy without the given files."""
        keep = [i for i, s in enumerate(self.samples) if s.path not in bad]
        return dataclasses.replace(
            self, samples=[self.samples[i] for i in keep],
            target_rows=[self.target_rows[i] for i in keep] if self.multilabel else [],
            groups=None if self.groups is None else [self.groups[i] for i in keep])

    def strata(self) -> list[int]:
        """One stratum per image for a stratified split: its class, or (multi-label) its rarest positive label
        (fewest positives in the data), ``len(classes)`` for images with no positive label."""
        if not self.multilabel:
            return list(self.labels)
        return rarest_label_strata(self.targets)


def rarest_label_strata(targets: np.ndarray | Sequence[Sequence[float]]) -> list[int]:
    """One stratum per row of multi-label ``(N, L)`` 0/1 targets: its rarest positive label (fewest positives among
    these rows; ties by label order), ``L`` for a row with no positive label.

    >>> rarest_label_strata([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 1]])
    [1, 0, 3, 2]
    """
    t = np.asarray(targets, dtype=np.float64) > 0.5
    n_labels = t.shape[1]
    rank = np.empty(n_labels, dtype=np.int64)
    rank[np.argsort(t.sum(0), kind="stable")] = np.arange(n_labels)
    out = []
    for row in t:
        pos = np.flatnonzero(row)
        out.append(int(pos[np.argmin(rank[pos])]) if len(pos) else n_labels)
    return out


def default_class_order(names: Sequence[str]) -> list[str]:
    """Names sorted; with two classes a "normal"-like one (see ``NEGATIVE_CLASS_NAMES``) comes first, so that
    the single logit of a binary model scores the finding.

    >>> default_class_order(["normal", "effusion"])
    ['normal', 'effusion']
    >>> default_class_order(["cat", "dog"])
    ['cat', 'dog']
    """
    names = sorted(names)
    if len(names) == 2:
        neg = [n for n in names if n.lower() in NEGATIVE_CLASS_NAMES]
        if len(neg) == 1:
            names = [neg[0], *(n for n in names if n != neg[0])]
    return names


def check_classes(classes: Sequence[str], where: str | Path) -> None:
    """Refuse repeated class names and more than :data:`~saliencekit.limits.MAX_CLASSES` classes (labels).

    Raises:
        DataError: naming ``where`` (the data folder or label CSV), the problem and the limit.
    """
    repeated = sorted(c for c, n in Counter(classes).items() if n > 1)
    if repeated:
        raise DataError(f"class(es) {repeated} are listed more than once for {where}; give each class once")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{where} has {len(classes)} classes, more than the limit of {MAX_CLASSES} "
                        "(saliencekit.limits.MAX_CLASSES); group them, or train on a subset with --classes")


def scan_folder(root: str | Path, classes: Sequence[str] | None = None, min_classes: int = 2) -> FolderIndex:
    """Index a dataset folder.

    Args:
        root: folder with one sub-folder of images per class.
        classes: class names in label order; default: the sub-folders sorted by name
            (so ``effusion`` is 0 and ``normal`` 1 unless given, e.g. ``["normal", "effusion"]``).
        min_classes: fewest classes accepted (2 for training, 1 to explain a folder).

    Raises:
        DataError: the folder is missing or empty, has fewer than ``min_classes`` classes,
            or a class folder holds no images.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root} (expected a folder with one sub-folder of images per class)")
    found = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and not _is_mask_dir(p.name)
    )
    if classes is None:
        classes = found
    else:
        classes = list(classes)
        unknown = [c for c in classes if c not in found]
        if unknown:
            raise DataError(f"class folder(s) {unknown} not found in {root}; found: {found}")
    if not classes:
        raise DataError(
            f"no class folders in {root}: expected one sub-folder of images per class, "
            f"e.g. {root}/effusion/*.png and {root}/normal/*.png"
        )
    check_classes(classes, root)
    if len(classes) < min_classes:
        raise DataError(
            f"{root} has only {len(classes)} class folder ({', '.join(classes)}); "
            f"at least {min_classes} classes are needed, one sub-folder each"
        )
    mask_dirs = [p for p in sorted(root.iterdir()) if p.is_dir() and _is_mask_dir(p.name)]
    samples: list[Sample] = []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(
                f"class folder {root / cls} holds no images (valid extensions: {', '.join(IMAGE_EXTENSIONS)})"
            )
        for f in files:
            masks = {}
            for md in mask_dirs:
                for ext in (".png", f.suffix):
                    m = md / cls / (f.stem + ext)
                    if m.is_file():
                        masks[_mask_kind(md.name)] = m
                        break
            samples.append(Sample(f, label, cls, f.relative_to(root).as_posix(), masks))
    return FolderIndex(root, list(classes), samples)


def check_images(index: FolderIndex, skip_bad: bool = False, progress: bool = True) -> FolderIndex:
    """Read every image once (at full depth); raise on the first unreadable one, or skip it with a warning.

    Returns:
        The index, without the unreadable files when ``skip_bad`` is set.
    """
    bad: set[Path] = set()
    for s in tqdm(index.samples, desc="checking images", disable=not progress, leave=False):
        try:
            read_image(s.path)
        except DataError as exc:
            if not skip_bad:
                raise
            warnings.warn(f"skipping unreadable image: {exc}", stacklevel=2)
            bad.add(s.path)
    out = index.without(bad)
    counts = {c: sum(s.class_name == c for s in out.samples) for c in out.classes}
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"after skipping unreadable images, class(es) {empty} in {index.root} have no images left")
    return out


class ImageFolderDataset(Dataset):
    """Preprocessed images (and optionally masks) of some samples of a :class:`FolderIndex`.

    Items are ``(image, label)`` with image a float32 tensor (C, H, W) and label an int, or for multi-label data
    a float32 tensor of 0/1 targets, one per label.
    With ``cache=True`` all images are preprocessed once up front (fast epochs).

    Args:
        index: the folder index.
        preprocessing: how files become tensors.
        indices: which samples (default: all).
        augment: optional callable applied to the image tensor of each item (training only).
        cache: preprocess every image once and keep the tensors in memory.
        progress: show a progress bar while caching.
    """

    def __init__(
        self,
        index: FolderIndex,
        preprocessing: Preprocessing,
        indices: Sequence[int] | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: bool = True,
        progress: bool = False,
    ):
        self.index = index
        self.preprocessing = preprocessing
        self.indices = list(range(len(index.samples)) if indices is None else indices)
        self.augment = augment
        self._cache: torch.Tensor | None = None
        if cache and self.indices:
            it = tqdm(self.indices, desc="loading images", disable=not progress, leave=False)
            self._cache = torch.stack([preprocessing.load(index.samples[i].path) for i in it])

    def __len__(self) -> int:
        return len(self.indices)

    def sample(self, i: int) -> Sample:
        """The :class:`Sample` behind item ``i``."""
        return self.index.samples[self.indices[i]]

    def image(self, i: int) -> torch.Tensor:
        """Preprocessed image of item ``i`` (no augmentation)."""
        if self._cache is not None:
            return self._cache[i]
        return self.preprocessing.load(self.sample(i).path)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.image(i)
        if self.augment is not None:
            x = self.augment(x)
        if self.index.multilabel:
            return x, torch.tensor(self.index.target_rows[self.indices[i]], dtype=torch.float32)
        return x, self.sample(i).label

    def mask(self, i: int, kind: str = "lesion") -> torch.Tensor:
        """Mask of item ``i`` resized to the model input; all zeros when the sample has none of that kind."""
        return self.preprocessing.load_mask(self.sample(i).masks.get(kind))

    def images(self) -> torch.Tensor:
        """All preprocessed images as one (N, C, H, W) tensor."""
        if self._cache is not None:
            return self._cache
        return torch.stack([self.image(i) for i in range(len(self))])

    def labels(self) -> torch.Tensor:
        """All labels as a (N,) int64 tensor, or for multi-label data the (N, num_labels) float32 0/1 targets."""
        if self.index.multilabel:
            rows = [self.index.target_rows[j] for j in self.indices]
            return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(self.index.classes))
        return torch.tensor([self.sample(i).label for i in range(len(self))], dtype=torch.long)

    def masks(self, kind: str = "lesion") -> torch.Tensor:
        """All masks of one kind as a (N, H, W) tensor."""
        return torch.stack([self.mask(i, kind) for i in range(len(self))])
