"""`saliencekit report`: write the self-contained HTML trust report of a run directory, or of the checks of a model
file."""

from __future__ import annotations

import argparse
import shlex

from saliencekit.cli._settings import add_settings_options, settings_options


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` command to ``subparsers``."""
    from saliencekit.viz.report.settings import ReportSettings

    p = subparsers.add_parser(
        "report",
        description=(
            "Write one self-contained HTML page (images embedded, no network, no JavaScript) that shows the data, "
            "training, test performance, saliency maps of chosen test images, the trust checks, a verdict table "
            "(which maps to trust) and everything needed to reproduce them. Missing inputs (e.g. no checks yet) "
            "leave a note in their section. Give a run directory, or the checks folder that `saliencekit check "
            "--model-file MODEL DATA --out DIR` wrote: the report then reopens the model file and data folder it "
            "records (training and test performance are not available for a model file)."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR | CHECKS",
                   help="run directory written by `saliencekit train`, or a folder (or checks.json) written by "
                        "`saliencekit check` (a model file's checks)")
    p.add_argument("--out", metavar="HTML", default=None,
                   help="report file to write (default: RUN_DIR/report.html, or report.html in the checks folder)")
    p.add_argument(
        "--checks", metavar="DIR", default=None,
        help="folder (or checks.json) written by `saliencekit check` (default: RUN_DIR/checks if it exists)",
    )
    add_settings_options(p, ReportSettings)
    p.add_argument("--data", metavar="DIR", default=None,
                   help="the data folder, if it moved since training (or since the checks of a model file)")
    p.add_argument("--model-file", metavar="PATH", default=None,
                   help="a model file's checks: the model file, if it moved since the checks")
    p.add_argument("--audit", metavar="DIR", default=None,
                   help="a `saliencekit audit` folder to link to (default: RUN_DIR/audit or an audit folder beside "
                        "RUN_DIR); linked only when it audited this model's weights")
    p.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    words = ["saliencekit", "report", args.run_dir]
    for flag, value in (("--out", args.out), ("--checks", args.checks), ("--data", args.data),
                        ("--model-file", args.model_file), ("--audit", args.audit)):
        if value is not None:
            words += [flag, str(value)]
    if args.methods:
        words += ["--methods", args.methods]
    words += ["--images", str(args.images)]
    if args.device != "cpu":
        words += ["--device", args.device]
    if args.seed:
        words += ["--seed", str(args.seed)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    """Build the report and print where it is."""
    from saliencekit.viz.report import ReportSettings, build_report

    settings = ReportSettings(**settings_options(args, ReportSettings))
    path = build_report(args.run_dir, args.out, checks=args.checks, settings=settings, data=args.data,
                        model_file=args.model_file, audit=args.audit, progress=not args.no_progress,
                        command=_command(args))
    print(f"report written to {path}")
    return 0
