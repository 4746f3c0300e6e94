"""The trust figures draw what they say: the randomisation strip's cells are the maps, in place."""

from __future__ import annotations

import matplotlib
import numpy as np

from saliencekit.trust import figures as F
from saliencekit.trust.randomization import RandomizationResult


def strip_result(rng: np.random.Generator, images: int = 2, steps: int = 3, side: int = 16) -> RandomizationResult:
    maps = rng.normal(size=(steps + 1, images, side, side))  # original + one map per randomisation step
    return RandomizationResult(
        mode="cascading", steps=["original", *[f"layer{i}" for i in range(steps)]],
        layers=[[f"layer{i}"] for i in range(steps)], methods={"m": {}}, metrics=["spearman_abs"],
        similarity={}, null={}, strip={"m": maps},
        strip_images=rng.uniform(size=(images, 1, side, side)),
    )


def test_strip_cells_are_the_maps_in_order():
    rng = np.random.default_rng(0)
    side = 16
    res = strip_result(rng, images=2, steps=3, side=side)
    strip = res.strip["m"]  # (steps incl. the original, images, H, W)
    fig = F.plot_randomization_strip(res, "m")
    (ax,) = fig.axes
    (image,) = ax.get_images()
    canvas = np.asarray(image.get_array())
    gap = max(2, side // 20)
    pitch = side + gap
    rows, cols = strip.shape[1], strip.shape[0] + 1
    assert canvas.shape[:2] == (rows * pitch - gap, cols * pitch - gap)
    inferno = matplotlib.colormaps["inferno"]
    for r in range(rows):
        img = res.strip_images[r, 0]
        cell = canvas[r * pitch: r * pitch + side, :side]
        np.testing.assert_allclose(cell[..., 0], (img - img.min()) / (img.max() - img.min()), atol=1e-12)
        for c in range(strip.shape[0]):
            cell = canvas[r * pitch: r * pitch + side, (c + 1) * pitch: (c + 1) * pitch + side]
            a = np.abs(strip[c, r])
            expected = inferno(np.clip(a / np.percentile(a, 99), 0, 1))[..., :3]
            np.testing.assert_allclose(cell, expected, atol=1e-12)
    # the gaps are white
    assert np.all(canvas[side: side + gap] == 1.0)
    labels = [t.get_text() for t in ax.texts]
    assert labels[:rows] == ["image 0", "image 1"]
    assert labels[rows:] == ["input", "original", "+layer0", "+layer1", "+layer2"]


def test_big_cells_are_area_averaged():
    m = np.arange(16.0).reshape(4, 4)
    rgb = F._cell_pixels(("image", m[None]), side=2)
    grey = (m - m.min()) / (m.max() - m.min())
    expected = grey.reshape(2, 2, 2, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(rgb[..., 1], expected)


def test_cells_of_other_channel_counts_and_odd_sizes():
    rng = np.random.default_rng(3)
    four = rng.uniform(size=(4, 16, 16))
    rgb = F._cell_pixels(("image", four), side=16)
    grey = (four[0] - four[0].min()) / (four[0].max() - four[0].min())
    np.testing.assert_allclose(rgb[..., 2], grey)
    three = rng.uniform(size=(3, 16, 16))
    np.testing.assert_allclose(F._cell_pixels(("image", three), side=16)[..., 1],
                               (three[1] - three.min()) / (three.max() - three.min()))
    # A 300 px map fills a 128 px cell (no large white margins), a 2 x 300 strip is not blank.
    big = F._cell_pixels(("map", rng.normal(size=(300, 300))), side=128)
    assert np.mean(np.all(big == 1.0, axis=-1)) == 0.0
    thin = F._cell_pixels(("map", rng.normal(size=(2, 300))), side=128)
    assert np.any(np.any(thin != 1.0, axis=-1))
