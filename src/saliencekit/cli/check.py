"""``saliencekit check``: run the trust checks on a run directory and write checks.json + figures."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from saliencekit.cli._types import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``check`` to ``subparsers``."""
    from saliencekit.methods.specs import DEFAULT_METHODS
    from saliencekit.trust.runner import CHECKS

    p = subparsers.add_parser(
        "check",
        help="check which saliency maps to trust (sanity checks, invariance, agreement, faithfulness, localisation)",
        description="Run the trust checks on the test images of RUN_DIR (written by `saliencekit train`) and write "
        "OUT/checks.json and figures under OUT/ (layout: docs/checks_json.md). Checks: model_randomization (cascading "
        "and independent layer re-initialisation, Adebayo 2018), data_randomization (a copy trained on permuted "
        "labels), input_invariance (constant input shift with and without bias compensation, Kindermans 2017), "
        "agreement (between methods), faithfulness (deletion, insertion, ROAD), localization (against the "
        "dataset's masks; only when it has masks), complexity (sparseness, entropy, max-sensitivity).",
        epilog="example: saliencekit check runs/cxr --methods gradient,gradcam,guided_backprop --out runs/cxr/checks "
        "--method-options ig_black=integrated_gradients:baseline=black "
        "--method-options ig_zero=integrated_gradients:baseline=zero",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `saliencekit train`")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for checks.json and the figures (created)")
    p.add_argument("--methods", default=None, metavar="M1,M2,...",
                   help="comma-separated registered method names (see `saliencekit methods`); default: those "
                   f"of {', '.join(DEFAULT_METHODS)} that are registered")
    p.add_argument("--method-options", action="append", default=[], metavar="LABEL=METHOD[:key=value,...]",
                   help="add a method under its own label with options, e.g. ig_white=integrated_gradients:"
                   "baseline=white,steps=32 (repeatable; lets one method appear several times; values are read as "
                   "numbers, true/false or none where they look like one, else as text)")
    p.add_argument("--checks", default=None, metavar="C1,C2,...",
                   help=f"comma-separated checks from {', '.join(CHECKS)}; default: every check that applies "
                   "(localization only when the data has masks)")
    p.add_argument("--images", type=positive_int, default=32, metavar="N",
                   help="number of test images, balanced over classes (default: 32)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the image choice, randomisation, null levels, bootstrap and noise (default: 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="layer of the CAM methods (default: the last convolutional stage)")
    p.add_argument("--shift", type=float, default=1.0,
                   help="constant added to the model input by the input-shift check (default: 1.0)")
    p.add_argument("--random-label-epochs", type=positive_int, default=40, metavar="E",
                   help="most epochs to fit the random-label model of data_randomization (default: 40)")
    p.add_argument("--random-label-images", type=positive_int, default=128, metavar="N",
                   help="training images the random-label model is fit on (default: 128)")
    p.add_argument("--data", default=None, metavar="DATA",
                   help="the data folder, when it moved since training (default: the one in config.json)")
    p.add_argument("--no-figures", action="store_true", help="write checks.json only")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run ``saliencekit check`` with parsed arguments."""
    from saliencekit.device import resolve_device
    from saliencekit.methods.specs import command_line_methods
    from saliencekit.run import load_run
    from saliencekit.trust.runner import CheckSettings, run_checks

    methods = command_line_methods(args.methods, args.method_options)
    checks = [c.strip() for c in args.checks.split(",") if c.strip()] if args.checks else None
    run = load_run(args.run_dir, device=resolve_device(args.device), data=args.data)
    settings = CheckSettings(shift=args.shift, random_label_epochs=args.random_label_epochs,
                             random_label_images=args.random_label_images)
    result = run_checks(run, methods=methods, checks=checks, out_dir=args.out, n_images=args.images, seed=args.seed,
                        layer=args.layer, settings=settings, figures=not args.no_figures, progress=not args.quiet,
                        command=shlex.join(["saliencekit", *sys.argv[1:]]), num_threads=args.threads)
    out = Path(args.out)
    print(f"wrote {out / 'checks.json'}")
    summary = result["summary"]
    for label, m in summary["methods"].items():
        flags = []
        for key in ("model_randomization", "data_randomization", "input_invariance"):
            if key in m and m[key] is not None:
                flags.append(f"{key}={'pass' if m[key] else 'FAIL'}" if key != "input_invariance"
                             else f"invariant={'yes' if m[key] else 'no'}")
        print(f"  {label:<24} {' '.join(flags)}")
    print(f"recommended: {', '.join(summary['recommended']) or '(none)'}")
    for name, reason in result["settings"]["skipped"].items():
        print(f"skipped {name}: {reason}")
    return 0
