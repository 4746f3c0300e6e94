"""The ``saliencekit`` command line tool.

Each command lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a function taking the parsed arguments. The CLI
only parses arguments and calls the library; no logic lives here.

Every command runs the same way (:func:`main`): warnings and errors are one line each on stderr; bad input and
outputs that cannot be written (a full disk, a read-only folder) exit with status 2, Ctrl-C with 130 and SIGTERM
with 143, never with a traceback; and the files a command writes are kept only if it finishes
(:func:`saliencekit._atomic.all_or_nothing`), so an interrupted or failed command leaves the previous outputs as
they were. A command that manages its own units of work (``demo``, step by step) sets ``all_or_nothing=False``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from saliencekit.cli._console import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Terminated,
    error_line,
    print_warnings,
    sigterm_as_exception,
)
from saliencekit.errors import SaliencekitError, is_environment_error, output_error

# Every command: the module that registers it and its one-line help, in the order ``--help`` lists them. The
# modules add everything else; the table lets ``saliencekit --help`` / ``--version`` answer without importing any
# command module (several import torch, which takes seconds), and each command imports only its own module.
_COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("data", "make the synthetic chest X-ray dataset, or look at a dataset folder"),
    "train": ("train", "train a classifier on a folder of images (one sub-folder per class, or labels from a CSV)"),
    "evaluate": ("train", "test metrics of a run (accuracy, ROC AUC, sensitivity, specificity, confusion matrix)"),
    "models": ("train", "list the model architectures and the model file formats"),
    "methods": ("explain", "list the saliency methods, or show one method's options"),
    "explain": ("explain", "explain images with saliency maps (overlays, comparison figure, raw maps)"),
    "check": ("check", "check which saliency maps to trust (sanity checks, invariance, agreement, faithfulness, "
                       "localisation)"),
    "report": ("report", "write the HTML trust report of a run (one self-contained file)"),
    "audit": ("audit", "explain a whole dataset into a resumable store (local or Ray) and find Clever-Hans clusters"),
    "demo": ("demo", "run the whole pipeline on built-in synthetic chest X-rays"),
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the problem and where to read the options)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {error_line(message)} (see {self.prog} --help)\n")


class _Commands:
    """The sub-parsers action handed to the modules' ``register``: each command's help comes from the table."""

    def __init__(self, action: argparse._SubParsersAction):
        self._action = action

    def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
        kwargs.setdefault("help", _COMMANDS[name][1])
        return self._action.add_parser(name, **kwargs)  # type: ignore[arg-type]


def _top_level() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    from saliencekit import __version__

    parser = _Parser(
        prog="saliencekit",
        description="Train image classifiers, explain them with saliency maps, and check which maps to trust.",
    )
    parser.add_argument("--version", action="version", version=f"saliencekit {__version__}")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every sub-command registered, or only those of ``command``'s module."""
    parser, sub = _top_level()
    modules = dict.fromkeys(m for m, _ in _COMMANDS.values()) if command is None else [_COMMANDS[command][0]]
    for name in modules:
        importlib.import_module(f"saliencekit.cli.{name}").register(_Commands(sub))
    return parser


def _listing_parser() -> argparse.ArgumentParser:
    """The top-level parser with the commands' names and help only (no command module imported)."""
    parser, sub = _top_level()
    for name, (_, text) in _COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line tool; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # the top level has no options with values
    parser = build_parser(command) if command in _COMMANDS else _listing_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from saliencekit import _atomic

    whole = getattr(args, "all_or_nothing", True)
    keep = _atomic.all_or_nothing() if whole else contextlib.nullcontext()
    undone = "; the outputs are as they were before this command" if whole else ""
    try:
        with sigterm_as_exception(), print_warnings(), keep:
            result = args.func(args)
    except SaliencekitError as exc:
        return _fail(exc)
    except OSError as exc:
        if not is_environment_error(exc):
            raise
        return _fail(output_error(exc, doing="use"))
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and type(exc).__name__ != "OutOfMemoryError":  # torch's, on a GPU
            raise
        return _fail("out of memory; use fewer or smaller images (--images, --image-size, --batch-size) "
                     "or a device with more memory")
    except Terminated:
        print(f"saliencekit: terminated (SIGTERM){undone}", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"saliencekit: interrupted{undone}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(result or 0)


def _fail(message: object) -> int:
    print(f"saliencekit: error: {error_line(message)}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
