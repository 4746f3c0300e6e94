"""The preprocessing flags shared by the commands that turn files into model inputs (train, explain)."""

from __future__ import annotations

import argparse
from typing import Any

from saliencekit.data.preprocess import NORMALIZATIONS, RESIZE_POLICIES


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one number or comma-separated numbers (one per channel), "
                                         f"got {text!r}") from None
    return values


_floats.__name__ = "numbers"


def add_preprocessing_arguments(parser: argparse.ArgumentParser, normalize_default: str | None = "per-image",
                                prefix: str = "") -> None:
    """Add ``--resize``, ``--normalize``, ``--mean``, ``--std`` and ``--bit-depth``.

    Args:
        parser: the command's parser.
        normalize_default: the default shown and used (None: the caller decides, e.g. from the model).
        prefix: text put before each help line (e.g. "with --model-file: ").
    """
    parser.add_argument(
        "--resize", choices=RESIZE_POLICIES, default="pad",
        help=prefix + "how an image whose aspect ratio differs from the model input's is fitted: pad (default: "
        "the whole image scaled to fit, centred on black), crop (scaled to cover, the centre kept) or stretch "
        "(each side scaled on its own, which distorts shapes; saliencekit 0.1's behaviour)")
    shown = normalize_default or "chosen for the model"
    parser.add_argument(
        "--normalize", choices=NORMALIZATIONS, default=normalize_default,
        help=prefix + f"intensity normalisation after scaling to [0, 1]: per-image (subtract each image's mean, "
        f"divide by its std: the lesson's), unit (keep [0, 1]), imagenet (ImageNet mean/std per channel, for "
        f"pretrained torchvision/timm weights), custom (--mean/--std). Default: {shown}")
    parser.add_argument("--mean", type=_floats, default=None, metavar="M[,M,M]",
                        help=prefix + "custom normalisation means, one value or one per channel (implies "
                        "--normalize custom; needs --std)")
    parser.add_argument("--std", type=_floats, default=None, metavar="S[,S,S]",
                        help=prefix + "custom normalisation standard deviations (> 0), one or one per channel")
    parser.add_argument("--bit-depth", type=int, default=None, metavar="BITS",
                        help=prefix + "real bit depth of 16-bit image files that hold unscaled data of fewer bits "
                        "(e.g. 12 for many radiograph exports); 16-bit files are otherwise scaled by 65535")


def preprocessing_options(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as keyword arguments of :class:`~saliencekit.data.Preprocessing` (and ``TrainConfig``)."""
    normalize = args.normalize
    if (args.mean is not None or args.std is not None) and normalize in (None, "per-image"):
        normalize = "custom"  # --mean/--std alone mean custom
    return {"resize": args.resize, "normalize": normalize, "mean": args.mean, "std": args.std,
            "bit_depth": args.bit_depth}
