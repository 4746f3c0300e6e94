"""``saliencekit audit`` from the command line (store + analysis + page; one-line errors with exit status 2) and
the demo's audit step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("zarr", reason="the audit store needs zarr v3 (pip install saliencekit[audit])")
pytest.importorskip("sklearn", reason="SpRAy needs scikit-learn (pip install saliencekit[audit])")

from audit_toys import shared_audit_run
from saliencekit.cli import main


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return shared_audit_run(tmp_path_factory)


def test_cli_audit_writes_store_analysis_and_page(toy: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run, data = toy
    out = tmp_path / "audit"
    args = ["audit", str(run), str(data), "--out", str(out), "--methods", "gradient",
            "--method-options", "sg=smoothgrad:samples=2", "--chunk-size", "6", "--device", "cpu", "--quiet",
            "--workers", "0", "--target", "effusion"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "audited 16 images in 3 chunks" in text and "images/s" in text
    assert "gradient / effusion: not analysed (only 16 images explained for effusion; at least 20 needed)" in text
    assert (out / "maps.zarr" / "zarr.json").is_file() and (out / "audit.html").is_file()
    spray = json.loads((out / "spray.json").read_text())
    assert set(spray["methods"]) == {"gradient", "sg"}
    from saliencekit.audit import open_store

    store = open_store(out)
    assert list(store.targets[:]) == [1] * 16 and store.identity["target"] == 1
    # the same command again: nothing to compute, the analysis and the page again
    assert main(args) == 0
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "message"), [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--target", "cat"], "unknown target 'cat'"),
    (["--methods", "{bad json"], "--methods is not valid JSON"),
])
def test_cli_errors_are_one_line(toy: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 extra: list[str], message: str) -> None:
    run, data = toy
    assert main(["audit", str(run), str(data), "--out", str(tmp_path / "a"), "--quiet", "--device", "cpu",
                 *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "a" / "maps.zarr").exists()


def test_cli_missing_data_and_bad_run(toy: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    run, data = toy
    assert main(["audit", str(run), str(tmp_path / "nope"), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["audit", str(data), str(data), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_demo_audit_step(toy: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from saliencekit.pipeline import AUDIT_STEP, DEMO_STEPS, DemoContext, DemoSettings, audit_step, demo_steps

    run, data = toy
    ctx = DemoContext(out=tmp_path, settings=DemoSettings.quick(), shortcut=0.5, progress=False, device="cpu")
    shutil.copytree(run, ctx.run_dir)
    shutil.copytree(data, ctx.data_dir)
    audit_step(ctx)
    assert ctx.outputs["audit page"].is_file() and (tmp_path / "audit" / "spray.json").is_file()
    audit_step(ctx)  # a second demo run in the same folder starts the store again
    assert AUDIT_STEP.func is audit_step and AUDIT_STEP not in DEMO_STEPS  # only the --shortcut demo audits
    names = [s.name for s in demo_steps(0.8)]
    assert names[-2:] == ["audit", "report"] and [s.name for s in demo_steps(0.0)] == [s.name for s in DEMO_STEPS]
    assert [s.name for s in demo_steps(0.8, DEMO_STEPS[:3])] == ["generate", "train", "evaluate"]


def test_find_audit_page_matches_the_model(toy: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    import torch

    from saliencekit.audit.page import find_audit_page
    from saliencekit.run import load_run

    run_dir, data = toy
    run = load_run(run_dir)
    assert find_audit_page(run, [tmp_path / "nothing"]) is None
    assert main(["audit", str(run_dir), str(data), "--out", str(tmp_path / "audit"), "--methods", "gradient",
                 "--quiet", "--device", "cpu", "--workers", "0"]) == 0
    assert find_audit_page(run, [tmp_path / "x", tmp_path / "audit"]) == tmp_path / "audit" / "audit.html"
    other = tmp_path / "run2"
    shutil.copytree(run_dir, other)
    moved = load_run(other)
    with torch.no_grad():
        next(moved.model.parameters()).add_(1.0)  # another model: its report must not link this audit
    assert find_audit_page(moved, [tmp_path / "audit"]) is None


def test_report_links_the_audit_of_its_model(toy: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from saliencekit.viz.report import build_report

    run, data = toy
    shutil.copytree(run, tmp_path / "run")
    report = build_report(tmp_path / "run", images=0, progress=False)
    assert 'id="audit-link"' not in report.read_text()  # no audit yet
    assert main(["audit", str(tmp_path / "run"), str(data), "--out", str(tmp_path / "audit"), "--methods",
                 "gradient", "--quiet", "--device", "cpu", "--workers", "0"]) == 0
    html = build_report(tmp_path / "run", images=0, progress=False).read_text()
    assert 'id="audit-link"' in html and 'href="../audit/audit.html"' in html and "no cluster flagged" in html
    moved = build_report(tmp_path / "run", tmp_path / "elsewhere" / "r.html", images=0, progress=False,
                         audit=tmp_path / "audit").read_text()
    assert 'href="../audit/audit.html"' in moved
    assert 'id="audit-link"' not in build_report(tmp_path / "run", images=0, progress=False,
                                                 audit=tmp_path / "nothing").read_text()
