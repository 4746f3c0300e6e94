"""``saliencekit check``: run the trust checks on a run directory and write checks.json + figures."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from saliencekit.cli._settings import add_settings_options, settings_options


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``check`` to ``subparsers``."""
    from saliencekit.methods.specs import DEFAULT_METHODS
    from saliencekit.trust.settings import CheckSettings

    p = subparsers.add_parser(
        "check",
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
    add_settings_options(p, CheckSettings)
    p.add_argument("--data", default=None, metavar="DATA",
                   help="the data folder, when it moved since training (default: the one in config.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
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
    run = load_run(args.run_dir, device=resolve_device(settings.device), data=args.data)
    result = run_checks(run, settings=settings, out_dir=args.out, progress=not args.quiet,
                        command=shlex.join(["saliencekit", *sys.argv[1:]]))
    print(f"wrote {Path(args.out) / 'checks.json'}")
    for line in result.overview():
        print(line)
    return 0
