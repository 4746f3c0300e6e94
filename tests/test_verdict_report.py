"""The three-level randomisation verdicts, their controls and the CAM layer advice, from checks.json to the report."""

from __future__ import annotations

import html as html_lib
import json
import re
from pathlib import Path

import pytest

from saliencekit.trust import run_checks
from saliencekit.trust.settings import CheckSettings
from saliencekit.viz.report import build_report
from test_report import parse, shared_run

LEVELS = {"passes", "partly", "fails", "no verdict"}


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    run = shared_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("verdict_checks")
    settings = CheckSettings(methods=["gradient", "gradcam", "guided_backprop"], n_images=6, figures=False,
                             checks=["model_randomization", "data_randomization", "localization"],
                             randomization_modes=("cascading",), random_label_epochs=5, random_label_images=16,
                             similarity_metrics=("spearman_abs",))
    res = run_checks(run, settings=settings, out_dir=out, progress=False)
    assert res["schema_version"] == 2
    return run, out / "checks.json"


def _section_text(page: object, html: str, sid: str) -> str:
    """The text of one trust-check subsection (up to the next one)."""
    start = html.index(f'id="{sid}"')
    end = html.find('id="trust-', start + 10)
    return html_lib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html[start:end if end > 0 else None])))


def test_levels_controls_and_cam_layer_reach_the_report(checked: tuple[Path, Path], tmp_path: Path) -> None:
    run, checks = checked
    data = json.loads(checks.read_text())
    mr = data["checks"]["model_randomization"]["cascading"]
    assert set(mr["controls"]) == {"control_edges", "control_random"}
    assert data["checks"]["model_randomization"]["metrics"] == ["spearman_abs"]
    assert set(mr["null"]) == {"spearman_abs", "spearman"}  # the verdict's readings are always computed
    html_path = build_report(run, tmp_path / "r.html", checks=checks, progress=False, images=2)
    page = parse(html_path)
    html = html_path.read_text()
    for method, row in data["summary"]["methods"].items():
        assert row["model_randomization"] in LEVELS and row["data_randomization"] in LEVELS
        cell = page.verdict[method]["model_randomization"]
        assert cell["text"].strip() == row["model_randomization"]
        css = {"passes": "pass", "partly": "partly", "fails": "fail", "no verdict": "na"}[row["model_randomization"]]
        assert css in cell.get("class", "").split()
    text = _section_text(page, html, "trust-model-randomization")
    assert "control_edges" in text and "control_random" in text and "signed Spearman" in text
    assert ("as expected" in text) and ("No verdict" in text) == (mr["controls_ok"] is False)
    text = _section_text(page, html, "trust-data-randomization")
    assert "random-label model's training accuracy" in text and "control_edges" in text
    cam = data["checks"]["localization"]["cam_layers"]
    text = _section_text(page, html, "trust-localization")
    assert f"were taken at layer {cam['used']}" in text
    assert all(layer in text for layer in cam["layers"])


def test_failed_controls_show_no_verdict(checked: tuple[Path, Path], tmp_path: Path) -> None:
    run, checks = checked
    data = json.loads(checks.read_text())
    casc = data["checks"]["model_randomization"]["cascading"]
    casc["controls_ok"] = False
    casc["controls_reason"] = "the controls did not come out as expected: control_random fails (expected: passes)"
    for entry in casc["methods"].values():
        entry.update(level=None, passed=None, reason="no verdict: " + casc["controls_reason"])
    for row in data["summary"]["methods"].values():
        row["model_randomization"] = "no verdict"
    bad = tmp_path / "checks.json"
    bad.write_text(json.dumps(data))
    html_path = build_report(run, tmp_path / "r.html", checks=bad, progress=False, images=2)
    page = parse(html_path)
    text = _section_text(page, html_path.read_text(), "trust-model-randomization")
    assert "No verdict: the controls did not come out as expected" in text
    for method in data["summary"]["methods"]:
        assert page.verdict[method]["model_randomization"]["text"].strip() == "no verdict"
