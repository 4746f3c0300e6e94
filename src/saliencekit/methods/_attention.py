"""Reading a vision transformer's attention probabilities, and their gradients, without touching the model.

Fused attention never materialises the attention matrix: timm's ViT/DeiT call
``F.scaled_dot_product_attention`` (``attn.fused_attn``), and torchvision's ViT calls ``nn.MultiheadAttention``
with ``need_weights=False``, whose functional form calls the same fused kernel. Flipping the modules' flags would
change the user's model. Instead, during one forward pass a :class:`torch.overrides.TorchFunctionMode`
(thread-local, gone when the block ends; the mechanism of :mod:`saliencekit.methods._propagation`) sees the
attention calls and computes them explicitly, keeping the probabilities ``A = softmax(q k^T * scale + mask)`` in
the autograd graph, so that the explained score can be differentiated with respect to each of them:

- ``F.scaled_dot_product_attention``: the computation the PyTorch documentation gives as its equivalent (scale,
  boolean or additive mask, ``is_causal``, ``enable_gqa``), without dropout (the methods run in eval mode; a
  model that asks for attention dropout anyway is refused);
- ``F.multi_head_attention_forward`` (what ``nn.MultiheadAttention`` calls once a torch-function mode is active,
  which also rules out its fused fast path): the input projections, the heads, the attention above and the output
  projection, with the weights it returns when asked (``need_weights``); key padding masks, attention masks,
  ``bias_k``/``bias_v``, ``add_zero_attn`` and static keys are refused by name;
- an explicit softmax over the last dimension of a (B, heads, N, N) or (B, N, N) tensor (timm's non-fused path,
  ``attn.softmax(dim=-1)``; hand-written ViTs): its output is recorded as it is, the model's own tensor.

Nothing is put on the model: no hook, no changed attribute or flag, no module swapped, no torch function replaced.

:func:`token_layout` then says which attention matrices make a ViT's rollout: every recorded call must be
self-attention over the same ``N`` tokens of each image (window attention, class attention and token pruning are
refused with the reason); the patch grid and the prefix tokens (class, distillation, register tokens) come from the
capture engine's token reader (:mod:`saliencekit.methods._capture`); the *readout* tokens are those whose rows of
the last attention matrix the output depends on (one backward pass of one image): the class token of a
class-token ViT, the class and distillation tokens of a distilled DeiT, every patch token of an average-pooled ViT.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from saliencekit.errors import InputError
from saliencekit.methods._capture import discover, eval_mode
from saliencekit.methods.base import preserve_model

T = torch.Tensor

#: Softmax entry points an explicit attention may call (``F.softmax`` calls ``Tensor.softmax`` inside, unseen).
SOFTMAXES = (F.softmax, torch.softmax, T.softmax)


@dataclass
class AttentionCall:
    """One attention computed in a forward pass.

    Attributes:
        kind: ``"scaled_dot_product_attention"``, ``"multi_head_attention_forward"`` or ``"softmax"``.
        probs: the attention probabilities as the forward pass used them (in the autograd graph when grad is on):
            (B, heads, L, S) for the first two kinds, the softmax's own output for the third.
        version: ``probs._version`` when it was recorded (an in-place change after it is detected).
    """

    kind: str
    probs: T
    version: int


def _sdpa_probs(query: T, key: T, attn_mask: T | None, is_causal: bool, scale: float | None,
                enable_gqa: bool) -> T:
    """``softmax(q k^T * scale + bias)``: the equivalent of ``F.scaled_dot_product_attention`` in its documentation."""
    length, source = query.shape[-2], key.shape[-2]
    scale_factor = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    bias = torch.zeros(length, source, dtype=query.dtype, device=query.device)
    if is_causal:
        if attn_mask is not None:
            raise InputError("scaled_dot_product_attention got both attn_mask and is_causal=True")
        causal = torch.ones(length, source, dtype=torch.bool, device=query.device).tril(diagonal=0)
        bias = bias.masked_fill(causal.logical_not(), float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            bias = torch.where(attn_mask, bias, float("-inf"))
        else:
            bias = attn_mask + bias
    if enable_gqa:
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], -3)
    return torch.softmax(query @ key.transpose(-2, -1) * scale_factor + bias, dim=-1)


def _no_dropout(dropout_p: float, where: str) -> None:
    if dropout_p:
        raise InputError(f"the model asks {where} for attention dropout (p={dropout_p}) in eval mode; the attention "
                         "methods explain the deterministic model: pass dropout_p=0 when not training")


class AttentionRecorder(TorchFunctionMode):
    """The torch-function mode of one forward pass: attention computed explicitly and recorded (module docstring).

    Args:
        batch: the number of images in the forward pass.
    """

    def __init__(self, batch: int):
        super().__init__()
        self.batch = batch
        self.calls: list[AttentionCall] = []

    def _record(self, kind: str, probs: T) -> None:
        self.calls.append(AttentionCall(kind, probs, probs._version))

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._sdpa(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            bound = _MHA_SIGNATURE.bind(*args, **kwargs)
            bound.apply_defaults()
            return self._mha(bound.arguments)
        out = func(*args, **kwargs)
        if func in SOFTMAXES and isinstance(out, T) and self._attention_softmax(out, args, kwargs):
            self._record("softmax", out)
        return out

    def _attention_softmax(self, out: T, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if not isinstance(dim, int) or out.ndim not in (3, 4):
            return False
        return dim % out.ndim == out.ndim - 1 and out.shape[-1] == out.shape[-2]

    def _sdpa(self, query: T, key: T, value: T, attn_mask: T | None = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> T:
        _no_dropout(dropout_p, "scaled_dot_product_attention")
        probs = _sdpa_probs(query, key, attn_mask, is_causal, scale, enable_gqa)
        self._record("scaled_dot_product_attention", probs)
        if enable_gqa:
            value = value.repeat_interleave(query.shape[-3] // value.shape[-3], -3)
        return probs @ value

    def _mha(self, a: dict[str, Any]) -> tuple[T, T | None]:
        unsupported = [name for name in ("bias_k", "bias_v", "key_padding_mask", "attn_mask", "static_k", "static_v")
                       if a[name] is not None] + [name for name in ("add_zero_attn", "is_causal") if a[name]]
        if unsupported:
            raise InputError(f"nn.MultiheadAttention with {', '.join(unsupported)} is not supported by the attention "
                             "methods (they read plain self-attention over all tokens)")
        if a["training"]:
            _no_dropout(a["dropout_p"], "nn.MultiheadAttention")
        query, key, value = a["query"], a["key"], a["value"]
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        length, batch, embed = query.shape
        heads = int(a["num_heads"])
        if embed != a["embed_dim_to_check"] or embed % heads:
            raise InputError(f"nn.MultiheadAttention: embedding size {embed} does not match embed_dim "
                             f"{a['embed_dim_to_check']} split into {heads} heads")
        if a["use_separate_proj_weight"]:
            weights = (a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"])
        else:
            weights = tuple(a["in_proj_weight"].chunk(3))
        biases = (None, None, None) if a["in_proj_bias"] is None else tuple(a["in_proj_bias"].chunk(3))
        head_dim = embed // heads

        def split(t: T, w: T, b: T | None) -> T:  # (L, B, E) -> (B, heads, L, head_dim)
            p = F.linear(t, w, b)
            return p.reshape(p.shape[0], batch, heads, head_dim).permute(1, 2, 0, 3)

        q, k, v = (split(t, w, b) for t, w, b in zip((query, key, value), weights, biases))
        probs = _sdpa_probs(q, k, None, False, None, False)
        self._record("multi_head_attention_forward", probs)
        out = (probs @ v).permute(2, 0, 1, 3).reshape(length, batch, embed)
        out = F.linear(out, a["out_proj_weight"], a["out_proj_bias"])
        weights_out = None
        if a["need_weights"]:
            weights_out = probs.mean(1) if a["average_attn_weights"] else probs
            if not batched:
                weights_out = weights_out.squeeze(0)
        if not batched:
            out = out.squeeze(1)
        return out, weights_out


_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


@contextlib.contextmanager
def recording(batch: int) -> Iterator[AttentionRecorder]:
    """Run the block (one forward pass of ``batch`` images) with its attention computed explicitly and recorded."""
    with AttentionRecorder(batch) as mode:
        yield mode


def square_attention(calls: list[AttentionCall], batch: int) -> list[T]:
    """Each call's probabilities as (B, heads, N, N) (a view of the recorded tensor, read at once).

    Raises:
        InputError: a call that is not self-attention over the same ``N`` tokens of each image, or a tensor the
            model modified in place after the softmax.
    """
    out: list[T] = []
    for i, call in enumerate(calls, 1):
        p = call.probs
        where = f"attention {i} of {len(calls)} ({call.kind}, shape {tuple(p.shape)})"
        if p._version != call.version:
            raise InputError(f"{where} was modified in place after the softmax; the attention methods read the "
                             "probabilities the model used")
        if p.ndim == 3 and p.shape[0] == batch:
            p = p.unsqueeze(1)
        if p.ndim != 4 or p.shape[0] != batch:
            raise InputError(f"{where} is not (images, heads, tokens, tokens) for {batch} image(s): attention over "
                             "windows or groups folded into the batch (Swin) has no token-to-token matrix of the "
                             "whole image; the attention methods need global self-attention")
        if p.shape[-1] != p.shape[-2]:
            raise InputError(f"{where} attends from {p.shape[-2]} to {p.shape[-1]} tokens (class attention or an "
                             "attention-pooling head); the attention methods need self-attention in every layer")
        if out and p.shape[-1] != out[0].shape[-1]:
            raise InputError(f"{where} has {p.shape[-1]} tokens where the first has {out[0].shape[-1]} (tokens "
                             "pruned or merged); the attention methods need the same tokens in every layer")
        out.append(p)
    return out


@dataclass(frozen=True)
class TokenLayout:
    """How a ViT's attention matrices map onto the image.

    Attributes:
        layers: attention layers per forward pass.
        tokens: ``N``, tokens per image.
        prefix: tokens before the patch tokens (class, distillation, register tokens).
        grid: ``(gh, gw)``, the patch tokens' grid (row-major after the prefix).
        readout: the tokens whose rows of the last attention the output depends on.
        kinds: the kind of each attention call (see :class:`AttentionCall`).
    """

    layers: int
    tokens: int
    prefix: int
    grid: tuple[int, int]
    readout: tuple[int, ...]
    kinds: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary for an explanation's ``params``."""
        return {"attention_layers": self.layers, "patch_grid": list(self.grid), "prefix_tokens": self.prefix,
                "readout_tokens": list(self.readout)}


def no_attention_message(method: str, model: nn.Module) -> str:
    return (f"{method} explains vision transformers: {type(model).__name__} computes no attention in its forward "
            "pass (no F.scaled_dot_product_attention, nn.MultiheadAttention or softmax over token pairs); use a "
            "gradient, CAM or perturbation method")


def _token_layout(model: nn.Module, example: T, method: str) -> TokenLayout:
    with preserve_model(model), eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        x = example[:1].detach().clone().requires_grad_(True)
        with recording(1) as rec:
            output = model(x)
        if not rec.calls:
            raise InputError(no_attention_message(method, model))
        probs = square_attention(rec.calls, 1)
        if not isinstance(output, T) or output.ndim != 2:
            got = tuple(output.shape) if isinstance(output, T) else type(output).__name__
            raise InputError(f"{method}: the model must return logits (N, classes), got {got}")
        weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(0)).to(output)
        (g,) = torch.autograd.grad((output * weights).sum(), rec.calls[-1].probs, allow_unused=True)
    tokens = probs[0].shape[-1]
    readout = () if g is None else tuple(
        int(i) for i in torch.nonzero(g.reshape(probs[-1].shape).ne(0).any(dim=(0, 1, 3))).flatten())
    if not readout:
        raise InputError(f"{method}: the model's output does not depend on the last attention layer (a freshly "
                         "initialised torchvision ViT has a zero head); nothing to explain")
    found = discover(model, example[:1])
    grids = [(item.reader.grid, item.reader.prefix) for item in found.seen.values()
             if item.reader is not None and item.reader.layout == "tokens" and item.shape[1] == tokens]
    if not grids:
        raise InputError(f"{method}: the {tokens} tokens of the attention fit no patch grid seen in the forward pass "
                         "(the patch embedding's (N, C, h, w) output, followed by tokens); the attention methods "
                         "read ViT-style models that embed patches with a convolution")
    grid, prefix = grids[0]
    return TokenLayout(len(probs), tokens, prefix, grid, readout, tuple(c.kind for c in rec.calls))


_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], TokenLayout]] = weakref.WeakKeyDictionary()


def token_layout(model: nn.Module, example: T, method: str) -> TokenLayout:
    """The :class:`TokenLayout` of ``model`` for inputs shaped like ``example`` (one forward and one backward pass of
    one image, remembered per model, module structure and input shape).

    Raises:
        InputError: the model computes no attention (named in the message), or attention the methods cannot read
            (see :func:`square_attention`), or its tokens fit no patch grid.
    """
    key = (tuple(example.shape[1:]), example.dtype, example.device,
           tuple((n, id(m)) for n, m in model.named_modules()))
    known = _LAYOUTS.get(model, {})
    if key not in known:
        if len(known) >= 8:
            known.clear()
        known[key] = _token_layout(model, example, method)
        _LAYOUTS[model] = known
    return known[key]


@dataclass
class AttentionPass:
    """The attention of one forward pass (and its gradients), detached.

    Attributes:
        attentions: per layer (B, heads, N, N).
        gradients: per layer ``dS/dA`` (B, heads, N, N), or None when not asked for.
        scores: the explained score ``S`` per image (B,).
    """

    attentions: list[T]
    gradients: list[T] | None
    scores: T


def attention_pass(model: nn.Module, inputs: T, layout: TokenLayout, score: Callable[[T], T],
                   gradients: bool) -> AttentionPass:
    """One forward pass (eval mode) recording the attention and scoring the output with ``score``; with
    ``gradients`` one backward pass from the scores (summed over the images, which do not interact) to every
    attention matrix. No parameter gets a ``.grad``."""
    n = inputs.shape[0]
    with preserve_model(model), eval_mode(model), torch.inference_mode(False), torch.set_grad_enabled(gradients):
        x = inputs.detach().clone()
        if gradients:
            x.requires_grad_(True)  # the graph exists even when every parameter is frozen
        with recording(n) as rec:
            output = model(x)
        probs = square_attention(rec.calls, n)
        if len(probs) != layout.layers or probs[0].shape[-1] != layout.tokens:
            raise InputError(f"the forward pass of {n} image(s) computed {len(probs)} attention layers over "
                             f"{probs[0].shape[-1] if probs else 0} tokens, that of one image {layout.layers} over "
                             f"{layout.tokens}; the attention methods need the same attention for every batch size")
        scores = score(output)
        grads: list[T] | None = None
        if gradients:
            found = torch.autograd.grad(scores.sum(), [c.probs for c in rec.calls], allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g.reshape(p.shape) for g, p in zip(found, probs)]
            square_attention(rec.calls, n)  # still unmodified after the backward pass
    return AttentionPass([p.detach() for p in probs], grads, scores.detach())


__all__ = ["AttentionCall", "AttentionPass", "AttentionRecorder", "TokenLayout", "attention_pass",
           "no_attention_message", "recording", "square_attention", "token_layout"]
