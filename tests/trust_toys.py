"""A tiny trained CNN for the trust-check tests: 32x32 images with a bright blob left (class 0) or right (class 1).

The model is trained once per test session (a few seconds on one CPU thread) and cached; tests that use it
must not modify it (the checks never do: that is one of the things tested).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

SIZE = 32


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run much faster on one thread (and do not fight other processes for the cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def blob_data(n: int = 64, size: int = SIZE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised images (n, 1, size, size), labels (n,) and blob masks (n, size, size) (radius ~ 2 sigma)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    x = torch.randn(n, 1, size, size, generator=g) * 0.3
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        cx = (size * 0.25 if y[i] == 0 else size * 0.75) + float(torch.randn(1, generator=g)) * size / 16
        cy = size / 2 + float(torch.randn(1, generator=g)) * size / 8
        r2 = (xx - cx) ** 2 + (yy - cy) ** 2
        s = size / 10
        x[i, 0] += 2.0 * torch.exp(-r2 / (2 * s**2))
        masks[i] = r2 <= (2 * s) ** 2
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True)
    return x, y, masks


def small_cnn() -> nn.Module:
    """conv-relu-pool x2, conv-relu, flatten, linear-relu, linear (one logit)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * (SIZE // 4) ** 2, 32), nn.ReLU(), nn.Linear(32, 1))


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 10, seed: int = 0) -> float:
    """Adam + BCE on the logit; returns the training accuracy (eval mode at the end)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for b in range(0, len(x), 32):
            idx = perm[b : b + 32]
            loss = nn.functional.binary_cross_entropy_with_logits(model(x[idx])[:, 0], y[idx].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float(((model(x)[:, 0] > 0).long() == y).float().mean())


@functools.lru_cache(maxsize=1)
def _trained() -> tuple[dict[str, torch.Tensor], float]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            x, y, _ = blob_data(64)
            model = small_cnn()
            acc = fit(model, x, y)
    finally:
        torch.set_num_threads(old)
    model.zero_grad(set_to_none=True)
    return {k: v.clone() for k, v in model.state_dict().items()}, acc


def trained_cnn() -> tuple[nn.Module, float]:
    """A fresh copy of the session's trained blob CNN (eval mode) and its training accuracy."""
    state, acc = _trained()
    model = small_cnn()
    model.load_state_dict(state)
    model.eval()
    return model, acc


def write_blob_folder(root: Path, n_per_class: int = 16, size: int = SIZE, seed: int = 0) -> Path:
    """A data folder ROOT/left, ROOT/right with lesion masks under ROOT/masks/<class>/ (8-bit PNGs)."""
    from PIL import Image

    x, y, masks = blob_data(2 * n_per_class, size, seed)
    for i in range(len(y)):
        cls = "left" if int(y[i]) == 0 else "right"
        img = x[i, 0].numpy()
        img = ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / "masks" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / cls / f"{i:03d}.png")
        Image.fromarray((masks[i].numpy() * 255).astype(np.uint8)).save(root / "masks" / cls / f"{i:03d}.png")
    return root


def snapshot(model: nn.Module) -> dict[str, object]:
    """Everything a check must leave unchanged: weights (bitwise), buffers, modes, flags, grads and hooks."""
    hooks = {}
    for name, m in model.named_modules():
        hooks[name] = tuple(len(getattr(m, attr)) for attr in (
            "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
            "_load_state_dict_pre_hooks"))
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "hooks": hooks,
        "param_ids": [id(p) for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, before: dict[str, object]) -> None:
    """Fail unless ``model`` matches its :func:`snapshot` exactly."""
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    assert after["param_ids"] == before["param_ids"]
    for k, v in before["state"].items():  # type: ignore[union-attr]
        assert torch.equal(after["state"][k], v), k  # type: ignore[index]
    for k, g in before["grad"].items():  # type: ignore[union-attr]
        g2 = after["grad"][k]  # type: ignore[index]
        assert (g is None and g2 is None) or (g is not None and g2 is not None and torch.equal(g, g2)), k
