"""Field metadata of the settings dataclasses (:class:`saliencekit.trust.settings.CheckSettings`,
:class:`saliencekit.viz.report.settings.ReportSettings`): the command line (``saliencekit.cli._settings``) turns every
field that has a ``flag`` into an option with the field's default and help, so no default is written twice."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

S = TypeVar("S")


def option(help: str = "", run: bool = False, **cli: Any) -> dict[str, Any]:
    """Metadata of a settings field.

    Args:
        help: the option's help (the default is appended by the command line unless the help mentions it).
        run: a choice of the run rather than a cost of the checks (kept out of ``CheckSettings.to_dict()``).
        **cli: ``flag`` (``"--images"``; a bool field with ``--no-...`` switches a True default off), ``metavar``,
            ``positive`` (a positive integer) or ``count`` (a whole number >= 0).
    """
    return {"help": help, "run": run, "cli": cli or None}


def with_options(kind: type[S], settings: S | None, options: dict[str, Any], caller: str) -> S:
    """``settings`` (or ``kind()``) with the fields named in ``options`` replaced (validated again).

    Raises:
        TypeError: an option that is not a field of ``kind`` (the message lists the fields).
    """
    fields = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"{caller}() got unexpected option(s) {unknown}; options are the fields of "
                        f"{kind.__name__}: {', '.join(sorted(fields))}")
    return dataclasses.replace(settings if settings is not None else kind(), **options)  # type: ignore[type-var]
