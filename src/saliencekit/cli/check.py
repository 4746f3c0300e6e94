"""``saliencekit check``: run the trust checks on a run directory, or on a model file and a data folder, and write
checks.json + figures."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from saliencekit.cli._labels import add_label_arguments, label_spec
from saliencekit.cli._model import (
    add_model_arguments,
    class_names_from_args,
    load_model_from_args,
    preprocessing_from_args,
    reject_model_flags_without_model_file,
)
from saliencekit.cli._settings import add_settings_options, settings_options
from saliencekit.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``check`` to ``subparsers``."""
    from saliencekit.methods.specs import DEFAULT_METHODS
    from saliencekit.trust.settings import CheckSettings

    p = subparsers.add_parser(
        "check",
        description="Run the trust checks on the test images of RUN_DIR (written by `saliencekit train`), or with "
        "--model-file MODEL on the images of DATA (class sub-folders with optional mask folders, or a label CSV with "
        "--labels; the model file in any format `saliencekit models` lists), and write OUT/checks.json and figures "
        "under OUT/ (layout: docs/checks_json.md); `saliencekit report OUT` then shows them. Checks: "
        "model_randomization (cascading and independent layer re-initialisation, Adebayo 2018), data_randomization "
        "(a copy trained on permuted "
        "labels), input_invariance (constant input shift with and without bias compensation, Kindermans 2017), "
        "agreement (between methods), faithfulness (deletion, insertion, ROAD), localization (against the "
        "dataset's masks; only when it has masks), complexity (sparseness, entropy, max-sensitivity).",
        epilog="examples: saliencekit check runs/cxr --methods gradient,gradcam,guided_backprop --out runs/cxr/checks "
        "--method-options ig_black=integrated_gradients:baseline=black "
        "--method-options ig_zero=integrated_gradients:baseline=zero; "
        "saliencekit check --model-file weights.safetensors --arch resnet18 --classes normal,effusion data/cxr "
        "--out checks_resnet",
    )
    p.add_argument("target", metavar="RUN_DIR | DATA", nargs="?",
                   help="run directory written by `saliencekit train`; with --model-file, the data folder to check "
                   "the model on")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for checks.json and the figures (created)")
    p.add_argument("--methods", default=None, metavar="M1,M2,...",
                   help="comma-separated registered method names (see `saliencekit methods`); default: those "
                   f"of {', '.join(DEFAULT_METHODS)} that are registered")
    p.add_argument("--method-options", action="append", default=[], metavar="LABEL=METHOD[:key=value,...]",
                   help="add a method under its own label with options, e.g. ig_white=integrated_gradients:"
                   "baseline=white,steps=32 (repeatable; lets one method appear several times; values are read as "
                   "numbers, true/false or none where they look like one, else as text)")
    add_settings_options(p, CheckSettings)
    p.add_argument("--data", default=None, metavar="DATA",
                   help="the data folder, when it moved since training (default: the one in config.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_arguments(p)
    add_label_arguments(p.add_argument_group("labels of DATA from a CSV (with --model-file)"),
                        prefix="with --model-file: ")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run ``saliencekit check`` with parsed arguments."""
    from saliencekit.device import resolve_device
    from saliencekit.methods.specs import command_line_methods
    from saliencekit.run import load_run
    from saliencekit.trust.runner import run_checks
    from saliencekit.trust.settings import CheckSettings

    settings = CheckSettings(methods=command_line_methods(args.methods, args.method_options),
                             **settings_options(args, CheckSettings))
    device = resolve_device(settings.device)
    if args.model_file:
        from saliencekit.model_data import open_model_data

        if args.data is not None:
            raise InputError("--data moves a run directory's data folder; with --model-file give the data folder as "
                             "the argument: saliencekit check --model-file MODEL DATA --out DIR")
        if args.target is None:
            raise InputError("give the data folder to check the model on: saliencekit check --model-file MODEL DATA "
                             "--out DIR")
        loaded = load_model_from_args(args, device)
        subject = open_model_data(loaded, args.target, labels=label_spec(args), classes=class_names_from_args(
            args, loaded) if args.classes else None, preprocessing=preprocessing_from_args(args, loaded),
            arch=args.arch, num_classes=args.num_classes, in_channels=args.in_channels)
        for note in subject.notes:
            print(f"note: {note}")
    else:
        reject_model_flags_without_model_file(args)
        given = [f"--{k.replace('_', '-')}" for k in ("labels", "image_column", "label_column", "finding", "vs",
                                                        "multilabel", "skip_missing") if getattr(args, k)]
        if given:
            raise InputError(f"{', '.join(given)} only apply with --model-file; a run directory knows its labels "
                             "(--data gives its data folder when it moved)")
        if args.target is None:
            raise InputError("give a run directory (or --model-file MODEL DATA): saliencekit check RUN_DIR --out DIR")
        subject = load_run(args.target, device=device, data=args.data)
    result = run_checks(subject, settings=settings, out_dir=args.out, progress=not args.quiet,
                        command=shlex.join(["saliencekit", *sys.argv[1:]]))
    print(f"wrote {Path(args.out) / 'checks.json'}")
    for line in result.overview():
        print(line)
    return 0
