"""Labels from a CSV file, as in the NIH ChestX-ray14 ``Data_Entry_2017.csv``, for single- and multi-label tasks.

The CSV has one row per image: a column naming the image file (``Image Index``) and a label column
(``Finding Labels``) whose findings are separated by ``|`` (``Effusion|Infiltration``; ``No Finding`` when there
are none). The image files are looked up under the data folder: ``DATA/<name>`` first, else by file name
anywhere below it (the NIH archives unpack to ``images_001/images/...``); a name found twice is refused.

Three ways to turn the rows into a task (:class:`LabelSpec`):

- **one label per image** (default): the label column's value is the class (``--label-column "View Position"``
  gives AP vs PA). A cell with several ``|``-separated findings is refused (use one of the two below).
- **one finding against the rest** (``finding="Effusion"``): class 1 holds the images with that finding, class 0
  (``"not Effusion"``) all others; with ``versus="No Finding"`` class 0 holds only the images labelled exactly
  that, and images with other findings are left out (counted in :attr:`LabelledData.excluded`).
- **multi-label** (``multilabel=True``): one label per finding (all findings of the column except ``No Finding``,
  or the ``classes`` given; other findings are then ignored), a multi-hot target per image, trained with one
  sigmoid logit per label.

When the CSV has a ``Patient ID`` column, the split keeps each patient's images in one part (no patient in both
training and test). Every problem (a missing column, an empty cell, a file not found, a duplicate row, an empty
CSV) is a one-line :class:`~saliencekit.errors.DataError` naming the file, line and column.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from saliencekit.data.folder import FolderIndex, Sample, check_classes, default_class_order
from saliencekit.data.reader import IMAGE_EXTENSIONS
from saliencekit.errors import DataError

NO_FINDING = "No Finding"
SEPARATOR = "|"
IMAGE_COLUMNS = ("Image Index", "image", "file", "filename", "path")
LABEL_COLUMNS = ("Finding Labels", "label", "labels", "class", "finding", "findings")
GROUP_COLUMNS = ("Patient ID", "patient_id", "patient")


@dataclass(frozen=True)
class LabelSpec:
    """How a label CSV becomes a task (stored in ``config.json`` so that the run can be reopened).

    Args:
        csv: the CSV file.
        image_column: column naming the image files (default: the first of ``Image Index``, ``image``, ``file``,
            ``filename``, ``path`` that exists).
        label_column: column holding the labels (default: ``Finding Labels``, ``label``, ``labels``, ``class``,
            ``finding`` or ``findings``).
        finding: one finding against the rest (a binary task).
        versus: with ``finding``: the only label of class 0 (e.g. ``"No Finding"``); others are left out.
        multilabel: one sigmoid label per finding.
        classes: class order (single label), or which findings (multi-label); default: all, sorted.
        skip_missing: leave out rows whose image file is not found (counted) instead of stopping.
    """

    csv: str
    image_column: str | None = None
    label_column: str | None = None
    finding: str | None = None
    versus: str | None = None
    multilabel: bool = False
    classes: tuple[str, ...] | None = None
    skip_missing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "csv", str(self.csv))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        if self.multilabel and self.finding:
            raise DataError("choose one task: a finding against the rest (--finding) or multi-label (--multilabel)")
        if self.versus and not self.finding:
            raise DataError("--vs needs --finding (the positive class it is compared with)")
        if self.finding and self.classes:
            raise DataError("--classes does not apply with --finding (the classes are the finding and the rest)")

    @property
    def mode(self) -> str:
        """``"multilabel"``, ``"finding"`` or ``"single"``."""
        return "multilabel" if self.multilabel else "finding" if self.finding else "single"

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for ``config.json``."""
        d = asdict(self)
        d["classes"] = None if self.classes is None else list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: d.get(k) for k in ("csv", "image_column", "label_column", "finding", "versus")},
                   multilabel=bool(d.get("multilabel")), classes=d.get("classes"),
                   skip_missing=bool(d.get("skip_missing")))


@dataclass
class LabelledData(FolderIndex):
    """A :class:`FolderIndex` whose labels came from a CSV.

    For multi-label data each sample's ``label`` is -1 and ``target_rows`` hold the multi-hot targets; ``groups``
    are the patients (or None). ``excluded`` counts the rows left out by ``versus`` (or by ``classes``),
    ``missing`` the rows whose file was not found (with ``skip_missing``).
    """

    excluded: int = 0
    missing: int = 0
    spec: LabelSpec | None = None

    def summary(self) -> str:
        """One line: images, classes or labels with their counts, and rows left out."""
        if self.multilabel:
            counts = self.targets.sum(0)
            none = int((self.targets.sum(1) == 0).sum())
            parts = [f"{c} {int(n)}" for c, n in zip(self.classes, counts)] + [f"none of them {none}"]
            text = f"{len(self.samples)} images, {len(self.classes)} labels (positives: {', '.join(parts)})"
        else:
            counts = Counter(self.labels)
            text = f"{len(self.samples)} images: " + ", ".join(f"{c} {counts[k]}" for k, c in enumerate(self.classes))
        if self.groups is not None:
            text += f"; {len(set(self.groups))} patients"
        if self.excluded:
            text += f"; {self.excluded} rows with other findings left out"
        if self.missing:
            text += f"; {self.missing} rows whose image is not under {self.root} left out"
        return text


def _pick_column(path: Path, header: Sequence[str], given: str | None, candidates: Sequence[str], what: str) -> str:
    if given is not None:
        if given not in header:
            raise DataError(f"{path} has no column {given!r} ({what}); its columns: {', '.join(header)}")
        return given
    for c in candidates:
        if c in header:
            return c
    raise DataError(f"{path} has no {what} column (looked for {', '.join(repr(c) for c in candidates)}); its "
                    f"columns: {', '.join(header)}; name it with --{'image' if 'image' in what else 'label'}-column")


def _file_finder(root: Path) -> Any:
    by_name: dict[str, list[Path]] | None = None

    def find(name: str) -> Path | list[Path] | None:
        nonlocal by_name
        direct = root / name
        if direct.is_file():
            return direct
        if by_name is None:
            by_name = {}
            for p in sorted(root.rglob("*")):
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                    by_name.setdefault(p.name, []).append(p)
        hits = by_name.get(Path(name).name, [])
        return hits[0] if len(hits) == 1 else (hits or None)

    return find


def read_labels(data_dir: str | Path, spec: LabelSpec) -> LabelledData:
    """Index the images of ``data_dir`` listed in the CSV, with their labels.

    Raises:
        DataError: a missing or empty CSV, a missing column, an empty label cell, a file not found (unless
            ``skip_missing``) or found twice, a duplicate row, an unknown finding or class, a cell with several
            findings in single-label mode, or fewer than two classes (each naming the file, line and column).

    >>> data = read_labels("nih/images", LabelSpec("nih/Data_Entry_2017.csv", multilabel=True))  # doctest: +SKIP
    """
    root = Path(data_dir)
    path = Path(spec.csv)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    if not path.is_file():
        raise DataError(f"label CSV not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            if not header:
                raise DataError(f"{path} is empty (expected a header line, e.g. 'Image Index,Finding Labels')")
            image_col = _pick_column(path, header, spec.image_column, IMAGE_COLUMNS, "image file")
            label_col = _pick_column(path, header, spec.label_column, LABEL_COLUMNS, "label")
            group_col = next((c for c in GROUP_COLUMNS if c in header), None)
            rows = [(reader.line_num, r) for r in reader]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not a UTF-8 text CSV: {exc}") from exc
    except csv.Error as exc:
        raise DataError(f"{path} is not a readable CSV: {exc}") from exc
    if not rows:
        raise DataError(f"{path} has a header but no rows")

    find = _file_finder(root)
    seen: dict[str, int] = {}
    entries: list[tuple[int, Path, list[str], str | None]] = []
    missing: list[tuple[int, str]] = []
    for line, row in rows:
        name = (row.get(image_col) or "").strip()
        cell = (row.get(label_col) or "").strip()
        if not name:
            raise DataError(f"{path} line {line}: empty {image_col!r}")
        if not cell:
            raise DataError(f"{path} line {line}: empty {label_col!r} for {name}")
        if name in seen:
            raise DataError(f"{path} line {line}: {name} is listed again (first on line {seen[name]})")
        seen[name] = line
        found = find(name)
        if isinstance(found, list):
            raise DataError(f"{path} line {line}: {name} matches {len(found)} files under {root} "
                            f"({found[0]}, {found[1]}); give its path relative to {root} in {image_col!r}")
        if found is None:
            missing.append((line, name))
            continue
        findings = [v.strip() for v in cell.split(SEPARATOR) if v.strip()]
        group = (row.get(group_col) or "").strip() if group_col else None
        entries.append((line, found, findings, group))
    if missing and not spec.skip_missing:
        line, name = missing[0]
        more = f" (and {len(missing) - 1} more rows)" if len(missing) > 1 else ""
        raise DataError(f"{path} line {line}: image {name!r} ({image_col!r}) not found under {root}{more}; "
                        "valid: files under the data folder, or --skip-missing to leave such rows out")
    if not entries:
        raise DataError(f"none of the {len(rows)} images listed in {path} is under {root}")
    data = _build(root, path, label_col, entries, spec)
    data.missing = len(missing)
    return data


def _build(root: Path, path: Path, label_col: str, entries: list[tuple[int, Path, list[str], str | None]],
           spec: LabelSpec) -> LabelledData:
    found = sorted({f for _, _, fs, _ in entries for f in fs})
    samples: list[Sample] = []
    targets: list[tuple[int, ...]] = []
    groups: list[str] = []
    excluded = 0

    def add(file: Path, label: int, name: str, group: str | None) -> None:
        samples.append(Sample(file, label, name, file.relative_to(root).as_posix()))
        groups.append(group or "")

    if spec.mode == "multilabel":
        labels = [f for f in found if f != NO_FINDING]
        if spec.classes is not None:
            unknown = [c for c in spec.classes if c not in labels]
            if unknown:
                raise DataError(f"label(s) {unknown} do not occur in {path} ({label_col!r}); found: "
                                f"{', '.join(labels)}")
            labels = list(spec.classes)
        if not labels:
            raise DataError(f"{path} has no findings in {label_col!r} besides {NO_FINDING!r}: nothing to learn")
        for _, file, findings, group in entries:
            row = tuple(int(c in findings) for c in labels)
            targets.append(row)
            add(file, -1, SEPARATOR.join(c for c, v in zip(labels, row) if v) or NO_FINDING, group)
        classes = labels
    elif spec.mode == "finding":
        assert spec.finding is not None
        for what, value in (("finding", spec.finding), ("--vs label", spec.versus)):
            if value is not None and value not in found:
                raise DataError(f"{what} {value!r} does not occur in {path} ({label_col!r}); found: "
                                f"{', '.join(found)}")
        negative = spec.versus if spec.versus else f"not {spec.finding}"
        classes = [negative, spec.finding]
        for _, file, findings, group in entries:
            if spec.finding in findings:
                add(file, 1, spec.finding, group)
            elif spec.versus is None or findings == [spec.versus]:
                add(file, 0, negative, group)
            else:
                excluded += 1
    else:
        for line, _, findings, _ in entries:
            if len(findings) != 1:
                raise DataError(f"{path} line {line}: {SEPARATOR.join(findings)!r} ({label_col!r}) holds "
                                f"{len(findings)} labels; for such data use --multilabel, or --finding NAME "
                                "for one finding against the rest")
        classes = list(spec.classes) if spec.classes is not None else default_class_order(found)
        unknown = [c for c in classes if c not in found]
        if unknown:
            raise DataError(f"class(es) {unknown} do not occur in {path} ({label_col!r}); found: {', '.join(found)}")
        for _, file, findings, group in entries:
            if findings[0] in classes:
                add(file, classes.index(findings[0]), findings[0], group)
            else:
                excluded += 1
    if not spec.multilabel:
        present = {s.label for s in samples}
        absent = [c for k, c in enumerate(classes) if k not in present]
        if absent or len(classes) < 2:
            raise DataError(f"{path}: class(es) {absent or classes} have no images under {root}; at least two "
                            "classes with images are needed")
    check_classes(classes, path)
    has_groups = any(groups) and all(groups)
    return LabelledData(root, classes, samples, multilabel=spec.multilabel, target_rows=targets,
                        groups=groups if has_groups else None, excluded=excluded, spec=spec)
