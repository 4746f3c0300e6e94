"""Real images without a download: scikit-learn's handwritten digits as a class-folder dataset.

``sklearn.datasets.load_digits`` ships inside scikit-learn (the UCI ML hand-written digits test set: 1797 greyscale
images of 8x8 pixels, 16 grey levels, classes 0-9, about 180 per class), so it works offline. :func:`write_digits`
writes them as ``OUT/<digit>/<index>.png`` (8-bit, the value ``v`` of 0..16 written as ``round(v * 255 / 16)``,
at the native 8x8 size; ``saliencekit train --image-size`` resizes them) and ``OUT/dataset.json``.
It is the real-image data set of the sanity-check reproduction in docs/checks.md.

>>> write_digits("data/digits", classes=[0, 1])  # doctest: +SKIP
DigitsSummary(root=PosixPath('data/digits'), counts={'0': 178, '1': 182})
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saliencekit._atomic import atomic_dir
from saliencekit.errors import DataError, InputError

SOURCE = "sklearn.datasets.load_digits (UCI ML hand-written digits, test set: 1797 images, 8x8, 16 grey levels)"


@dataclass
class DigitsSummary:
    """What :func:`write_digits` wrote: the folder and the number of images per class folder."""

    root: Path
    counts: dict[str, int]

    def __str__(self) -> str:
        per = ", ".join(f"{k}: {v}" for k, v in self.counts.items())
        return f"wrote {sum(self.counts.values())} digit images to {self.root} ({per})"


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 images (N, 8, 8) in 0..255 and labels (N,).

    Raises:
        InputError: scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise InputError("the digits data set ships with scikit-learn, which is not installed: "
                         "pip install saliencekit[digits]") from exc
    d = load_digits()
    images = np.rint(np.asarray(d.images, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, np.asarray(d.target, dtype=np.int64)


def write_digits(out: str | Path, classes: Sequence[int] | None = None, per_class: int | None = None,
                 overwrite: bool = False) -> DigitsSummary:
    """Write scikit-learn's digits as a class-folder dataset ``OUT/<digit>/<index>.png`` + ``OUT/dataset.json``.

    The images are written to a temporary folder beside ``out`` and moved into place at the end, so an interrupted
    call leaves nothing half-written.

    Args:
        out: the folder to write (new or empty, or an earlier digits folder with ``overwrite``).
        classes: digits to keep (default all ten), each 0..9.
        per_class: keep only the first ``per_class`` images of each digit (default all).
        overwrite: replace an earlier digits dataset in ``out`` (never other files).

    Raises:
        DataError: bad classes or per_class, or a folder holding other files.
        InputError: scikit-learn is not installed.
    """
    root = Path(out)
    chosen = list(range(10)) if classes is None else [int(c) for c in classes]
    if not chosen or any(c < 0 or c > 9 for c in chosen) or len(set(chosen)) != len(chosen):
        raise DataError(f"digit classes must be distinct digits 0-9, got {list(classes or [])}")
    if per_class is not None and per_class < 1:
        raise DataError(f"per_class must be >= 1, got {per_class}")
    _check_output(root, overwrite)
    images, labels = load_digits_arrays()
    from PIL import Image

    old_entries = [p.name for p in root.iterdir()] if root.is_dir() else []  # an earlier digits dataset (checked)
    with atomic_dir(root, replaces=old_entries) as tmp:  # nothing is visible in OUT until every file is written
        counts: dict[str, int] = {}
        files: dict[str, list[str]] = {}
        for c in sorted(chosen):
            idx = np.flatnonzero(labels == c)[:per_class]
            (tmp / str(c)).mkdir()
            for i in idx:
                Image.fromarray(images[i]).save(tmp / str(c) / f"{int(i):04d}.png")
            counts[str(c)] = len(idx)
            files[str(c)] = [f"{int(i):04d}.png" for i in idx]
        meta = {"dataset": "digits", "source": SOURCE, "classes": [str(c) for c in sorted(chosen)],
                "counts": counts, "per_class": per_class, "image_size": [8, 8],
                "scaling": "value v of 0..16 written as round(v * 255 / 16)",
                "note": "file names are the indices in load_digits()"}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    return DigitsSummary(root=root, counts=counts)


def _is_digits(root: Path) -> bool:
    try:
        return json.loads((root / "dataset.json").read_text()).get("dataset") == "digits"
    except (OSError, ValueError, AttributeError):
        return False


def _check_output(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise DataError(f"output path {root} exists and is not a folder")
    if not root.exists() or not any(root.iterdir()):
        return
    if not _is_digits(root):
        raise DataError(f"output folder {root} is not empty and holds no digits dataset; choose a new or empty "
                        "folder")
    if not overwrite:
        raise DataError(f"output folder {root} already holds a digits dataset; choose another folder or overwrite "
                        "it (overwrite=True, or --overwrite on the command line)")
    foreign = [p.name for p in root.iterdir() if not _ours(p)]
    if foreign:
        raise DataError(f"output folder {root} also holds {', '.join(sorted(foreign)[:5])}, which is not part of a "
                        "digits dataset; choose a new or empty folder")


def _ours(p: Path) -> bool:
    """A file of an earlier digits dataset: dataset.json or a digit folder holding only PNGs."""
    if p.name == "dataset.json" and p.is_file():
        return True
    return p.is_dir() and p.name.isdigit() and all(f.is_file() and f.suffix == ".png" for f in p.iterdir())

