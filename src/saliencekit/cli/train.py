"""`saliencekit train`, `saliencekit evaluate` and `saliencekit models`."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from typing import Any

from saliencekit.cli._labels import add_label_arguments, label_spec
from saliencekit.cli._preprocessing import add_preprocessing_arguments, preprocessing_options
from saliencekit.cli._types import positive_float, positive_int, seed


def standard_augmentation() -> Callable[[Any], Any]:
    """The library's standard augmentation (rotation, shift, zoom, horizontal flip), imported lazily."""
    from saliencekit.data.augment import Augmentation

    return Augmentation.standard()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate`` and ``models`` to ``subparsers``."""
    p = subparsers.add_parser(
        "train",
        description="Train a classifier on DATA (one sub-folder of images per class, e.g. DATA/effusion/*.png and "
        "DATA/normal/*.png, or the images listed in a label CSV with --labels: one finding against the rest, one "
        "label per image, or multi-label) and write a run directory: checkpoint.pt (best epoch by validation "
        "loss), config.json, split.json, history.json, curves.png, and the test-split metrics.json, confusion.png "
        "(not for multi-label), roc.png. Images: PNG, JPEG, BMP, TIFF (8/16-bit, float) and DICOM (.dcm, "
        "pip install saliencekit[dicom]).",
    )
    p.add_argument("data", metavar="DATA", help="folder with one sub-folder of images per class (with --labels: "
                   "the folder the CSV's images are in)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory to write (created if missing)")
    p.add_argument("--model", default="effusion_cnn", metavar="NAME",
                   help="architecture from `saliencekit models` (default: effusion_cnn, the lesson's CNN)")
    p.add_argument("--epochs", type=positive_int, default=10, help="passes over the training images (default: 10)")
    p.add_argument("--image-size", type=positive_int, default=256, metavar="PIXELS",
                   help="images are fitted to PIXELS x PIXELS by --resize (default: 256)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per optimiser step (default: 32)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default: 0.001)")
    p.add_argument("--seed", type=seed, default=42,
                   help="seed of the split, weight initialisation, batch order and dropout (default: 42)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--augment", action="store_true",
                   help="augment training images (random rotation, shift, zoom, horizontal flip); off by default")
    p.add_argument("--patience", type=positive_int, default=None, metavar="N",
                   help="stop early after N epochs without a lower validation loss (default: train all epochs)")
    p.add_argument("--color", action="store_true", help="keep RGB colour (3 input channels) instead of greyscale")
    add_preprocessing_arguments(p)
    p.add_argument("--classes", default=None, metavar="A,B",
                   help="class folders in label order, comma-separated (default: sorted folder names, with a "
                   "'normal' folder first for two classes so that the single logit scores the finding); with "
                   "--labels: the classes in label order (rows of other classes left out), or with --multilabel "
                   "the findings to learn (others ignored)")
    add_label_arguments(p)
    p.add_argument("--test-fraction", type=float, default=0.15,
                   help="fraction of each class for testing (default: 0.15)")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="fraction of the rest of each class for validation (default: 0.15)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: all)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning instead of stopping")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines; print only the result")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "evaluate",
        description="Evaluate a run directory on its test split (or on every image of another folder with --data), "
        "print the table and save metrics.json, confusion.png and roc.png in the run directory "
        "(metrics_<folder>.json, confusion_<folder>.png, roc_<folder>.png for --data).",
    )
    p.add_argument("run", metavar="RUN", help="run directory written by `saliencekit train`")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="evaluate on all images of DIR (same class sub-folders) instead of the test split")
    p.add_argument("--labels", default=None, metavar="CSV",
                   help="with --data, for a run trained with --labels: the label CSV of DIR's images (default: the "
                   "run's CSV)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser(
        "models",
        description="List the registered model names (usable with `train --model` and `explain --arch`), the other "
                    "architecture names `--arch` takes, and the model file formats `explain --model-file` loads.")
    p.set_defaults(func=cmd_models)


def cmd_train(args: argparse.Namespace) -> int:
    from saliencekit.train.evaluate import format_metrics
    from saliencekit.train.fit import TrainConfig, train

    labels = _label_spec(args)
    config = TrainConfig(
        model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
        grayscale=not args.color, **preprocessing_options(args), seed=args.seed, device=args.device,
        augment=standard_augmentation() if args.augment else None, patience=args.patience,
        test_fraction=args.test_fraction, val_fraction=args.val_fraction, skip_bad=args.skip_bad,
        num_threads=args.threads, labels=labels,
        classes=None if labels is not None else [c.strip() for c in args.classes.split(",")] if args.classes else None,
    )
    command = shlex.join(["saliencekit", *sys.argv[1:]])
    run = train(args.data, args.out, config, progress=not args.quiet, command=command)
    if labels is not None:
        print(f"labels from {labels.csv}: {run.config['labels']['summary']}")
    hist = run.history or {}
    print(f"best epoch {hist.get('best_epoch')} of {len(hist.get('epochs', []))} "
          f"(validation loss {hist.get('best_val_loss', float('nan')):.4f}); run directory: {run.path}")
    print(format_metrics(run.metrics or {}))
    return 0


def _label_spec(args: argparse.Namespace) -> Any:  # a LabelSpec, or None without --labels
    return label_spec(args, [c.strip() for c in args.classes.split(",")] if args.classes else None)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from saliencekit.device import resolve_device
    from saliencekit.run import load_run
    from saliencekit.train.evaluate import evaluate, format_metrics

    run = load_run(args.run, device=resolve_device(args.device))
    metrics = evaluate(run, data=args.data, progress=not args.quiet, labels=args.labels)
    print(format_metrics(metrics))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from saliencekit.models import describe, list_formats, list_models
    from saliencekit.models.zoo import timm_available

    for name in list_models():
        print(f"{name:<20} {describe(name)}")
    timm_note = "timm:NAME (timm is installed)" if timm_available() else "timm:NAME (pip install saliencekit[timm])"
    print(f"{'(others)':<20} with --arch: any torchvision classification model name, or {timm_note}")
    print("\nmodel files (explain --model-file):")
    for fmt in list_formats():
        extra = f" (pip install saliencekit[{fmt.extra}])" if fmt.extra else ""
        print(f"  {fmt.name:<12} {fmt.description}{extra}")
    return 0
