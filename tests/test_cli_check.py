"""`saliencekit check` on a tiny run directory trained in the test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from torch import nn

from saliencekit.cli import main
from trust_toys import validate_checks_json, write_blob_folder

ARCH = "trust_cli_test_cnn"


def _tiny(in_channels: int = 1, num_classes: int = 2) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 1 if num_classes == 2 else num_classes))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import torch

    from saliencekit.models import zoo
    from saliencekit.train.fit import TrainConfig, train

    zoo.register_model(ARCH)(_tiny)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("cli_check")
        data = write_blob_folder(root / "data", n_per_class=14)
        train(data, root / "run", TrainConfig(model=ARCH, image_size=32, epochs=2, batch_size=8, device="cpu",
                                               seed=0), progress=False, command="test")
        yield root / "run"
    finally:
        torch.set_num_threads(old)
        zoo._REGISTRY.pop(ARCH, None)


def test_check_writes_checks_json_matching_the_schema(run_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "checks"
    rc = main(["check", str(run_dir), "--out", str(out), "--methods", "gradient,gradcam", "--images", "4",
               "--method-options", "ig_zero=integrated_gradients:baseline=zero,steps=4",
               "--random-label-epochs", "2", "--random-label-images", "8", "--quiet", "--no-figures"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "checks.json" in printed and "recommended:" in printed
    d = json.loads((out / "checks.json").read_text())
    validate_checks_json(d, out, figures_drawn=False)  # the runner tests check the figures
    assert not list(out.rglob("*.png"))
    assert d["run_dir"] == str(run_dir.resolve())
    assert list(d["methods"]) == ["gradient", "gradcam", "ig_zero"]
    assert d["methods"]["ig_zero"]["options"] == {"baseline": "zero", "steps": 4}
    # default: every check that applies; the blob folder has lesion masks, so localization runs too
    assert set(d["checks"]) == {"model_randomization", "data_randomization", "input_invariance", "agreement",
                                "faithfulness", "localization", "complexity"}
    assert all(r["file"].endswith(".png") and r["label_name"] in ("left", "right") for r in d["images"])


def test_check_reports_bad_names_without_traceback(run_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(run_dir), "--out", str(tmp_path), "--checks", "sanity", "--quiet"]) == 2
    assert "unknown check 'sanity'" in capsys.readouterr().err
    assert main(["check", str(run_dir), "--out", str(tmp_path), "--methods", "nope", "--quiet"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing"), "--out", str(tmp_path), "--quiet"]) == 2
    assert "not a saliencekit run directory" in capsys.readouterr().err
    assert main(["check", str(run_dir), "--out", str(tmp_path), "--method-options", "oops", "--quiet"]) == 2
    assert "LABEL=METHOD" in capsys.readouterr().err


def test_randomization_modes_option(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "checks"
    assert main(["check", str(run_dir), "--out", str(out), "--methods", "gradient", "--images", "2",
                 "--checks", "model_randomization", "--randomization-modes", "cascading", "--quiet",
                 "--no-figures"]) == 0
    d = json.loads((out / "checks.json").read_text())
    assert d["settings"]["randomization_modes"] == ["cascading"]
    assert "cascading" in d["checks"]["model_randomization"] and "independent" not in d["checks"]["model_randomization"]
    assert main(["check", str(run_dir), "--out", str(out), "--randomization-modes", "cascading,sideways",
                 "--quiet"]) == 2
    assert "unknown randomisation mode 'sideways'" in capsys.readouterr().err
    assert main(["check", str(run_dir), "--out", str(out), "--randomization-modes", "independent", "--quiet"]) == 2
    assert "must include 'cascading'" in capsys.readouterr().err
