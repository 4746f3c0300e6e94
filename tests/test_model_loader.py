"""The one model loader (``saliencekit.models.load_model``): every format of the table, loaded or refused by name.

Each loaded model must compute what the original computes (outputs and a saliency map compared with the model
that was saved); each refusal must name what the file is and a route that works.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import saliencekit as sk
from saliencekit.cli import main
from saliencekit.errors import InputError, RunDirError
from saliencekit.models import create, list_formats, load_model, save_checkpoint
from saliencekit.models.io import STATE_DICT_KEYS

PREP = {"grayscale": True, "size": [64, 64], "standardize": "per_image"}


def _lesson(seed: int = 0, **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    m = create("effusion_cnn", **kwargs)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))  # non-zero biases: nothing the exporters could fold or share
    return m.eval()


def _same(a: nn.Module, b: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=atol, rtol=1e-4)
    ga = sk.create_method("gradient", a).attribute(x).maps
    gb = sk.create_method("gradient", b).attribute(x).maps
    torch.testing.assert_close(ga, gb, atol=atol * float(gb.abs().max()), rtol=1e-3)


def test_the_table_lists_every_format_once() -> None:
    names = [f.name for f in list_formats()]
    assert names == ["run", "keras", "onnx", "safetensors", "export", "torchscript", "checkpoint", "state_dict",
                     "module"]
    assert {f.name for f in list_formats() if f.needs_arch} == {"safetensors", "state_dict"}
    assert {f.name: f.extra for f in list_formats() if f.extra} == {"keras": "keras", "onnx": "onnx"}


def test_saliencekit_checkpoint_returns_its_preprocessing_and_classes(tmp_path: Path) -> None:
    m = _lesson()
    path = save_checkpoint(tmp_path / "checkpoint.pt", m, "effusion_cnn", {"in_channels": 1, "num_classes": 2},
                           PREP, ["normal", "effusion"])
    loaded = load_model(path)
    assert loaded.format == "checkpoint" and loaded.class_names == ["normal", "effusion"]
    assert loaded.preprocessing == PREP and loaded.input_shape == (1, 64, 64) and loaded.arch == "effusion_cnn"
    assert loaded.preprocessing_or_default().size == (64, 64)
    _same(loaded.model, m, torch.randn(2, 1, 64, 64))


def test_run_directory(tmp_path: Path) -> None:
    m = _lesson()
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoint.pt", m, "effusion_cnn", {"in_channels": 1, "num_classes": 2}, PREP,
                    ["normal", "effusion"])
    (run / "config.json").write_text(json.dumps({"data_root": str(tmp_path / "data")}))
    (run / "split.json").write_text("{}")
    loaded = load_model(run)
    assert loaded.format == "run" and loaded.run is not None and loaded.class_names == ["normal", "effusion"]
    _same(loaded.model, m, torch.randn(2, 1, 64, 64))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a saliencekit run directory"):
        load_model(tmp_path / "empty")
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "saved_model.pb").write_bytes(b"x")
    with pytest.raises(InputError, match="TensorFlow SavedModel.*model.save\\('model.keras'\\)"):
        load_model(tmp_path / "tf")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_whole_module_and_torchscript(tmp_path: Path) -> None:
    m = _lesson()
    x = torch.randn(2, 1, 64, 64)
    torch.save(m, tmp_path / "whole.pt")
    torch.jit.save(torch.jit.trace(m, x), str(tmp_path / "ts.pt"))
    whole, ts = load_model(tmp_path / "whole.pt"), load_model(tmp_path / "ts.pt")
    assert (whole.format, ts.format) == ("module", "torchscript")
    assert whole.input_shape == (1, None, None) and whole.preprocessing is None and whole.class_names is None
    _same(whole.model, m, x)
    _same(ts.model, m, x)
    torch.save({"model": m, "epoch": 3}, tmp_path / "dict_with_module.pt")
    assert load_model(tmp_path / "dict_with_module.pt").format == "module"
    with pytest.raises(InputError, match="carries its own architecture; drop --arch resnet18"):
        load_model(tmp_path / "whole.pt", arch="resnet18")


class _LocalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((1, 2, 3))[:, None]


def test_pickled_module_whose_class_is_gone_is_refused_with_routes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "_LocalNet", _LocalNet, raising=False)
    torch.save(_LocalNet(), tmp_path / "net.pt")
    monkeypatch.delattr(sys.modules[__name__], "_LocalNet")
    with pytest.raises(InputError, match="class cannot be imported.*state_dict.*--arch NAME.*torch.export"):
        load_model(tmp_path / "net.pt")


def test_torch_export_program_and_a_static_batch_refused(tmp_path: Path) -> None:
    m = _lesson()
    x = torch.randn(2, 1, 64, 64)
    program = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = load_model(tmp_path / "model.pt2")
    assert loaded.format == "export" and loaded.input_shape == (1, 64, 64)
    _same(loaded.model, m, torch.randn(3, 1, 64, 64))
    # the module tree survives, so CAMs address the layers by their original names
    cam = sk.create_method("gradcam", loaded.model, layer="features.conv6").attribute(x)  # 2 x 2 at 64 x 64
    ref = sk.create_method("gradcam", m, layer="features.conv6").attribute(x)
    torch.testing.assert_close(cam.maps, ref.maps, atol=1e-6, rtol=1e-4)
    torch.export.save(torch.export.export(m, (x,)), tmp_path / "static.pt2")
    with pytest.raises(InputError, match="exactly 2 image.*Dim\\('batch'\\)"):
        load_model(tmp_path / "static.pt2")


@pytest.mark.parametrize("wrap", [None, *STATE_DICT_KEYS])
def test_state_dict_and_checkpoint_dicts_with_arch(tmp_path: Path, wrap: str | None) -> None:
    m = _lesson()
    state = m.state_dict()
    torch.save(state if wrap is None else {wrap: state, "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "w.pt")
    loaded = load_model(tmp_path / "w.pt", arch="effusion_cnn")
    assert loaded.format == "state_dict" and loaded.arch_kwargs == {"in_channels": 1, "num_classes": 2}
    _same(loaded.model, m, torch.randn(2, 1, 64, 64))


def test_state_dict_without_arch_names_its_keys_and_the_route(tmp_path: Path) -> None:
    torch.save({"state_dict": _lesson().state_dict()}, tmp_path / "w.pt")
    with pytest.raises(InputError, match="is a state_dict \\(under 'state_dict'\\) with keys like features.conv1"
                                         ".weight.*pass --arch NAME.*saliencekit models"):
        load_model(tmp_path / "w.pt")


def test_wrapper_prefix_is_stripped_and_noted(tmp_path: Path) -> None:
    m = _lesson()
    torch.save({f"module.{k}": v for k, v in m.state_dict().items()}, tmp_path / "ddp.pt")
    loaded = load_model(tmp_path / "ddp.pt", arch="effusion_cnn")
    assert any("'module.'" in n for n in loaded.notes)
    _same(loaded.model, m, torch.randn(1, 1, 64, 64))


def test_torchvision_weights_channels_and_classes_from_the_file_or_flags(tmp_path: Path) -> None:
    torch.manual_seed(1)
    rgb14 = create("resnet18", in_channels=3, num_classes=14).eval()  # e.g. a CheXNet-like 14-label head
    torch.save(rgb14.state_dict(), tmp_path / "r.pt")
    inferred = load_model(tmp_path / "r.pt", arch="resnet18")
    assert inferred.arch_kwargs == {"in_channels": 3, "num_classes": 14}
    _same(inferred.model, rgb14, torch.randn(2, 3, 32, 32))
    flags = load_model(tmp_path / "r.pt", arch="resnet18", in_channels=3, num_classes=14)
    _same(flags.model, rgb14, torch.randn(1, 3, 32, 32))
    with pytest.raises(InputError, match="do not fit --arch resnet18 \\(in_channels=1, num_classes=14\\): size "
                                         "mismatch: conv1.weight \\(file \\(64, 3, 7, 7\\), model "
                                         "\\(64, 1, 7, 7\\)\\)"):
        load_model(tmp_path / "r.pt", arch="resnet18", in_channels=1)
    with pytest.raises(InputError, match="missing key\\(s\\): conv1.weight.*unexpected key\\(s\\): features.0.weight"):
        torch.save(create("vgg11", in_channels=3, num_classes=3).state_dict(), tmp_path / "vgg.pt")
        load_model(tmp_path / "vgg.pt", arch="resnet18")
    with pytest.raises(sk.models.zoo.UnknownNameError, match="resnet19"):
        load_model(tmp_path / "r.pt", arch="resnet19")


def test_two_logit_softmax_head_for_two_classes(tmp_path: Path) -> None:
    torch.manual_seed(2)
    two = create("resnet18", in_channels=3, num_classes=2, outputs=2).eval()
    torch.save(two.state_dict(), tmp_path / "two.pt")
    for kwargs in ({}, {"num_classes": 2}):
        loaded = load_model(tmp_path / "two.pt", arch="resnet18", **kwargs)
        assert loaded.arch_kwargs["outputs"] == 2
        _same(loaded.model, two, torch.randn(1, 3, 32, 32))


def test_safetensors_with_arch(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    m = _lesson()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "m.safetensors"))
    with pytest.raises(InputError, match="is a safetensors with keys like .*pass --arch NAME"):
        load_model(tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors", arch="effusion_cnn")
    assert loaded.format == "safetensors"
    _same(loaded.model, m, torch.randn(2, 1, 64, 64))
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_model(tmp_path / "bad.safetensors", arch="effusion_cnn")


def test_timm_architecture_by_name(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install saliencekit[timm]")
    torch.manual_seed(3)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32).eval()
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    loaded = load_model(tmp_path / "vit.pt", arch="timm:vit_tiny_patch16_224", img_size=32)
    assert loaded.arch_kwargs == {"in_channels": 3, "num_classes": 3, "img_size": 32}
    assert loaded.input_shape == (3, 32, 32) and loaded.preprocessing_or_default().size == (32, 32)  # its grid
    assert loaded.preprocessing_or_default().normalize == "imagenet"
    _same(loaded.model, vit, torch.randn(1, 3, 32, 32))


def test_unknown_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model file not found"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        load_model(tmp_path / "empty.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="none of the supported formats; valid: a run directory.*Keras"):
        load_model(tmp_path / "notes.txt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(InputError, match="holds a dict with keys epoch, lr and no model or weights"):
        load_model(tmp_path / "meta.pt")


# ------------------------------------------------------------------------------------------------------ ONNX


def _onnx(tmp_path: Path, m: nn.Module, dynamo: bool) -> Path:
    pytest.importorskip("onnx2torch", reason="ONNX support is an optional extra: pip install saliencekit[onnx]")
    path = tmp_path / f"m_{'dynamo' if dynamo else 'legacy'}.onnx"
    x = torch.randn(2, 1, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(m, (x,), str(path), input_names=["x"], dynamic_shapes=({0: torch.export.Dim("n")},),
                              verbose=False)
        else:
            torch.onnx.export(m, (x,), str(path), input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False,
                              opset_version=17)
    return path


@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_exports_convert_and_explain_like_the_original(tmp_path: Path, dynamo: bool) -> None:
    m = _lesson(4)
    torch.manual_seed(0)
    with torch.no_grad():
        m.features.conv2.bias.copy_(m.features.conv1.bias[:8])  # equal tensors: the exporter shares them
    loaded = load_model(_onnx(tmp_path, m, dynamo))
    assert loaded.format == "onnx" and loaded.input_shape == (1, 64, 64)
    assert any("checked against onnxruntime" in n for n in loaded.notes)
    x = torch.randn(3, 1, 64, 64)
    _same(loaded.model, m, x)
    conv6 = [n for n, mod in loaded.model.named_modules() if isinstance(mod, nn.Conv2d)][-2]  # 2 x 2 at 64 x 64
    ours = sk.create_method("gradcam", loaded.model, layer=conv6).attribute(x).maps
    ref = sk.create_method("gradcam", m, layer="features.conv6").attribute(x).maps
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-3)


def test_onnx_conversion_that_differs_from_onnxruntime_is_refused(tmp_path: Path, monkeypatch) -> None:
    path = _onnx(tmp_path, _lesson(), dynamo=False)
    import onnx2torch

    real = onnx2torch.convert

    def off_by_one(proto: object) -> nn.Module:
        inner = real(proto)
        return nn.Sequential(inner, _AddOne())

    monkeypatch.setattr(onnx2torch, "convert", off_by_one)
    with pytest.raises(InputError, match="differs from onnxruntime"):
        load_model(path)


class _AddOne(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def test_onnx_without_the_extra_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # import fails as if not installed
    with pytest.raises(InputError, match="pip install saliencekit\\[onnx\\]"):
        load_model(tmp_path / "m.onnx")


# ------------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def image(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "imgs" / "a.png"
    path.parent.mkdir()
    Image.fromarray(rng.integers(0, 255, (80, 80), dtype=np.uint8)).save(path)
    return path


def _explain_cli(model_args: list[object], image: Path, out: Path, *extra: object) -> int:
    argv = ["explain", *model_args, image, "--methods", "gradient,gradcam", "--out", out, "--no-progress", *extra]
    return main([str(a) for a in argv])


def test_cli_explains_a_checkpoint_a_state_dict_with_arch_and_safetensors(tmp_path: Path, image: Path,
                                                                          capsys) -> None:
    from safetensors.torch import save_file

    m = _lesson()
    save_checkpoint(tmp_path / "checkpoint.pt", m, "effusion_cnn", {"in_channels": 1, "num_classes": 2}, PREP,
                    ["normal", "effusion"])
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    save_file(m.state_dict(), str(tmp_path / "m.safetensors"))
    x = sk.models.LoadedModel(m, "x", tmp_path, PREP).preprocessing_or_default().load(image)[None]
    ref = sk.create_method("gradient", m).attribute(x).maps[0].numpy()
    cases = [(["--model-file", tmp_path / "checkpoint.pt"], ()),
             (["--model-file", tmp_path / "sd.pt", "--arch", "effusion_cnn"], ("--image-size", 64)),
             (["--model-file", tmp_path / "m.safetensors", "--arch", "effusion_cnn", "--in-channels", 1],
              ("--image-size", 64, "--classes", "normal,effusion"))]
    for i, (model_args, extra) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert _explain_cli(model_args, image, out, *extra) == 0, capsys.readouterr().err
        with np.load(out / "a" / "maps.npz") as z:
            np.testing.assert_allclose(z["gradient"], ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
        summary = json.loads((out / "summary.json").read_text())
        assert set(summary["images"][0]["probabilities"]) == ({"class_0", "class_1"} if i == 1
                                                               else {"normal", "effusion"})
    assert _explain_cli(["--model-file", tmp_path / "sd.pt"], image, tmp_path / "o") == 2
    assert "pass --arch NAME" in capsys.readouterr().err
    assert _explain_cli(["--model-file", tmp_path / "sd.pt", "--arch", "resnet18"], image, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "do not fit --arch resnet18" in err and "missing key(s): conv1.weight" in err and "Traceback" not in err


def test_cli_flags_of_model_files_are_refused_with_a_run_directory(tmp_path: Path, image: Path, capsys) -> None:
    (tmp_path / "run").mkdir()
    assert main(["explain", str(tmp_path / "run"), str(image), "--out", str(tmp_path / "o"), "--arch",
                 "resnet18"]) == 2
    assert "--arch only apply with --model-file" in capsys.readouterr().err
