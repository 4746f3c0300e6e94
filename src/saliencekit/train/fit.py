"""Training: the lesson's recipe (Adam, binary cross-entropy on the logit, best epoch by validation loss).

All images are preprocessed once into memory, batches are cut from that tensor in the main
process (no DataLoader workers), and the run directory is written atomically at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from saliencekit import _atomic
from saliencekit._threads import torch_threads
from saliencekit._versions import library_versions
from saliencekit.data.folder import FolderIndex, default_class_order, scan_folder
from saliencekit.data.labels import LabelSpec, read_labels
from saliencekit.data.preprocess import Preprocessing
from saliencekit.data.split import Split, save_split, stratified_split
from saliencekit.device import resolve_device
from saliencekit.errors import DataError, InputError
from saliencekit.limits import MIN_IMAGES_PER_CLASS

if TYPE_CHECKING:
    from saliencekit.run import Run

MULTILABEL_THRESHOLD = 0.5  # a multi-label model predicts a label when its sigmoid reaches this


@dataclass
class TrainConfig:
    """Training settings (the defaults are the lesson's).

    Args:
        model: registry name (see ``saliencekit.models.list_models()``).
        epochs: number of passes over the training images.
        batch_size: images per optimiser step.
        lr: Adam learning rate.
        image_size: side of the square model input (images are fitted to it by ``resize``).
        grayscale: one input channel (``False``: RGB, 3 channels).
        resize: aspect policy, ``"pad"`` (default), ``"crop"`` or ``"stretch"`` (see
            :class:`~saliencekit.data.Preprocessing`).
        normalize: ``"per-image"`` (the lesson's, default), ``"unit"``, ``"imagenet"`` or ``"custom"`` (with
            ``mean`` and ``std``; the default when they are given).
        mean: per-channel means for ``"custom"`` (one value or one per channel).
        std: per-channel standard deviations for ``"custom"``.
        bit_depth: the real bit depth of 16-bit files holding unscaled 12-bit (etc.) data; None: 16.
        seed: seeds the split, the weight initialisation, the batch order, dropout and augmentation.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        augment: callable applied to each training image tensor (C, H, W) -> (C, H, W), or None (off).
        patience: stop after this many epochs without a better validation loss (None: never).
        test_fraction: fraction of each class held out for the test split.
        val_fraction: fraction of the remaining images of each class used for validation.
        skip_bad: skip unreadable images with a warning instead of stopping.
        num_threads: CPU threads for torch (None: torch's default).
        classes: class names in label order (default: folder names sorted, except that with two
            classes a "normal"-like folder becomes class 0, the negative class).
        labels: take the images and labels from a CSV (:class:`~saliencekit.data.labels.LabelSpec`: one label,
            one finding against the rest, or multi-label) instead of class sub-folders; ``classes`` then is unused.
        model_kwargs: extra arguments of the model factory.

    >>> cfg = TrainConfig(epochs=2, image_size=64)
    >>> cfg.model, cfg.batch_size
    ('effusion_cnn', 32)
    """

    model: str = "effusion_cnn"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    image_size: int = 256
    grayscale: bool = True
    resize: str = "pad"
    normalize: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bit_depth: int | None = None
    seed: int = 42
    device: str = "auto"
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    patience: int | None = None
    test_fraction: float = 0.15
    val_fraction: float = 0.15
    skip_bad: bool = False
    num_threads: int | None = None
    classes: list[str] | None = None
    labels: LabelSpec | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "image_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.image_size < 8:
            raise InputError(f"image_size must be >= 8, got {self.image_size}")
        if not 0 < self.lr < float("inf"):
            raise InputError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("test_fraction", "val_fraction"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value < 1:
                raise InputError(f"{name} must be a fraction from 0 to below 1, got {value!r}")
        if self.patience is not None and self.patience < 1:
            raise InputError(f"patience must be >= 1 (or None to never stop early), got {self.patience}")
        self.preprocessing()  # validates resize, normalize, mean, std and bit_depth now, naming the bad one

    def preprocessing(self) -> Preprocessing:
        """The preprocessing these settings describe (stored in the checkpoint)."""
        return Preprocessing(grayscale=self.grayscale, size=(self.image_size, self.image_size),
                             normalize=self.normalize, resize=self.resize, mean=self.mean, std=self.std,
                             bit_depth=self.bit_depth)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for ``config.json`` (the augmentation by its ``to_dict()``, else its repr)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        aug = self.augment
        d["augment"] = None if aug is None else aug.to_dict() if hasattr(aug, "to_dict") else repr(aug)
        d["classes"] = None if self.classes is None else list(self.classes)
        d["labels"] = None if self.labels is None else self.labels.to_dict()
        d["model_kwargs"] = dict(self.model_kwargs)
        d["mean"] = None if self.mean is None else list(self.mean)
        d["std"] = None if self.std is None else list(self.std)
        return d


def load_images(
    index: FolderIndex, preprocessing: Preprocessing, skip_bad: bool = False, progress: bool = True
) -> tuple[FolderIndex, torch.Tensor]:
    """Preprocess every image of ``index`` once (a few decoding threads).

    Returns:
        The index (without unreadable files when ``skip_bad``) and the images as one (N, C, H, W) tensor.

    Raises:
        DataError: an image is unreadable (naming it) and ``skip_bad`` is off, or a class lost all its images.
    """

    def load(path: Path) -> torch.Tensor | DataError:
        try:
            return preprocessing.load(path)
        except DataError as exc:
            return exc

    paths = [s.path for s in index.samples]
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(paths)))) as pool:
        results = list(tqdm(pool.map(load, paths), total=len(paths), desc="loading images", disable=not progress,
                            leave=False))
    bad = {p for p, r in zip(paths, results) if isinstance(r, DataError)}
    for r in results:
        if isinstance(r, DataError):
            if not skip_bad:
                raise r
            warnings.warn(f"skipping unreadable image: {r}", stacklevel=2)
    kept = index.without(bad)
    empty = [c for c in kept.classes if not any(s.class_name == c for s in kept.samples)]
    if empty:
        raise DataError(f"after skipping unreadable images, class(es) {empty} in {index.root} have no images left")
    images = [r for r in results if isinstance(r, torch.Tensor)]
    return kept, torch.stack(images)


def loss_function(num_classes: int, multilabel: bool = False) -> nn.Module:
    """The training loss: binary cross-entropy on the single logit for two classes and on each logit of a
    multi-label model, else cross-entropy."""
    return nn.BCEWithLogitsLoss() if num_classes == 2 or multilabel else nn.CrossEntropyLoss()


def _loss_and_correct(logits: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module) -> tuple[torch.Tensor, float]:
    """The loss and the number of correct images; multi-label (``y`` of 0/1 rows): each image counts the share
    of its labels decided correctly (logit > 0 for a positive)."""
    if y.ndim == 2:
        return loss_fn(logits, y), float(((logits > 0) == (y > 0.5)).float().mean(1).sum())
    if logits.shape[1] == 1:
        z = logits[:, 0]
        return loss_fn(z, y.float()), int(((z > 0).long() == y).sum())
    return loss_fn(logits, y), int((logits.argmax(1) == y).sum())


@torch.inference_mode()
def evaluate_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, batch_size: int,
                  device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` (switched to eval mode) on the images ``x`` with labels ``y``."""
    model.eval()
    total, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        loss, c = _loss_and_correct(model(xb), yb, loss_fn)
        total += float(loss) * len(xb)
        correct += c
    n = max(len(x), 1)
    return total / n, correct / n


def fit_model(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    num_classes: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` in place and load its best-epoch weights at the end.

    The best epoch is the one with the lowest validation loss (the training loss when there are no
    validation images). Returns the history: ``{"epochs": [...], "best_epoch", "best_val_loss", "stopped_early"}``.
    """
    loss_fn = loss_function(num_classes, multilabel=train_y.ndim == 2)
    # channels_last roughly halves the time of the small convolutions on CPU (oneDNN); same results
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model.to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    n, bs = len(train_x), config.batch_size
    n_batches = math.ceil(n / bs)
    rows: list[dict[str, Any]] = []
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    stale, stopped_early = 0, False
    bar = tqdm(total=config.epochs * n_batches, desc="training", unit="batch", disable=not progress)
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            total, correct, seen = 0.0, 0, 0
            perm = torch.randperm(n, generator=gen)
            for b in range(n_batches):
                idx = perm[b * bs : (b + 1) * bs]
                xb = train_x[idx]
                if config.augment is not None:
                    xb = torch.stack([config.augment(x) for x in xb])
                xb = xb.to(device, non_blocking=True).contiguous(memory_format=fmt)
                yb = train_y[idx].to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss, c = _loss_and_correct(model(xb), yb, loss_fn)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                correct += c
                seen += len(idx)
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch}/{config.epochs}", loss=f"{total / seen:.3f}",
                                acc=f"{correct / seen:.3f}", refresh=False)
            train_loss, train_acc = total / max(seen, 1), correct / max(seen, 1)
            if len(val_x):
                val_loss, val_acc = evaluate_loss(model, val_x, val_y, loss_fn, max(bs, 64), device)
            else:
                val_loss, val_acc = math.nan, math.nan
            rows.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                         "val_acc": val_acc, "seconds": round(time.perf_counter() - t0, 3)})
            score = val_loss if len(val_x) else train_loss
            if score < best_loss:
                best_loss, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            bar.set_postfix(epoch=f"{epoch}/{config.epochs}", loss=f"{train_loss:.3f}", acc=f"{train_acc:.3f}",
                            val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.3f}")
            if progress:
                bar.write(f"epoch {epoch:>3}/{config.epochs}: loss {train_loss:.4f} acc {train_acc:.3f} | "
                          f"val loss {val_loss:.4f} val acc {val_acc:.3f}" + ("  *best" if best_epoch == epoch else ""))
            if config.patience is not None and stale >= config.patience:
                stopped_early = epoch < config.epochs
                break
    finally:
        bar.close()
    model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return {"epochs": rows, "best_epoch": best_epoch, "best_val_loss": best_loss,
            "monitor": "val_loss" if len(val_x) else "train_loss", "stopped_early": stopped_early}


def _check_class_sizes(index: FolderIndex, data_dir: Path, after_skipping: bool = False) -> None:
    """Refuse a class with fewer than :data:`~saliencekit.limits.MIN_IMAGES_PER_CLASS` images (multi-label data: a
    label with fewer positive images), naming it and its count."""
    targets = index.targets
    counts = targets.sum(0) if index.multilabel else np.bincount(targets, minlength=len(index.classes))
    few = {c: int(n) for c, n in zip(index.classes, counts) if n < MIN_IMAGES_PER_CLASS}
    if few:
        what = "positive images of label(s)" if index.multilabel else "images in class(es)"
        when = " after skipping unreadable images" if after_skipping else ""
        raise DataError(f"too few {what} {few} in {data_dir}{when}: each needs at least {MIN_IMAGES_PER_CLASS} "
                        "(one each for training, validation and testing; saliencekit.limits.MIN_IMAGES_PER_CLASS)")


def _check_input_size(model: nn.Module, x: torch.Tensor, config: TrainConfig) -> None:
    """One forward pass on one image before anything is written: a model that cannot take ``image_size`` (the
    lesson CNN's six poolings need 64 pixels) is refused with the model's reason."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"model {config.model!r} cannot take {config.image_size} x {config.image_size} images "
                         f"({first}); choose a larger --image-size (effusion_cnn needs at least 64)") from exc
    finally:
        model.train(was_training)


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    progress: bool = True,
    command: str | None = None,
) -> Run:
    """Train a classifier on a folder with one sub-folder per class and write a run directory.

    Steps: index and preprocess every image once, stratified split (saved), train with the
    best epoch by validation loss kept, write the checkpoint, history, curves and config, then
    evaluate on the test split (metrics.json, confusion.png, roc.png).

    Args:
        data_dir: the data folder (e.g. ``data/cxr`` with ``effusion/`` and ``normal/``).
        out_dir: the run directory to write (created; existing files are replaced).
        config: settings (default :class:`TrainConfig()`).
        progress: show progress bars and a line per epoch.
        command: the command line recorded in ``config.json`` (default: ``sys.argv``).

    Returns:
        The written run, opened with :func:`saliencekit.run.load_run`.

    Raises:
        DataError: missing or empty folder, a single class, an unreadable image (unless ``skip_bad``).
        UnknownNameError: unknown model name.

    >>> run = train("data/cxr", "runs/cxr", TrainConfig(epochs=10))  # doctest: +SKIP
    >>> run.metrics["accuracy"]  # doctest: +SKIP
    """
    from saliencekit import models
    from saliencekit.run import CHECKPOINT, CONFIG, CURVES, HISTORY, SPLIT, load_run
    from saliencekit.train.evaluate import evaluate
    from saliencekit.viz.training import plot_history

    config = config or TrainConfig()
    t_start = time.perf_counter()
    if config.model not in models.list_models():
        models.create(config.model)  # raises UnknownNameError listing the valid names (or builds a torchvision one)
    device = resolve_device(config.device)
    data_dir = Path(data_dir).expanduser()
    out_dir = Path(out_dir).expanduser()
    spec = None if config.labels is None else dataclasses.replace(config.labels,
                                                                  csv=str(Path(config.labels.csv).resolve()))
    if spec is not None:
        index: FolderIndex = read_labels(data_dir, spec)
        classes = list(index.classes)
    else:
        index = scan_folder(data_dir)
        classes = list(config.classes) if config.classes else default_class_order(index.classes)
        if classes != index.classes:
            index = scan_folder(data_dir, classes=classes)
    listed = index
    _check_class_sizes(index, data_dir)
    preprocessing = config.preprocessing()
    with torch_threads(config.num_threads or None):  # 0 / None: torch's default, as before
        index, images = load_images(index, preprocessing, skip_bad=config.skip_bad, progress=progress)
        _check_class_sizes(index, data_dir, after_skipping=True)
        multilabel = index.multilabel
        labels = torch.as_tensor(index.targets, dtype=torch.float32 if multilabel else torch.long)
        split: Split = stratified_split(index.strata(), config.test_fraction, config.val_fraction, config.seed,
                                        groups=index.groups)
        if multilabel:
            too_small = [c for k, c in enumerate(classes) if labels[split.train, k].sum() == 0]
            need = "label(s) {} have no positive image in the training split (need >= 3 positives each)"
        else:
            too_small = [c for k, c in enumerate(classes) if sum(labels[split.train] == k) == 0]
            need = "class(es) {} have too few images to train on (need >= 3 each)"
        if too_small:
            raise DataError(f"{need.format(too_small)} in {data_dir}")
        torch.manual_seed(config.seed)
        arch_kwargs = {"in_channels": preprocessing.in_channels, "num_classes": len(classes), **config.model_kwargs}
        if multilabel:  # one logit per label, whatever their number
            arch_kwargs["num_classes"] = max(2, len(classes))
            if models.output_units(arch_kwargs["num_classes"]) != len(classes):
                arch_kwargs["outputs"] = len(classes)
                if "outputs" not in inspect.signature(models.create).parameters:
                    raise InputError(f"multi-label training on exactly {len(classes)} labels needs models.create("
                                     "outputs=), which this installation lacks; learn 3 or more labels, or one "
                                     "finding against the rest (--finding NAME)")
        model = models.create(config.model, **arch_kwargs).to(device)
        _check_input_size(model, images[:1].to(device), config)
        _atomic.make_dirs(out_dir)
        save_split(out_dir / SPLIT, split, index.relpaths)
        tr, va = torch.tensor(split.train), torch.tensor(split.val, dtype=torch.long)
        t_fit = time.perf_counter()
        history = fit_model(model, images[tr], labels[tr], images[va], labels[va], config, device, len(classes),
                            progress=progress)
        fit_seconds = time.perf_counter() - t_fit

    history.update(fit_seconds=round(fit_seconds, 3), device=str(device))
    best = history["best_epoch"]
    models.save_checkpoint(
        out_dir / CHECKPOINT, model, config.model, arch_kwargs, preprocessing.to_dict(), classes,
        extra={"best_epoch": best, "best_val_loss": history["best_val_loss"], "epochs_run": len(history["epochs"]),
               **({"output": "multilabel", "threshold": MULTILABEL_THRESHOLD} if multilabel else {})},
    )
    _atomic.write_json(out_dir / HISTORY, history)
    _atomic.save_figure(plot_history(history, title=f"{config.model} on {data_dir.name}"), out_dir / CURVES)
    if multilabel:
        counts = {c: int(labels[:, k].sum()) for k, c in enumerate(classes)}
    else:
        counts = {c: int((labels == k).sum()) for k, c in enumerate(classes)}
    skipped = sorted(set(listed.relpaths) - set(index.relpaths))
    _atomic.write_json(out_dir / CONFIG, {
        "config": config.to_dict(),
        "data_root": str(data_dir.resolve()),
        "class_names": classes,
        "task": "multilabel" if multilabel else "single-label",
        "labels": None if spec is None else {**spec.to_dict(), "summary": index.summary(),
                                                       "excluded_rows": index.excluded,
                                                       "missing_rows": index.missing},
        "class_counts": counts,
        "split_sizes": {k: len(v) for k, v in split.parts().items()},
        "skipped_files": skipped,
        "seed": config.seed,
        "device": str(device),
        "num_threads": torch.get_num_threads() if config.num_threads is None else config.num_threads,
        "versions": library_versions(),
        "command": command if command is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "train_seconds": round(time.perf_counter() - t_start, 3),
    })
    run = load_run(out_dir, device=device, data=data_dir)
    run._index = index
    evaluate(run, progress=progress)
    return run
