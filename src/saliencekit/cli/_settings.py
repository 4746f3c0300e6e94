"""Command-line options made from a settings dataclass: each field whose metadata has ``cli`` (see
:func:`saliencekit._options.option`) becomes an option with the field's default and help, so no default is written
twice."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from saliencekit.cli._types import count, positive_int, seed


def _comma_list(text: str) -> tuple[str, ...]:
    """A tuple of the comma-separated, stripped, non-empty items of ``text``."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _value_type(f: dataclasses.Field) -> Any:
    """int, float or str from the field's default (a tuple default: comma-separated items), else from its
    annotation (``int | None`` -> int)."""
    if isinstance(f.default, tuple):
        return _comma_list
    if f.default is not None and f.default is not dataclasses.MISSING:
        return type(f.default)
    first = str(f.type).split("|")[0].strip()
    return {"int": int, "float": float}.get(first, str)


def add_settings_options(parser: argparse.ArgumentParser, settings: type) -> None:
    """Add an option for every command-line field of the dataclass ``settings`` (``dest`` is the field name).

    A bool field is a switch (``--no-x`` turns a True default off); a ``positive`` field takes a positive
    integer, a ``count`` field a whole number >= 0; the default is appended to the help unless the help already says it.
    """
    for f in dataclasses.fields(settings):
        cli = dict(f.metadata.get("cli") or {})
        if not cli:
            continue
        flag = cli.pop("flag")
        help_text = f.metadata.get("help", "")
        if isinstance(f.default, bool):
            action = "store_false" if flag.startswith("--no-") else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, default=f.default, help=help_text)
            continue
        kind = positive_int if cli.pop("positive", False) else count if cli.pop("count", False) else _value_type(f)
        if f.name == "seed":  # numpy and torch take seeds from 0 to 2**63 - 1
            kind = seed
        if f.default is not None and "default" not in help_text:
            shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            help_text += f" (default: {shown})"
        parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text, **cli)


def settings_options(args: argparse.Namespace, settings: type) -> dict[str, Any]:
    """The values of the command-line fields of ``settings`` in parsed ``args``."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(settings) if f.metadata.get("cli")}
