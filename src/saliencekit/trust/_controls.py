"""Control pseudo-methods of the randomisation checks: one that must fail, one that must pass.

Both map ``(model, images)`` to maps (N, H, W) like a saliency method, so they go through exactly the steps,
comparisons and rule of the real methods (docs/checks.md, "Controls"):

- ``control_edges`` (negative control): the Sobel gradient magnitude of the channel-averaged input. It ignores
  the model, so randomising the model cannot change it: it must **fail**.
- ``control_random`` (positive control): a smoothed random field drawn with a seed hashed from the bytes of the
  model's parameters and buffers and of the image: the map of an unrelated random model. Any change of the
  weights gives an unrelated map: it must **pass**.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NEGATIVE = "control_edges"
POSITIVE = "control_random"
EXPECTED = {NEGATIVE: "fails", POSITIVE: "passes"}
DESCRIPTION = {
    NEGATIVE: "negative control: Sobel edges of the input, ignores the model (must fail)",
    POSITIVE: "positive control: random map keyed by the model's weights and the image (must pass)",
}


def edge_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the channel mean of ``images`` (N, C, H, W), replicate padding; ``model`` unused.

    Returns:
        (N, H, W) float64 on the CPU.
    """
    x = images.detach().to("cpu", torch.float64).mean(dim=1, keepdim=True)
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)
    kernels = torch.stack([k, k.T]).unsqueeze(1)  # d/dx, d/dy
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
    return torch.hypot(g[:, 0], g[:, 1])


def weights_digest(model: nn.Module) -> bytes:
    """BLAKE2b digest of the names and bytes of every parameter and buffer of ``model``."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def random_maps_keyed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Per image, a smoothed random field seeded by the model's weights and that image's bytes.

    The field is :func:`saliencekit.trust.similarity.random_maps` (signed uniform noise blurred by a Gaussian of
    std ``min(H, W) / 32``), the generator of the noise null.

    Returns:
        (N, H, W) float64 on the CPU.
    """
    from saliencekit.trust.similarity import random_maps

    digest = weights_digest(model)
    shape = (int(images.shape[-2]), int(images.shape[-1]))
    out = []
    for img in images.detach().to("cpu"):
        h = hashlib.blake2b(digest, digest_size=8)
        h.update(img.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        seed = int.from_bytes(h.digest(), "little") % (2**63)
        out.append(random_maps(shape, 1, generator=seed)[0])
    return torch.stack(out) if out else torch.zeros(0, *shape, dtype=torch.float64)


CONTROLS: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    NEGATIVE: edge_maps,
    POSITIVE: random_maps_keyed,
}


def control_maps(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Maps of both controls for ``model`` and ``images``: label -> (N, H, W) float64 on the CPU."""
    return {label: fn(model, images) for label, fn in CONTROLS.items()}
