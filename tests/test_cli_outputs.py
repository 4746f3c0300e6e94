"""``saliencekit explain`` with multi-label models, declared outputs, bounded top-k, class lists and failing
models (issue #11)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import saliencekit as sk
from saliencekit.cli import main
from saliencekit.data.preprocess import Preprocessing
from saliencekit.models import LoadedModel
from toy_models import make

SIZE = 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    yy, xx = np.mgrid[:32, :32]
    a = (128 + 90 * np.sin(xx / 4.0) * np.cos(yy / 5.0)).astype(np.uint8)
    path = tmp_path / "imgs" / "img0.png"
    path.parent.mkdir()
    Image.fromarray(a).save(path)
    Image.fromarray(255 - a).save(path.with_name("img1.png"))
    return path


def _run(argv: list[object]) -> int:
    return main([str(a) for a in argv])


def _save(model: nn.Module, path: Path) -> Path:
    torch.save(model, path)
    return path


def _multilabel(sigmoid: bool) -> nn.Module:
    """Four independent labels: 0 and 2 positive (biases), 1 at sigmoid 0.41, 3 negative."""
    net = make("plain", classes=4, dtype=torch.float32, width=6)
    with torch.no_grad():
        net[-1].weight.mul_(0.01)
        net[-1].bias.copy_(torch.tensor([2.0, float(np.log(0.41 / 0.59)), 1.0, -3.0]))
    return nn.Sequential(net, nn.Sigmoid()).eval() if sigmoid else net


@pytest.mark.parametrize("sigmoid", [True, False])
def test_multilabel_model_explains_every_positive_label_with_sigmoid_probabilities(
    sigmoid: bool, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _multilabel(sigmoid)
    path = _save(model, tmp_path / "m.pt")
    out = tmp_path / "out"
    extra = [] if sigmoid else ["--output", "multilabel"]
    assert _run(["explain", "--model-file", path, "--image-size", SIZE, image, "--methods", "gradient",
                 "--classes", "effusion,mass,nodule,edema", "--out", out, "--no-progress", *extra]) == 0
    assert "(predicted effusion, nodule)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["images"][0]
    x = Preprocessing(size=(SIZE, SIZE)).load(image)[None]
    logits = (model[0] if sigmoid else model)(x).detach()[0]
    for c, name in enumerate(["effusion", "mass", "nodule", "edema"]):
        assert abs(entry["probabilities"][name] - float(torch.sigmoid(logits[c]))) < 1e-5
    assert abs(entry["probabilities"]["mass"] - 0.41) < 0.01
    assert entry["positive_labels"] == ["effusion", "nodule"] and entry["explained_classes"] == ["effusion", "nodule"]
    assert summary["output"]["kind"] == "multilabel" and summary["output"]["threshold"] == 0.5
    assert (summary["output"]["final_activation"] is not None) == sigmoid
    with np.load(out / "img0" / "maps.npz") as z:
        assert sorted(z.files) == ["gradient/effusion", "gradient/nodule"]
        bare = model[0] if sigmoid else model
        ref = sk.create_method("gradient", bare, output="multilabel").attribute(x, target=2).maps[0].numpy()
        np.testing.assert_allclose(z["gradient/nodule"], ref, rtol=1e-4, atol=1e-7)  # the logit's gradient

    # A higher threshold: no label positive -> the most probable label is explained, and said to be below it.
    out2 = tmp_path / "out2"
    assert _run(["explain", "--model-file", path, "--image-size", SIZE, image, "--methods", "gradient",
                 "--out", out2, "--no-progress", "--threshold", "0.95", *extra]) == 0
    entry = json.loads((out2 / "summary.json").read_text())["images"][0]
    assert entry["positive_labels"] == [] and entry["explained_classes"] == ["class_0"]
    assert entry["predicted"].startswith("no label >= 0.95 (most probable: class_0")

    # --top-k ranks by sigmoid: 0 (0.88), 2 (0.73), 1 (0.41).
    out3 = tmp_path / "out3"
    assert _run(["explain", "--model-file", path, "--image-size", SIZE, image, "--methods", "gradient",
                 "--out", out3, "--no-progress", "--top-k", 3, *extra]) == 0
    assert json.loads((out3 / "summary.json").read_text())["images"][0]["explained_classes"] == [
        "class_0", "class_2", "class_1"]


def test_sigmoid_model_declared_as_logits_is_refused(image: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = _save(_multilabel(True), tmp_path / "m.pt")
    assert _run(["explain", "--model-file", path, "--image-size", SIZE, image, "--out", tmp_path / "o",
                 "--output", "logits", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "output='logits' was declared, but the model ends in nn.Sigmoid '1'" in err and "Traceback" not in err
    assert _run(["explain", "--model-file", path, "--image-size", SIZE, image, "--out", tmp_path / "o",
                 "--output", "logit", "--no-progress"]) == 2
    assert "valid model outputs: auto, logits, probabilities, multilabel" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_top_k_bounds_and_long_class_lists(image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _save(make("plain", classes=1000, dtype=torch.float32), tmp_path / "m.pt")
    base = ["explain", "--model-file", path, "--image-size", SIZE, image, "--out", tmp_path / "o", "--no-progress"]
    assert _run([*base, "--top-k", 1001]) == 2
    assert "top_k must be an int from 1 to 20" in capsys.readouterr().err
    assert _run([*base, "--target", "dog"]) == 2
    err = capsys.readouterr().err
    assert "unknown target class 'dog'; valid: 1000 classes, e.g. class_0, class_1" in err
    assert "see --list-classes" in err and "class_999" not in err and len(err) < 400
    small = _save(make("plain", classes=3, dtype=torch.float32), tmp_path / "s.pt")
    assert _run(["explain", "--model-file", small, "--image-size", SIZE, image, "--out", tmp_path / "o",
                 "--top-k", 5, "--no-progress"]) == 2
    assert "top_k=5 but the model has 3 classes" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_list_classes(image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(_multilabel(True), tmp_path / "m.pt")
    assert _run(["explain", "--model-file", path, "--image-size", SIZE, image, "--list-classes"]) == 0
    assert capsys.readouterr().out.split() == ["class_0", "class_1", "class_2", "class_3"]
    assert _run(["explain", "--model-file", path, "--classes", "a,b,c,d", "--list-classes"]) == 0
    assert capsys.readouterr().out.split() == ["a", "b", "c", "d"]
    assert _run(["explain", "--model-file", path, "--list-classes"]) == 2
    assert "give an image" in capsys.readouterr().err
    run = SimpleNamespace(model=make("plain", classes=1), preprocessing=Preprocessing(size=(16, 16)),
                          class_names=["normal", "effusion"])
    monkeypatch.setattr("saliencekit.cli.explain._load_run", lambda path, device: LoadedModel(
        run.model, "run", Path(path), run.preprocessing.to_dict(), run.class_names))
    assert _run(["explain", tmp_path / "run", "--list-classes"]) == 0
    assert capsys.readouterr().out.split() == ["normal", "effusion"]


def test_explain_multiple_targets_by_name(image: Path, tmp_path: Path) -> None:
    path = _save(make("plain", classes=3, dtype=torch.float32), tmp_path / "m.pt")
    out = tmp_path / "out"
    assert _run(["explain", "--model-file", path, "--image-size", SIZE, image, "--classes", "a,b,c",
                 "--target", "c,0", "--out", out, "--no-progress"]) == 0
    with np.load(out / "img0" / "maps.npz") as z:
        assert sorted(z.files) == ["gradient/a", "gradient/c"]


class ThreeChannel224(nn.Module):
    """Like a torchvision ViT: RGB only, 224 x 224 only (its patch grid is fixed)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 4, 16, stride=16)
        self.head = nn.Linear(4 * 14 * 14, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        torch._assert(h == 224 and w == 224, f"Wrong image height! Expected 224 but got {h}!")
        return self.head(self.patch(x).reshape(n, -1))


def test_failing_model_forward_is_one_line_naming_the_input_that_works(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A model whose input channels cannot be read off a first convolution: it fails deep in its forward.
    rgb = _save(nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 2)), tmp_path / "rgb.pt")
    assert _run(["explain", "--model-file", rgb, "--image-size", SIZE, image, "--out", tmp_path / "o",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert f"the model failed on input of shape (1, 1, {SIZE}, {SIZE}): RuntimeError:" in err
    assert f"the model runs on input of shape (1, 3, {SIZE}, {SIZE}): try --color" in err

    vit = _save(ThreeChannel224(), tmp_path / "vit.pt")
    assert _run(["explain", "--model-file", vit, image, "--out", tmp_path / "o", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "the model failed on input of shape (1, 3, 256, 256)" in err  # RGB: the loader reads its first conv
    assert "the model runs on input of shape (1, 3, 224, 224): try --image-size 224" in err
    assert _run(["explain", "--model-file", vit, image, "--out", tmp_path / "o", "--no-progress", "--color",
                 "--image-size", 224]) == 0


class LeftHalf(nn.Module):
    """Two labels: label 0 positive when the left half is brighter than the right (it survives per-image
    standardisation), label 1 always positive."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[10.0], [0.0]]))
            self.fc.bias.copy_(torch.tensor([-5.0, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        return self.fc(a[..., : a.shape[-1] // 2].mean((1, 2, 3))[:, None])


def test_images_with_different_numbers_of_positive_labels_in_one_batch(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    left = np.concatenate([200 + rng.integers(0, 50, (16, 8)), rng.integers(0, 50, (16, 8))], axis=1)
    Image.fromarray(left.astype(np.uint8)).save(folder / "bright.png")
    Image.fromarray(left[:, ::-1].astype(np.uint8)).save(folder / "dark.png")
    path = _save(LeftHalf(), tmp_path / "m.pt")
    out = tmp_path / "out"
    assert _run(["explain", "--model-file", path, "--image-size", 16, folder, "--methods", "gradient,gradcam",
                 "--output", "multilabel", "--classes", "bright,any", "--out", out, "--no-progress"]) == 0
    entries = {Path(e["file"]).name: e for e in json.loads((out / "summary.json").read_text())["images"]}
    assert entries["bright.png"]["explained_classes"] == ["bright", "any"]  # most probable first
    assert entries["dark.png"]["explained_classes"] == ["any"]
    with np.load(out / "dark" / "maps.npz") as z:
        assert sorted(z.files) == ["gradcam/any", "gradient/any"]  # one row, named by its label as for every image
    with np.load(out / "bright" / "maps.npz") as z:
        assert sorted(z.files) == ["gradcam/any", "gradcam/bright", "gradient/any", "gradient/bright"]
        x = Preprocessing(size=(16, 16)).load(folder / "bright.png")[None]
        ref = sk.create_method("gradient", LeftHalf(), output="multilabel").attribute(x, target=0).maps[0]
        np.testing.assert_allclose(z["gradient/bright"], ref.numpy(), rtol=1e-4, atol=1e-7)


def test_long_comparison_title_wraps_above_the_panels() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from saliencekit.viz.overlay import comparison_figure

    title = ("img.png | positive: " + ", ".join(f"finding_{i} (0.{90 - i})" for i in range(8)) + " | true: effusion")
    rows = [{"gradcam": torch.rand(16, 16)} for _ in range(8)]
    fig = comparison_figure(torch.rand(1, 16, 16), rows, title=title, row_titles=[f"r{i}" for i in range(8)])
    renderer = FigureCanvasAgg(fig).get_renderer()
    text = fig._suptitle
    assert "\n" in text.get_text()
    top_of_panels = max(ax.get_tightbbox(renderer).y1 for ax in fig.axes if ax.get_visible())
    box = text.get_window_extent(renderer)
    assert box.y0 >= top_of_panels and box.x0 >= 0 and box.x1 <= fig.bbox.width


def test_help_and_method_pages_name_the_output_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    out = capsys.readouterr().out
    for flag in ("--output", "--threshold", "--list-classes", "--top-k", "multilabel_probabilities"):
        assert flag in out
    assert main(["methods", "gradcam"]) == 0
    assert "output = 'auto', threshold = 0.5" in capsys.readouterr().out
