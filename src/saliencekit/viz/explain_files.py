"""Explain image files and write the pictures: what ``saliencekit explain`` does, as a library function.

Per image (``OUT/<image name>/``):

- ``<label>.png``: the overlay of each method (``<label>_<class>.png`` per explained class with ``top_k > 1``);
- ``comparison.png``: the image and every method in a grid at most 5 panels wide, one block of rows per
  explained class, the predicted class (and the true class when the file sits in a folder named after a class)
  in the title;
- ``maps.npz``: the raw maps (float32, H x W) under ``<label>`` (``<label>/<class>`` with ``top_k > 1``);
- plus ``OUT/summary.json``: per image, the prediction, the probabilities and the written files.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from saliencekit._atomic import save_figure, write_json
from saliencekit._filenames import name_hash, safe_filename
from saliencekit._threads import check_threads, torch_threads
from saliencekit.data.folder import IMAGE_EXTENSIONS
from saliencekit.data.preprocess import Preprocessing
from saliencekit.errors import DataError, InputError
from saliencekit.methods.outputs import MAX_TARGETS


@dataclass
class ExplainedImage:
    """What was written for one image (``predicted``: the predicted class; for a multi-label model the positive
    labels, comma-separated, or a note that none is positive)."""

    path: Path
    folder: Path
    predicted: str
    probabilities: dict[str, float]
    classes: list[str]
    files: list[Path] = field(default_factory=list)
    note: str | None = None  # what fitting the image to the model input did beyond scaling (stretch, crop)
    positive: list[str] = field(default_factory=list)  # multi-label: the labels at or above the threshold
    truncated: int = 0  # multi-label: positive labels not explained (beyond MAX_TARGETS)


def find_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files given directly or found (recursively, sorted) in folders; mask folders are skipped."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).parts[:-1]
                if any(part == "masks" or part.endswith("_masks") or part.startswith(".") for part in rel):
                    continue
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append(f)
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"image or folder not found: {p}")
    if not found:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, paths))}")
    return found


def is_torchscript(model: nn.Module) -> bool:
    return isinstance(model, torch.jit.ScriptModule)


def torchscript_methods() -> list[str]:
    """Registered methods that work on TorchScript models (no layer hooks, no ReLU rules)."""
    from saliencekit.methods.registry import list_methods, method_class

    return [n for n in list_methods() if _works_on_torchscript(method_class(n))]


def _works_on_torchscript(method: object) -> bool:
    """From the capability flags of a method class or instance (a wrapper's instance inherits its base's flags)."""
    return bool(getattr(method, "works_on_torchscript", True) and not getattr(method, "needs_layer", False)
                and getattr(method, "relu_rule", None) is None)


def explain_files(
    model: nn.Module,
    preprocessing: Preprocessing,
    images: Sequence[str | os.PathLike[str]],
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]],
    out: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    target: int | str | Sequence[int | str] | None = None,
    layer: str | None = None,
    top_k: int | None = None,
    batch_size: int | str | None = None,
    precision: str | None = None,
    device: str | torch.device = "cpu",
    images_per_batch: int = 8,
    progress: bool = True,
    normalization: str = "auto",
    num_threads: int | None = None,
    output: str | None = None,
    threshold: float | None = None,
) -> list[ExplainedImage]:
    """Explain image files with several methods and write overlays, comparison figures and raw maps.

    What is explained per image (one row of maps per class): ``target`` when given (one class or several, by
    name or index); else with ``top_k`` the ``top_k`` most probable classes (by sigmoid per label for a
    multi-label model); else the predicted class, and for a multi-label model every positive label (most
    probable first, at most :data:`~saliencekit.methods.outputs.MAX_TARGETS`) or the most probable label when
    none is positive.

    Args:
        model: the classifier (moved to ``device``; never modified otherwise).
        preprocessing: how files become model inputs.
        images: image files and/or folders (searched recursively).
        methods: method names, or ``label -> options`` (see :func:`saliencekit.explain`).
        out: output folder.
        class_names: class names in label order (default ``class_0``, ``class_1``, ...).
        target: class(es) to explain (index or name, or a list of them); not with ``top_k``.
        layer: layer for CAM methods (default: the last convolutional stage).
        top_k: explain the ``top_k`` most probable classes of each image, one row each (1 to
            :data:`~saliencekit.methods.outputs.MAX_TARGETS`, at most the number of classes); not with ``target``.
        batch_size: passed to the methods that take it ("auto" or an int; None: their default).
        precision: "fp32", "bf16" or "fp16", for the methods that take it (None: their default).
        device: "auto", "cpu", "cuda", ...
        images_per_batch: how many images are explained together.
        progress: show a progress bar.
        normalization: display normalisation of the pictures (the .npz keeps raw maps): "auto" (default:
            "percentile" for the gradient and backprop families, i.e. |a| clipped at its 99th percentile as
            Smilkov et al. show them, "minmax" for CAMs and perturbation methods), "minmax", "abs",
            "percentile" or "signed".
        num_threads: CPU threads for torch while explaining (None: torch's default); the previous count is
            restored afterwards.
        output: what the model returns (:data:`~saliencekit.methods.outputs.OUTPUTS`; None: ``"auto"``, a final
            Sigmoid/Softmax module detected and bypassed).
        threshold: probability at or above which a label is positive (multi-label models; None: 0.5).

    Returns:
        One :class:`ExplainedImage` per file.

    Raises:
        InputError: ``target`` together with ``top_k``, ``top_k`` out of range, an unknown class, class names that
            do not match the model's outputs, or the model failing on the images (the message names the input
            shape and the channel count / image size the model runs on).
    """
    from saliencekit._model_input import run_model
    from saliencekit.methods.explain_many import build_methods, explain
    from saliencekit.methods.normalize import display_normalization
    from saliencekit.methods.outputs import check_output_option, model_outputs
    from saliencekit.methods.specs import engine_specs, parse_methods
    from saliencekit.viz.overlay import comparison_figure, overlay, save_maps_npz

    check_threads(num_threads)
    check_output_option(output or "auto", 0.5 if threshold is None else threshold)
    if target is not None and top_k is not None:
        raise InputError("give a target or top_k, not both: --target names the classes to explain, --top-k explains "
                         "the K most probable ones")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or not 1 <= top_k <= MAX_TARGETS):
        raise InputError(f"top_k must be an int from 1 to {MAX_TARGETS} (one row of maps per class and image), got "
                         f"{top_k!r}; to explain other classes name them with --target A,B")
    wanted = _target_list(target)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    files = find_images(images)
    out = Path(out)
    model = model.to(device)
    specs = parse_methods(methods, validate=False)  # build_methods names an unknown method or option
    common = {k: v for k, v in (("batch_size", batch_size), ("precision", precision)) if v is not None}
    built = build_methods(model, specs, layer=layer, output=output, threshold=threshold, **common)
    if is_torchscript(model):
        bad = [label for label, m in built.items() if not _works_on_torchscript(m)]
        if bad:
            raise InputError(f"method(s) {bad} need layer hooks or ReLU rules, which TorchScript models do not "
                             f"support; on TorchScript use {', '.join(torchscript_methods())}, or load the model "
                             "as an nn.Module (a run directory, torch.save(model), a .pt2, or weights with --arch)")
    labels = list(built)
    norms = {label: display_normalization(m, normalization) for label, m in built.items()}
    folders = _image_folders(files)
    results: list[ExplainedImage] = []
    rule = None
    with torch_threads(num_threads):
        bar = tqdm(total=len(files), desc="explaining", disable=not progress)
        for start in range(0, len(files), images_per_batch):
            chunk = files[start:start + images_per_batch]
            loaded = [preprocessing.load_with_note(f) for f in chunk]
            x = torch.stack([t for t, _ in loaded]).to(device)
            output_rows, rule = run_model(lambda x=x: model_outputs(model, x, output=output, threshold=threshold),
                                          model, x[:1])
            k = rule.num_classes(output_rows)
            names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(k)]
            if len(names) != k:
                kind = "labels" if rule.multilabel else "classes"
                raise InputError(f"{len(names)} class names ({_shorten(names)}) for a model with {k} {kind}")
            if top_k is not None and top_k > k:
                raise InputError(f"top_k={top_k} but the model has {k} {'labels' if rule.multilabel else 'classes'}")
            probs = rule.probabilities(output_rows)
            positives = rule.positives(output_rows).cpu()
            truncated = [0] * len(chunk)
            if wanted is not None:
                fixed = [_class_index(t, names) for t in wanted]
                per_image = [list(fixed) for _ in chunk]
            elif top_k is not None:
                per_image = rule.ranked(output_rows, top_k).cpu().tolist()
            else:
                per_image, counts = rule.default_targets(output_rows, MAX_TARGETS)
                truncated = [max(0, c - MAX_TARGETS) for c in counts]
            # File and npz names carry the class whenever an image may get several rows (the same names for every
            # image of the call, whatever its number of positive labels).
            several = (top_k or 1) > 1 or len(wanted or []) > 1 or (rule.multilabel and wanted is None and not top_k)
            # Every (image, class) pair is one row of the batch given to the methods, images_per_batch rows a call.
            pairs = [(i, c) for i, t in enumerate(per_image) for c in t]
            found: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
            for lo in range(0, len(pairs), images_per_batch):
                part = pairs[lo:lo + images_per_batch]
                res_p = explain(model, x[[i for i, _ in part]], engine_specs(specs), target=[c for _, c in part],
                                layer=layer, output=output, threshold=threshold, **common)
                for j, pair in enumerate(part):
                    found[pair] = {label: res_p[label].maps[j] for label in labels}
            for i, f in enumerate(chunk):
                folder = out / folders[f]
                p_i = probs[i]
                pred_text, title_pred = _prediction_text(rule.multilabel, names, p_i, positives[i], rule.threshold)
                pos_names = [names[c] for c in range(k) if positives[i, c]]
                res = ExplainedImage(f, folder, pred_text, {n: float(p_i[c]) for c, n in enumerate(names)},
                                     [names[c] for c in per_image[i]], note=loaded[i][1], positive=pos_names,
                                     truncated=truncated[i])
                true = f.parent.name if f.parent.name in names else None
                maps: dict[str, torch.Tensor] = {}
                fig_rows, row_titles = [], []
                for c in per_image[i]:
                    cname = names[c]
                    suffix = f"_{safe_filename(cname)}" if several else ""
                    row = {}
                    for label in labels:
                        m = found[(i, c)][label]
                        row[label] = m
                        maps[f"{label}/{cname}" if several else label] = m
                        caption = f"{label}: explaining {cname} (p={float(p_i[c]):.2f})\n{title_pred}"
                        fig = overlay(x[i], m, normalization=norms[label], title=caption).figure
                        res.files.append(save_figure(fig, folder / f"{safe_filename(label)}{suffix}.png"))
                    fig_rows.append(row)
                    note = "" if (not rule.multilabel or positives[i, c]) else f", below {rule.threshold:g}"
                    row_titles.append(f"explaining {cname} (p={float(p_i[c]):.2f}{note})")
                title = f"{f.name} | {title_pred}"
                if true is not None:
                    title += f" | true: {true}"
                fig = comparison_figure(x[i], fig_rows, title=title, row_titles=row_titles, normalization=norms)
                res.files.append(save_figure(fig, folder / "comparison.png"))
                res.files.append(save_maps_npz(folder / "maps.npz", maps))
                results.append(res)
                bar.update(1)
        bar.close()
        summary: dict[str, Any] = {
            "methods": {label: {"method": type(m).name, "params": m.params} for label, m in built.items()},
            "output": rule.describe() if rule is not None else None,
            "images": [],
        }
        for r in results:
            row = {"file": str(r.path), "folder": str(r.folder), "predicted": r.predicted,
                   "probabilities": r.probabilities, "explained_classes": r.classes,
                   "files": [str(p) for p in r.files], "preprocessing_note": r.note}
            if rule is not None and rule.multilabel:
                row["positive_labels"] = r.positive
                if r.truncated:
                    row["positive_not_explained"] = [c for c in r.positive if c not in r.classes]
            summary["images"].append(row)
        write_json(out / "summary.json", summary)
    if any(r.truncated for r in results):
        many = [r.path.name for r in results if r.truncated]
        warnings.warn(f"{len(many)} image(s) ({_shorten(many, 5)}) have more than {MAX_TARGETS} positive labels; "
                      f"the {MAX_TARGETS} most probable were explained (summary.json lists the others); raise the "
                      "threshold or name labels with --target", UserWarning, stacklevel=2)
    return results


def list_classes(
    model: nn.Module,
    preprocessing: Preprocessing,
    images: Sequence[str | os.PathLike[str]],
    class_names: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    output: str | None = None,
    threshold: float | None = None,
) -> list[str]:
    """The model's class (or label) names: ``class_names`` when given, else ``class_0``, ... counted on the first
    image (the number of classes is that of the model's outputs, read by its output rule).

    Raises:
        InputError: no names and no image to count the outputs on, or the model failing on the image.
    """
    from saliencekit._model_input import run_model
    from saliencekit.methods.outputs import model_outputs

    if class_names is not None:
        return list(class_names)
    if not images:
        raise InputError("give an image (the model's outputs are counted on it) or the names with --classes")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    x = preprocessing.load(find_images(images)[0])[None].to(device)
    model = model.to(device)
    out, rule = run_model(lambda: model_outputs(model, x, output=output, threshold=threshold), model, x)
    return [f"class_{i}" for i in range(rule.num_classes(out))]


def _target_list(target: int | str | Sequence[int | str] | None) -> list[int | str] | None:
    """``target`` as a list: one class, a comma-separated string of them, or a list."""
    if target is None:
        return None
    if isinstance(target, bool):
        raise InputError("target must be a class name or index, or a list of them; got a bool")
    if isinstance(target, int):
        return [target]
    if isinstance(target, str):
        items: list[int | str] = [t.strip() for t in target.split(",") if t.strip()]
    elif isinstance(target, Sequence):
        items = list(target)
    else:
        raise InputError(f"target must be a class name or index, or a list of them; got {target!r}")
    if not items:
        raise InputError("target is empty; give a class name or index")
    if len(items) > MAX_TARGETS:
        raise InputError(f"{len(items)} targets; at most {MAX_TARGETS} classes are explained per image")
    if len(set(map(str, items))) != len(items):
        raise InputError(f"target lists a class twice: {target!r}")
    return items


def _prediction_text(multilabel: bool, names: Sequence[str], probs: torch.Tensor, positive: torch.Tensor,
                     threshold: float) -> tuple[str, str]:
    """(``predicted`` for summary.json and the CLI, the figure title's prediction part)."""
    if not multilabel:
        pred = int(probs.argmax())
        return names[pred], f"predicted: {names[pred]} (p={float(probs[pred]):.2f})"
    order = [int(c) for c in probs.argsort(descending=True, stable=True) if positive[c]]
    if not order:
        top = int(probs.argmax())
        text = f"no label >= {threshold:g} (most probable: {names[top]}, p={float(probs[top]):.2f})"
        return text, text
    shown = ", ".join(f"{names[c]} ({float(probs[c]):.2f})" for c in order[:4])
    more = f" and {len(order) - 4} more" if len(order) > 4 else ""
    return ", ".join(names[c] for c in order), f"positive: {shown}{more}"


def _shorten(names: Sequence[str], limit: int = 20, noun: str = "in all", hint: str = "") -> str:
    """``a, b, c`` or, for lists longer than ``limit``, ``1000 <noun>, e.g. a, b, ...<hint>``."""
    names = [str(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return f"{len(names)} {noun}, e.g. {', '.join(names[:8])}, ...{hint}"


def _class_index(target: int | str, names: Sequence[str]) -> int:
    """The index of a class given by index or name; long name lists are shortened in the error."""
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        idx = int(target)
        if not 0 <= idx < len(names):
            raise InputError(f"target class {idx} is out of range; valid: 0..{len(names) - 1} "
                             f"({_class_list(names)})")
        return idx
    if target not in names:
        raise InputError(f"unknown target class {target!r}; valid: {_class_list(names)}, or an index")
    return list(names).index(target)


def _class_list(names: Sequence[str]) -> str:
    return _shorten(names, noun="classes", hint="; see --list-classes")


def _image_folders(files: Sequence[Path]) -> dict[Path, str]:
    """A folder name per image: its stem, with parent folders added while names collide."""
    names: dict[Path, str] = {}
    for depth in range(1, 64):
        candidates = {f: "__".join([*f.parts[-depth:-1], f.stem]) for f in files if f not in names}
        counts: dict[str, int] = {}
        for c in [*candidates.values(), *names.values()]:
            counts[c] = counts.get(c, 0) + 1
        names.update({f: c for f, c in candidates.items() if counts[c] == 1})
        if len(names) == len(files):
            break
    for i, f in enumerate(files):  # identical paths given twice
        names.setdefault(f, f"{f.stem}__{i}")
    safe = {f: safe_filename(n) for f, n in names.items()}
    taken = Counter(s.lower() for s in safe.values())  # case-insensitive file systems too
    # names that differ only in characters a file name cannot keep (e.g. two unicode stems) get their own hash
    return {f: s if taken[s.lower()] == 1 else safe_filename(f"{s}-{name_hash(names[f])}") for f, s in safe.items()}
