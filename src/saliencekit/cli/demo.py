"""`saliencekit demo`: the whole pipeline on the built-in synthetic chest X-rays."""

from __future__ import annotations

import argparse

from saliencekit.cli._types import fraction, positive_int

SHORTCUT_FRACTION = 0.8


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to ``subparsers``."""
    p = subparsers.add_parser(
        "demo",
        description="Generate synthetic chest X-rays (350 effusion + 350 normal, 512x512, with masks) into OUT/data, "
        "train the lesson's effusion CNN into OUT/run, evaluate it on the test split, explain a few test images "
        "(OUT/explanations), run the trust checks (OUT/run/checks) and write the HTML trust report "
        "(OUT/report.html), then print where everything is. Takes a few minutes on a laptop CPU; --quick takes "
        "well under a minute.",
    )
    p.add_argument("--out", default="saliencekit_demo", metavar="DIR",
                   help="folder for everything the demo writes (default: saliencekit_demo)")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke-test settings: 40 images per class at 128 px, 64 px model input, 2 epochs")
    p.add_argument("--shortcut", type=fraction, nargs="?", const=SHORTCUT_FRACTION, default=0.0, metavar="FRACTION",
                   help="plant a shortcut marker (a burned-in letter) in this fraction of the effusion images and "
                   "never in the normals, so the report shows whether the model's maps concentrate on it, and audit "
                   "every image (OUT/audit: store, spectral relevance analysis, audit.html; needs the audit extra) "
                   f"(FRACTION defaults to {SHORTCUT_FRACTION} when the flag is given alone; "
                   "without the flag: no marker)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda (default: auto)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo, all_or_nothing=False)  # run_demo keeps each finished step


def cmd_demo(args: argparse.Namespace) -> int:
    from saliencekit.pipeline import run_demo
    from saliencekit.train.evaluate import format_metrics

    ctx = run_demo(args.out, quick=args.quick, shortcut=args.shortcut, progress=not args.quiet, device=args.device,
                   num_threads=args.threads)
    if ctx.metrics:
        print(format_metrics(ctx.metrics))
    print(f"\ndemo finished in {sum(ctx.timings.values()):.0f} s; outputs:")
    width = max((len(k) for k in ctx.outputs), default=0)
    for label, path in ctx.outputs.items():
        print(f"  {label:<{width}}  {path}")
    if "report" in ctx.outputs:
        print(f"\nopen the trust report in a browser: {ctx.outputs['report'].resolve()}")
    return 0
