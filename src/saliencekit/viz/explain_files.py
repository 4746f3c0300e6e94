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
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from saliencekit import _layout
from saliencekit._atomic import save_figure, write_json
from saliencekit._filenames import safe_filename
from saliencekit._threads import check_threads, torch_threads
from saliencekit.data.folder import IMAGE_EXTENSIONS
from saliencekit.data.preprocess import Preprocessing
from saliencekit.errors import DataError, InputError, RunDirError


@dataclass
class ExplainedImage:
    """What was written for one image."""

    path: Path
    folder: Path
    predicted: str
    probabilities: dict[str, float]
    classes: list[str]
    files: list[Path] = field(default_factory=list)
    note: str | None = None  # what fitting the image to the model input did beyond scaling (stretch, crop)


def load_model_file(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Load a TorchScript file (``torch.jit.save``) or a whole pickled module (``torch.save(model)``), in eval mode.

    Raises:
        RunDirError: the file is missing or holds neither.
    """
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"model file not found: {path}")
    try:
        if _is_torchscript_archive(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still loads
                model = torch.jit.load(str(path), map_location=device)
        else:
            model = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise RunDirError(f"cannot load {path} as a TorchScript file or a saved nn.Module: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise RunDirError(f"{path} holds a {type(model).__name__}, not a whole model; save it with torch.save(model) "
                          "or torch.jit.save(torch.jit.script(model)) (a state_dict needs the architecture: use a "
                          "run directory)")
    return model.eval()


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives hold compiled code (``*/code/...``) and ``constants.pkl``; ``torch.save`` files do not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


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
    target: int | str | None = None,
    layer: str | None = None,
    top_k: int = 1,
    batch_size: int | str = "auto",
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    images_per_batch: int = 8,
    progress: bool = True,
    normalization: str = "auto",
    num_threads: int | None = None,
) -> list[ExplainedImage]:
    """Explain image files with several methods and write overlays, comparison figures and raw maps.

    Args:
        model: the classifier (moved to ``device``; never modified otherwise).
        preprocessing: how files become model inputs.
        images: image files and/or folders (searched recursively).
        methods: method names, or ``label -> options`` (see :func:`saliencekit.explain`).
        out: output folder.
        class_names: class names in label order (default ``class_0``, ``class_1``, ...).
        target: class to explain (index or name); default the predicted class (and the next ones with ``top_k``).
        layer: layer for CAM methods (default: the last convolutional stage).
        top_k: explain the ``top_k`` most probable classes of each image, one row each.
        batch_size: passed to the methods ("auto" or an int).
        precision: "fp32", "bf16" or "fp16".
        device: "auto", "cpu", "cuda", ...
        images_per_batch: how many images are explained together.
        progress: show a progress bar.
        normalization: display normalisation of the pictures (the .npz keeps raw maps): "auto" (default:
            "percentile" for the gradient and backprop families, i.e. |a| clipped at its 99th percentile as
            Smilkov et al. show them, "minmax" for CAMs and perturbation methods), "minmax", "abs",
            "percentile" or "signed".
        num_threads: CPU threads for torch while explaining (None: torch's default); the previous count is
            restored afterwards.

    Returns:
        One :class:`ExplainedImage` per file.
    """
    from saliencekit.methods.explain_many import build_methods, explain
    from saliencekit.methods.normalize import display_normalization
    from saliencekit.methods.specs import engine_specs, parse_methods
    from saliencekit.methods.targets import class_probabilities, num_classes_of
    from saliencekit.viz.overlay import comparison_figure, overlay, save_maps_npz

    check_threads(num_threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    files = find_images(images)
    out = Path(out)
    model = model.to(device)
    specs = parse_methods(methods, validate=False)  # build_methods names an unknown method or option
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k must be a positive int, got {top_k!r}")
    common = {"batch_size": batch_size, "precision": precision}
    built = build_methods(model, specs, layer=layer, **common)  # validates names and options up front
    if is_torchscript(model):
        bad = [label for label, m in built.items() if not _works_on_torchscript(m)]
        if bad:
            raise InputError(f"method(s) {bad} need layer hooks or ReLU rules, which TorchScript models do not "
                             f"support; on TorchScript use {', '.join(torchscript_methods())}, or load the model "
                             "as an nn.Module (a run directory or torch.save(model))")
    labels = list(built)
    norms = {label: display_normalization(m, normalization) for label, m in built.items()}
    folders = _image_folders(files)
    results: list[ExplainedImage] = []
    with torch_threads(num_threads):
        bar = tqdm(total=len(files), desc="explaining", disable=not progress)
        for start in range(0, len(files), images_per_batch):
            chunk = files[start:start + images_per_batch]
            loaded = [preprocessing.load_with_note(f) for f in chunk]
            x = torch.stack([t for t, _ in loaded]).to(device)
            with torch.inference_mode():
                output = _layout.forward(model, x)
            output = output if output.ndim == 2 else output[:, None]
            k = num_classes_of(output)
            names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(k)]
            if len(names) != k:
                raise InputError(f"{len(names)} class names ({', '.join(names)}) for a model with {k} classes")
            all_classes = torch.arange(k, device=device)
            probs = torch.stack([class_probabilities(output, all_classes[c].expand(len(chunk))) for c in range(k)], 1)
            if target is not None:
                fixed = _class_index(target, names)
                ranked = [[fixed] * len(chunk)]
            else:
                order = probs.argsort(dim=1, descending=True).cpu()
                ranked = [order[:, r].tolist() for r in range(min(top_k, k))]
            rows: list[dict[str, Any]] = []
            for cls in ranked:
                rows.append(explain(model, x, engine_specs(specs), target=cls, layer=layer, **common))
            for i, f in enumerate(chunk):
                folder = out / folders[f]
                pred = int(probs[i].argmax())
                res = ExplainedImage(f, folder, names[pred], {n: float(probs[i, c]) for c, n in enumerate(names)},
                                     [names[r[i]] for r in ranked], note=loaded[i][1])
                true = f.parent.name if f.parent.name in names else None
                maps: dict[str, torch.Tensor] = {}
                fig_rows, row_titles = [], []
                for r, cls in enumerate(ranked):
                    cname = names[cls[i]]
                    suffix = f"_{safe_filename(cname)}" if len(ranked) > 1 else ""
                    row = {}
                    for label in labels:
                        m = rows[r][label].maps[i]
                        row[label] = m
                        maps[f"{label}/{cname}" if len(ranked) > 1 else label] = m
                        caption = (f"{label}: explaining {cname}\n"
                                   f"predicted {names[pred]} (p={float(probs[i, pred]):.2f})")
                        fig = overlay(x[i], m, normalization=norms[label], title=caption).figure
                        res.files.append(save_figure(fig, folder / f"{safe_filename(label)}{suffix}.png"))
                    fig_rows.append(row)
                    row_titles.append(f"explaining {cname} (p={float(probs[i, cls[i]]):.2f})")
                title = f"{f.name} | predicted: {names[pred]} (p={float(probs[i, pred]):.2f})"
                if true is not None:
                    title += f" | true: {true}"
                fig = comparison_figure(x[i], fig_rows, title=title, row_titles=row_titles, normalization=norms)
                res.files.append(save_figure(fig, folder / "comparison.png"))
                res.files.append(save_maps_npz(folder / "maps.npz", maps))
                results.append(res)
                bar.update(1)
        bar.close()
        write_json(out / "summary.json", {
            "methods": {label: {"method": type(m).name, "params": m.params} for label, m in built.items()},
            "images": [{"file": str(r.path), "folder": str(r.folder), "predicted": r.predicted,
                        "probabilities": r.probabilities, "explained_classes": r.classes,
                        "files": [str(p) for p in r.files], "preprocessing_note": r.note} for r in results],
        })
    return results


def _class_index(target: int | str, names: Sequence[str]) -> int:
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        idx = int(target)
        if not 0 <= idx < len(names):
            raise InputError(f"target class {idx} is out of range; valid: 0..{len(names) - 1} ({', '.join(names)})")
        return idx
    if target not in names:
        raise InputError(f"unknown target class {target!r}; valid: {', '.join(names)} or an index")
    return list(names).index(target)


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
    return {f: safe_filename(n) for f, n in names.items()}
