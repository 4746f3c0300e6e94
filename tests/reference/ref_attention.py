"""Literal references for the attention methods, written from the equations of docs/methods.md.

Float64. The forward passes of the tiny test ViT (``toy_models.TinyViT``), of timm's ``VisionTransformer`` (its
default layout: a class token, position embeddings over the class and patch tokens, pre-norm blocks, the class
token read by the head) and of torchvision's ``VisionTransformer`` are written out from their weights: layer norm
as ``(t - mean) / sqrt(var + eps)``, GELU with ``erf``, and every attention matrix computed explicitly per head,
``A = exp(s - max s) / sum exp(s - max s)`` with ``s = q k^T / sqrt(d)``. Nothing of saliencekit and no torch
attention function is used, so these forward passes check the library's interception of
``F.scaled_dot_product_attention`` / ``nn.MultiheadAttention`` / softmax as well as the methods. Each attention is
returned inside the autograd graph of this forward pass, so ``dS/dA`` is autograd's derivative of an independent
computation (the tests also check entries of it by central differences).

Rollout and gradient-weighted relevance are written with explicit loops over the matrix entries.

No library implementing these methods is installed (captum, pytorch-grad-cam, zennit and torch-cam have none), so
the authors' published algorithms are re-written here step by step as peers:

- :func:`abnar_joint_attention`: Abnar & Zuidema's ``compute_joint_attention`` (samiraabnar/attention_flow,
  ``attention_graph_util.py``): head-averaged attention plus identity, divided by its row sums, multiplied from
  the first layer up;
- :func:`vit_explain_rollout`: Gildenblat's vit-explain ``rollout`` (``vit_rollout.py``), one image: head fusion,
  the lowest ``discard_ratio`` of the flattened fused matrix zeroed except flat index 0 (the class token's
  attention to itself), ``(fused + I) / 2`` divided by ``sum(dim=-1)`` *without keepdim* (so column ``j`` is
  divided by the sum of row ``j``; vit-explain issue #16) or, with ``rows=True``, by each row's sum, multiplied
  through the layers; the class token's row over the patches;
- :func:`chefer_relevance`: Chefer et al.'s ``generate_relevance`` for ViT (hila-chefer/Transformer-MM-Explainability,
  ``Transformer_MM_explainability_ViT.ipynb``): rule 5, ``relu(grad * attention)`` averaged over the heads;
  rule 6, ``R = R + cam @ R`` from the identity; ``R[0, 1:]``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

T = torch.Tensor


# ------------------------------------------------------------------------------------ forward passes


def _layer_norm(t: T, norm: nn.LayerNorm) -> T:
    mean = t.mean(-1, keepdim=True)
    var = ((t - mean) ** 2).mean(-1, keepdim=True)
    return (t - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _gelu(t: T) -> T:
    return 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))


def _attention(t: T, wq: T, bq: T, wk: T, bk: T, wv: T, bv: T, wo: T, bo: T, heads: int,
               delta: T | None = None) -> tuple[T, T]:
    """Multi-head self-attention of tokens ``t`` (B, N, D): the output (B, N, D) and ``A`` (B, heads, N, N)
    (``delta`` is added to ``A`` before it is used: finite differences)."""
    d = t.shape[-1]
    hd = d // heads
    q, k, v = t @ wq.T + bq, t @ wk.T + bk, t @ wv.T + bv
    probs = []
    for h in range(heads):
        cols = slice(h * hd, (h + 1) * hd)
        s = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(hd)  # (B, N, N)
        e = torch.exp(s - s.amax(-1, keepdim=True))
        probs.append(e / e.sum(-1, keepdim=True))
    attention = torch.stack(probs, 1)  # the tensor the rest of the forward pass uses
    if delta is not None:
        attention = attention + delta
    out = torch.cat([attention[:, h] @ v[..., h * hd:(h + 1) * hd] for h in range(heads)], -1)
    return out @ wo.T + bo, attention


def _block(t: T, norm1: nn.LayerNorm, qkv: tuple[T, ...], heads: int, norm2: nn.LayerNorm,
           fc1: nn.Linear, fc2: nn.Linear, delta: T | None = None) -> tuple[T, T]:
    out, attention = _attention(_layer_norm(t, norm1), *qkv, heads=heads, delta=delta)
    t = t + out
    t = t + _gelu(_layer_norm(t, norm2) @ fc1.weight.T + fc1.bias) @ fc2.weight.T + fc2.bias
    return t, attention


def _patches(conv: nn.Conv2d, x: T) -> T:
    """The patch embedding (a convolution with stride = kernel), patch by patch, as (B, patches, D) row-major."""
    p = conv.kernel_size[0]
    b, _c, height, width = x.shape
    gh, gw = height // p, width // p
    rows = []
    for r in range(gh):
        for c in range(gw):
            patch = x[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p].reshape(b, -1)
            rows.append(patch @ conv.weight.reshape(conv.out_channels, -1).T + conv.bias)
    return torch.stack(rows, 1)


def _split_qkv(weight: T, bias: T) -> tuple[T, ...]:
    d = weight.shape[1]
    return (weight[:d], bias[:d], weight[d:2 * d], bias[d:2 * d], weight[2 * d:], bias[2 * d:])


def ref_tiny_vit(model: nn.Module, x: T, deltas: list[T | None] | None = None) -> tuple[T, list[T]]:
    """``toy_models.TinyViT`` (any attention variant): logits (B, K) and ``A_b`` (B, heads, N, N) per block
    (``deltas[b]`` added to ``A_b``)."""
    t = _patches(model.patch_embed, x)
    t = torch.cat([model.cls_token.expand(len(t), -1, -1), t], 1) + model.pos_embed
    attentions = []
    for i, blk in enumerate(model.blocks):
        if blk.attention == "mha":
            qkv = (*_split_qkv(blk.attn.in_proj_weight, blk.attn.in_proj_bias), blk.attn.out_proj.weight,
                   blk.attn.out_proj.bias)
        else:
            qkv = (*_split_qkv(blk.qkv.weight, blk.qkv.bias), blk.proj.weight, blk.proj.bias)
        t, a = _block(t, blk.norm1, qkv, blk.heads, blk.norm2, blk.mlp[0], blk.mlp[2],
                      None if deltas is None else deltas[i])
        attentions.append(a)
    return _layer_norm(t, model.norm)[:, 0] @ model.head.weight.T + model.head.bias, attentions


def ref_timm_vit(model: nn.Module, x: T) -> tuple[T, list[T]]:
    """timm ``VisionTransformer`` with its defaults (class token, no register tokens, ``global_pool="token"``)."""
    t = _patches(model.patch_embed.proj, x)
    t = torch.cat([model.cls_token.expand(len(t), -1, -1), t], 1) + model.pos_embed
    attentions = []
    for blk in model.blocks:
        qkv = (*_split_qkv(blk.attn.qkv.weight, blk.attn.qkv.bias), blk.attn.proj.weight, blk.attn.proj.bias)
        t, a = _block(t, blk.norm1, qkv, blk.attn.num_heads, blk.norm2, blk.mlp.fc1, blk.mlp.fc2)
        attentions.append(a)
    return _layer_norm(t, model.norm)[:, 0] @ model.head.weight.T + model.head.bias, attentions


def ref_torchvision_vit(model: nn.Module, x: T) -> tuple[T, list[T]]:
    """torchvision ``VisionTransformer`` (class token; ``heads.head`` only)."""
    t = _patches(model.conv_proj, x)
    t = torch.cat([model.class_token.expand(len(t), -1, -1), t], 1) + model.encoder.pos_embedding
    attentions = []
    for layer in model.encoder.layers:
        mha = layer.self_attention
        qkv = (*_split_qkv(mha.in_proj_weight, mha.in_proj_bias), mha.out_proj.weight, mha.out_proj.bias)
        t, a = _block(t, layer.ln_1, qkv, mha.num_heads, layer.ln_2, layer.mlp[0], layer.mlp[3])
        attentions.append(a)
    head = model.heads.head
    return _layer_norm(t, model.encoder.ln)[:, 0] @ head.weight.T + head.bias, attentions


def ref_attention_gradients(forward: object, model: nn.Module, x: T, classes: list[int]) -> tuple[T, list[T], list[T]]:
    """Logits, ``A_b`` and ``dS/dA_b`` (autograd on the literal forward pass), ``S`` the logit of ``classes``."""
    logits, attentions = forward(model, x)  # type: ignore[operator]
    score = sum(logits[i, c] for i, c in enumerate(classes))
    grads = torch.autograd.grad(score, attentions)
    return logits.detach(), [a.detach() for a in attentions], [g.detach() for g in grads]


# ------------------------------------------------------------------------------------------ the methods


def _fused(a: T, how: str) -> list[list[float]]:
    """One image's (heads, N, N) attention fused over the heads, entry by entry."""
    heads, n, _ = a.shape
    values = a.tolist()
    pick = {"mean": lambda v: sum(v) / len(v), "max": max, "min": min}[how]
    return [[pick([values[h][r][c] for h in range(heads)]) for c in range(n)] for r in range(n)]


def _matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    n = len(a)
    return [[sum(a[r][k] * b[k][c] for k in range(n)) for c in range(n)] for r in range(n)]


def _identity(n: int) -> list[list[float]]:
    return [[1.0 if r == c else 0.0 for c in range(n)] for r in range(n)]


def ref_rollout_matrix(attentions: list[T], head_fusion: str = "mean", discard_ratio: float = 0.0,
                       keep: tuple[int, ...] = (0,)) -> list[list[float]]:
    """Attention rollout of one image (``attentions``: per layer (heads, N, N)): per layer the fused attention with
    the lowest ``int(N*N*discard_ratio)`` entries zeroed (not the ``keep`` tokens' diagonal entries),
    ``0.5 W + 0.5 I``, each row divided by its sum; ``Ã = A_L ... A_1``."""
    n = attentions[0].shape[-1]
    joint = _identity(n)
    for a in attentions:
        w = _fused(a, head_fusion)
        k = int(n * n * discard_ratio)
        order = sorted((w[r][c], r * n + c) for r in range(n) for c in range(n))
        for _value, flat in order[:k]:
            r, c = divmod(flat, n)
            if not (r == c and r in keep):
                w[r][c] = 0.0
        aug = [[0.5 * w[r][c] + (0.5 if r == c else 0.0) for c in range(n)] for r in range(n)]
        aug = [[v / sum(row) for v in row] for row in aug]
        joint = _matmul(aug, joint)
    return joint


def ref_relevance_matrix(attentions: list[T], gradients: list[T]) -> list[list[float]]:
    """Chefer et al. 2021b for one image: ``Ā = mean_h max(0, ∇A ⊙ A)`` (Eq. 5), ``R = R + Ā R`` from ``R = I``
    (Eq. 6)."""
    n = attentions[0].shape[-1]
    relevance = _identity(n)
    for a, g in zip(attentions, gradients):
        heads = a.shape[0]
        av, gv = a.tolist(), g.tolist()
        cam = [[sum(max(0.0, gv[h][r][c] * av[h][r][c]) for h in range(heads)) / heads for c in range(n)]
               for r in range(n)]
        added = _matmul(cam, relevance)
        relevance = [[relevance[r][c] + added[r][c] for c in range(n)] for r in range(n)]
    return relevance


def readout_map(matrix: list[list[float]], readout: tuple[int, ...], prefix: int, grid: tuple[int, int]) -> T:
    """The mean of the readout tokens' rows over the patch tokens' columns, on the grid (row-major)."""
    gh, gw = grid
    row = [sum(matrix[r][prefix + p] for r in readout) / len(readout) for p in range(gh * gw)]
    return torch.tensor(row, dtype=torch.float64).reshape(gh, gw)


# ----------------------------------------------------------------------- the authors' algorithms


def abnar_joint_attention(att_mat: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema's joint attention for head-averaged ``att_mat`` (layers, N, N): the joint attention of every
    layer (layers, N, N)."""
    layers, n, _ = att_mat.shape
    augmented = att_mat + np.eye(n)[None]
    augmented = augmented / augmented.sum(axis=-1)[..., None]
    joint = np.zeros_like(augmented)
    joint[0] = augmented[0]
    for i in range(1, layers):
        joint[i] = augmented[i] @ joint[i - 1]
    return joint


def vit_explain_rollout(attentions: list[T], discard_ratio: float, head_fusion: str, rows: bool = False) -> T:
    """vit-explain's rollout of one image (``attentions``: per layer (1, heads, N, N)): the class token's row over the
    patch tokens (N - 1,), before its division by the maximum. ``rows=True`` divides each row by its own sum."""
    n = attentions[0].shape[-1]
    result = torch.eye(n, dtype=torch.float64)
    for attention in attentions:
        if head_fusion == "mean":
            fused = attention.mean(1)
        elif head_fusion == "max":
            fused = attention.amax(1)
        else:
            fused = attention.amin(1)
        flat = fused.view(fused.shape[0], -1)  # a view: zeroing its entries zeroes the fused matrix's
        lowest = flat.topk(int(flat.shape[-1] * discard_ratio), -1, largest=False).indices
        lowest = lowest[lowest != 0]
        flat[0, lowest] = 0
        a = (fused + torch.eye(n, dtype=torch.float64)) / 2
        a = a / (a.sum(-1, keepdim=True) if rows else a.sum(-1))
        result = a @ result
    return result[0, 0, 1:]


def chefer_relevance(attentions: list[T], gradients: list[T]) -> T:
    """Chefer et al.'s relevance of one image (per layer (1, heads, N, N)): ``R[0, 1:]``."""
    n = attentions[0].shape[-1]
    relevance = torch.eye(n, dtype=torch.float64)
    for attention, gradient in zip(attentions, gradients):
        cam = (gradient.reshape(-1, n, n) * attention.reshape(-1, n, n)).clamp(min=0).mean(0)  # rule 5
        relevance = relevance + cam @ relevance  # rule 6
    return relevance[0, 1:]
