"""`saliencekit data synth` / `data show` and the sample plot behind `show`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saliencekit.cli import main
from saliencekit.data.augment import Augmentation
from saliencekit.data.synthetic import generate
from saliencekit.viz.samples import plot_samples


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "cxr"
    generate(root, per_class=5, size=64, seed=1, shortcut=1.0, progress=False)
    return root


def test_synth_writes_the_dataset_and_one_summary_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cxr"
    rc = main(["data", "synth", str(out), "--per-class", "3", "--size", "64", "--seed", "2", "--quiet"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "3 effusion" in lines[0] and "3 normal" in lines[0] and str(out) in lines[0]
    assert len(list((out / "effusion").glob("*.png"))) == 3
    assert len(list((out / "masks" / "normal").glob("*.png"))) == 3
    assert (out / "dataset.json").is_file()
    assert not (out / "shortcut_masks").exists()


def test_synth_shortcut_flags(tmp_path: Path) -> None:
    out = tmp_path / "cxr"
    argv = ["data", "synth", str(out), "--per-class", "4", "--size", "64", "--quiet"]
    assert main([*argv, "--shortcut", "0.5", "--shortcut-class", "normal"]) == 0
    marked = [p.name for p in (out / "shortcut_masks" / "normal").glob("*.png") if np.asarray(Image.open(p)).any()]
    assert len(marked) == 2
    assert not any(np.asarray(Image.open(p)).any() for p in (out / "shortcut_masks" / "effusion").glob("*.png"))
    assert main([*argv, "--overwrite"]) == 0
    assert not (out / "shortcut_masks").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--per-class", "0"], "per_class"),
        (["--size", "16"], "size"),
        (["--shortcut", "2"], "shortcut"),
        (["--shortcut-class", "pneumonia"], "pneumonia"),
    ],
)
def test_synth_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, args: list, needle: str) -> None:
    rc = main(["data", "synth", str(tmp_path / "x"), "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and "Traceback" not in err


def test_show_writes_a_figure(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fig_path = tmp_path / "fig.png"
    rc = main(["data", "show", str(dataset), "--per-class", "2", "--image-size", "64", "--out", str(fig_path)])
    assert rc == 0 and str(fig_path) in capsys.readouterr().out
    with Image.open(fig_path) as im:
        assert im.size[0] > 200 and im.size[1] > 200
    aug_path = tmp_path / "aug.png"
    argv = ["data", "show", str(dataset), "--augment", "--no-masks", "--per-class", "1", "--out", str(aug_path)]
    assert main(argv) == 0
    assert aug_path.is_file()


def test_show_bad_folders_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    assert main(["data", "show", str(missing), "--out", str(tmp_path / "f.png")]) == 2
    assert "nowhere" in capsys.readouterr().err
    one = tmp_path / "one"
    (one / "effusion").mkdir(parents=True)
    Image.new("L", (8, 8)).save(one / "effusion" / "a.png")
    assert main(["data", "show", str(one), "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert "only 1 class" in err and "Traceback" not in err
    assert not (tmp_path / "f.png").exists()


def test_help_documents_every_flag(capsys: pytest.CaptureFixture) -> None:
    for cmd, flags in [
        ("synth", ["--per-class", "--size", "--seed", "--shortcut", "--shortcut-class", "--overwrite", "--quiet"]),
        ("show", ["--out", "--per-class", "--masks", "--no-masks", "--augment", "--seed", "--lung", "--image-size"]),
    ]:
        with pytest.raises(SystemExit):
            main(["data", cmd, "--help"])
        text = capsys.readouterr().out
        for flag in flags:
            assert flag in text, (cmd, flag)


def test_plot_samples_grid_titles_and_mask_contours(dataset: Path) -> None:
    fig = plot_samples(dataset, per_class=3, masks=True, seed=0)
    axes = fig.get_axes()
    assert len(axes) == 6
    titles = [ax.get_title() for ax in axes]
    assert all(t.startswith("effusion\neffusion_") for t in titles[:3])
    assert all(t.startswith("normal\nnormal_") for t in titles[3:])
    # every effusion shows its lesion and (shortcut=1.0) its marker outline; normals show none
    assert all(len(ax.collections) == 2 for ax in axes[:3])
    assert all(len(ax.collections) == 0 for ax in axes[3:])
    plain = plot_samples(dataset, per_class=2, masks=False, seed=0)
    assert all(len(ax.collections) == 0 for ax in plain.get_axes())
    # the seed picks the samples, reproducibly
    assert [ax.get_title() for ax in plot_samples(dataset, per_class=3, masks=False, seed=0).get_axes()] == titles


def test_plot_samples_augmented_images_differ(dataset: Path) -> None:
    a = plot_samples(dataset, per_class=1, masks=True, augment=Augmentation.standard(), seed=0)
    b = plot_samples(dataset, per_class=1, masks=True, augment=None, seed=0)
    img_a = a.get_axes()[0].images[0].get_array()
    img_b = b.get_axes()[0].images[0].get_array()
    assert img_a.shape == img_b.shape
    assert not np.allclose(img_a, img_b)
