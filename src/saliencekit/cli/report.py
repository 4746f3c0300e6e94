"""`saliencekit report`: write the self-contained HTML trust report of a run directory."""

from __future__ import annotations

import argparse
import shlex


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` command to ``subparsers``."""
    p = subparsers.add_parser(
        "report",
        help="write the HTML trust report of a run (one self-contained file)",
        description=(
            "Write one self-contained HTML page (images embedded, no network, no JavaScript) that shows the data, "
            "training, test performance, saliency maps of chosen test images, the trust checks, a verdict table "
            "(which maps to trust) and everything needed to reproduce them. Missing inputs (e.g. no checks yet) "
            "leave a note in their section."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `saliencekit train`")
    p.add_argument("--out", metavar="HTML", default=None, help="report file to write (default: RUN_DIR/report.html)")
    p.add_argument(
        "--checks", metavar="DIR", default=None,
        help="folder (or checks.json) written by `saliencekit check` (default: RUN_DIR/checks if it exists)",
    )
    p.add_argument(
        "--methods", metavar="M1,M2,...", default=None,
        help="comma-separated registered method names to show for the chosen images (see `saliencekit explain "
             "--help`); default: the methods (with their options) in checks.json, else a standard set",
    )
    p.add_argument("--images", metavar="N", type=_count, default=8,
                   help="number of test images to explain: correct and wrong predictions of each class (default 8)")
    p.add_argument("--data", metavar="DIR", default=None, help="the data folder, if it moved since training")
    p.add_argument("--device", default="cpu", help="device for the model: cpu, cuda, cuda:1 ... (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed for the noise of sampling methods (default 0)")
    p.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    words = ["saliencekit", "report", args.run_dir]
    for flag, value in (("--out", args.out), ("--checks", args.checks), ("--data", args.data)):
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
    from saliencekit.viz.report import build_report

    methods = None
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    path = build_report(
        args.run_dir, args.out, checks=args.checks, methods=methods, images=args.images,
        progress=not args.no_progress, device=args.device, data=args.data, seed=args.seed, command=_command(args),
    )
    print(f"report written to {path}")
    return 0
