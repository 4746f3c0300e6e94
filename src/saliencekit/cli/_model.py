"""The model flags every command that takes a model shares: ``--model-file`` and what bare weights need.

Only parsing lives here; :func:`saliencekit.models.load_model` does the loading.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from saliencekit.cli._preprocessing import add_preprocessing_arguments, preprocessing_options
from saliencekit.cli._types import positive_int
from saliencekit.errors import InputError

if TYPE_CHECKING:
    from saliencekit.data.preprocess import Preprocessing
    from saliencekit.models.io import LoadedModel

MODEL_FILE_HELP = (
    "a model file instead of a run directory, in any supported format: a saliencekit checkpoint.pt, a whole "
    "module (torch.save(model)), TorchScript, a torch.export .pt2, weights (a state_dict, a checkpoint dict, "
    ".safetensors) with --arch, .onnx (extra onnx), Keras .keras/.h5/.hdf5 (extra keras), or a run directory"
)

_PREPROCESSING_FLAGS = ("image_size", "color", "classes", "no_standardize", "resize", "normalize", "mean", "std",
                        "bit_depth")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--model-file``, ``--arch``, ``--num-classes``, ``--in-channels`` and the preprocessing flags."""
    g = p.add_argument_group("model file (instead of a run directory)")
    g.add_argument("--model-file", default=None, metavar="PATH", help=MODEL_FILE_HELP)
    g.add_argument("--arch", default=None, metavar="NAME",
                   help="architecture of bare weights (state_dict, checkpoint dict, safetensors): a name from "
                        "`saliencekit models`, any torchvision model name, or timm:NAME (extra timm)")
    g.add_argument("--num-classes", type=positive_int, default=None, metavar="N",
                   help="with --arch: number of classes (default: read from the weights' output layer; one output "
                        "unit = two classes, one sigmoid logit)")
    g.add_argument("--in-channels", type=positive_int, default=None, metavar="C",
                   help="with --arch: image channels (default: read from the weights' first convolution)")
    g.add_argument("--image-size", type=positive_int, default=None, metavar="PIXELS",
                   help="with --model-file: resize images to PIXELS x PIXELS (default: the size the file fixes, "
                        "else 256)")
    g.add_argument("--color", action="store_true",
                   help="with --model-file: keep RGB (default: what the file says, else RGB for a 3-channel model "
                        "and greyscale otherwise)")
    g.add_argument("--classes", default=None, metavar="A,B,...",
                   help="with --model-file: class names in label order (default: the file's, else class_0, ...)")
    g.add_argument("--no-standardize", action="store_true",
                   help="with --model-file: keep values in [0, 1] (the same as --normalize unit)")
    add_preprocessing_arguments(g, normalize_default=None,  # type: ignore[arg-type]
                                prefix="with --model-file: ")
    p.set_defaults(resize=None)  # None: not given (the file's or the default policy)


def load_model_from_args(args: argparse.Namespace, device: Any) -> LoadedModel:
    """Load ``args.model_file`` with ``--arch``/``--num-classes``/``--in-channels``."""
    from saliencekit.models.io import load_model

    if args.model_file is None:
        given = [f"--{k.replace('_', '-')}" for k in ("arch", "num_classes", "in_channels") if getattr(args, k)]
        if given:
            raise InputError(f"{', '.join(given)} describe(s) the weights of --model-file; give --model-file PATH")
        raise InputError("no model: give a run directory or --model-file PATH")
    return load_model(args.model_file, arch=args.arch, num_classes=args.num_classes, in_channels=args.in_channels,
                      device=device)


def preprocessing_from_args(args: argparse.Namespace, loaded: LoadedModel) -> Preprocessing:
    """The loaded model's preprocessing with the flags given on the command line applied over it (for a file that
    does not say: greyscale or RGB by the model's channels, its input size or 256, per-image standardisation, or
    ImageNet statistics for torchvision/timm architectures)."""
    options = preprocessing_options(args)
    if args.no_standardize:
        if options["normalize"] not in (None, "unit"):
            raise InputError(f"--no-standardize and --normalize {options['normalize']} disagree; give one of them")
        options["normalize"] = "unit"
    return loaded.preprocessing_or_default(size=args.image_size, grayscale=False if args.color else None, **options)


def class_names_from_args(args: argparse.Namespace, loaded: LoadedModel) -> list[str] | None:
    """``--classes`` if given, else the class names the file holds (None: unknown)."""
    if args.classes:
        return [c.strip() for c in args.classes.split(",")]
    return loaded.class_names


def reject_model_flags_without_model_file(args: argparse.Namespace) -> None:
    """Refuse model-file flags given with a run directory (the run fixes the model and its preprocessing)."""
    given = [f"--{k.replace('_', '-')}" for k in (*_PREPROCESSING_FLAGS, "arch", "num_classes", "in_channels")
             if getattr(args, k, None)]
    if given:
        raise InputError(f"{', '.join(given)} only apply with --model-file; a run directory fixes its model, "
                         "preprocessing and class names")
