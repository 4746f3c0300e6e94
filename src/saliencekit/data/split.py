"""Reproducible stratified train / validation / test split, saved in the run directory."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saliencekit import _atomic
from saliencekit.errors import DataError


@dataclass
class Split:
    """Indices into a dataset's sample list for each part.

    >>> s = stratified_split([0] * 20 + [1] * 20, seed=1)
    >>> len(s.train) + len(s.val) + len(s.test)
    40
    """

    train: list[int]
    val: list[int]
    test: list[int]
    seed: int = 42
    test_fraction: float = 0.15
    val_fraction: float = 0.15
    files: dict[str, list[str]] = field(default_factory=dict)

    def parts(self) -> dict[str, list[int]]:
        """The three index lists by name."""
        return {"train": self.train, "val": self.val, "test": self.test}


def stratified_split(
    labels: Sequence[int], test_fraction: float = 0.15, val_fraction: float = 0.15, seed: int = 42,
    groups: Sequence[str] | None = None,
) -> Split:
    """Split indices per class: ``test_fraction`` of each class for test, then ``val_fraction``
    of the remainder for validation, the rest for training. Same labels and seed, same split.

    Every class with at least 3 images has at least one image in each part.

    Args:
        labels: a class (or stratum, e.g. a multi-label image's rarest label) per image.
        test_fraction: share of each class for the test part.
        val_fraction: share of the rest for validation.
        seed: the random seed.
        groups: a group per image (e.g. the patient) kept in one part: groups are split as units, each in
            the stratum of its rarest class (fewest images in the data), so the fractions count groups.
    """
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1:
        raise DataError(f"fractions must lie in (0, 1): test={test_fraction}, val={val_fraction}")
    labels_arr = np.asarray(labels)
    if groups is not None:
        if len(groups) != len(labels_arr):
            raise DataError(f"{len(groups)} groups for {len(labels_arr)} labels")
        names, member_of = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        classes, counts = np.unique(labels_arr, return_counts=True)
        rarity = dict(zip(classes.tolist(), np.argsort(np.argsort(counts, kind="stable"), kind="stable").tolist()))
        unit_label = np.empty(len(names), dtype=labels_arr.dtype)
        best = np.full(len(names), len(classes))
        for i, lab in enumerate(labels_arr.tolist()):
            g = member_of[i]
            if rarity[lab] < best[g]:
                best[g], unit_label[g] = rarity[lab], lab
        units = _split_units(unit_label, test_fraction, val_fraction, seed)
        parts = {name: np.flatnonzero(np.isin(member_of, idx)).tolist() for name, idx in units.items()}
    else:
        parts = {name: idx.tolist() for name, idx in _split_units(labels_arr, test_fraction, val_fraction,
                                                                   seed).items()}
    return Split(
        train=sorted(parts["train"]), val=sorted(parts["val"]), test=sorted(parts["test"]),
        seed=seed, test_fraction=test_fraction, val_fraction=val_fraction,
    )


def _split_units(labels_arr: np.ndarray, test_fraction: float, val_fraction: float, seed: int
                 ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for cls in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == cls)
        idx = idx[rng.permutation(len(idx))]
        n_test = max(1, round(len(idx) * test_fraction)) if len(idx) >= 3 else 0
        rest = idx[n_test:]
        n_val = max(1, round(len(rest) * val_fraction)) if len(rest) >= 2 and val_fraction > 0 else 0
        parts["test"] += idx[:n_test].tolist()
        parts["val"] += rest[:n_val].tolist()
        parts["train"] += rest[n_val:].tolist()
    return {k: np.asarray(v, dtype=np.int64) for k, v in parts.items()}


def save_split(path: str | Path, split: Split, relpaths: Sequence[str]) -> Path:
    """Write the split as JSON, listing each part's files (paths relative to the data root)."""
    data: dict[str, Any] = {
        "seed": split.seed, "test_fraction": split.test_fraction, "val_fraction": split.val_fraction,
        "files": {name: [relpaths[i] for i in idx] for name, idx in split.parts().items()},
    }
    return _atomic.write_json(path, data)


def _check_split_file(data: Any, path: Path) -> None:
    """Refuse a split file that :func:`save_split` did not write (a missing or mistyped field), naming the field."""
    problem = None
    if not isinstance(data, dict):
        problem = "it is not a JSON object"
    else:
        files = data.get("files")
        for key, kind in (("seed", int), ("test_fraction", int | float), ("val_fraction", int | float)):
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                problem = f"{key!r} is missing or not a number"
        if not isinstance(files, dict):
            problem = "'files' is missing or not an object"
        else:
            for name in ("train", "val", "test"):
                if not isinstance(files.get(name), list) or not all(isinstance(f, str) for f in files[name]):
                    problem = f"'files.{name}' is missing or not a list of file names"
            if problem is None:
                listed = [f for name in ("train", "val", "test") for f in files[name]]
                twice = sorted({f for f in listed if listed.count(f) > 1}) if len(set(listed)) < len(listed) else []
                if twice:
                    problem = f"{len(twice)} file(s) are listed twice (in one part or in two), e.g. {twice[0]!r}"
    if problem:
        raise DataError(f"split file {path} was edited or damaged: {problem}; restore it, or retrain (`saliencekit "
                        "train` writes it)")


def load_split(path: str | Path, relpaths: Sequence[str]) -> Split:
    """Read a split written by :func:`save_split` and map its files back to indices of ``relpaths``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from exc
    _check_split_file(data, path)
    where = {p: i for i, p in enumerate(relpaths)}
    parts: dict[str, list[int]] = {}
    for name in ("train", "val", "test"):
        missing = [f for f in data["files"][name] if f not in where]
        if missing:
            raise DataError(
                f"{len(missing)} file(s) of the saved {name} split are not in the data folder, e.g. {missing[0]!r}; "
                "pass the folder the model was trained on (--data)"
            )
        parts[name] = sorted(where[f] for f in data["files"][name])
    return Split(**parts, seed=data["seed"], test_fraction=data["test_fraction"],
                 val_fraction=data["val_fraction"], files=data["files"])
