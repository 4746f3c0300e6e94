"""The one rule that turns labels and names (method labels, class names, folder names) into safe file names."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")
_UNSAFE_ENDS = re.compile(r"^[^A-Za-z0-9_.=+-]+|[^A-Za-z0-9_.=+-]+$")


def safe_filename(name: str, *, plus: str = "+", empty: str = "_") -> str:
    """``name`` as one file or folder name that is valid and means the same on every system.

    Every run of characters other than ASCII letters, digits and ``_ . = + -`` becomes one ``_``, except at
    either end, where it is dropped; a name left empty or made only of dots becomes ``empty``.

    Args:
        name: the label.
        plus: what each ``+`` becomes (the checks' figures use ``"p"``: ``gradcam++`` -> ``gradcampp``).
        empty: the name used when nothing usable is left.

    >>> safe_filename("ig white/black")
    'ig_white_black'
    >>> safe_filename("gradcam++", plus="p")
    'gradcampp'
    >>> safe_filename("..", empty="data")
    'data'
    """
    out = _UNSAFE.sub("_", _UNSAFE_ENDS.sub("", name.replace("+", plus)))
    return empty if not out.strip(".") else out
