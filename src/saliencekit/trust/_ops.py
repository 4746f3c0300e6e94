"""Private tensor helpers shared by the trust metrics: shape checks, memoised per-batch work, seeded noise."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Hashable

import torch
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
