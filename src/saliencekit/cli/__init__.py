"""The ``saliencekit`` command line tool.

Each command lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a function taking the parsed arguments. The CLI
only parses arguments and calls the library; no logic lives here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from saliencekit.errors import SaliencekitError

# One module per command group, in the order ``--help`` lists them.
_COMMAND_MODULES = ("data", "train", "explain", "check", "report", "audit", "demo")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every sub-command registered."""
    from saliencekit import __version__

    parser = argparse.ArgumentParser(
        prog="saliencekit",
        description="Train image classifiers, explain them with saliency maps, and check which maps to trust.",
    )
    parser.add_argument("--version", action="version", version=f"saliencekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"saliencekit.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line tool; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except SaliencekitError as exc:
        print(f"saliencekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("saliencekit: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
