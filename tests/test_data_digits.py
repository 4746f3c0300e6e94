"""`saliencekit data digits`: scikit-learn's real handwritten digits as a class-folder dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saliencekit.cli import main

sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="the digits ship with scikit-learn "
                                       "(pip install saliencekit[digits])")


def test_digits_are_written_as_class_folders_with_their_values(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "digits"
    assert main(["data", "digits", str(out), "--classes", "3,0", "--per-class", "4"]) == 0
    assert "wrote 8 digit images" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["0", "3", "dataset.json"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["dataset"] == "digits" and meta["counts"] == {"0": 4, "3": 4}
    d = sklearn_datasets.load_digits()
    for cls in ("0", "3"):
        files = sorted((out / cls).glob("*.png"))
        assert len(files) == 4
        for f in files:
            i = int(f.stem)
            assert d.target[i] == int(cls)
            img = np.asarray(Image.open(f))
            assert img.dtype == np.uint8 and img.shape == (8, 8)
            np.testing.assert_array_equal(img, np.rint(d.images[i] * 255 / 16).astype(np.uint8))
    assert not [p for p in tmp_path.iterdir() if p.name != "digits"]  # no temporary folder left behind


def test_digits_refuse_to_overwrite_unless_asked_and_never_touch_other_files(tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "digits"
    assert main(["data", "digits", str(out), "--classes", "1", "--per-class", "2"]) == 0
    assert main(["data", "digits", str(out), "--classes", "2", "--per-class", "2"]) == 2
    assert "already holds a digits dataset" in capsys.readouterr().err
    assert main(["data", "digits", str(out), "--classes", "2", "--per-class", "2", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["2", "dataset.json"]
    (out / "notes.txt").write_text("mine")
    assert main(["data", "digits", str(out), "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes(b"x")
    assert main(["data", "digits", str(other)]) == 2
    assert "holds no digits dataset" in capsys.readouterr().err


@pytest.mark.parametrize("classes", ["0,x", "0,0", "10"])
def test_digits_bad_classes_exit_2(tmp_path: Path, classes: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "digits", str(tmp_path / "d"), "--classes", classes]) == 2
    assert "0-9" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
