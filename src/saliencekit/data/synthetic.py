"""The synthetic chest X-ray generator: the embedded default dataset.

:func:`generate` writes greyscale frontal "radiographs" of two classes, ``effusion`` and
``normal``, in the folder layout :func:`saliencekit.data.scan_folder` reads::

    OUT/effusion/effusion_0000.png        OUT/normal/normal_0000.png       the images
    OUT/masks/<class>/<stem>.png          lesion masks: white where fluid was drawn (black for normals)
    OUT/lung_masks/<class>/<stem>.png     lung fields
    OUT/shortcut_masks/<class>/<stem>.png the planted marker (only when ``shortcut > 0``; black where absent)
    OUT/dataset.json                      generator parameters and per-image metadata (written last)

Each image shows a body outline, two dark lung fields, a brighter mediastinum and heart (bulging to
the patient's left, the image's right), posterior and anterior ribs, clavicles, diaphragm domes, the
spine and trachea, lung markings, soft noise and blur, with random patient size, position, rotation
and exposure. Confounders appear in both classes (breast shadows over the lung bases, a stomach
bubble). An effusion is fluid at one or both lung bases: a homogeneous soft-tissue opacity whose
concave upper edge (meniscus) rises along the lateral chest wall and blunts the costophrenic angle.
Volumes range from a sliver in the costophrenic angle to a third of the lung, and the fluid's opacity
grows with its volume: the smallest effusions (one side in seven, 17% of the images) are thin layers
that replace as little as a quarter of the air, a faint haze over a blunted angle; the others are
fully opaque.
On the defaults the smallest fifth (under 3% of the lung field) is 12-83 grey levels brighter than
the same lung without fluid (median 54; the rest: median 80), so the classes are not trivially
separable and a trained model's errors are the small effusions. The lesion mask is white where the
fluid layer reaches at least a quarter of its full thickness, whatever its opacity: every pixel the
fluid visibly changes lies within about 2 pixels of it.

Sides in the metadata are the *patient's* sides: "left" is drawn on the image's right.

Every image's random numbers come from ``SeedSequence([seed, class, index])``: the same arguments
give the same bytes, whatever the number of worker processes.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from saliencekit._atomic import atomic_dir, write_json
from saliencekit.data import _draw
from saliencekit.errors import DataError
from saliencekit.limits import MAX_IMAGE_SIDE

CLASSES = ("effusion", "normal")
FORMAT_VERSION = 1
_OUTPUT_DIRS = ("effusion", "normal", "masks", "lung_masks", "shortcut_masks")


@dataclass
class SynthSummary:
    """What :func:`generate` wrote.

    Attributes:
        root: the output folder.
        counts: images per class.
        parameters: the generator's arguments (as stored in ``dataset.json``).
        seconds: wall-clock time of the generation.
    """

    root: Path
    counts: dict[str, int]
    parameters: dict[str, Any]
    seconds: float = field(default=0.0, compare=False)

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {c}" for c, n in self.counts.items())
        p = self.parameters
        extra = f", shortcut {p['shortcut']:g} on {p['shortcut_class']}" if p["shortcut"] > 0 else ""
        size = f"{p['size']}x{p['size']}"
        return f"wrote {counts} images ({size}, seed {p['seed']}{extra}) to {self.root} in {self.seconds:.1f} s"


def image_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """The random generator of one image: independent of every other image and of worker order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), CLASSES.index(class_name), int(index)]))


def make_patient(seed: int, class_name: str, index: int, size: int, marker: bool = False) -> _draw.Patient:
    """The random patient behind image ``index`` of ``class_name`` (deterministic)."""
    return _draw.sample_patient(
        image_rng(seed, class_name, index), size, effusion=class_name == "effusion", marker=marker
    )


def _check_args(per_class: int, size: int, shortcut: float, shortcut_class: str) -> None:
    if isinstance(per_class, bool) or not isinstance(per_class, int | np.integer) or per_class < 1:
        raise DataError(f"per_class must be a whole number >= 1, got {per_class!r}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not 64 <= size <= MAX_IMAGE_SIDE:
        raise DataError(f"size must be a whole number of pixels from 64 to {MAX_IMAGE_SIDE} "
                        f"(saliencekit.limits.MAX_IMAGE_SIDE), got {size!r}")
    if not isinstance(shortcut, int | float) or not 0.0 <= float(shortcut) <= 1.0:
        raise DataError(f"shortcut must be a fraction in [0, 1], got {shortcut!r}")
    if shortcut_class not in CLASSES:
        raise DataError(f"unknown shortcut class {shortcut_class!r}; valid classes: {', '.join(CLASSES)}")


def _prepare_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"output path {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not _is_synthetic(out):  # e.g. the user's own effusion/ and normal/ folders: never replaced
        ours = all(p.name in _OUTPUT_DIRS for p in out.iterdir())
        raise DataError(
            f"output folder {out} is not empty and holds no synthetic dataset (no dataset.json written by "
            "saliencekit.data.synthetic)" + ("; if it is an unfinished one (an earlier version, interrupted), "
                                              "delete it yourself: saliencekit does not replace folders it cannot "
                                              "tell from your data" if ours else "") + "; choose a new or empty folder"
        )
    if not overwrite:
        raise DataError(
            f"output folder {out} already holds a synthetic dataset; choose another folder or overwrite it "
            "(overwrite=True, or --overwrite on the command line)"
        )


def _is_synthetic(root: Path) -> bool:
    """Whether ``root/dataset.json`` was written by this generator."""
    try:
        return json.loads((root / "dataset.json").read_text()).get("generator") == "saliencekit.data.synthetic"
    except (OSError, ValueError, AttributeError):
        return False


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _mask_png(m: np.ndarray) -> bytes:
    return _png(np.where(m, np.uint8(255), np.uint8(0)))


def _write(path: Path, data: bytes) -> None:
    """A plain write into the staging folder (:func:`generate` moves the whole dataset into place at the end), without
    fsync: thousands of fsyncs would dominate the time, and ``dataset.json``, written last with fsync, marks a
    complete dataset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _make_one(task: tuple[str, str, int, int, int, bool, bool]) -> dict[str, Any]:
    """Render and write one image and its masks; return its metadata."""
    root, cls, index, seed, size, marker, shortcut_masks = task
    pt = make_patient(seed, cls, index, size, marker)
    r = _draw.render(pt)
    stem = f"{cls}_{index:04d}"
    out = Path(root)
    _write(out / cls / f"{stem}.png", _png(r.image))
    _write(out / "masks" / cls / f"{stem}.png", _mask_png(r.lesion))
    _write(out / "lung_masks" / cls / f"{stem}.png", _mask_png(r.lung))
    if shortcut_masks:
        _write(out / "shortcut_masks" / cls / f"{stem}.png", _mask_png(r.shortcut))
    sides = [_draw.SIDE_NAMES[s] for s in (0, 1) if pt.fluid[s] > 0]
    return {
        "file": f"{cls}/{stem}.png",
        "class": cls,
        "index": index,
        "effusion_sides": sides,
        "fluid_volume": {_draw.SIDE_NAMES[s]: round(float(pt.fluid[s]), 4) for s in (0, 1) if pt.fluid[s] > 0},
        "fluid_opacity": {_draw.SIDE_NAMES[s]: round(float(pt.opacity[s]), 4) for s in (0, 1) if pt.fluid[s] > 0},
        "lesion_fraction": round(float(r.lesion.mean()), 6),
        "shortcut": bool(marker),
        "rotation_deg": round(float(np.rad2deg(pt.angle)), 3),
        "breast_shadows": bool(pt.breast > 0),
    }


def _default_workers(n_images: int) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return 1 if n_images < 64 else max(1, min(2, cpus))


def generate(
    out: str | os.PathLike[str],
    per_class: int = 350,
    size: int = 512,
    seed: int = 0,
    shortcut: float = 0.0,
    shortcut_class: str = "effusion",
    progress: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
) -> SynthSummary:
    """Write a synthetic chest X-ray dataset (effusion vs normal) with lesion, lung and shortcut masks.

    Args:
        out: output folder (created; must be new or empty, or hold an earlier synthetic
            dataset and ``overwrite`` be set).
        per_class: images per class.
        size: image width and height in pixels (>= 64).
        seed: the same seed and arguments give the same bytes.
        shortcut: fraction of ``shortcut_class`` images with a burned-in marker (a bright
            letter "L" in the top-right corner); the other class never has it. With ``shortcut > 0``
            a shortcut mask is written for every image.
        shortcut_class: ``"effusion"`` or ``"normal"``.
        progress: show a progress bar.
        overwrite: replace an earlier synthetic dataset in ``out``.
        workers: processes drawing images (default: up to 2 for large sets, else 1); the
            output does not depend on it.

    Returns:
        A :class:`SynthSummary`.

    Raises:
        DataError: an argument is out of range, or ``out`` cannot be used.

    >>> import tempfile
    >>> s = generate(tempfile.mkdtemp(), per_class=2, size=64, progress=False)
    >>> s.counts
    {'effusion': 2, 'normal': 2}
    """
    _check_args(per_class, size, shortcut, shortcut_class)
    per_class, size, seed, shortcut = int(per_class), int(size), int(seed), float(shortcut)
    t0 = time.perf_counter()
    root = Path(out)
    _prepare_output(root, overwrite)
    with atomic_dir(root, replaces=(*_OUTPUT_DIRS, "dataset.json")) as staging:  # the old dataset goes at the end
        return _generate(staging, root, per_class, size, seed, shortcut, shortcut_class, progress, workers, t0)


def _generate(staging: Path, root: Path, per_class: int, size: int, seed: int, shortcut: float, shortcut_class: str,
              progress: bool, workers: int | None, t0: float) -> SynthSummary:
    """Draw every image into the (hidden) ``staging`` folder that becomes ``root`` at the end."""
    n_marked = round(shortcut * per_class)
    marked = set(np.random.default_rng(np.random.SeedSequence([seed, 7919])).permutation(per_class)[:n_marked].tolist())
    tasks = [
        (str(staging), cls, i, seed, size, cls == shortcut_class and i in marked, shortcut > 0)
        for cls in CLASSES
        for i in range(per_class)
    ]
    workers = _default_workers(len(tasks)) if workers is None else max(1, int(workers))
    bar = tqdm(total=len(tasks), desc="drawing chest X-rays", unit="img", disable=not progress)
    images: list[dict[str, Any]] = []
    if workers == 1:
        for t in tasks:
            images.append(_make_one(t))
            bar.update()
    else:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ctx.Pool(workers) as pool:
            for meta in pool.imap(_make_one, tasks, chunksize=8):
                images.append(meta)
                bar.update()
    bar.close()

    parameters = {
        "per_class": per_class,
        "size": size,
        "seed": seed,
        "shortcut": shortcut,
        "shortcut_class": shortcut_class,
    }
    counts = {c: per_class for c in CLASSES}
    write_json(
        staging / "dataset.json",
        {
            "generator": "saliencekit.data.synthetic",
            "format_version": FORMAT_VERSION,
            "parameters": parameters,
            "classes": list(CLASSES),
            "counts": counts,
            "sides": "patient's sides: 'left' is drawn on the image's right",
            "images": images,
        },
    )
    return SynthSummary(root=root, counts=counts, parameters=parameters, seconds=time.perf_counter() - t0)
