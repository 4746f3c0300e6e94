"""One home for each job: the shared helpers (file names, min-max scaling, versions) and the module layout."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from saliencekit._filenames import safe_filename
from saliencekit._versions import library_versions
from saliencekit.errors import UnknownNameError
from saliencekit.methods.normalize import minmax_scale, minmax_scale_, normalize


@pytest.mark.parametrize(("name", "kwargs", "want"), [
    ("gradient", {}, "gradient"),
    ("gradcam++", {}, "gradcam++"),
    ("gradcam++", {"plus": "p"}, "gradcampp"),
    ("holdout set", {"empty": "data"}, "holdout_set"),
    ("ig=black", {}, "ig=black"),
    ("a  /\\ b", {}, "a_b"),
    (" <x> ", {}, "x"),
    ("effusion__img0", {}, "effusion__img0"),
    ("..", {"empty": "data"}, "data"),
    ("///", {}, "_"),
])
def test_safe_filename(name: str, kwargs: dict, want: str) -> None:
    assert safe_filename(name, **kwargs) == want


def test_minmax_scale_per_slice_constant_and_nan() -> None:
    x = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[7.0, 7.0], [7.0, 7.0]], [[0.0, float("nan")], [1.0, 2.0]]])
    out = minmax_scale(x)
    assert torch.equal(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # a constant map becomes zeros
    assert torch.isnan(out[2]).all()  # a broken map is not shown as an empty one
    assert torch.equal(normalize(x[:2], "minmax"), out[:2])
    whole = minmax_scale(x[:2], start_dim=0)
    assert float(whole.min()) == 0.0 and float(whole.max()) == 1.0
    y = x[:2].clone()
    assert minmax_scale_(y) is y and torch.equal(y, out[:2])


def test_minmax_scale_numpy_gives_numpy_in_its_dtype() -> None:
    a = np.array([[2.0, 4.0], [6.0, 10.0]], dtype=np.float32)[:, ::-1]  # a negative-stride view
    out = minmax_scale(a, start_dim=0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.25, 0.0], [1.0, 0.5]])


def test_library_versions_recorded_by_the_writers() -> None:
    v = library_versions()
    assert list(v) == ["python", "saliencekit", "torch", "torchvision", "numpy", "matplotlib"]
    assert v["torch"] == str(torch.__version__)


def test_run_module_does_not_import_training_and_names_are_functions() -> None:
    code = ("import sys, saliencekit.run, saliencekit.device, saliencekit.predict\n"
            "assert not any(m.startswith('saliencekit.train') for m in sys.modules), sorted(sys.modules)\n"
            "import saliencekit.methods as m, saliencekit.trust as t\n"
            "assert callable(m.explain) and callable(t.agreement) and callable(t.complexity)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_per_method_expectations_are_declared_on_the_classes() -> None:
    from saliencekit.methods import list_methods, method_class
    from saliencekit.methods.normalize import NORMALIZATIONS, display_normalization
    from saliencekit.trust.invariance import expected_invariance

    for name in list_methods():
        cls = method_class(name)
        assert cls.display_normalization in NORMALIZATIONS, name
        assert cls.input_shift_invariant in (True, False, None), name
        assert display_normalization(name) == cls.display_normalization
    # the family rule the CLI and the report used before the attribute existed
    for name in list_methods():
        family = method_class(name).family
        assert display_normalization(name) == ("percentile" if family in ("gradient", "backprop") else "minmax")
    # the table the input-invariance check used before (name, options) -> expectation
    table = [
        ("gradient", {}, True), ("gradient_x_input", {}, False), ("guided_backprop", {}, True),
        ("deconvnet", {}, True), ("gradcam", {}, None), ("scorecam", {}, None), ("occlusion", {}, None),
        ("guided_gradcam", {}, None), ("integrated_gradients", {}, True),
        ("integrated_gradients", {"baseline": "black"}, True), ("integrated_gradients", {"baseline": "zero"}, False),
        ("integrated_gradients", {"baseline": "white"}, None), ("integrated_gradients", {"baseline": 0.0}, None),
        ("smoothgrad", {}, True), ("vargrad", {}, True), ("smoothgrad_sq", {}, True),
        ("smoothgrad", {"base": "gradient_x_input"}, False), ("smoothgrad", {"base": "guided_backprop"}, True),
        ("smoothgrad", {"base": "integrated_gradients"}, None), ("not_a_method", {}, None),
        ("eigencam", {}, None), ("ablationcam", {}, None), ("fullgrad", {}, False),
        ("lime", {}, False), ("kernel_shap", {"fill": "mean"}, True), ("lime", {"fill": 0.5}, False),
    ]
    for name, options, want in table:
        assert expected_invariance({"method": name, "options": options}) is want, (name, options)


def test_docs_methods_has_a_true_row_for_every_registered_method() -> None:
    import importlib
    import re
    from pathlib import Path

    from saliencekit.methods import list_methods, method_class

    references = sorted(f.stem for f in (Path(__file__).parent / "reference").glob("ref_*.py"))
    text = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    rows = {m.group(1): [c.strip() for c in m.group(2).split("|")]
            for m in re.finditer(r"^\| `([^`]+)` \|(.*)\|$", text, flags=re.M)}
    for name in list_methods():
        assert name in rows, f"docs/methods.md has no summary row for {name!r}"
        family, display, invariant, tested = rows[name][:4]
        cls = method_class(name)
        assert family == cls.family and display == cls.display_normalization, name
        want = {True: "yes", False: "no", None: "-"}[cls.input_shift_invariant]
        if name == "integrated_gradients":
            want = "black: yes, zero: no"
        elif name in ("smoothgrad", "smoothgrad_sq", "vargrad"):
            want = "as its base"
        elif name in ("expected_gradients", "gradient_shap"):
            want = "uniform: yes, reference images: no"
        elif name in ("lime", "kernel_shap"):
            want = "fill mean/black: yes, zero or a number: no"
        assert invariant == want, name
        for ref in re.findall(r"`(ref_[a-z_]+)", tested):  # the named literal references exist
            assert any(hasattr(importlib.import_module(f"reference.{mod}"), ref) for mod in references), ref
        assert f"**`{name}`**" in text, f"docs/methods.md has no definition of {name!r}"


def test_docs_methods_python_examples_run_as_written() -> None:
    """Every Python block of docs/methods.md runs as written (their asserts are the documented properties), and the
    methods of issue 14 whose sections carry an example are in them."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/methods.md has no Python example"
    for name in ("eigencam", "ablationcam", "fullgrad", "expected_gradients", "gradient_shap", "lime", "kernel_shap"):
        assert any(f'"{name}"' in b for b in blocks), f"docs/methods.md has no example running {name!r}"
    for code in blocks:
        torch.manual_seed(0)
        exec(compile(code, "docs/methods.md", "exec"), {"__name__": "docs_methods_example"})


def test_readme_explain_your_own_model_runs_as_written() -> None:
    import re
    from pathlib import Path

    from saliencekit.methods.normalize import normalize

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("**Explain your own model**"):]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert len(code.strip().splitlines()) == 3
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    maps = scope["maps"]
    assert set(maps) == {"gradcam", "gradient"}
    assert maps["gradcam"].maps.shape == (2, 224, 224)
    # what the README says about normalized("auto"): the CLI's and the report's display of each method
    torch.testing.assert_close(maps["gradcam"].normalized("auto"), normalize(maps["gradcam"].maps, "minmax"))
    torch.testing.assert_close(maps["gradient"].normalized("auto"), normalize(maps["gradient"].maps, "percentile"))


def test_normalized_auto_is_what_the_cli_draws() -> None:
    import saliencekit as sk
    from saliencekit.methods.normalize import display_normalization
    from saliencekit.viz.overlay import map_for_display
    from toy_models import make

    model = make("plain", classes=3)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    specs = {"gradient": {}, "smoothgrad": {"samples": 3}, "gradcam": {}, "guided_gradcam": {},
             "occlusion": {"patch": 4, "stride": 4}}
    for name, opts in specs.items():
        method = sk.create_method(name, model, **opts)
        e = method.attribute(x)
        how = display_normalization(method)  # what explain_files hands to the overlay for this method
        for i in range(2):
            np.testing.assert_allclose(e.normalized("auto")[i].numpy(), map_for_display(e.maps[i].numpy(), how),
                                       rtol=1e-6, atol=1e-7)
    with pytest.raises(UnknownNameError, match="unknown method .not_registered."):
        sk.Explanation("not_registered", torch.zeros(1, 2, 2)).normalized("auto")
