"""Preprocessing: the aspect-ratio policies, the normalisations and the stored form (old checkpoints too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saliencekit.data import Preprocessing, load_mask
from saliencekit.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from saliencekit.errors import DataError

RNG = np.random.default_rng(3)


def _old_to_array(image: Image.Image, grayscale: bool, size: tuple[int, int]) -> np.ndarray:
    """The preprocessing of version 0.1, literally: 8-bit conversion, stretched resize, / 255."""
    image = image.convert("L" if grayscale else "RGB")
    h, w = size
    if image.size != (w, h):
        image = image.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


@pytest.mark.parametrize("grayscale", [True, False])
def test_stretch_is_exactly_the_old_preprocessing_for_8_bit_files(tmp_path: Path, grayscale: bool) -> None:
    rgb = Image.fromarray(RNG.integers(0, 256, (37, 53, 3)).astype(np.uint8))
    rgb.save(tmp_path / "a.png")
    for size in ((16, 16), (20, 31), (37, 53), (64, 80)):
        p = Preprocessing(grayscale=grayscale, size=size, resize="stretch", normalize="unit")
        np.testing.assert_array_equal(p.load(tmp_path / "a.png").numpy(), _old_to_array(rgb, grayscale, size))


def test_pad_keeps_the_whole_image_centred_on_black() -> None:
    img = np.full((20, 40), 255, np.uint8)  # 40 wide, 20 high
    x = Preprocessing(size=16, normalize="unit")(img)[0]
    assert torch.equal(x[4:12], torch.ones(8, 16)) and x[:4].sum() == 0 and x[12:].sum() == 0
    tall = np.full((30, 10), 1.0, np.float32)
    y = Preprocessing(size=(12, 12), normalize="unit")(tall)[0]
    assert torch.equal(y[:, 4:8], torch.ones(12, 4)) and y[:, :4].sum() == 0 and y[:, 8:].sum() == 0
    assert Preprocessing(size=16).note(40, 20) is None  # nothing cut, nothing distorted


def test_crop_cuts_the_centre_and_stretch_distorts() -> None:
    img = np.zeros((20, 60), np.uint8)
    img[:, 20:40] = 255  # the centre square is white, the sides black
    crop = Preprocessing(size=20, normalize="unit", resize="crop")
    assert torch.equal(crop(img), torch.ones(1, 20, 20))
    assert crop.note(60, 20) == "centre-cropped from 60x20 to aspect 1.00: 67% of its width is not seen"
    stretch = Preprocessing(size=20, normalize="unit", resize="stretch")
    assert stretch(img)[0, :, 0].sum() == 0  # the black sides are squeezed in
    assert "stretched from 60x20 (aspect 3.00) to 20x20 (aspect 1.00)" in stretch.note(60, 20)
    assert stretch.note(40, 40) is None and crop.note(200, 199) is None
    _, note = stretch.load_with_note(_png(img))
    assert note is not None and note.startswith("stretched from 60x20")


def _png(arr: np.ndarray) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "x.png"
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("resize", ["pad", "crop", "stretch"])
def test_masks_follow_the_images_geometry(tmp_path: Path, resize: str) -> None:
    mask = np.zeros((30, 50), np.uint8)
    mask[5:25, 10:22] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    p = Preprocessing(size=(16, 24), resize=resize, normalize="unit")
    image = p.load(tmp_path / "m.png")[0]
    m = p.load_mask(tmp_path / "m.png")
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    # the mask lies on the image's bright rectangle (up to the filter's blur at its border)
    bright = image > 0.5
    assert (bright & (m == 1)).sum() / (bright | (m == 1)).sum() > 0.8
    assert image[m == 1].mean() > 0.85 and image[m == 0].mean() < 0.1
    assert torch.equal(m, load_mask(tmp_path / "m.png", (16, 24), resize))


def test_normalisations_against_literal_formulas() -> None:
    rgb = RNG.random((10, 12, 3)).astype(np.float32)
    x = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
    net = Preprocessing(grayscale=False, size=(10, 12), normalize="imagenet")
    ref = (rgb - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(net(rgb).numpy(), ref.transpose(2, 0, 1), atol=1e-6)
    custom = Preprocessing(grayscale=False, size=(10, 12), mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    assert custom.normalize == "custom"
    ref = (rgb - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 2.0])
    np.testing.assert_allclose(custom(rgb).numpy(), ref.transpose(2, 0, 1), atol=1e-6)
    one = Preprocessing(size=(10, 12), normalize="custom", mean=0.5, std=0.25)
    np.testing.assert_allclose(one(rgb[..., 0]).numpy()[0], (rgb[..., 0] - 0.5) / 0.25, atol=1e-6)
    grey_net = Preprocessing(size=(10, 12), normalize="imagenet")
    assert grey_net.mean == (0.449,) and grey_net.std == (0.226,)
    per = Preprocessing(grayscale=False, size=(10, 12))(rgb).double()
    ref = (x.double() - x.double().mean()) / x.double().std(unbiased=False)
    torch.testing.assert_close(per, ref, atol=1e-5, rtol=0)
    assert torch.equal(Preprocessing(grayscale=False, size=(10, 12), normalize="unit")(rgb), x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"normalize": "global"}, "unknown normalisation"),
        ({"normalize": "custom", "mean": 0.5}, "needs both mean and std"),
        ({"normalize": "custom", "mean": (0.1, 0.2), "std": 1.0}, "mean has 2 values; valid: 1 or 1"),
        ({"mean": 0.5, "std": 0.0}, "std must be > 0"),
        ({"normalize": "unit", "mean": 0.5, "std": 1.0}, "only used with normalize='custom'"),
        ({"normalize": "imagenet", "mean": 0.5, "std": 1.0}, "fixes mean and std"),
        ({"resize": "squash"}, "unknown resize policy 'squash'; valid: pad, crop, stretch"),
        ({"normalize": "unit", "standardize": "per_image"}, "disagree"),
        ({"mean": "abc", "std": 1.0}, "mean must be numbers"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        Preprocessing(**kwargs)


def test_stored_form_round_trip_and_old_checkpoints() -> None:
    for p in (Preprocessing(), Preprocessing(grayscale=False, size=(32, 48), normalize="imagenet", resize="crop"),
              Preprocessing(mean=0.2, std=0.1, bit_depth=12)):
        assert Preprocessing.from_dict(p.to_dict()) == p
    old = Preprocessing.from_dict({"grayscale": True, "size": [64, 64], "standardize": "per_image"})
    assert (old.normalize, old.resize) == ("per-image", "stretch")  # the behaviour they were trained with
    assert Preprocessing.from_dict({"grayscale": False, "size": [8, 8], "standardize": "none"}).normalize == "unit"
    assert Preprocessing(standardize="none") == Preprocessing(normalize="unit")


def test_explain_reports_an_aspect_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from saliencekit.cli import main

    for cls in ("effusion", "normal"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(RNG.integers(0, 256, (40, 90)).astype(np.uint8)).save(tmp_path / "d" / cls / f"{i}.png")
    run, data = tmp_path / "run", tmp_path / "d"
    assert main(["train", str(data), "--out", str(run), "--epochs", "1", "--image-size", "64", "--quiet",
                 "--resize", "stretch"]) == 0
    capsys.readouterr()
    image = data / "normal" / "0.png"
    assert main(["explain", str(run), str(image), "--out", str(tmp_path / "maps"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "note: stretched from 90x40 (aspect 2.25) to 64x64 (aspect 1.00)" in out
    import json

    summary = json.loads((tmp_path / "maps" / "summary.json").read_text())
    assert summary["images"][0]["preprocessing_note"].startswith("stretched from 90x40")
