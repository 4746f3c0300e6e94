"""Validation of the methods' common numeric options: one message per kind, naming the option and the value.

>>> check_positive_int(3, "samples")
3
>>> check_number(0.0, "noise")
0.0
"""

from __future__ import annotations

from saliencekit.errors import InputError


def check_positive_int(value: object, name: str) -> int:
    """``value`` if it is an int >= 1 (not a bool), else an :class:`InputError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value


def check_number(value: object, name: str, low: float = 0.0, strict: bool = False, what: str = "") -> float:
    """``value`` as a float if it is a number >= ``low`` (> with ``strict``), else an :class:`InputError`."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (value > low if strict else value >= low)
    if not ok:
        raise InputError(f"{name} must be a number {'>' if strict else '>='} {low}{what}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_seed(seed: object) -> int | None:
    """An int seed or None (a fresh seed per call)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InputError(f"seed must be an int or None, got {seed!r}")
    return seed  # type: ignore[return-value]


__all__ = ["check_number", "check_positive_int", "check_seed"]
