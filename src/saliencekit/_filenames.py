"""The one rule that turns labels and names (method labels, class names, folder names) into safe file names."""

from __future__ import annotations

import hashlib
import re

from saliencekit.limits import MAX_NAME_LENGTH

_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")
_UNSAFE_ENDS = re.compile(r"^[^A-Za-z0-9_.=+-]+|[^A-Za-z0-9_.=+-]+$")


def name_hash(name: str) -> str:
    """Eight hexadecimal digits that tell ``name`` from other names (the start of its SHA-1).

    >>> name_hash("effusion")
    '6b3925a6'
    """
    return hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def safe_filename(name: str, *, plus: str = "+", empty: str = "_") -> str:
    """``name`` as one file or folder name that is valid and means the same on every system.

    Every run of characters other than ASCII letters, digits and ``_ . = + -`` becomes one ``_``, except at
    either end, where it is dropped; a name left empty or made only of dots becomes ``empty``. A result longer
    than :data:`saliencekit.limits.MAX_NAME_LENGTH` characters is cut and ends with ``-`` and :func:`name_hash` of
    the whole ``name``, so that long names differing only at their ends stay different.

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
    >>> len(safe_filename("x" * 300))
    100
    """
    out = _UNSAFE.sub("_", _UNSAFE_ENDS.sub("", name.replace("+", plus)))
    out = empty if not out.strip(".") else out
    if len(out) > MAX_NAME_LENGTH:
        out = f"{out[:MAX_NAME_LENGTH - 9]}-{name_hash(name)}"
    return out
