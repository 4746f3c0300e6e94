"""`saliencekit demo --quick` end to end: data, training, explanations, checks and the report agree."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from saliencekit.cli import main
from test_report import VERDICT_KEYS, expected_cell, parse


@pytest.mark.slow
def test_demo_quick_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    report = out / "report.html"
    assert f"open the trust report in a browser: {report.resolve()}" in text
    summary = json.loads((out / "demo.json").read_text())
    assert list(summary["timings_s"]) == ["generate", "train", "evaluate", "explain", "check", "report"]
    assert summary["settings"]["epochs"] == 2 and summary["metrics"]["n"] > 0
    assert len(list((out / "data" / "normal").iterdir())) == 40
    for name in ("checkpoint.pt", "metrics.json", "curves.png", "roc.png", "confusion.png", "checks/checks.json"):
        assert (out / "run" / name).is_file(), name
    assert any((out / "explanations").glob("*/comparison.png"))

    # the report's verdict table shows what the checks measured
    checks = json.loads((out / "run" / "checks" / "checks.json").read_text())
    methods = checks["summary"]["methods"]
    page = parse(report)
    assert set(page.verdict) == set(methods) and len(methods) >= 5
    for method, values in methods.items():
        for key in VERDICT_KEYS:
            cell = page.verdict[method][key]
            assert cell["text"].strip() == expected_cell(values[key]), (method, key)
            raw = json.loads(cell["data-value"])
            assert raw == values[key] or math.isclose(raw, values[key], abs_tol=1e-12)
        recommended = page.verdict[method]["recommended"]["text"].strip() == "yes"
        assert recommended == (method in checks["summary"]["recommended"])
    assert "shortcut-warning" not in page.ids  # no marker was planted

    # a second run reuses the data
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    assert "synthetic data (reused)" in capsys.readouterr().out
