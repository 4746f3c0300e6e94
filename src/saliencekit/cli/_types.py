"""Argument types shared by the commands: each rejects a bad value with a message naming it."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(kind: type, ok: Callable[[float], bool], what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what.replace(" ", "_")  # argparse names the type in its own messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
positive_float = _number(float, lambda v: 0 < v < math.inf, "a positive number")
fraction = _number(float, lambda v: 0 <= v <= 1, "a fraction between 0 and 1")
count = _number(int, lambda v: v >= 0, "a whole number >= 0")
seed = _number(int, lambda v: 0 <= v < 2**63, "a whole number from 0 to 2**63 - 1")
