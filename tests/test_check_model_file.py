"""``saliencekit check --model-file MODEL DATA`` and ``saliencekit report`` on its result (issue #11): the checks of a
model file on a data folder equal those of the same model as a run directory on the same images; data randomisation
trains on other images of the folder when the architecture can be rebuilt and is skipped by name otherwise; the
report reopens the model file and data, and says that training and test performance are not available."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import saliencekit as sk
from saliencekit.cli import main
from saliencekit.errors import InputError
from saliencekit.run import load_run
from test_checks_outputs import _numbers, _same
from trust_toys import write_blob_folder

COMMON = ["--images", "4", "--methods", "gradient,gradcam", "--randomization-modes", "cascading", "--quiet",
          "--no-figures"]
CHECKS = "model_randomization,input_invariance,agreement,faithfulness,localization"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A run trained on blob images (left / right with lesion masks), and a data folder holding exactly its test
    images (with their masks), in the same order."""
    tmp = tmp_path_factory.mktemp("mf")
    data = write_blob_folder(tmp / "data", n_per_class=12)
    run_dir = tmp / "run"
    assert main(["train", str(data), "--out", str(run_dir), "--epochs", "2", "--image-size", "64", "--batch-size",
                 "8", "--quiet", "--classes", "left,right"]) == 0
    run = load_run(run_dir)
    test_only = tmp / "test_only"
    for rel in [run.dataset("test").sample(i).relpath for i in range(len(run.dataset("test")))]:
        for src, dst in ((data / rel, test_only / rel), (data / "masks" / rel, test_only / "masks" / rel)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    return data, run_dir, test_only


def _check(argv: list[str], out: Path) -> dict:
    assert main(["check", *COMMON, *argv, "--out", str(out)]) == 0  # flags in argv override COMMON
    return json.loads((out / "checks.json").read_text())


def test_checks_of_a_model_file_equal_those_of_its_run_directory(trained, tmp_path: Path) -> None:
    _, run_dir, test_only = trained
    a = _check([str(run_dir), "--checks", CHECKS], tmp_path / "a")
    b = _check(["--model-file", str(run_dir / "checkpoint.pt"), str(test_only), "--checks", CHECKS], tmp_path / "b")
    # bare weights with --arch and the preprocessing flags: the same model and inputs
    weights = tmp_path / "weights.pt"
    torch.save(load_run(run_dir).model.state_dict(), weights)
    c = _check(["--model-file", str(weights), "--arch", "effusion_cnn", "--image-size", "64", "--classes",
                "left,right", str(test_only), "--checks", CHECKS], tmp_path / "c")
    assert a["run_dir"] and "model" not in a
    assert b["run_dir"] is None and b["model"]["format"] == "checkpoint" and c["model"]["format"] == "state_dict"
    for other in (b, c):
        assert [r["file"] for r in other["images"]] == [r["file"] for r in a["images"]]
        _same(_numbers(a["images"]), _numbers(other["images"]))
        _same(_numbers(a["checks"]), _numbers(other["checks"]))
        assert other["summary"]["methods"].keys() == a["summary"]["methods"].keys()
        assert other["summary"]["recommended"] == a["summary"]["recommended"]
    assert c["model"]["load"]["arch"] == "effusion_cnn" and c["model"]["class_names"] == ["left", "right"]


def test_data_randomisation_of_a_model_file(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, run_dir, test_only = trained
    model = load_run(run_dir).model
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    extra = ["--checks", "data_randomization", "--random-label-epochs", "2", "--random-label-images", "6"]
    d = _check(["--model-file", str(weights), "--arch", "effusion_cnn", "--image-size", "64", str(data), *extra],
               tmp_path / "a")
    assert d["settings"]["checks"] == ["data_randomization"]
    assert d["checks"]["data_randomization"]["training"]["images"] == 6  # other images than the 4 checked
    assert "the model file names no classes" in capsys.readouterr().out  # the assumed class order is said
    # only the checked images in the folder: nothing left to train on
    d = _check(["--model-file", str(run_dir / "checkpoint.pt"), str(test_only), *extra], tmp_path / "b")
    assert "data_randomization" not in d["checks"]
    assert "too few to train a random-label model" in d["settings"]["skipped"]["data_randomization"]
    # a TorchScript model's architecture cannot be rebuilt: skipped with the route
    script = tmp_path / "model.ts"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 64, 64)), str(script))
    d = _check(["--model-file", str(script), "--image-size", "64", "--output", "logits", str(data), *extra,
                "--methods", "gradient"], tmp_path / "c")
    reason = d["settings"]["skipped"]["data_randomization"]
    assert "torchscript model's architecture cannot be rebuilt" in reason and "--arch NAME" in reason


def test_report_of_a_model_file(trained, tmp_path: Path) -> None:
    data, run_dir, _ = trained
    weights = tmp_path / "w.pt"
    torch.save(load_run(run_dir).model.state_dict(), weights)
    checks = tmp_path / "checks"
    assert main(["check", "--model-file", str(weights), "--arch", "effusion_cnn", "--image-size", "64", "--classes",
                 "left,right", str(data), "--out", str(checks), "--checks", "faithfulness,localization",
                 "--images", "4", "--methods", "gradient", "--quiet"]) == 0
    assert main(["report", str(checks), "--images", "2", "--quiet"]) == 0
    page = (checks / "report.html").read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]+"', "", page)))
    assert f"Model file {weights}" in text
    for section in ("training", "performance"):
        part = page[page.index(f'id="{section}"'):]
        assert f'id="{section}-unavailable"' in part[:2000] and "not available for a model file" in part[:2000]
    expl = page[page.index('id="explanations"'):page.index('id="trust"')]
    assert expl.count("<figure") == 2 and "checked images" in expl
    data_part = page[page.index('id="data"'):page.index('id="training"')]
    assert "left" in data_part and "no train / test split" in data_part
    assert "Relevance mass" in page[page.index('id="verdict"'):]
    # the same from Python, and the data folder moved: reopened with data=
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    out = sk.build_report(checks=checks, data=moved, images=1, progress=False, out_html=tmp_path / "r.html")
    assert out == tmp_path / "r.html" and str(moved) in out.read_text()
    # a model file that is gone: the report is still written, the explanations say why
    weights.unlink()
    out = sk.build_report(checks=checks, images=1, progress=False, out_html=tmp_path / "gone.html")
    assert "could not be reopened" in out.read_text()


def test_bad_model_file_commands_are_one_line(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, run_dir, _ = trained
    out = str(tmp_path / "x")
    cases = [
        (["check", "--model-file", str(run_dir / "checkpoint.pt"), "--out", out], "give the data folder"),
        (["check", str(run_dir), "--labels", "x.csv", "--out", out], "only apply with --model-file"),
        (["check", "--model-file", str(run_dir / "checkpoint.pt"), str(data), "--classes", "a,b", "--out", out],
         "class folder(s) ['left', 'right'] of"),
        (["check", "--model-file", str(run_dir / "checkpoint.pt"), str(data), "--data", str(data), "--out", out],
         "--data moves a run directory's data folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    with pytest.raises(InputError, match="give a run directory, or the checks"):
        sk.build_report()


def test_onnx_export_and_torchscript_files(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ONNX is checked (data randomisation skipped by name with the route); a static-batch torch.export program and
    CAMs on TorchScript are refused in one line (exit 2) with what works; the model files are never changed."""
    import hashlib

    pytest.importorskip("onnx2torch", reason="ONNX model files need the onnx extra")
    data, run_dir, _ = trained
    model = load_run(run_dir).model
    x = torch.zeros(1, 1, 64, 64)
    onnx_file, pt2, script = tmp_path / "m.onnx", tmp_path / "m.pt2", tmp_path / "m.ts"
    torch.onnx.export(model, (x,), str(onnx_file), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    torch.export.save(torch.export.export(model, (x,)), pt2)
    torch.jit.save(torch.jit.trace(model, x), str(script))
    digest = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in (onnx_file, pt2, script)}
    d = _check(["--model-file", str(onnx_file), "--image-size", "64", str(data), "--checks",
                "faithfulness,data_randomization", "--methods", "gradient", "--images", "2"], tmp_path / "onnx")
    assert d["model"]["format"] == "onnx" and "faithfulness" in d["checks"]
    assert "onnx model's architecture cannot be rebuilt" in d["settings"]["skipped"]["data_randomization"]
    capsys.readouterr()
    for argv, message in (([str(pt2)], "re-export with a dynamic batch"),
                          ([str(script), "--methods", "gradcam"], "TorchScript models do not support")):
        assert main(["check", "--model-file", *argv, "--image-size", "64", str(data), "--out", str(tmp_path / "x"),
                     "--checks", "faithfulness", "--quiet", "--no-figures"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x" / "checks.json").exists()
    assert digest == {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in digest}


def test_layer_sizes_are_read_as_the_cams_read_them() -> None:
    """The localisation check's layer table: a Keras (channels-last) layer's rows and columns, not (W, C)."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="Keras models need the keras extra")
    from saliencekit.models import KerasClassifier
    from saliencekit.trust.localization import cam_stages

    inp = keras.Input((40, 40, 1))
    h = keras.layers.MaxPooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(inp))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(16, 3, activation="relu")(h))
    model = KerasClassifier(keras.Model(inp, keras.layers.Dense(2)(h)))
    assert [hw for _, hw in cam_stages(model, torch.zeros(1, 1, 40, 40))] == [(38, 38), (19, 19), (17, 17)]


def test_shap_baselines_of_a_model_file_are_uniform_in_check_and_report(trained, tmp_path: Path) -> None:
    """A model file's data folder is not training data: expected gradients' 'auto' baselines are uniform noise in its
    check and in its report (a run directory's training images are drawn otherwise), and 'training' is refused."""
    data, run_dir, _ = trained
    checks = tmp_path / "checks"
    assert main(["check", "--model-file", str(run_dir / "checkpoint.pt"), str(data), "--out", str(checks),
                 "--checks", "faithfulness", "--images", "2", "--quiet", "--no-figures", "--methods",
                 '{"eg": {"method": "expected_gradients", "samples": 2}}']) == 0
    assert main(["report", str(checks), "--images", "1", "--quiet"]) == 0
    page = (checks / "report.html").read_text()
    assert "Explaining failed" not in page and "uniform noise" in page
    assert main(["check", "--model-file", str(run_dir / "checkpoint.pt"), str(data), "--out", str(tmp_path / "t"),
                 "--checks", "faithfulness", "--images", "2", "--methods",
                 '{"eg": {"method": "expected_gradients", "samples": 2, "baselines": "training"}}', "--quiet",
                 "--no-figures"]) == 2
