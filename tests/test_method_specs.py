"""The one method-spec parser: every accepted form gives the same normalised specs, bad ones are refused by name."""

from __future__ import annotations

import pytest
import torch

from saliencekit.errors import InputError, UnknownNameError
from saliencekit.methods import build_methods, list_methods
from saliencekit.methods.specs import (
    DEFAULT_METHODS,
    command_line_methods,
    default_methods,
    engine_specs,
    parse_method_option,
    parse_methods,
    parse_methods_text,
)

IG_WHITE = {"method": "integrated_gradients", "options": {"baseline": "white", "steps": 4}}


def test_every_form_gives_the_same_normalised_specs() -> None:
    want = {"gradient": {"method": "gradient", "options": {}}, "ig": IG_WHITE}
    forms = [
        {"gradient": None, "ig": {"method": "integrated_gradients", "baseline": "white", "steps": 4}},
        {"gradient": {}, "ig": IG_WHITE},  # the normalised form (as checks.json stores it) passes through
        '{"gradient": {}, "ig": {"method": "integrated_gradients", "baseline": "white", "steps": 4}}',
    ]
    for form in forms:
        assert parse_methods(form) == want, form
    assert parse_methods("gradient, gradcam") == parse_methods(["gradient", "gradcam"]) == {
        "gradient": {"method": "gradient", "options": {}}, "gradcam": {"method": "gradcam", "options": {}}}
    assert engine_specs(want) == {"gradient": {"method": "gradient"},
                                  "ig": {"method": "integrated_gradients", "baseline": "white", "steps": 4}}
    assert parse_methods(engine_specs(want)) == want  # round trip


def test_bad_specs_are_refused_by_name() -> None:
    with pytest.raises(InputError, match="listed twice"):
        parse_methods(["gradient", "gradient"])
    with pytest.raises(InputError, match="no methods given"):
        parse_methods([])
    with pytest.raises(UnknownNameError, match="valid methods"):
        parse_methods("gradient,no_such_method")
    assert parse_methods("no_such_method", validate=False) == {"no_such_method": {"method": "no_such_method",
                                                                                   "options": {}}}
    with pytest.raises(InputError, match="not valid JSON"):
        parse_methods_text("{bad json")
    for bad in ("gradient", "=gradient", "x=ig:steps"):
        with pytest.raises(InputError, match="LABEL=METHOD|key=value"):
            parse_method_option(bad)


def test_command_line_methods_names_then_labelled_options() -> None:
    assert command_line_methods(None, []) is None
    got = command_line_methods("gradient,gradcam", ["ig0=integrated_gradients:baseline=zero,steps=4", "g2=gradient"])
    assert list(got) == ["gradient", "gradcam", "ig0", "g2"]
    assert got["ig0"] == {"method": "integrated_gradients", "options": {"baseline": "zero", "steps": 4}}
    assert parse_method_option("sg=smoothgrad:samples=8,noise=0.1,flag=true,x=none,name=abc") == (
        "sg", {"method": "smoothgrad", "samples": 8, "noise": 0.1, "flag": True, "x": None, "name": "abc"})


def test_default_methods_are_the_registered_defaults() -> None:
    registered = set(list_methods())
    assert default_methods() == [m for m in DEFAULT_METHODS if m in registered]
    assert "gradcam" in default_methods()


def test_build_methods_takes_every_form() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(1))
    net(torch.zeros(1, 1, 8, 8))
    for form in ({"ig": IG_WHITE}, {"ig": engine_specs({"ig": IG_WHITE})["ig"]}):
        built = build_methods(net, form)
        assert type(built["ig"]).name == "integrated_gradients" and built["ig"].params["baseline"] == "white"
    assert list(build_methods(net, "gradient,gradient_x_input")) == ["gradient", "gradient_x_input"]
