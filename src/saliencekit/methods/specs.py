"""Method specs: which saliency methods to run, under which labels, with which options. The one parser.

Every function that takes ``methods`` (``explain``, ``run_checks``, ``build_report``, ``explain_files``) and every
command's ``--methods`` / ``--method-options`` go through :func:`parse_methods`. Accepted forms:

- a list of registered names, ``["gradient", "gradcam"]`` (a name listed twice is an error: use labels);
- a comma-separated string, ``"gradient,gradcam"``, or a JSON object string (see :func:`parse_methods_text`);
- a dict ``label -> {"method": name, **options}``, so that one method can appear several times with different
  options (``{"ig_black": {"method": "integrated_gradients", "baseline": "black"}}``); without ``"method"`` the
  label is the method name; the normalised form ``{"method": name, "options": {...}}`` (as ``checks.json``
  stores it) is accepted too.

The *normalised* spec of a label is ``{"method": name, "options": {...}}``; :func:`engine_specs` flattens it back
to the ``{"method": name, **options}`` form :func:`saliencekit.explain` takes.

>>> parse_methods("gradient,gradcam")
{'gradient': {'method': 'gradient', 'options': {}}, 'gradcam': {'method': 'gradcam', 'options': {}}}
>>> parse_method_option("ig_white=integrated_gradients:baseline=white,steps=32")
('ig_white', {'method': 'integrated_gradients', 'baseline': 'white', 'steps': 32})
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from saliencekit.errors import InputError

MethodSpecs = Sequence[str] | Mapping[str, Mapping[str, Any] | None] | str
"""Anything :func:`parse_methods` accepts."""

#: The methods used when none are named (those of them that are registered: see :func:`default_methods`).
DEFAULT_METHODS = ("gradient", "gradient_x_input", "smoothgrad", "integrated_gradients", "guided_backprop",
                   "gradcam", "gradcam++", "scorecam")


def default_methods() -> list[str]:
    """:data:`DEFAULT_METHODS` restricted to the registered methods (all registered ones if none of them is)."""
    from saliencekit.methods.registry import list_methods

    registered = list_methods()
    return [m for m in DEFAULT_METHODS if m in registered] or registered


def parse_methods(methods: MethodSpecs, validate: bool = True) -> dict[str, dict[str, Any]]:
    """Normalised specs ``label -> {"method": name, "options": {...}}`` of any accepted form (module docstring).

    Args:
        methods: names, a comma-separated or JSON string, or a dict of labels.
        validate: check that every method name is registered.

    Raises:
        InputError: no methods, a name listed twice in a list, or a bad JSON string.
        UnknownNameError: an unregistered method name (with ``validate``).
    """
    if isinstance(methods, str):
        methods = parse_methods_text(methods)
    out: dict[str, dict[str, Any]] = {}
    if isinstance(methods, Mapping):
        for label, opts in methods.items():
            opts = dict(opts or {})
            if set(opts) == {"method", "options"} and isinstance(opts["options"], Mapping):
                opts = {"method": opts["method"], **opts["options"]}  # already normalised
            name = str(opts.pop("method", label))
            out[str(label)] = {"method": name, "options": opts}
    else:
        for name in methods:
            if str(name) in out:
                raise InputError(f"method {name!r} is listed twice; use a dict of labels to vary its options")
            out[str(name)] = {"method": str(name), "options": {}}
    if not out:
        raise InputError("no methods given; choose from saliencekit.list_methods()")
    if validate:
        from saliencekit.methods.registry import method_class

        for spec in out.values():
            method_class(spec["method"])  # raises UnknownNameError listing the registered names
    return out


def engine_specs(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ``{label: {"method": name, **options}}`` form :func:`saliencekit.explain` takes, of normalised specs."""
    return {label: {"method": s["method"], **s.get("options", {})} for label, s in specs.items()}


def parse_methods_text(text: str) -> list[str] | dict[str, Any]:
    """A ``--methods`` value: a JSON object ``'{"ig": {"method": "integrated_gradients", "steps": 32}}'`` (when it
    starts with ``{``) or comma-separated names.

    Raises:
        InputError: the text starts with ``{`` but is not a valid JSON object.
    """
    if not text.strip().startswith("{"):
        return [m.strip() for m in text.split(",") if m.strip()]
    try:
        return json.loads(text)  # starts with "{": an object or invalid
    except json.JSONDecodeError as exc:
        raise InputError(f"--methods is not valid JSON: {exc}") from None


def parse_method_option(text: str) -> tuple[str, dict[str, Any]]:
    """Parse ``LABEL=METHOD[:key=value[,key=value...]]`` (values: int, float, true/false/none, else text).

    Returns:
        The label and its spec ``{"method": name, **options}``.

    Raises:
        InputError: the text does not have that shape.
    """
    label, sep, rest = text.partition("=")
    if not sep or not label.strip() or not rest.strip():
        raise InputError(f"method option {text!r} must look like LABEL=METHOD[:key=value,...], "
                         "e.g. ig_white=integrated_gradients:baseline=white")
    method, _, opts = rest.partition(":")
    spec: dict[str, Any] = {"method": method.strip()}
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"method option {item!r} in {text!r} must be key=value")
        spec[key.strip()] = _parse_value(value.strip())
    return label.strip(), spec


def command_line_methods(names: str | None, options: Sequence[str] = ()) -> dict[str, dict[str, Any]] | None:
    """The methods of ``--methods NAMES`` plus repeated ``--method-options LABEL=METHOD:...`` (normalised specs);
    None when neither is given (the caller's default applies).

    Raises:
        InputError: a bad ``--methods`` or ``--method-options`` value.
    """
    chosen: dict[str, Any] = {}
    if names:
        parsed = parse_methods_text(names)
        chosen.update(parsed if isinstance(parsed, dict) else {n: {"method": n} for n in parsed})
    for text in options:
        label, spec = parse_method_option(text)
        chosen[label] = spec
    return parse_methods(chosen, validate=False) if chosen else None


def _parse_value(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


__all__ = ["DEFAULT_METHODS", "MethodSpecs", "command_line_methods", "default_methods", "engine_specs",
           "parse_method_option", "parse_methods", "parse_methods_text"]
