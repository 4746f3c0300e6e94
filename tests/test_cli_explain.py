"""``saliencekit methods`` / ``saliencekit explain``, the overlay helpers and the npz writer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

import saliencekit as sk
from saliencekit.cli import main
from saliencekit.data.preprocess import Preprocessing
from saliencekit.errors import InputError
from saliencekit.methods import registry
from saliencekit.methods.base import Explanation, Method
from saliencekit.models import LoadedModel
from saliencekit.viz.explain_files import find_images
from saliencekit.viz.overlay import comparison_figure, overlay, save_maps_npz
from toy_models import make

SIZE = 20


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A folder with two classes of small greyscale images and a mask folder that must be skipped."""
    root = tmp_path / "imgs"
    yy, xx = np.mgrid[:32, :32]
    for cls, k in (("effusion", 4.0), ("normal", 7.0)):
        (root / cls).mkdir(parents=True)
        (root / "masks" / cls).mkdir(parents=True)
        for i in range(2):
            a = (128 + 90 * np.sin(xx / (k + i)) * np.cos(yy / 5.0)).astype(np.uint8)
            Image.fromarray(a).save(root / cls / f"img{i}.png")
            Image.fromarray((a > 128).astype(np.uint8) * 255).save(root / "masks" / cls / f"img{i}.png")
    return root


@pytest.fixture
def model_file(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = make("plain", classes=3, dtype=torch.float32, width=6)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    return path, model


def _run(argv: list[str]) -> int:
    return main([str(a) for a in argv])


def test_methods_lists_every_method_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["methods"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sk.list_methods()
    for line, name in zip(lines, names):
        assert registry.method_class(name).description in line


def test_methods_name_shows_documentation_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["methods", "integrated_gradients"]) == 0
    out = capsys.readouterr().out
    assert "Sundararajan" in out and "steps = 50" in out and "rule = 'gauss_legendre'" in out
    assert "baseline = 'black'" in out and "satisfies_completeness" in out
    assert _run(["methods", "smoothgrad"]) == 0
    out = capsys.readouterr().out
    assert "samples = 25" in out and "noise = 0.15" in out and "base = 'gradient'" in out


def test_methods_unknown_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["methods", "gradcamm"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'gradcamm'" in err and "integrated_gradients" in err and "Traceback" not in err


def test_explain_with_model_file_writes_overlays_comparison_and_raw_maps(
    images: Path, model_file: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, model = model_file
    out = tmp_path / "out"
    methods = {"ig": {"method": "integrated_gradients", "steps": 8}, "occlusion": {"patch": 6, "stride": 4}}
    code = _run(["explain", "--model-file", path, "--image-size", SIZE, "--classes", "effusion,normal,other",
                 images, "--methods", json.dumps(methods), "--out", out, "--no-progress", "--device", "cpu"])
    assert code == 0
    files = find_images([images])
    assert len(files) == 4 and all("masks" not in f.parts for f in files)
    pre = Preprocessing(size=(SIZE, SIZE))
    x = torch.stack([pre.load(f) for f in files])
    expected = sk.explain(model, x, methods=methods)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["images"]) == 4
    for i, f in enumerate(files):
        folder = out / f"{f.parent.name}__{f.stem}"  # stems collide across the class folders
        for label in methods:
            png = folder / f"{label}.png"
            assert png.is_file() and Image.open(png).size[0] > 100
        assert (folder / "comparison.png").is_file()
        with np.load(folder / "maps.npz") as z:
            assert sorted(z.files) == sorted(methods)
            for label in methods:
                assert z[label].shape == (SIZE, SIZE) and z[label].dtype == np.float32
                np.testing.assert_allclose(z[label], expected[label].maps[i].numpy(), rtol=1e-4, atol=1e-6)
        entry = summary["images"][i]
        with torch.no_grad():
            probs = torch.softmax(model(x[i : i + 1]), 1)[0]
        assert entry["predicted"] == ["effusion", "normal", "other"][int(probs.argmax())]
        assert abs(entry["probabilities"]["other"] - float(probs[2])) < 1e-5
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"


def test_explain_top_k_explains_the_most_probable_classes(
    images: Path, model_file: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, model = model_file
    out = tmp_path / "out"
    image = images / "normal" / "img1.png"
    assert _run(["explain", "--model-file", path, "--image-size", SIZE, image, "--methods", "gradient,gradient_x_input",
                 "--top-k", 2, "--out", out, "--no-progress"]) == 0
    x = Preprocessing(size=(SIZE, SIZE)).load(image)[None]
    with torch.no_grad():
        top = torch.softmax(model(x), 1)[0].argsort(descending=True)[:2].tolist()
    folder = out / "img1"
    with np.load(folder / "maps.npz") as z:
        assert sorted(z.files) == sorted(f"{m}/class_{c}" for m in ("gradient", "gradient_x_input") for c in top)
        for c in top:
            ref = sk.create_method("gradient", model).attribute(x, target=c).maps[0].numpy()
            np.testing.assert_allclose(z[f"gradient/class_{c}"], ref, rtol=1e-4, atol=1e-7)
    for c in top:
        assert (folder / f"gradient_class_{c}.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"][0]["explained_classes"] == [f"class_{c}" for c in top]


def test_explain_torchscript_gradient_family_and_clear_error_for_layer_methods(
    images: Path, model_file: tuple[Path, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, model = model_file
    ts = tmp_path / "model_ts.pt"
    with pytest.warns(FutureWarning):  # torch.jit is deprecated but still loads
        torch.jit.save(torch.jit.script(model), str(ts))
    image = images / "effusion" / "img0.png"
    argv = ["explain", "--model-file", ts, "--image-size", SIZE, image, "--out", tmp_path / "ts", "--no-progress",
            "--target", "1"]
    assert _run([*argv, "--methods", "gradient,smoothgrad"]) == 0
    x = Preprocessing(size=(SIZE, SIZE)).load(image)[None]
    with np.load(tmp_path / "ts" / "img0" / "maps.npz") as z:
        ref = sk.create_method("gradient", model).attribute(x, target=1).maps[0].numpy()
        np.testing.assert_allclose(z["gradient"], ref, rtol=1e-4, atol=1e-7)

    class LayerDummy(Method):
        """A stand-in layer method (registered only for this test)."""

        description = "dummy"
        family = "cam"
        needs_layer: ClassVar[bool] = True
        works_on_torchscript: ClassVar[bool] = False

        def attribute(self, inputs: torch.Tensor, target: object = None) -> Explanation:
            raise AssertionError("must not run on TorchScript")

    LayerDummy.name = "layer_dummy"
    monkeypatch.setitem(registry._REGISTRY, "layer_dummy", LayerDummy)
    assert _run([*argv, "--methods", "gradient,layer_dummy"]) == 2
    err = capsys.readouterr().err
    assert "['layer_dummy']" in err and "TorchScript" in err and "integrated_gradients" in err


def test_explain_run_directory_path(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run directory supplies the model, the preprocessing and the class names."""
    model = make("plain", classes=1, dtype=torch.float32)
    run = SimpleNamespace(model=model, preprocessing=Preprocessing(size=(16, 16)), class_names=["effusion", "normal"])
    seen = {}

    def fake_load_run(path: str, device: str) -> LoadedModel:
        seen["path"] = path
        return LoadedModel(run.model, "run", Path(path), run.preprocessing.to_dict(), run.class_names)

    monkeypatch.setattr("saliencekit.cli.explain._load_run", fake_load_run)
    out = tmp_path / "out"
    image = images / "effusion" / "img0.png"
    assert _run(["explain", tmp_path / "run", image, "--methods", "gradient", "--out", out, "--target", "effusion",
                 "--no-progress"]) == 0
    assert seen["path"] == str(tmp_path / "run")
    x = run.preprocessing.load(image)[None]
    with np.load(out / "img0" / "maps.npz") as z:
        assert z["gradient"].shape == (16, 16)
        ref = sk.create_method("gradient", model).attribute(x, target=0).maps[0].numpy()  # class 0 = -z
        np.testing.assert_allclose(z["gradient"], ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("extra,message", [
    (["--methods", "gradientt"], "unknown method 'gradientt'"),
    (["--methods", "gradient", "--target", "lungs"], "unknown target class 'lungs'"),
    (["--methods", "gradient", "--target", "5"], "target class 5 is out of range"),
    (["--methods", "{bad json"], "not valid JSON"),
    (["--methods", '{"ig": {"method": "integrated_gradients", "stepz": 3}}'], "stepz"),
    (["--methods", "gradient", "--top-k", "0"], "top_k must be an int from 1 to 20"),
    (["--methods", "gradient", "--top-k", "1001"], "top_k must be an int from 1 to 20"),
    (["--methods", "gradient", "--top-k", "2", "--target", "1"], "give a target or top_k, not both"),
])
def test_explain_errors_exit_2_with_a_message(
    images: Path, model_file: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    extra: list[str], message: str,
) -> None:
    path, _ = model_file
    code = _run(["explain", "--model-file", path, "--image-size", SIZE, images / "normal" / "img0.png",
                 "--out", tmp_path / "o", "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_explain_missing_inputs(tmp_path: Path, model_file: tuple[Path, torch.nn.Module],
                                capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = model_file
    assert _run(["explain", "--model-file", path, tmp_path / "nope.png", "--out", tmp_path / "o"]) == 2
    assert "image or folder not found" in capsys.readouterr().err
    assert _run(["explain", "--model-file", tmp_path / "missing.pt", tmp_path, "--out", tmp_path / "o"]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert _run(["explain", tmp_path / "norun", tmp_path, "--out", tmp_path / "o"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    torch.save(make("plain").state_dict(), tmp_path / "sd.pt")
    assert _run(["explain", "--model-file", tmp_path / "sd.pt", tmp_path, "--out", tmp_path / "o"]) == 2
    assert "is a state_dict with keys like 0.weight, 0.bias" in capsys.readouterr().err  # and how to pass --arch


def test_explain_help_documents_every_flag_and_torchscript(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    out = capsys.readouterr().out
    for flag in ("--methods", "--out", "--target", "--layer", "--top-k", "--device", "--batch-size", "--precision",
                 "--model-file", "--image-size", "--color", "--classes", "TorchScript", "gradient_x_input"):
        assert flag in out


# ------------------------------------------------------------------------------------------------ overlays


def test_overlay_draws_grey_image_jet_map_and_colorbar() -> None:
    img = torch.randn(1, 12, 10)
    m = torch.zeros(12, 10)
    m[3, 4] = 5.0
    ax = overlay(img, m, title="t")
    fig = ax.figure
    assert len(fig.axes) == 2  # the image axes and the colour bar
    shown = ax.get_images()
    assert shown[0].get_cmap().name == "gray" and shown[1].get_cmap().name == "jet"
    heat = np.asarray(shown[1].get_array())
    assert heat.max() == 1.0 and heat.min() == 0.0 and heat[3, 4] == 1.0  # min-max normalised
    assert shown[1].get_alpha() == 0.5
    rgb = overlay(np.random.rand(3, 12, 10), np.random.rand(12, 10), colorbar=False, normalization="signed")
    assert rgb.get_images()[0].get_array().shape == (12, 10, 3) and len(rgb.figure.axes) == 1
    with pytest.raises(InputError, match="does not match"):
        overlay(img, torch.zeros(5, 5))
    with pytest.raises(InputError, match="image must have shape"):
        overlay(torch.zeros(2, 12, 10), m)


def _panels(fig: Any) -> list[Any]:
    """The picture panels of a figure (axes showing an image; colour bars excluded), in drawing order."""
    return [a for a in fig.axes if a.get_label() != "<colorbar>"]


def test_comparison_figure_rows_and_title() -> None:
    img = np.random.rand(8, 8)
    fig = comparison_figure(img, [{"a": np.random.rand(8, 8), "b": np.random.rand(8, 8)}, {"a": np.random.rand(8, 8)}],
                            title="predicted: effusion", row_titles=["class 1", "class 0"])
    assert fig._suptitle.get_text() == "predicted: effusion"
    assert [a.get_title() for a in _panels(fig)] == ["image", "a", "b", "image", "a"]
    assert [a.get_ylabel() for a in _panels(fig) if a.get_title() == "image"] == ["class 1", "class 0"]
    with pytest.raises(InputError):
        comparison_figure(img, {})


@pytest.mark.parametrize(("methods", "blocks", "shape"), [(9, 1, (2, 5)), (9, 2, (4, 5)), (3, 1, (1, 4)),
                                                          (6, 1, (2, 4))])
def test_comparison_figure_is_a_grid_without_empty_axes(methods: int, blocks: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    img = rng.random((12, 12))
    labels = [f"method_{k}" for k in range(methods)]
    rows = [{lb: rng.random((12, 12)) for lb in labels} for _ in range(blocks)]
    fig = comparison_figure(img, rows, title="t", row_titles=[f"class {b}" for b in range(blocks)])
    panels = _panels(fig)
    cells = 1 + methods
    assert len(panels) == blocks * cells
    # every panel shows a picture and is visible; the only hidden axes are the image's blank colour-bar room
    assert all(a.get_visible() and a.images for a in panels)
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert sum(a.get_visible() for a in bars) == blocks * methods and len(bars) == blocks * cells
    # the grid: at most 5 columns, the image first in each block, the methods after it row by row
    spec = [a.get_subplotspec().get_topmost_subplotspec() for a in panels]  # a colour bar nests the panel's spec
    gs = spec[0].get_gridspec()
    assert (gs.nrows, gs.ncols) == shape
    per_block = shape[0] // blocks
    for b in range(blocks):
        block = panels[b * cells:(b + 1) * cells]
        assert [a.get_title() for a in block] == ["image", *labels]
        assert block[0].get_ylabel() == f"class {b}"
        spots = [(sp.rowspan.start, sp.colspan.start) for sp in spec[b * cells:(b + 1) * cells]]
        assert spots == [(b * per_block + k // shape[1], k % shape[1]) for k in range(cells)]
    # the same size for every panel (the image keeps room for a colour bar like the overlays)
    widths = [a.get_position().width for a in panels]
    heights = [a.get_position().height for a in panels]
    assert max(widths) - min(widths) < 1e-3 and max(heights) - min(heights) < 1e-3


def test_grid_shape_spreads_panels_evenly() -> None:
    from saliencekit.viz.overlay import grid_shape

    for cells in range(1, 30):
        for most in range(1, 7):
            rows, cols = grid_shape(cells, most)
            assert cols <= most and rows * cols >= cells  # fits, never wider than allowed
            assert rows == -(-cells // most)  # as few rows as the width allows
            assert rows * cols - cells < rows  # at most one empty cell per row
    with pytest.raises(InputError):
        grid_shape(0)


def test_save_maps_npz_roundtrip(tmp_path: Path) -> None:
    e = Explanation("gradient", torch.rand(1, 4, 4), scores=torch.ones(1), targets=torch.zeros(1, dtype=torch.long),
                    predictions=torch.zeros(1))
    arr = np.arange(16.0).reshape(4, 4)
    path = save_maps_npz(tmp_path / "m.npz", {"gradient": e, "raw": arr})
    with np.load(path) as z:
        np.testing.assert_allclose(z["gradient"], e.maps.numpy())
        np.testing.assert_allclose(z["raw"], arr)
        assert z["raw"].dtype == np.float32 and "gradient/scores" in z.files
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_display_normalization_auto_follows_the_family() -> None:
    from saliencekit.methods.normalize import display_normalization

    model = make("plain")
    assert display_normalization(sk.create_method("smoothgrad", model)) == "percentile"
    assert display_normalization(sk.create_method("occlusion", model)) == "minmax"
    assert display_normalization(sk.create_method("occlusion", model), "signed") == "signed"
    with pytest.raises(InputError, match="unknown normalisation 'loud'"):
        display_normalization(sk.create_method("gradient", model), "loud")
