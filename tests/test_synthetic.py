"""The synthetic chest X-ray generator: determinism, layout, masks where the fluid is, the shortcut."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage, stats

from saliencekit.data import _draw, scan_folder
from saliencekit.data.synthetic import CLASSES, generate, make_patient
from saliencekit.errors import DataError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cxr") / "data"
    generate(root, per_class=16, size=128, seed=3, shortcut=0.5, progress=False)
    return root


def test_same_seed_same_bytes_any_workers(tmp_path: Path) -> None:
    a = _files(generate(tmp_path / "a", per_class=3, size=64, seed=5, shortcut=0.5, progress=False).root)
    b = _files(generate(tmp_path / "b", per_class=3, size=64, seed=5, shortcut=0.5, progress=False, workers=2).root)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a if k != "dataset.json")
    ja, jb = json.loads(a["dataset.json"]), json.loads(b["dataset.json"])
    assert ja == jb


def test_different_seed_different_images(tmp_path: Path) -> None:
    a = _files(generate(tmp_path / "a", per_class=2, size=64, seed=1, progress=False).root)
    b = _files(generate(tmp_path / "b", per_class=2, size=64, seed=2, progress=False).root)
    assert a.keys() == b.keys()
    images = [k for k in a if k.startswith(("effusion/", "normal/"))]
    assert len(images) == 4
    assert all(a[k] != b[k] for k in images)


def test_layout_and_counts(small_set: Path) -> None:
    index = scan_folder(small_set)
    assert index.classes == ["effusion", "normal"]
    assert index.mask_kinds == ["lesion", "lung", "shortcut"]
    assert [sum(s.class_name == c for s in index.samples) for c in index.classes] == [16, 16]
    assert all(set(s.masks) == {"lesion", "lung", "shortcut"} for s in index.samples)
    meta = json.loads((small_set / "dataset.json").read_text())
    assert meta["parameters"] == {
        "per_class": 16, "size": 128, "seed": 3, "shortcut": 0.5, "shortcut_class": "effusion",
    }
    assert sorted(m["file"] for m in meta["images"]) == sorted(index.relpaths)
    for s in index.samples:
        img = _read(s.path)
        assert img.shape == (128, 128) and img.dtype == np.uint8
        assert img.std() > 10  # not blank


def test_no_shortcut_means_no_shortcut_masks(tmp_path: Path) -> None:
    root = generate(tmp_path / "d", per_class=2, size=64, progress=False).root
    assert not (root / "shortcut_masks").exists()
    assert scan_folder(root).mask_kinds == ["lesion", "lung"]


def test_lesion_masks_empty_for_normals_and_in_the_lower_lung(small_set: Path) -> None:
    meta = {m["file"]: m for m in json.loads((small_set / "dataset.json").read_text())["images"]}
    for s in scan_folder(small_set).samples:
        lesion = _read(s.masks["lesion"]) > 127
        lung = _read(s.masks["lung"]) > 127
        assert lung.sum() > 0.08 * lung.size
        if s.class_name == "normal":
            assert not lesion.any(), s.relpath
            assert meta[s.relpath]["effusion_sides"] == []
            continue
        assert lesion.any(), s.relpath
        # inside the lung field ...
        inside = (lesion & ndimage.binary_dilation(lung, iterations=2)).sum() / lesion.sum()
        assert inside > 0.9, (s.relpath, inside)
        # ... and in its lower part
        rows = np.nonzero(lesion)[0]
        lung_rows = np.nonzero(lung)[0]
        assert rows.mean() > lung_rows.mean(), s.relpath
        assert np.median(rows) > np.percentile(lung_rows, 60), s.relpath
        # on the side the metadata names (the patient's left is the image's right)
        sides = set(meta[s.relpath]["effusion_sides"])
        assert sides and sides <= {"left", "right"}
        cols = np.nonzero(lesion)[1]
        half = lesion.shape[1] // 2
        assert ((cols >= half).any()) == ("left" in sides), s.relpath
        assert ((cols < half).any()) == ("right" in sides), s.relpath


@pytest.mark.parametrize("faint", [False, True])
def test_mask_covers_exactly_the_drawn_fluid(faint: bool) -> None:
    """Render the same patients with and without fluid: the change lies in the mask and fills it.

    ``faint``: the first 8 thin, partly opaque effusions (opacity < 0.6 on a side).
    """
    if faint:
        patients = [pt for pt in (make_patient(11, "effusion", i, 256) for i in range(200))
                    if 0 < min(o for o in pt.opacity if o > 0) < 0.6][:8]
        assert len(patients) == 8
    else:
        patients = [make_patient(11, "effusion", i, 256) for i in range(12)]
    for i, pt in enumerate(patients):
        with_fluid = _draw.render(pt)
        without = _draw.render(pt.without_fluid())
        assert not without.lesion.any()
        np.testing.assert_array_equal(with_fluid.lung, without.lung)
        diff = with_fluid.image.astype(int) - without.image.astype(int)
        assert diff.min() >= -1  # fluid only makes the image brighter (denser)
        mask = with_fluid.lesion
        assert mask.any() and diff.max() >= (8 if faint else 20), i
        # every pixel the fluid visibly changed (by >= 10% of its full effect, and >= 4 grey levels when
        # faint) is in the mask, up to the soft edge and the blur (3 px)
        changed = diff >= max(4 if faint else 3, 0.1 * diff.max())
        dist = ndimage.distance_transform_edt(~mask)
        assert dist[changed].max() <= 3, i
        # the fluid shows almost everywhere inside its mask
        core = ndimage.binary_erosion(mask, iterations=2)
        if core.sum() > 20:
            assert (diff[core] >= 3).mean() > 0.9, i


def _fluid_effect(pt: _draw.Patient) -> tuple[float, float, int]:
    """Lesion area / lung area, mean brightening inside the mask and its peak (grey levels) of one patient."""
    with_fluid, without = _draw.render(pt), _draw.render(pt.without_fluid())
    diff = with_fluid.image.astype(int) - without.image.astype(int)
    mask = with_fluid.lesion
    return mask.sum() / with_fluid.lung.sum(), float(diff[mask].mean()), int(diff.max())


def test_effusions_range_from_faint_slivers_to_large_opaque_ones() -> None:
    """Smallest fifth: small and faint (yet drawn); largest fifth: large and opaque. Not trivially separable."""
    effects = np.array([_fluid_effect(make_patient(0, "effusion", i, 128)) for i in range(60)])
    area, contrast, peak = effects.T
    order = np.argsort(area)
    small, large = order[:12], order[-12:]
    assert area[small].max() < 0.04  # a sliver in the costophrenic angle
    # fainter than the rest (a thin layer replaces only part of the air): before the opacity depended on the
    # volume, these were a median 65 grey levels brighter than without fluid, none below 45
    assert np.median(contrast[small]) < 50
    assert (contrast[small] < 30).sum() >= 2  # some barely visible
    assert peak[small].min() >= 15  # but every effusion is drawn
    assert area[large].min() > 0.12 and contrast[large].min() > 50  # large effusions: big and opaque
    assert (area < 0.03).mean() >= 0.15 and (area > 0.15).mean() >= 0.15
    assert stats.spearmanr(area, contrast)[0] > 0.5  # the larger, the more opaque


def test_fluid_opacity_grows_with_volume() -> None:
    lo, hi = _draw.VOLUME_RANGE
    volumes = np.linspace(lo, hi, 50)
    for jitter in (0.0, 0.5, 1.0):
        o = np.array([_draw.fluid_opacity(v, jitter) for v in volumes])
        assert np.all(np.diff(o) >= 0) and 0.2 <= o[0] <= 0.4 and o[-1] == 1.0
        assert (o < 1).mean() < 0.25  # only the smallest volumes are partly opaque
    assert _draw.fluid_opacity(lo, 0.5) == pytest.approx(_draw.OPACITY_MIN)
    assert _draw.fluid_opacity(_draw.OPACITY_FULL_VOLUME, 0.5) == pytest.approx(1.0)
    for i in range(20):
        pt = make_patient(4, "effusion", i, 64)
        assert all((f > 0) == (o > 0) for f, o in zip(pt.fluid, pt.opacity, strict=True)), pt
        assert make_patient(4, "normal", i, 64).opacity == (0.0, 0.0)


def test_shortcut_only_in_the_chosen_class(small_set: Path, tmp_path: Path) -> None:
    meta = json.loads((small_set / "dataset.json").read_text())["images"]
    for s in scan_folder(small_set).samples:
        m = _read(s.masks["shortcut"]) > 127
        flagged = next(x["shortcut"] for x in meta if x["file"] == s.relpath)
        assert m.any() == flagged
        if s.class_name == "normal":
            assert not m.any()
        if m.any():
            img = _read(s.path)
            assert 0.0005 < m.mean() < 0.01  # a small marker
            assert img[m].min() > 230  # burned in bright
            ys, xs = np.nonzero(m)
            assert ys.max() < 32 and xs.min() > 96  # top-right corner
    marked = sum(x["shortcut"] for x in meta if x["class"] == "effusion")
    assert marked == 8  # 0.5 of 16
    root = generate(tmp_path / "n", per_class=10, size=64, shortcut=0.3, shortcut_class="normal", progress=False).root
    meta = json.loads((root / "dataset.json").read_text())["images"]
    assert sum(x["shortcut"] for x in meta if x["class"] == "normal") == 3
    assert not any(x["shortcut"] for x in meta if x["class"] == "effusion")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"per_class": 0}, "per_class"),
        ({"size": 32}, "size"),
        ({"shortcut": 1.5}, "shortcut"),
        ({"shortcut": -0.1}, "shortcut"),
        ({"shortcut_class": "pneumonia"}, "pneumonia"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        generate(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


def test_refuses_foreign_or_existing_output(tmp_path: Path) -> None:
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        generate(tmp_path / "foreign", per_class=1, size=64, progress=False)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    root = generate(tmp_path / "d", per_class=2, size=64, progress=False).root
    with pytest.raises(DataError, match="overwrite"):
        generate(root, per_class=1, size=64, progress=False)
    generate(root, per_class=1, size=64, progress=False, overwrite=True)
    assert len(scan_folder(root).samples) == 2  # old files gone
    assert json.loads((root / "dataset.json").read_text())["parameters"]["per_class"] == 1
    assert set(CLASSES) == {"effusion", "normal"}
    # class folders without the generator's dataset.json (the user's own effusion/ and normal/ data, or an
    # unfinished dataset of an earlier version) are never replaced, even with overwrite
    (root / "dataset.json").unlink()
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for overwrite in (False, True):
        with pytest.raises(DataError, match="unfinished"):
            generate(root, per_class=1, size=64, progress=False, overwrite=overwrite)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
