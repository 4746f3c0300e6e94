"""Private tensor helpers shared by the trust metrics: shape checks, Gaussian blur, seeded noise."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Hashable

import torch
import torch.nn.functional as F
from torch import Tensor

from saliencekit.errors import InputError


def as_maps(maps: Tensor, name: str = "maps") -> Tensor:
    """Return saliency maps as an (N, H, W) tensor; (N, 1, H, W) is squeezed.

    Raises:
        InputError: when the tensor has another shape.
    """
    if not isinstance(maps, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (N, H, W), got {type(maps).__name__}")
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise InputError(f"{name} must have shape (N, H, W) or (N, 1, H, W), got {tuple(maps.shape)}")
    return maps


_MEMO: dict[int, tuple[weakref.ref[Tensor], int, dict[Hashable, Tensor]]] = {}


def memo(maps: Tensor, key: Hashable, compute: Callable[[], Tensor]) -> Tensor:
    """``compute()``, remembered for as long as the tensor ``maps`` lives unmodified.

    For per-map work on a batch that is compared with many others (the original maps against every
    randomisation step, each method against every other one): ranks and HOG features are then computed
    once per batch instead of once per comparison. A tensor that requires grad or is an inference tensor
    (no version counter) is not remembered; one modified in place by torch operations (its version changes,
    also through a view) is computed afresh. Changes that bypass the version counter (through ``.data`` or
    a NumPy view of the tensor) are not seen: do not modify maps that way between comparisons.
    """
    if maps.requires_grad or maps.is_inference():
        return compute()
    ident = id(maps)
    entry = _MEMO.get(ident)
    if entry is None or entry[0]() is not maps or entry[1] != maps._version:
        entry = (weakref.ref(maps, lambda _r, ident=ident: _MEMO.pop(ident, None)), maps._version, {})
        _MEMO[ident] = entry
    store = entry[2]
    if key not in store:
        store[key] = compute()
    return store[key]


def as_pair(a: Tensor, b: Tensor, names: tuple[str, str] = ("a", "b")) -> tuple[Tensor, Tensor]:
    """Check two batches of maps of equal shape and return them as (N, H, W) tensors on ``a``'s device."""
    a = as_maps(a, names[0])
    b = as_maps(b, names[1])
    if a.shape != b.shape:
        raise InputError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return a, b.to(a.device)


def as_masks(masks: Tensor, maps: Tensor) -> Tensor:
    """Return ground-truth masks as a bool (N, H, W) tensor matching ``maps`` (float masks: > 0.5 is inside)."""
    masks = as_maps(masks, "masks")
    if masks.shape != maps.shape:
        raise InputError(
            f"masks must have the same shape as the maps, got masks {tuple(masks.shape)} and maps {tuple(maps.shape)}; "
            "resize the masks to the map resolution first"
        )
    masks = masks.to(maps.device)
    return masks if masks.dtype == torch.bool else masks > 0.5


def as_inputs(inputs: Tensor) -> Tensor:
    """Check a batch of model inputs (N, C, H, W)."""
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise InputError(f"inputs must be a tensor of shape (N, C, H, W), got {shape}")
    return inputs


def work_dtype(t: Tensor) -> torch.dtype:
    """float64 for float64 input, otherwise float32 (integer/half inputs are promoted)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def gaussian_kernel1d(sigma: float, radius: int | None = None, *, dtype: torch.dtype = torch.float64,
                      device: torch.device | str | None = None) -> Tensor:
    """Normalised 1-D Gaussian taps ``exp(-x^2 / 2 sigma^2)`` for ``x`` in [-radius, radius].

    The default radius ``int(4 * sigma + 0.5)`` is scipy.ndimage's.
    """
    if radius is None:
        radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2) if sigma > 0 else (x == 0).double()
    return (k / k.sum()).to(dtype=dtype, device=device)


def separable_filter(x: Tensor, kernel: Tensor, padding: str = "reflect") -> Tensor:
    """Filter every (H, W) plane of ``x`` (..., H, W) with the separable 2-D kernel ``kernel x kernel``.

    Args:
        x: tensor whose last two dimensions are filtered.
        kernel: 1-D taps of odd length.
        padding: ``"valid"`` (output shrinks by ``len(kernel) - 1``) or a mode of ``torch.nn.functional.pad``
            (``"reflect"``, ``"replicate"``, ``"constant"``).
    """
    shape = x.shape
    planes = x.reshape(-1, 1, shape[-2], shape[-1])
    r = kernel.numel() // 2
    if padding == "valid" and min(shape[-2:]) <= 2 * r:
        raise InputError(f"a {kernel.numel()}-tap filter without padding needs planes larger than "
                         f"{2 * r}x{2 * r}, got {tuple(shape[-2:])}")
    k = kernel.to(dtype=planes.dtype, device=planes.device)
    if padding != "valid":
        mode = padding
        # reflect padding needs the pad to be smaller than the side; fall back to replicate for tiny planes
        if mode == "reflect" and (r >= shape[-1] or r >= shape[-2]):
            mode = "replicate"
        planes = F.pad(planes, (r, r, r, r), mode=mode)
    # One multiply-add per tap over shifted views: exact in any dtype, and ~3x faster than conv2d for the
    # float64 planes the metrics use (conv2d has no fast float64 kernel on the CPU).
    taps = [float(v) for v in k.tolist()]
    out_w = planes.shape[-1] - 2 * r
    rows = planes[..., 0:out_w] * taps[0]
    for j in range(1, len(taps)):
        rows.add_(planes[..., j:j + out_w], alpha=taps[j])
    out_h = rows.shape[-2] - 2 * r
    planes = rows[..., 0:out_h, :] * taps[0]
    for j in range(1, len(taps)):
        planes.add_(rows[..., j:j + out_h, :], alpha=taps[j])
    return planes.reshape(*shape[:-2], planes.shape[-2], planes.shape[-1])


def gaussian_blur(x: Tensor, sigma: float, radius: int | None = None) -> Tensor:
    """Gaussian blur of the last two dimensions with reflect padding (same size out)."""
    if sigma <= 0:
        return x.clone()
    dtype = work_dtype(x)
    k = gaussian_kernel1d(sigma, radius, dtype=dtype, device=x.device)
    return separable_filter(x.to(dtype), k, "reflect").to(x.dtype if x.is_floating_point() else dtype)


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A torch.Generator from a seed (None means seed 0, so results are reproducible by default)."""
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator(device="cpu").manual_seed(0 if seed is None else int(seed))


def rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device, dtype: torch.dtype,
         normal: bool = False) -> Tensor:
    """Uniform [0, 1) (or standard normal) numbers drawn on the generator's device, then moved to ``device``.

    Drawing on the generator's device makes a CPU generator give the same numbers for CPU and CUDA inputs.
    """
    fn = torch.randn if normal else torch.rand
    return fn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def nan_tensor(n: int, device: torch.device) -> Tensor:
    """An (n,) float64 tensor of NaN."""
    return torch.full((n,), math.nan, dtype=torch.float64, device=device)
