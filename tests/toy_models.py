"""Small CNN (and vision-transformer) factories for the method tests (random weights, seeded by the caller).

Every factory takes ``in_channels`` and ``classes`` (1 = a single-logit binary head, else a
multi-class head) and builds a model small enough for float64 reference comparisons.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def plain_cnn(in_channels: int = 1, classes: int = 1, width: int = 4) -> nn.Module:
    """conv-relu-pool-conv-relu-gap-linear."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes),
    )


def inplace_cnn(in_channels: int = 1, classes: int = 1, width: int = 4) -> nn.Module:
    """The plain CNN with in-place ReLUs and batch norm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes),
    )


def smooth_cnn(in_channels: int = 1, classes: int = 1, width: int = 4) -> nn.Module:
    """Softplus activations: a smooth model (IG completeness converges fast, finite differences are exact)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.Softplus(),
        nn.Conv2d(width, width, 3, padding=1, stride=2), nn.Softplus(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes),
    )


class FunctionalReluCNN(nn.Module):
    """ReLUs called as ``F.relu`` inside ``forward`` (no ReLU modules)."""

    def __init__(self, in_channels: int = 1, classes: int = 1, width: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn + skip connection, then a ReLU; both ReLUs in-place modules."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + x)


class ResidualCNN(nn.Module):
    """Stem, a residual block with in-place ReLUs, nested Sequential head, dropout."""

    def __init__(self, in_channels: int = 1, classes: int = 1, width: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True))
        self.block = ResidualBlock(width)
        self.head = nn.Sequential(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Dropout(0.5), nn.Linear(width, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


def nested_cnn(in_channels: int = 1, classes: int = 3, width: int = 4) -> nn.Module:
    """Nested ``nn.Sequential`` feature extractor and classifier."""
    return nn.Sequential(
        nn.Sequential(
            nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()),
        ),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)),
    )


class Boom(nn.Module):
    """Identity that raises ``RuntimeError`` on its ``fail_on``-th call (counting from 1; 0 = never).

    ``calls`` counts forward calls and ``rows`` the images they carried (the passes, whatever the chunking).
    """

    def __init__(self, fail_on: int = 0):
        super().__init__()
        self.fail_on = fail_on
        self.calls = 0
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        if self.fail_on and self.calls >= self.fail_on:
            raise RuntimeError("boom: this layer raises on purpose")
        return x


class LinearModel(nn.Module):
    """``z = sum(w * x) + b`` on the flattened image, optionally with ``classes`` rows of weights."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | float = 0.0):
        super().__init__()
        w = weight if weight.ndim == 4 else weight[None]  # (K, C, H, W)
        self.weight = nn.Parameter(w.clone())
        self.bias = nn.Parameter(torch.as_tensor(bias, dtype=w.dtype).reshape(-1).expand(w.shape[0]).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,kchw->nk", x, self.weight) + self.bias


class TinyBlock(nn.Module):
    """A pre-norm transformer block, ``t + attn(norm1(t))`` then ``t + mlp(norm2(t))``, whose attention is computed
    one of three ways: ``"sdpa"`` (``F.scaled_dot_product_attention``, as timm's fused path), ``"mha"``
    (``nn.MultiheadAttention`` with ``need_weights=False``, as torchvision's ViT) or ``"softmax"`` (``q k^T``,
    ``softmax(dim=-1)``, ``@ v``, as timm's non-fused path)."""

    def __init__(self, dim: int, heads: int, attention: str):
        super().__init__()
        self.heads, self.attention = heads, attention
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        if attention == "mha":
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        else:
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def attend(self, t: torch.Tensor) -> torch.Tensor:
        if self.attention == "mha":
            return self.attn(t, t, t, need_weights=False)[0]
        b, n, d = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.attention == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1) @ v
        return self.proj(o.transpose(1, 2).reshape(b, n, d))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t + self.attend(self.norm1(t))
        return t + self.mlp(self.norm2(t))


class TinyViT(nn.Module):
    """A vision transformer small enough for float64 references: 4x4 patches of a 16x16 image embedded by a
    convolution, a class token, learned position embeddings, ``depth`` :class:`TinyBlock` s, a final norm and a
    linear head on the class token."""

    def __init__(self, in_channels: int = 1, classes: int = 1, width: int = 4, attention: str = "sdpa",
                 depth: int = 2, heads: int = 2, patch: int = 4, size: int = 16):
        super().__init__()
        dim = 2 * width
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(0.5 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.5 * torch.randn(1, 1 + (size // patch) ** 2, dim))
        self.blocks = nn.ModuleList(TinyBlock(dim, heads, attention) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        for block in self.blocks:
            t = block(t)
        return self.head(self.norm(t)[:, 0])


def tiny_vit_sdpa(in_channels: int = 1, classes: int = 1, width: int = 4) -> nn.Module:
    return TinyViT(in_channels, classes, width, attention="sdpa")


def tiny_vit_mha(in_channels: int = 1, classes: int = 1, width: int = 4) -> nn.Module:
    return TinyViT(in_channels, classes, width, attention="mha")


def tiny_vit_softmax(in_channels: int = 1, classes: int = 1, width: int = 4) -> nn.Module:
    return TinyViT(in_channels, classes, width, attention="softmax")


FACTORIES = {
    "plain": plain_cnn,
    "inplace": inplace_cnn,
    "functional": FunctionalReluCNN,
    "residual": ResidualCNN,
    "nested": nested_cnn,
    "smooth": smooth_cnn,
    "vit_sdpa": tiny_vit_sdpa,
    "vit_mha": tiny_vit_mha,
    "vit_softmax": tiny_vit_softmax,
}


def make(kind: str, in_channels: int = 1, classes: int = 1, seed: int = 0, dtype: torch.dtype = torch.float64,
         width: int = 4) -> nn.Module:
    """A seeded model of one kind, in eval mode, in ``dtype``."""
    torch.manual_seed(seed)
    model = FACTORIES[kind](in_channels=in_channels, classes=classes, width=width).to(dtype)
    # Non-trivial batch-norm statistics.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


class _CountBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, counter):  # type: ignore[no-untyped-def]
        ctx.counter = counter
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        ctx.counter["backward"] += 1
        return grad, None


class Counter(nn.Module):
    """Identity that counts forward calls (and the batch sizes) and backward passes through it."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = {"forward": 0, "backward": 0}
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counts["forward"] += 1
        self.batches.append(int(x.shape[0]))
        return _CountBackward.apply(x, self.counts)


def predicted_classes(model: torch.nn.Module, x: torch.Tensor) -> list[int]:
    """The predicted class of each image, written out here (not the library's) for the tests to compare with."""
    with torch.no_grad():
        out = model(x)
    return ((out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(1)).tolist()
