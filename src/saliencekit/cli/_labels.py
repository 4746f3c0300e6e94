"""The label-CSV flags shared by the commands that read labelled images (train, check --model-file)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from saliencekit.errors import InputError

if TYPE_CHECKING:
    from saliencekit.data.labels import LabelSpec


def add_label_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """Add ``--labels`` and what it takes: ``--image-column``, ``--label-column``, ``--finding``, ``--vs``,
    ``--multilabel``, ``--skip-missing``.

    Args:
        p: the command's parser (or an argument group).
        prefix: text put before the help of ``--labels`` (e.g. "with --model-file: ").
    """
    p.add_argument("--labels", default=None, metavar="CSV",
                   help=prefix + "take the images and labels from a CSV instead of class sub-folders: one row per "
                   "image, an image file column (found under DATA, also in sub-folders) and a label column with "
                   "'|'-separated findings, as the NIH Data_Entry_2017.csv ('Image Index', 'Finding Labels', "
                   "'No Finding'; a 'Patient ID' column keeps each patient in one split part)")
    p.add_argument("--image-column", default=None, metavar="NAME",
                   help="with --labels: the image file column (default: 'Image Index', image, file, filename or path)")
    p.add_argument("--label-column", default=None, metavar="NAME",
                   help="with --labels: the label column (default: 'Finding Labels', label, labels, class, finding "
                   "or findings); any column works for one label per image, e.g. 'View Position'")
    p.add_argument("--finding", default=None, metavar="NAME",
                   help="with --labels: a binary task, images with finding NAME (class 1) against the rest")
    p.add_argument("--vs", default=None, metavar="NAME",
                   help="with --finding: class 0 is only the images labelled exactly NAME (e.g. 'No Finding'); "
                   "images with other findings are left out")
    p.add_argument("--multilabel", action="store_true",
                   help="with --labels: one sigmoid output per finding ('No Finding' = none), trained with binary "
                   "cross-entropy on each")
    p.add_argument("--skip-missing", action="store_true",
                   help="with --labels: leave out (and count) CSV rows whose image is not under DATA instead of "
                   "stopping at the first")


def label_spec(args: argparse.Namespace, classes: list[str] | None = None) -> LabelSpec | None:
    """The :class:`~saliencekit.data.labels.LabelSpec` of ``--labels`` (None without it; the other label flags
    without ``--labels`` are an error)."""
    csv_only = {"--image-column": args.image_column, "--label-column": args.label_column, "--finding": args.finding,
                "--vs": args.vs, "--multilabel": args.multilabel, "--skip-missing": args.skip_missing}
    if args.labels is None:
        given = [flag for flag, value in csv_only.items() if value]
        if given:
            raise InputError(f"{', '.join(given)} need(s) --labels CSV (labels from class sub-folders need none)")
        return None
    from saliencekit.data.labels import LabelSpec

    return LabelSpec(args.labels, image_column=args.image_column, label_column=args.label_column,
                     finding=args.finding, versus=args.vs, multilabel=args.multilabel, classes=classes,
                     skip_missing=args.skip_missing)


__all__ = ["add_label_arguments", "label_spec"]
