"""The README's "Bring your own model" commands and Python example run as written, on files made here."""

from __future__ import annotations

import json
import os
import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saliencekit.cli import main
from saliencekit.models import create

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("## Bring your own model")
    return text[start:text.index("\n## ", start + 1)]


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", _section(), flags=re.S)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every file the section names, made the way its table says they are made."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="the Keras command needs the keras extra")
    pytest.importorskip("onnx2torch", reason="the ONNX command needs the onnx extra")
    timm = pytest.importorskip("timm", reason="the ViT command needs the timm extra")
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("byom")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 80), dtype=np.uint8)).save(root / "images" / "img0.png")
    torch.manual_seed(0)
    save_file(create("resnet18", in_channels=3, num_classes=2).state_dict(), str(root / "weights.safetensors"))
    torch.save({"state_dict": create("densenet121", in_channels=3, num_classes=14).state_dict(), "epoch": 9},
               root / "training_checkpoint.pth")
    lesson = create("effusion_cnn").eval()
    torch.save(lesson, root / "model.pt")
    x = torch.randn(2, 1, 64, 64)
    program = torch.export.export(lesson, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, root / "model.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(lesson, (x,), str(root / "model.onnx"), input_names=["x"], dynamic_axes={"x": {0: "n"}},
                          dynamo=False, opset_version=17)
    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 1))
    h = inp
    for i, filters in enumerate((8, 16, 32, 64)):
        h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv2d_{i}")(h)
        if i < 3:
            h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Dense(32, activation="relu")(keras.layers.GlobalAveragePooling2D()(h))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(h)).save(root / "best_model.hdf5")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2)
    torch.save(vit.state_dict(), root / "vit.pt")
    _cxr(root)
    return root


def _cxr(root: Path) -> None:
    """data/cxr: two class folders of 64x64 images with lesion masks (a bright square on the effusion images)."""
    rng = np.random.default_rng(1)
    for cls in ("normal", "effusion"):
        for i in range(6):
            a = rng.normal(90, 15, (64, 64))
            mask = np.zeros((64, 64), dtype=np.uint8)
            if cls == "effusion":
                a[40:56, 8 + 4 * i:24 + 4 * i] += 100
                mask[40:56, 8 + 4 * i:24 + 4 * i] = 255
            for folder, arr in ((root / "data" / "cxr" / cls, a), (root / "data" / "cxr" / "masks" / cls, mask)):
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"{cls}_{i}.png")


def test_the_commands_run_as_written(files: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    commands = [line for line in _blocks("bash")[0].splitlines() if line.startswith("saliencekit ")]
    assert len(commands) == 7
    monkeypatch.chdir(files)
    for i, command in enumerate(commands):
        argv = shlex.split(command)[1:]
        argv[argv.index("--out") + 1] = f"maps{i}"
        assert main([*argv, "--no-progress"]) == 0, (command, capsys.readouterr().err)
        assert (files / f"maps{i}" / "img0" / "maps.npz").is_file(), command


def test_the_python_example_runs_as_written(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _blocks("python")[0]
    monkeypatch.chdir(files)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["e"].params["layer"] == "blocks.11.norm1"
    assert scope["t"]["attention_rollout"].layer_maps.shape == (1, 14, 14)
    assert set(scope["maps"]) == {"gradcam", "gradient"} and scope["maps"]["gradcam"].params["layer"] == "conv2d_3"


def test_the_check_and_report_commands_run_as_written(files: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    commands = [line for line in _blocks("bash")[1].splitlines() if line.startswith("saliencekit ")]
    assert [shlex.split(c)[1] for c in commands] == ["check", "check", "report"]
    monkeypatch.chdir(files)
    cheap = ["--images", "2", "--methods", "gradient,gradcam", "--checks",
             "faithfulness,localization,data_randomization", "--random-label-epochs", "1", "--random-label-images", "4",
             "--quiet", "--image-size", "64"]
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "check":  # the same command on a budget: fewer images, checks and pixels
            argv = [a for a in argv if a not in ("--images", "8")] + cheap
        else:
            argv += ["--images", "1", "--quiet"]
        assert main(argv) == 0, (command, capsys.readouterr().err)
    resnet = json.loads((files / "checks_resnet" / "checks.json").read_text())
    assert resnet["model"]["format"] == "safetensors" and "data_randomization" in resnet["checks"]
    keras = json.loads((files / "checks_keras" / "checks.json").read_text())
    assert "cannot be rebuilt" in keras["settings"]["skipped"]["data_randomization"]
    assert "not available for a model file" in (files / "checks_resnet" / "report.html").read_text()


def test_the_check_python_example_runs_as_written(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _blocks("python")[1]
    monkeypatch.chdir(files)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert (files / "checks_py" / "report.html").is_file()
    assert set(scope["result"].checks) == {"model_randomization", "faithfulness"}
