"""Folder datasets, preprocessing and splits (the parts of saliencekit.data not tied to the generator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saliencekit.data import (
    ImageFolderDataset,
    Preprocessing,
    check_images,
    load_mask,
    load_split,
    save_split,
    scan_folder,
    stratified_split,
)
from saliencekit.errors import DataError


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls, n in (("effusion", 5), ("normal", 4)):
        for i in range(n):
            _write(tmp_path / cls / f"{i:03d}.png", rng.integers(0, 255, (40, 30), dtype=np.uint8))
    mask = np.zeros((40, 30), np.uint8)
    mask[30:, :10] = 255
    _write(tmp_path / "masks" / "effusion" / "000.png", mask)
    _write(tmp_path / "lung_masks" / "normal" / "001.png", mask)
    return tmp_path


def test_scan_folder_classes_masks_and_order(folder: Path) -> None:
    index = scan_folder(folder)
    assert index.classes == ["effusion", "normal"]
    assert index.labels == [0] * 5 + [1] * 4
    assert index.samples[0].masks == {"lesion": folder / "masks" / "effusion" / "000.png"}
    assert index.samples[6].masks == {"lung": folder / "lung_masks" / "normal" / "001.png"}
    assert index.mask_kinds == ["lesion", "lung"]
    swapped = scan_folder(folder, classes=["normal", "effusion"])
    assert swapped.labels == [0] * 4 + [1] * 5


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "missing", "not found"),
        (lambda p: p, "no class folders"),
        (lambda p: (p / "only").mkdir() or _write(p / "only" / "a.png", np.zeros((4, 4), np.uint8)) or p,
         "at least 2 classes"),
        (lambda p: [(p / c).mkdir() for c in "ab"] and p, "holds no images"),
    ],
)
def test_scan_folder_bad_input(tmp_path: Path, setup, message: str) -> None:
    with pytest.raises(DataError, match=message):
        scan_folder(setup(tmp_path))


def test_corrupt_image_named_or_skipped(folder: Path) -> None:
    bad = folder / "normal" / "zzz.png"
    bad.write_bytes(b"\x89PNG not really")
    index = scan_folder(folder)
    with pytest.raises(DataError, match="zzz.png"):
        check_images(index, progress=False)
    with pytest.warns(UserWarning, match="zzz.png"):
        kept = check_images(index, skip_bad=True, progress=False)
    assert len(kept.samples) == len(index.samples) - 1


def test_preprocessing_matches_literal_standardisation() -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (64, 48), dtype=np.uint8)
    p = Preprocessing(size=(64, 48))
    x = p(Image.fromarray(arr))
    ref = arr.astype(np.float64) / 255
    ref = (ref - ref.mean()) / ref.std()
    assert x.shape == (1, 64, 48)
    np.testing.assert_allclose(x[0].numpy(), ref, atol=1e-5)
    colour = Preprocessing(grayscale=False, size=(16, 16), standardize="none")(Image.fromarray(arr).convert("RGB"))
    assert colour.shape == (3, 16, 16) and 0 <= colour.min() and colour.max() <= 1
    assert torch.equal(Preprocessing(size=8)(Image.new("L", (20, 20), 77)), torch.zeros(1, 8, 8))
    assert Preprocessing.from_dict(p.to_dict()) == p
    with pytest.raises(DataError, match="standardisation"):
        Preprocessing(standardize="global")


def test_dataset_items_and_masks(folder: Path) -> None:
    index = scan_folder(folder)
    ds = ImageFolderDataset(index, Preprocessing(size=(20, 15)), indices=[0, 6], augment=lambda t: t * 0)
    x, y = ds[0]
    assert torch.equal(x, torch.zeros(1, 20, 15)) and y == 0
    assert torch.equal(ds.image(1), Preprocessing(size=(20, 15)).load(index.samples[6].path))
    m = ds.mask(0)
    assert m.shape == (20, 15) and set(m.unique().tolist()) == {0.0, 1.0}
    assert m[:15].sum() == 0 and m[-1, 0] == 1  # lower-left, as drawn
    assert ds.mask(1).sum() == 0  # no lesion mask: empty
    assert load_mask(None, (3, 3)).sum() == 0


def test_split_stratified_reproducible_and_saved(tmp_path: Path) -> None:
    labels = [0] * 350 + [1] * 350
    s = stratified_split(labels)
    for part in (s.train, s.val, s.test):
        counts = np.bincount(np.asarray(labels)[part])
        assert abs(int(counts[0]) - int(counts[1])) <= 1
    assert len(s.test) == 2 * round(350 * 0.15)
    assert len(s.val) == 2 * round((350 - round(350 * 0.15)) * 0.15)
    assert sorted(s.train + s.val + s.test) == list(range(700))
    assert stratified_split(labels).test == s.test
    assert stratified_split(labels, seed=7).test != s.test
    rel = [f"c{i % 2}/{i}.png" for i in range(700)]
    save_split(tmp_path / "split.json", s, rel)
    back = load_split(tmp_path / "split.json", list(reversed(rel)))
    assert sorted(rel[699 - i] for i in back.test) == sorted(rel[i] for i in s.test)
    with pytest.raises(DataError, match="not in the data folder"):
        load_split(tmp_path / "split.json", rel[:10])


def test_atomic_writes_leave_usual_mode_and_no_temp_on_error(tmp_path: Path) -> None:
    import os

    from saliencekit import _atomic

    target = _atomic.write_json(tmp_path / "a.json", {"x": 1.0, "bad": float("nan")})
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask
    assert target.read_text().strip().endswith("}") and '"bad": null' in target.read_text()
    with pytest.raises(RuntimeError), _atomic.atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert '"x": 1.0' in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
