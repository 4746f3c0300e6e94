"""How a command talks to the terminal when things go wrong: warnings and errors as one line each, Ctrl-C and
SIGTERM as an orderly stop (the outputs are rolled back by :func:`saliencekit._atomic.all_or_nothing`)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

EXIT_ERROR = 2  # bad input, or an output that cannot be written
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM received: raised in the main thread so that everything that cleans up after Ctrl-C runs too."""


def error_line(message: object) -> str:
    """``message`` as one line (a multi-line message keeps its first line and says how many more there were)."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()] or ["(no message)"]
    return lines[0] if len(lines) == 1 else f"{lines[0]} [... {len(lines) - 1} more line(s)]"


@contextlib.contextmanager
def print_warnings() -> Iterator[None]:
    """Show warnings (e.g. skipped images) as one ``saliencekit: warning:`` line each on stderr."""

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        print(f"saliencekit: warning: {error_line(message)}", file=sys.stderr)

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        # the reader refuses the images Pillow warns about, by name and with the limit (saliencekit.limits)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # a class or file name with characters the figure font lacks: drawn as boxes, said once per glyph and draw
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        warnings.filterwarnings("ignore", message="Tight layout not applied", category=UserWarning)  # long names
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (only there can a handler be set;
    elsewhere the block does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
