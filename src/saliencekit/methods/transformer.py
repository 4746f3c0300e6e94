"""Vision-transformer methods: attention rollout (Abnar & Zuidema 2020) and transformer attribution (Chefer et al.).

Both read the attention probabilities ``A_b`` (images, heads, N, N) of every self-attention layer ``b = 1..L``
of one forward pass (:mod:`saliencekit.methods._attention`: computed explicitly by a torch-function mode, the
model untouched), combine them into a token-to-token matrix, and keep the rows of the tokens the classifier reads
(the class token, or the class and distillation tokens, or every patch token of an average-pooled ViT: the
``readout``) over the patch tokens' columns, laid out on the patch grid and upsampled bilinearly to the input
(as the CAMs are). docs/methods.md has the equations with their numbers.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from saliencekit.errors import InputError, UnknownChoiceError
from saliencekit.methods._attention import TokenLayout, attention_pass, token_layout
from saliencekit.methods._propagation import refuse_torchscript
from saliencekit.methods.base import Explanation, Method, check_inputs
from saliencekit.methods.cam import upsample
from saliencekit.methods.registry import register_method
from saliencekit.methods.targets import ResolvedTarget, as_target

T = torch.Tensor
HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: T, how: str) -> T:
    """(B, heads, N, N) -> (B, N, N): the mean, maximum or minimum over the heads."""
    if how == "mean":
        return attention.mean(1)
    if how == "max":
        return attention.amax(1)
    return attention.amin(1)


def discard_lowest(fused: T, ratio: float, keep: Sequence[int]) -> T:
    """``fused`` (B, N, N) with the lowest ``int(N * N * ratio)`` entries of each image set to zero, except the
    diagonal entries of the ``keep`` tokens (vit-explain keeps the class token's attention to itself)."""
    b, n, _ = fused.shape
    k = int(n * n * ratio)
    if k == 0:
        return fused
    flat = fused.reshape(b, n * n)
    lowest = flat.topk(k, dim=1, largest=False).indices
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
    drop[:, [t * n + t for t in keep]] = False
    return flat.masked_fill(drop, 0).reshape(b, n, n)


def rollout(attentions: Sequence[T], head_fusion: str = "mean", discard_ratio: float = 0.0,
            keep: Sequence[int] = ()) -> T:
    """Attention rollout (Abnar & Zuidema 2020, Sec. 3): ``Ã_b = A_b ⋅ Ã_{b-1}`` with ``A_b`` the head-fused
    attention plus the identity for the residual connection, rows renormalised; returns ``Ã_L`` (B, N, N)."""
    first = attentions[0]
    b, n = first.shape[0], first.shape[-1]
    eye = torch.eye(n, dtype=first.dtype, device=first.device)
    joint = eye.expand(b, n, n)
    for attention in attentions:
        fused = discard_lowest(fuse_heads(attention, head_fusion), discard_ratio, keep)
        a = (fused + eye) / 2  # 0.5 W_att + 0.5 I (the residual connection)
        a = a / a.sum(-1, keepdim=True)  # rows sum to 1 again (after max/min fusion or discarding)
        joint = a @ joint  # Ã(l_i) = A(l_i) Ã(l_{i-1})
    return joint


def gradient_rollout(attentions: Sequence[T], gradients: Sequence[T]) -> T:
    """Chefer, Gur & Wolf 2021b, Eqs. (5)-(6) for self-attention: ``Ā_b = E_h[(∇A_b ⊙ A_b)^+]``,
    ``R ← R + Ā_b ⋅ R`` from ``R = I`` (Eq. 1), through the layers in forward order; returns ``R`` (B, N, N)."""
    first = attentions[0]
    b, n = first.shape[0], first.shape[-1]
    relevance = torch.eye(n, dtype=first.dtype, device=first.device).expand(b, n, n)
    for attention, gradient in zip(attentions, gradients):
        cam = (gradient * attention).clamp_min(0).mean(1)  # Eq. 5
        relevance = relevance + cam @ relevance  # Eq. 6
    return relevance


class AttentionMethod(Method):
    """Shared machinery of the methods that read a vision transformer's attention.

    One forward pass records every attention matrix (and, when a method of the group needs them, one backward pass
    their gradients); :meth:`relevance` combines them into a (B, N, N) token matrix; the readout tokens' rows over
    the patch tokens become the map on the patch grid (``layer_maps``), upsampled bilinearly to the input
    (``maps``). Methods of one model requested together share the passes.

    Only models that compute attention are explained; any other model is refused by name (``needs_attention``).
    """

    family = "attention"
    needs_attention = True
    works_on_torchscript = False
    input_shift_invariant = True  # a compensated shift leaves every activation after the patch embedding unchanged
    needs_gradients: ClassVar[bool] = False

    def __init__(self, model: nn.Module):
        super().__init__(model)
        refuse_torchscript(self.model, self.name)
        if hasattr(self.model, "keras_model"):  # a KerasClassifier
            raise InputError(f"{self.name} does not support Keras models (their attention layers are Keras ops, "
                             "not read here); use the gradient-family methods or the CAMs")

    def relevance(self, attentions: list[T], gradients: list[T] | None, layout: TokenLayout) -> T:
        """The (B, N, N) token-to-token matrix whose readout rows are the map."""
        raise NotImplementedError

    def share_key(self) -> Hashable:
        return ("attention", id(self.model))

    def attribute(self, inputs: torch.Tensor, target: Any = None) -> Explanation:
        return self.attribute_shared([self], inputs, target)[0]

    @classmethod
    def attribute_shared(cls, methods: Sequence[Method], inputs: torch.Tensor, target: Any = None) -> list[Explanation]:
        """Every attention method of one model from one forward pass (and one backward pass if one needs it)."""
        group = list(methods)
        first = group[0]
        assert all(isinstance(m, AttentionMethod) and m.share_key() == first.share_key() for m in group)
        model = first.model
        check_inputs(model, inputs)
        layout = token_layout(model, inputs, first.name)
        resolved = ResolvedTarget.deferred(as_target(target), inputs.shape[0])
        gradients = any(m.needs_gradients for m in group)  # type: ignore[attr-defined]
        found = attention_pass(model, inputs, layout, resolved.score, gradients)
        gh, gw = layout.grid
        readout = list(layout.readout)
        maps = []
        for m in group:
            r = m.relevance(found.attentions, found.gradients, layout)  # type: ignore[attr-defined]
            row = r[:, readout, layout.prefix:].mean(1)  # the readout tokens' rows over the patch tokens
            maps.append(row.reshape(-1, gh, gw).to(inputs.dtype))
        n = inputs.shape[0]
        ups = upsample(torch.cat(maps), inputs.shape[-2:]).split(n)
        targets = resolved.class_indices().to(inputs.device)
        assert resolved.predictions is not None
        return [Explanation(method=m.name, maps=up, layer_maps=layer_map, scores=found.scores.to(inputs.dtype),
                            targets=targets, predictions=resolved.predictions,
                            params={**m.params, **layout.describe()})
                for m, layer_map, up in zip(group, maps, ups)]


@register_method("attention_rollout")
class AttentionRollout(AttentionMethod):
    """Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", Sec. 3).

    Per layer, the attention fused over the heads (``head_fusion``: the mean, as in the paper, or the maximum or
    minimum, as in vit-explain), optionally with its lowest ``discard_ratio`` share of entries set to zero
    (vit-explain's option; the readout tokens' attention to themselves kept), plus the identity for the residual
    connection, ``A = 0.5 W_att + 0.5 I``, rows renormalised; multiplied through the layers,
    ``Ã_L = A_L ⋯ A_1``. The map is the readout token's row of ``Ã_L`` over the patch tokens, on the patch grid,
    upsampled bilinearly. Class-agnostic: the target only fixes ``scores``/``targets``.

    Args:
        model: a vision transformer (timm ViT/DeiT, torchvision ViT, or any model whose attention is
            ``F.scaled_dot_product_attention``, ``nn.MultiheadAttention`` or an explicit softmax over token pairs).
        head_fusion: ``"mean"`` (default, the paper), ``"max"`` or ``"min"``.
        discard_ratio: share of the lowest fused attention entries set to zero per layer, in [0, 1); default 0
            (the paper; vit-explain's examples use 0.9).

    >>> from torchvision.models import VisionTransformer
    >>> vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
    ...                         num_classes=2)
    >>> _ = torch.nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero
    >>> e = AttentionRollout(vit).attribute(torch.randn(1, 3, 32, 32))
    >>> e.layer_maps.shape, e.params["readout_tokens"]
    (torch.Size([1, 4, 4]), [0])
    """

    description = "Attention rollout: head-fused attention plus identity multiplied through the layers (Abnar 2020)."

    def __init__(self, model: nn.Module, *, head_fusion: str = "mean", discard_ratio: float = 0.0):
        super().__init__(model)
        if head_fusion not in HEAD_FUSIONS:
            raise UnknownChoiceError("head fusion", str(head_fusion), HEAD_FUSIONS)
        if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, int | float) \
                or not 0 <= discard_ratio < 1:
            raise InputError(f"discard_ratio must be a number in [0, 1), got {discard_ratio!r}")
        self.head_fusion, self.discard_ratio = head_fusion, float(discard_ratio)
        self._store_params(head_fusion=head_fusion, discard_ratio=self.discard_ratio)

    def relevance(self, attentions: list[T], gradients: list[T] | None, layout: TokenLayout) -> T:
        return rollout(attentions, self.head_fusion, self.discard_ratio, layout.readout)


@register_method("transformer_attribution")
class TransformerAttribution(AttentionMethod):
    """Gradient-weighted attention relevance (Chefer, Gur & Wolf 2021b, "Generic Attention-model Explainability
    for Interpreting Bi-Modal and Encoder-Decoder Transformers", Eqs. 5-6 for self-attention).

    ``Ā_b = E_h[(∇A_b ⊙ A_b)^+]`` (Eq. 5: the attention weighted by the gradient of the explained score ``S``,
    positive part, mean over heads) and ``R ← R + Ā_b ⋅ R`` from ``R = I`` through the layers (Eq. 6). The map
    is the readout token's row of ``R`` over the patch tokens, on the patch grid, upsampled bilinearly. This is the
    form the authors' code uses for ViTs; the LRP-based form of Chefer, Gur & Wolf 2021a (``∇A ⊙ R^(n_b)``, Eq. 13,
    with ``R^(n_b)`` the LRP relevance of the attention) is not implemented. Class-specific.

    Args:
        model: a vision transformer (see :class:`AttentionRollout`).

    >>> from torchvision.models import VisionTransformer
    >>> vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
    ...                         num_classes=2)
    >>> _ = torch.nn.init.normal_(vit.heads.head.weight)
    >>> TransformerAttribution(vit).attribute(torch.randn(1, 3, 32, 32), target=1).maps.shape
    torch.Size([1, 32, 32])
    """

    description = ("Transformer attribution: attention weighted by its gradient, positive part, accumulated through "
                   "the layers (Chefer 2021).")
    uses_gradients = True
    needs_gradients = True

    def __init__(self, model: nn.Module):
        super().__init__(model)

    def relevance(self, attentions: list[T], gradients: list[T] | None, layout: TokenLayout) -> T:
        assert gradients is not None
        return gradient_rollout(attentions, gradients)


__all__ = ["AttentionMethod", "AttentionRollout", "TransformerAttribution", "discard_lowest", "fuse_heads",
           "gradient_rollout", "rollout"]
