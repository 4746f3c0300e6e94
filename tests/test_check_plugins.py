"""Checks are plug-ins: a check registered from outside the package runs, lands in checks.json and its summary
column, and the settings and command line take their defaults from one dataclass."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch

from saliencekit.trust.checks import check_names, get_check, list_checks, register_check, unregister_check
from saliencekit.trust.checks.base import Check, CheckContext, Column, verdict_cell
from saliencekit.trust.settings import CheckSettings
from trust_toys import blob_data, trained_cnn

TOY_TEMPLATE = """<p id="toy-check">Share of the map mass on bright pixels:
{% for label, share in shares.items() %}<span class="toy-share" data-method="{{ label }}">{{ label }}={{ share }}</span>
{% endfor %}</p>"""


class BrightShare(Check):
    """A toy check: the share of each map's |mass| on pixels brighter than the image's mean."""

    name = "toy_bright_share"
    title = "Toy: mass on bright pixels"
    order = 65  # between localisation and complexity
    columns = (Column("bright_share", "Bright share", higher_is_better=True,
                      sentence="Bright share: the share of the map's mass on pixels brighter than the mean."),)

    def run(self, ctx: CheckContext) -> dict[str, Any]:
        from saliencekit.trust.stats import summarize

        bright = (ctx.images[:, 0] > ctx.images[:, 0].mean(dim=(1, 2), keepdim=True)).cpu()
        methods = {}
        for label, maps in ctx.maps.items():
            a = maps.abs()
            methods[label] = {"bright_share": summarize((a * bright).flatten(1).sum(1) / a.flatten(1).sum(1),
                                                        seed=ctx.seed)}
        return {"methods": methods}

    def template_source(self) -> str:
        return TOY_TEMPLATE

    def gather(self, entry: Mapping[str, Any], report: Any) -> dict[str, Any]:
        return {"shares": {label: report.num(v["bright_share"]) for label, v in entry["methods"].items()}}


@pytest.fixture
def toy_check() -> Iterator[Check]:
    register_check(BrightShare)
    try:
        yield get_check(BrightShare.name)
    finally:
        unregister_check(BrightShare.name)


def test_registered_check_runs_and_lands_in_checks_json(toy_check: Check, tmp_path) -> None:
    from saliencekit.trust import run_checks

    assert check_names()[-2:] == ["toy_bright_share", "complexity"]  # placed by its order
    net, _ = trained_cnn()
    x, _, _ = blob_data(6, seed=5)
    result = run_checks(model=net, images=x, methods=["gradient", "gradient_x_input"], n_images=6, out_dir=tmp_path,
                        checks=["faithfulness", "toy_bright_share"], progress=False, figures=False,
                        settings=CheckSettings(deletion_steps=2, road_fractions=(0.5,)))
    on_disk = json.loads((tmp_path / "checks.json").read_text())
    assert on_disk == json.loads(json.dumps(result.to_json()))  # what is returned is what is written
    assert on_disk["settings"]["checks"] == ["faithfulness", "toy_bright_share"]
    entry = on_disk["checks"]["toy_bright_share"]
    assert entry["images"] == 6 and entry["seconds"] >= 0
    # the value is the literal share, recomputed here from the maps
    from saliencekit.methods import explain

    logits = net(x)[:, 0]
    maps = explain(net, x, ["gradient"], target=(logits > 0).long())["gradient"].maps.abs().double()
    bright = x[:, 0] > x[:, 0].mean(dim=(1, 2), keepdim=True)
    want = ((maps * bright).flatten(1).sum(1) / maps.flatten(1).sum(1)).tolist()
    assert entry["methods"]["gradient"]["bright_share"]["values"] == pytest.approx(want, rel=1e-6)
    # its summary column sits after the earlier checks' columns
    row = on_disk["summary"]["methods"]["gradient"]
    assert list(row) == ["deletion_auc", "insertion_auc", "bright_share"]
    assert row["bright_share"] == pytest.approx(sum(want) / len(want), rel=1e-6)


def test_unregistered_check_is_an_unknown_name(toy_check: Check) -> None:
    from saliencekit.errors import UnknownNameError

    unregister_check(toy_check.name)
    with pytest.raises(UnknownNameError, match="valid checks: model_randomization"):
        CheckSettings(checks=["toy_bright_share"])
    with pytest.raises(ValueError, match="already registered"):
        register_check(type(get_check("faithfulness")))
    register_check(BrightShare)  # back for the fixture's clean-up


def test_builtin_checks_declare_what_they_need_and_offer() -> None:
    checks = list_checks()
    assert [c.name for c in checks] == ["model_randomization", "data_randomization", "input_invariance", "agreement",
                                        "faithfulness", "localization", "complexity"]
    assert {c.name for c in checks if c.recomputes_maps} == set(CheckSettings().costly_checks)
    assert get_check("data_randomization").needs == ("train_data",)
    assert get_check("localization").needs == ("masks",)
    columns = {col.key: col for c in checks for col in c.columns}
    assert list(columns) == ["model_randomization", "data_randomization", "input_invariance", "deletion_auc",
                             "insertion_auc", "relevance_mass", "pointing_game", "shortcut_share", "sparseness"]
    assert columns["deletion_auc"].title == "Deletion AUC \u2193" and columns["insertion_auc"].title.endswith("\u2191")
    assert [k for k, c in columns.items() if c.vetoes] == ["model_randomization", "data_randomization"]
    for c in checks:
        assert c.template_source().strip(), c.name


def test_verdict_cells_carry_a_level_and_a_note() -> None:
    assert (verdict_cell(True).text, verdict_cell(True).css) == ("pass", "pass")
    assert (verdict_cell(False).text, verdict_cell(None).text) == ("fail", "not run")
    partly = verdict_cell({"level": "partly", "note": "signed reading destroyed, |map| kept"})
    assert (partly.text, partly.css, partly.note) == ("partly", "partly", "signed reading destroyed, |map| kept")
    assert verdict_cell("no verdict").css == "na" and verdict_cell("fails").css == "fail"
    col = Column("x", "X", kind="verdict", vetoes=True)
    assert col.failed("fails") and col.failed(False) and not col.failed("partly") and not col.failed(None)


def test_settings_fill_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from saliencekit.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["check", "run", "--out", "o"])
    defaults = CheckSettings()
    for f in dataclasses.fields(CheckSettings):
        if f.metadata.get("cli"):
            assert getattr(args, f.name) == getattr(defaults, f.name), f.name
    args = parser.parse_args(["check", "run", "--out", "o", "--images", "5", "--no-figures", "--shift", "0.5",
                              "--checks", "faithfulness,agreement"])
    from saliencekit.cli._settings import settings_options

    s = CheckSettings(**settings_options(args, CheckSettings))
    assert (s.n_images, s.figures, s.shift, s.checks) == (5, False, 0.5, ["faithfulness", "agreement"])
    with pytest.raises(SystemExit):
        parser.parse_args(["check", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"balanced over classes (default: {defaults.n_images})" in out
    assert f"most epochs to fit the random-label model of data_randomization (default: " \
           f"{defaults.random_label_epochs})" in out


def test_run_checks_options_are_settings_fields() -> None:
    from saliencekit.trust import run_checks

    with pytest.raises(TypeError, match="n_images"):
        run_checks(model=torch.nn.Linear(1, 1), images=torch.zeros(2, 1, 4, 4), n_imgs=3)


def test_registered_check_renders_in_the_report(toy_check: Check, tmp_path_factory: pytest.TempPathFactory,
                                                tmp_path) -> None:
    from saliencekit.trust import run_checks
    from saliencekit.viz.report import build_report
    from test_report import parse, shared_run

    run_dir = shared_run(tmp_path_factory)
    result = run_checks(run_dir, methods=["gradient", "gradcam"], checks=["toy_bright_share"], n_images=4,
                        out_dir=tmp_path / "checks", progress=False)
    out = build_report(run_dir, tmp_path / "r.html", checks=tmp_path / "checks", images=0, progress=False)
    page = parse(out)
    html = out.read_text()
    part = html[html.index('id="trust-toy-bright-share"'):html.index('id="trust-complexity"')]
    assert "<h3>Toy: mass on bright pixels</h3>" in part and 'id="toy-check"' in part
    for label in ("gradient", "gradcam"):
        share = result.checks["toy_bright_share"]["methods"][label]["bright_share"]["mean"]
        assert f'data-method="{label}">{label}={share:.3f}</span>' in part
        cell = page.verdict[label]["bright_share"]
        assert cell["text"] == f"{share:.3f}" and json.loads(cell["data-value"]) == pytest.approx(share)
    assert 'data-key="bright_share">Bright share \u2191</th>' in html
    assert "Bright share: the share of the map's mass on pixels brighter than the mean." in "".join(page.text)
    # the checks that did not run say so, in their place
    assert html.index('id="trust-localization"') < html.index('id="trust-toy-bright-share"')
