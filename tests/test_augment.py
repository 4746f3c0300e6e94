"""Augmentation: identity when off, exact flips and shifts, shapes, settings round trip."""

from __future__ import annotations

import pytest
import torch

from saliencekit.data.augment import Augmentation
from saliencekit.errors import InputError


def _image(c: int = 1, h: int = 16, w: int = 16) -> torch.Tensor:
    return torch.rand(c, h, w, generator=torch.Generator().manual_seed(1)) + 0.5  # min > 0: fill is visible


def test_disabled_is_identity() -> None:
    aug = Augmentation()
    assert not aug.enabled
    x = _image()
    assert aug(x) is x
    assert Augmentation(rotation=0, shift=0, zoom=0, hflip=False)(x) is x


def test_hflip_flips_exactly_about_half_the_time() -> None:
    aug = Augmentation(hflip=True)
    x = _image(2, 8, 12)
    gen = torch.Generator().manual_seed(0)
    flipped = 0
    for _ in range(200):
        y = aug(x, generator=gen)
        if torch.equal(y, x.flip(-1)):
            flipped += 1
        else:
            assert torch.equal(y, x)
    assert 70 < flipped < 130


def _shift_reference(x: torch.Tensor, tx: int, ty: int) -> torch.Tensor:
    """Literal integer translation: out[i, j] = x[i - ty, j - tx], outside filled with each channel's minimum."""
    c, h, w = x.shape
    out = torch.empty_like(x)
    for k in range(c):
        fill = x[k].min()
        for i in range(h):
            for j in range(w):
                si, sj = i - ty, j - tx
                out[k, i, j] = x[k, si, sj] if 0 <= si < h and 0 <= sj < w else fill
    return out


def test_shift_matches_a_literal_translation() -> None:
    aug = Augmentation(shift=0.25)
    x = _image(2, 8, 8)
    for seed in range(6):
        u = torch.rand(5, generator=torch.Generator().manual_seed(seed)).tolist()
        tx, ty = round((2 * u[1] - 1) * 0.25 * 8), round((2 * u[2] - 1) * 0.25 * 8)
        y = aug(x, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(y, _shift_reference(x, tx, ty), atol=1e-5, rtol=0)


def test_output_shape_dtype_and_randomness() -> None:
    aug = Augmentation.standard()
    assert (aug.rotation, aug.shift, aug.zoom, aug.hflip) == (10.0, 0.1, 0.1, True)
    x = _image(1, 32, 32)
    y1 = aug(x, generator=torch.Generator().manual_seed(1))
    y2 = aug(x, generator=torch.Generator().manual_seed(1))
    y3 = aug(x, generator=torch.Generator().manual_seed(2))
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    assert y1.min() >= x.min() - 1e-6 and y1.max() <= x.max() + 1e-6  # bilinear + min fill stays in range
    batch = torch.stack([x, x, x])
    yb = aug(batch, generator=torch.Generator().manual_seed(3))
    assert yb.shape == batch.shape
    assert not torch.equal(yb[0], yb[1])  # each image gets its own transform


def test_rotation_keeps_the_centre_pixel() -> None:
    x = torch.zeros(1, 33, 33)
    x[0, 16, 16] = 1.0
    x[0, 16, 10:23] = 1.0  # horizontal bar through the centre
    y = Augmentation(rotation=45)(x, generator=torch.Generator().manual_seed(0))
    assert y[0, 16, 16] > 0.9
    assert not torch.allclose(y, x)


def test_settings_round_trip_and_validation() -> None:
    aug = Augmentation(rotation=5, shift=0.05, zoom=0.2, hflip=True)
    assert Augmentation.from_dict(aug.to_dict()) == aug
    assert Augmentation.from_dict(None) == Augmentation()
    with pytest.raises(InputError, match="sheer"):
        Augmentation.from_dict({"sheer": 1})
    with pytest.raises(InputError, match="rotation"):
        Augmentation(rotation=-1)
    with pytest.raises(InputError, match="zoom"):
        Augmentation(zoom=1.5)
    with pytest.raises(InputError, match=r"\(16,\)"):
        Augmentation.standard()(torch.zeros(16))
