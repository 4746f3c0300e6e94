"""``saliencekit data``: make the synthetic chest X-ray dataset (``synth``), write the real digits (``digits``) and look
at a dataset (``show``)."""

from __future__ import annotations

import argparse

from saliencekit.cli._types import seed


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data synth`` and ``data show``."""
    data = subparsers.add_parser(
        "data",
        description="Make the synthetic chest X-ray dataset (synth), or draw random samples of a dataset (show).",
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    synth = sub.add_parser(
        "synth",
        help="write synthetic chest X-rays (effusion vs normal) with lesion, lung and shortcut masks",
        description=(
            "Write synthetic frontal chest X-rays of two classes to OUT: OUT/effusion/*.png, OUT/normal/*.png, "
            "lesion masks in OUT/masks/<class>/, lung masks in OUT/lung_masks/<class>/, shortcut masks in "
            "OUT/shortcut_masks/<class>/ (with --shortcut) and OUT/dataset.json (parameters and per-image "
            "metadata). The same arguments give the same bytes."
        ),
    )
    synth.add_argument("out", metavar="OUT", help="output folder (new or empty; see --overwrite)")
    synth.add_argument("--per-class", type=int, default=350, metavar="N", help="images per class (default 350)")
    synth.add_argument(
        "--size", type=int, default=512, metavar="PX", help="image width and height, >= 64 (default 512)"
    )
    synth.add_argument("--seed", type=seed, default=0, help="random seed; same seed, same bytes (default 0)")
    synth.add_argument(
        "--shortcut",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction (0-1) of --shortcut-class images that get a burned-in marker (a bright letter 'L' "
        "in the top-right corner), a spurious cue the other class never has (default 0: no marker)",
    )
    synth.add_argument(
        "--shortcut-class",
        default="effusion",
        metavar="CLASS",
        help="the class that carries the marker: effusion or normal (default effusion)",
    )
    synth.add_argument(
        "--overwrite", action="store_true", help="replace a synthetic dataset already in OUT (never other files)"
    )
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_synth)

    digits = sub.add_parser(
        "digits",
        help="write scikit-learn's handwritten digits (real 8x8 images, no download) as a class-folder dataset",
        description="Write the 1797 handwritten digits that ship with scikit-learn (UCI ML digits, 8x8 pixels, "
        "16 grey levels) as OUT/<digit>/<index>.png and OUT/dataset.json: real images for `saliencekit train` "
        "(use --image-size, e.g. 64) and `saliencekit check` without any download. Needs scikit-learn "
        "(pip install saliencekit[digits]).",
    )
    digits.add_argument("out", metavar="OUT", help="output folder (new or empty; see --overwrite)")
    digits.add_argument("--classes", default=None, metavar="D1,D2,...",
                        help="digits to keep, comma-separated (default: all ten)")
    digits.add_argument("--per-class", type=int, default=None, metavar="N",
                        help="keep the first N images of each digit (default: all, about 180)")
    digits.add_argument("--overwrite", action="store_true",
                        help="replace a digits dataset already in OUT (never other files)")
    digits.set_defaults(func=_digits)

    show = sub.add_parser(
        "show",
        help="draw random samples of each class (with masks, or augmented) to an image file",
        description="Draw random images of each class of a dataset folder in a grid, one row per class.",
    )
    show.add_argument("dir", metavar="DIR", help="dataset folder with one sub-folder of images per class")
    show.add_argument("--out", required=True, metavar="FIG", help="figure file to write (.png, .pdf, .svg)")
    show.add_argument("--per-class", type=int, default=4, metavar="N", help="images per class (default 4)")
    show.add_argument(
        "--masks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="outline the lesion (red) and shortcut (yellow) masks when the folder has them (default: on)",
    )
    show.add_argument("--lung", action="store_true", help="also outline the lung masks (green)")
    show.add_argument(
        "--augment",
        action="store_true",
        help="show augmented versions (the standard augmentation: rotation 10 deg, shift 0.1, zoom 0.1, hflip)",
    )
    show.add_argument("--seed", type=seed, default=0, help="chooses the samples and augmentations (default 0)")
    show.add_argument(
        "--image-size", type=int, default=256, metavar="PX", help="size the images are shown at (default 256)"
    )
    show.set_defaults(func=_show)


def _synth(args: argparse.Namespace) -> int:
    from saliencekit.data.synthetic import generate

    summary = generate(
        args.out,
        per_class=args.per_class,
        size=args.size,
        seed=args.seed,
        shortcut=args.shortcut,
        shortcut_class=args.shortcut_class,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(summary)
    return 0


def _digits(args: argparse.Namespace) -> int:
    from saliencekit.data.digits import write_digits
    from saliencekit.errors import DataError

    classes = None
    if args.classes:
        try:
            classes = [int(c) for c in args.classes.split(",") if c.strip()]
        except ValueError as exc:
            raise DataError(f"--classes must be digits 0-9 separated by commas, got {args.classes!r}") from exc
    print(write_digits(args.out, classes=classes, per_class=args.per_class, overwrite=args.overwrite))
    return 0


def _show(args: argparse.Namespace) -> int:
    from saliencekit._atomic import save_figure
    from saliencekit.data.augment import Augmentation
    from saliencekit.data.preprocess import Preprocessing
    from saliencekit.viz.samples import plot_samples

    kinds = ("lesion", "shortcut", "lung") if args.lung else ("lesion", "shortcut")
    fig = plot_samples(
        args.dir,
        per_class=args.per_class,
        masks=args.masks,
        augment=Augmentation.standard() if args.augment else None,
        seed=args.seed,
        preprocessing=Preprocessing(size=(args.image_size, args.image_size), standardize="none"),
        mask_kinds=kinds,
    )
    path = save_figure(fig, args.out)
    print(f"wrote {path}")
    return 0
