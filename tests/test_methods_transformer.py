"""Attention rollout and transformer attribution (issue 14) against literal float64 references.

The references (tests/reference/ref_attention.py) compute every attention matrix by hand from the weights of the
model (tiny test ViTs whose attention goes through ``F.scaled_dot_product_attention``, ``nn.MultiheadAttention`` and
an explicit softmax; timm ViT/DeiT; torchvision ViT), so they check the interception of fused attention as much as
the equations. No installed library implements these methods, so the peers are re-written versions of the authors'
published algorithms (Abnar & Zuidema's joint attention, vit-explain's rollout, Chefer et al.'s relevance).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import saliencekit as sk
from reference.ref_attention import (
    abnar_joint_attention,
    chefer_relevance,
    readout_map,
    ref_attention_gradients,
    ref_relevance_matrix,
    ref_rollout_matrix,
    ref_timm_vit,
    ref_tiny_vit,
    ref_torchvision_vit,
    vit_explain_rollout,
)
from reference.ref_cam import ref_upsample
from saliencekit.errors import InputError, UnknownNameError
from saliencekit.methods._attention import recording
from test_method_contract import assert_unchanged, prepared_model, snapshot
from toy_models import make

KINDS = ["vit_sdpa", "vit_mha", "vit_softmax"]
METHODS = ["attention_rollout", "transformer_attribution"]


def _x(n: int, size: int = 16, channels: int = 1, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _timm() -> object:
    return pytest.importorskip("timm", reason="timm is an optional extra: pip install saliencekit[timm]")


def _timm_vit(seed: int = 0, **kwargs: object) -> nn.Module:
    timm = _timm()
    torch.manual_seed(seed)
    args = {"pretrained": False, "num_classes": 3, "img_size": 32, "depth": 3, **kwargs}
    return timm.create_model("vit_tiny_patch16_224", **args).eval().double()


def _torchvision_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: nothing would depend on anything
    return model.eval().double()


def _check_maps(e: sk.Explanation, refs: list[torch.Tensor], size: tuple[int, int]) -> None:
    for i, ref in enumerate(refs):
        torch.testing.assert_close(e.layer_maps[i], ref, atol=1e-12, rtol=1e-9)
        torch.testing.assert_close(e.maps[i], ref_upsample(ref, size), atol=1e-12, rtol=1e-9)


# ------------------------------------------------------------------------------- tiny ViTs, three routes


@pytest.mark.parametrize("kind", KINDS)
def test_the_literal_forward_pass_is_the_model(kind: str) -> None:
    model = make(kind, classes=3)
    x = _x(2)
    with torch.no_grad():
        torch.testing.assert_close(ref_tiny_vit(model, x)[0], model(x), atol=1e-12, rtol=1e-10)
        with recording(2) as rec:  # the explicit attention changes no number of the model's output
            out = model(x)
    torch.testing.assert_close(out, model(x), atol=1e-13, rtol=1e-12)
    assert [c.kind for c in rec.calls] == [{"vit_sdpa": "scaled_dot_product_attention", "vit_softmax": "softmax",
                                             "vit_mha": "multi_head_attention_forward"}[kind]] * 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("head_fusion,discard_ratio", [("mean", 0.0), ("max", 0.0), ("min", 0.5), ("mean", 0.9)])
def test_rollout_equals_the_literal_reference(kind: str, head_fusion: str, discard_ratio: float) -> None:
    model = make(kind, classes=3)
    x = _x(2)
    e = sk.create_method("attention_rollout", model, head_fusion=head_fusion,
                         discard_ratio=discard_ratio).attribute(x, target=[0, 2])
    with torch.no_grad():
        _, attentions = ref_tiny_vit(model, x)
    refs = [readout_map(ref_rollout_matrix([a[i] for a in attentions], head_fusion, discard_ratio), (0,), 1, (4, 4))
            for i in range(2)]
    _check_maps(e, refs, (16, 16))
    assert e.params == {"head_fusion": head_fusion, "discard_ratio": discard_ratio, "attention_layers": 2,
                        "patch_grid": [4, 4], "prefix_tokens": 1, "readout_tokens": [0]}
    assert e.targets.tolist() == [0, 2]
    torch.testing.assert_close(e.scores, model(x)[[0, 1], [0, 2]].detach())


@pytest.mark.parametrize("kind", KINDS)
def test_transformer_attribution_equals_the_literal_reference(kind: str) -> None:
    model = make(kind, classes=3)
    x = _x(2, seed=1)
    e = sk.create_method("transformer_attribution", model).attribute(x)
    classes = e.targets.tolist()
    assert classes == model(x).argmax(1).tolist()
    _, attentions, grads = ref_attention_gradients(ref_tiny_vit, model, x, classes)
    refs = [readout_map(ref_relevance_matrix([a[i] for a in attentions], [g[i] for g in grads]), (0,), 1, (4, 4))
            for i in range(2)]
    _check_maps(e, refs, (16, 16))
    assert float(e.layer_maps.abs().max()) > 0
    other = sk.create_method("transformer_attribution", model).attribute(x, target=[(c + 1) % 3 for c in classes])
    assert not torch.allclose(other.maps, e.maps)  # class-specific, unlike rollout


def test_the_reference_gradient_is_the_derivative_of_the_score() -> None:
    """Central differences on entries of ``A_b`` in the literal forward pass agree with its autograd gradient."""
    model = make("vit_sdpa", classes=3)
    x = _x(1, seed=2)
    _, attentions, grads = ref_attention_gradients(ref_tiny_vit, model, x, [1])
    eps = 1e-6
    for layer, entry in [(0, (0, 1, 0, 5)), (1, (0, 0, 0, 3)), (1, (0, 1, 0, 0)), (0, (0, 0, 7, 2))]:
        deltas: list[torch.Tensor | None] = [None, None]
        delta = torch.zeros_like(attentions[layer])
        delta[entry] = eps
        deltas[layer] = delta
        with torch.no_grad():
            up = ref_tiny_vit(model, x, deltas)[0][0, 1]
            deltas[layer] = -delta
            down = ref_tiny_vit(model, x, deltas)[0][0, 1]
        assert abs(float((up - down) / (2 * eps)) - float(grads[layer][entry])) < 1e-7


# ----------------------------------------------------------------------- timm and torchvision ViTs


@pytest.mark.parametrize("fused", [True, False])
def test_timm_vit_equals_the_literal_reference_and_keeps_its_flags(fused: bool) -> None:
    model = _timm_vit()
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    model = prepared_model(model, torch.device("cpu"))  # train mode, frozen and .grad-holding parameters
    x = _x(2, 32, 3)
    before = snapshot(model)
    out = sk.explain(model, x, methods=METHODS, target=[2, 1])
    assert_unchanged(model, before)
    assert all(blk.attn.fused_attn is fused for blk in model.blocks)
    model.eval()
    _, attentions, grads = ref_attention_gradients(ref_timm_vit, model, x, [2, 1])
    rollouts = [readout_map(ref_rollout_matrix([a[i] for a in attentions]), (0,), 1, (2, 2)) for i in range(2)]
    relevances = [readout_map(ref_relevance_matrix([a[i] for a in attentions], [g[i] for g in grads]), (0,), 1,
                              (2, 2)) for i in range(2)]
    _check_maps(out["attention_rollout"], rollouts, (32, 32))
    _check_maps(out["transformer_attribution"], relevances, (32, 32))


def test_torchvision_vit_equals_the_literal_reference() -> None:
    model = prepared_model(_torchvision_vit(), torch.device("cpu"))
    x = _x(2, 32, 3, seed=3)
    before = snapshot(model)
    out = sk.explain(model, x, methods=METHODS)
    assert_unchanged(model, before)
    model.eval()
    classes = out["transformer_attribution"].targets.tolist()
    _, attentions, grads = ref_attention_gradients(ref_torchvision_vit, model, x, classes)
    _check_maps(out["attention_rollout"],
                [readout_map(ref_rollout_matrix([a[i] for a in attentions]), (0,), 1, (4, 4)) for i in range(2)],
                (32, 32))
    _check_maps(out["transformer_attribution"],
                [readout_map(ref_relevance_matrix([a[i] for a in attentions], [g[i] for g in grads]), (0,), 1, (4, 4))
                 for i in range(2)], (32, 32))


def _hooked_attention(model: nn.Module, x: torch.Tensor, classes: list[int]) -> tuple[list[torch.Tensor], ...]:
    """The attention of timm's non-fused path read as vit-explain and Chefer et al. read it (a forward hook on
    ``attn_drop``, a tensor hook for the gradient), on a copy of the model with ``fused_attn`` off."""
    twin = copy.deepcopy(model)
    attentions: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    for blk in twin.blocks:
        blk.attn.fused_attn = False

        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            attentions.append(out.detach())
            out.register_hook(lambda g: grads.append(g.detach()))

        blk.attn.attn_drop.register_forward_hook(hook)
    logits = twin(x)
    logits[range(len(classes)), classes].sum().backward()
    return attentions, grads[::-1]


@pytest.mark.parametrize("variant", ["distilled", "registers_avg"])
def test_timm_prefix_and_readout_tokens(variant: str) -> None:
    """A distilled DeiT reads its class and distillation tokens (2 prefix tokens); an average-pooled ViT with 4
    register tokens and no class token reads every patch token (4 prefix tokens)."""
    timm = _timm()
    torch.manual_seed(1)
    if variant == "distilled":
        model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=3, img_size=32,
                                  depth=2)
        readout, prefix = (0, 1), 2
    else:
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=2,
                                  reg_tokens=4, class_token=False, global_pool="avg")
        readout, prefix = (4, 5, 6, 7), 4
    model = model.eval().double()
    x = _x(2, 32, 3, seed=4)
    out = sk.explain(model, x, methods=METHODS, target=1)
    for e in out.values():
        assert e.params["prefix_tokens"] == prefix and tuple(e.params["readout_tokens"]) == readout
    attentions, grads = _hooked_attention(model, x, [1, 1])
    _check_maps(out["attention_rollout"],
                [readout_map(ref_rollout_matrix([a[i] for a in attentions], keep=readout), readout, prefix, (2, 2))
                 for i in range(2)], (32, 32))
    _check_maps(out["transformer_attribution"],
                [readout_map(ref_relevance_matrix([a[i] for a in attentions], [g[i] for g in grads]), readout, prefix,
                             (2, 2)) for i in range(2)], (32, 32))


def test_the_issue_case_vit_tiny_at_224_equals_the_authors_algorithms() -> None:
    """timm ``vit_tiny_patch16_224`` as built (12 blocks, 224 x 224, random weights): rollout equals Abnar &
    Zuidema's joint attention and transformer attribution Chefer et al.'s relevance, both fed with the attention of
    the literal forward pass."""
    timm = _timm()
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3).eval().double()
    x = _x(1, 224, 3)
    out = sk.explain(model, x, methods=METHODS, target=2)
    assert out["attention_rollout"].layer_maps.shape == (1, 14, 14) and out["attention_rollout"].maps.shape == (
        1, 224, 224)
    _, attentions, grads = ref_attention_gradients(ref_timm_vit, model, x, [2])
    joint = abnar_joint_attention(np.stack([a[0].mean(0).numpy() for a in attentions]))
    np.testing.assert_allclose(out["attention_rollout"].layer_maps[0].numpy().ravel(), joint[-1][0, 1:],
                               rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out["transformer_attribution"].layer_maps[0].ravel(),
                               chefer_relevance(attentions, grads), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------- the authors' code as peers


def test_rollout_against_vit_explain_with_and_without_its_column_normalisation() -> None:
    """vit-explain divides ``(fused + I) / 2`` by ``sum(dim=-1)`` without keepdim, i.e. column j by the sum of row
    j (vit-explain issue #16). With mean fusion and nothing discarded every row sums to 1 and the two agree; with
    max fusion or discarding, ours equals vit-explain with each row divided by its sum (Abnar & Zuidema's rule),
    not its published broadcasting."""
    model = make("vit_sdpa", classes=3)
    x = _x(1, seed=5)
    with torch.no_grad():
        _, attentions = ref_tiny_vit(model, x)
    for fusion, ratio in [("mean", 0.0), ("max", 0.9), ("min", 0.5), ("mean", 0.5)]:
        ours = sk.create_method("attention_rollout", model, head_fusion=fusion, discard_ratio=ratio).attribute(x)
        ours_row = ours.layer_maps[0].ravel()
        torch.testing.assert_close(ours_row, vit_explain_rollout(attentions, ratio, fusion, rows=True), rtol=1e-9,
                                   atol=1e-12)
        published = vit_explain_rollout(attentions, ratio, fusion, rows=False)
        if (fusion, ratio) == ("mean", 0.0):
            torch.testing.assert_close(ours_row, published, rtol=1e-9, atol=1e-12)
        else:
            assert not torch.allclose(ours_row, published, rtol=1e-3)


def test_transformer_attribution_against_chefer_and_abnar_on_the_mha_route() -> None:
    model = make("vit_mha", classes=3)
    x = _x(1, seed=6)
    out = sk.explain(model, x, methods=METHODS, target=0)
    _, attentions, grads = ref_attention_gradients(ref_tiny_vit, model, x, [0])
    torch.testing.assert_close(out["transformer_attribution"].layer_maps[0].ravel(),
                               chefer_relevance(attentions, grads), rtol=1e-9, atol=1e-12)
    joint = abnar_joint_attention(np.stack([a[0].mean(0).numpy() for a in attentions]))
    np.testing.assert_allclose(out["attention_rollout"].layer_maps[0].numpy().ravel(), joint[-1][0, 1:], rtol=1e-9)


# ------------------------------------------------------------------------------------- the explicit attention


@pytest.mark.parametrize("case", ["plain", "bool_mask", "float_mask", "causal", "scale", "gqa"])
def test_explicit_scaled_dot_product_attention_equals_torch(case: str) -> None:
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 4, 5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    kwargs: dict[str, object] = {}
    if case == "bool_mask":
        kwargs["attn_mask"] = torch.rand(2, 1, 5, 5, generator=g) > 0.3
        kwargs["attn_mask"][..., 0] = True  # no row fully masked
    elif case == "float_mask":
        kwargs["attn_mask"] = torch.randn(5, 5, generator=g, dtype=torch.float64)
    elif case == "causal":
        kwargs["is_causal"] = True
    elif case == "scale":
        kwargs["scale"] = 0.3
    elif case == "gqa":
        k, v, kwargs["enable_gqa"] = k[:, :2], v[:, :2], True
    want = F.scaled_dot_product_attention(q, k, v, **kwargs)
    with recording(2) as rec:
        got = F.scaled_dot_product_attention(q, k, v, **kwargs)
    torch.testing.assert_close(got, want, atol=1e-13, rtol=1e-12)
    assert rec.calls[0].probs.shape == (2, 4, 5, 5)
    torch.testing.assert_close(rec.calls[0].probs.sum(-1), torch.ones(2, 4, 5, dtype=torch.float64))


@pytest.mark.parametrize("batch_first,batched", [(True, True), (False, True), (True, False)])
def test_explicit_multi_head_attention_equals_torch(batch_first: bool, batched: bool) -> None:
    torch.manual_seed(8)
    mha = nn.MultiheadAttention(6, 3, batch_first=batch_first).double().eval()
    t = torch.randn(*((2, 5, 6) if batch_first else (5, 2, 6)), dtype=torch.float64)
    if not batched:
        t = t[0]
    for kwargs in ({"need_weights": False}, {}, {"average_attn_weights": False}):
        with torch.no_grad():
            want = mha(t, t, t, **kwargs)
            with recording(2 if batched else 1) as rec:
                got = mha(t, t, t, **kwargs)
        torch.testing.assert_close(got[0], want[0], atol=1e-13, rtol=1e-12)
        assert (got[1] is None) == (want[1] is None)
        if want[1] is not None:
            torch.testing.assert_close(got[1], want[1], atol=1e-13, rtol=1e-12)
        assert rec.calls[0].probs.shape == ((2 if batched else 1), 3, 5, 5)
    with pytest.raises(InputError, match="key_padding_mask is not supported"), recording(2):
        mha(t, t, t, key_padding_mask=torch.zeros(t.shape[:-1], dtype=torch.bool).T if not batch_first else
            torch.zeros(t.shape[:-1], dtype=torch.bool))


# ------------------------------------------------------------------------------------------------ refusals


def test_models_without_attention_are_refused_by_name() -> None:
    x = _x(2)
    for kind, name in [("residual", "ResidualCNN"), ("plain", "Sequential")]:
        model = make(kind, classes=3)
        before = snapshot(model)
        for method in METHODS:
            with pytest.raises(InputError, match=f"{method} explains vision transformers: {name} computes no "
                                                 "attention.*use a gradient, CAM or perturbation method"):
                sk.create_method(method, model).attribute(x)
        assert_unchanged(model, before)
    with pytest.raises(InputError, match="transformer_attribution follows the torch functions"):
        sk.create_method("transformer_attribution", torch.jit.trace(make("vit_sdpa", classes=3), x))


def test_attention_the_methods_cannot_read_is_refused_with_the_reason() -> None:
    timm = _timm()
    torch.manual_seed(2)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, img_size=32,
                             window_size=2, embed_dim=8, depths=(1, 1), num_heads=(1, 1)).eval()
    x = _x(1, 32, 3, dtype=torch.float32)
    with pytest.raises(InputError, match="attention 1 of 2 .*windows or groups folded into the batch"):
        sk.create_method("attention_rollout", swin).attribute(x)
    pooled = _timm_vit(global_pool="map").float()
    with pytest.raises(InputError, match="attention 4 of 4 .*attends from 1 to 4 tokens"):
        sk.create_method("transformer_attribution", pooled).attribute(x)

    model = make("vit_softmax", classes=2)

    def attend(t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        blk = model.blocks[0]
        q, k, v = blk.qkv(t).reshape(b, n, 3, blk.heads, d // blk.heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        a.mul_(1.0)
        return blk.proj((a @ v).transpose(1, 2).reshape(b, n, d))

    model.blocks[0].attend = attend  # an instance attribute of the test's own model
    with pytest.raises(InputError, match="modified in place after the softmax"):
        sk.create_method("attention_rollout", model).attribute(_x(1))


def test_options_are_checked() -> None:
    model = make("vit_sdpa")
    with pytest.raises(UnknownNameError, match="head fusion 'median'.*mean, max, min"):
        sk.create_method("attention_rollout", model, head_fusion="median")
    for bad in (1.0, -0.1, "0.5", True):
        with pytest.raises(InputError, match="discard_ratio must be a number in"):
            sk.create_method("attention_rollout", model, discard_ratio=bad)
    with pytest.raises(InputError, match="has no option"):
        sk.create_method("transformer_attribution", model, head_fusion="mean")


def test_frozen_model_and_one_shared_pass() -> None:
    """Every parameter frozen: the gradients still flow (through the input); both methods together cost one
    forward pass of the batch and equal the methods run alone."""
    model = make("vit_sdpa", classes=3)
    x = _x(3, seed=9)
    alone = {m: sk.create_method(m, model).attribute(x, target=1) for m in METHODS}
    for p in model.parameters():
        p.requires_grad_(False)
    calls: list[int] = []
    handle = model.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    try:
        together = sk.explain(model, x, methods=METHODS, target=1)
    finally:
        handle.remove()
    assert len(calls) == 1  # the token layout is remembered from the first calls
    for m in METHODS:
        torch.testing.assert_close(together[m].maps, alone[m].maps, atol=1e-13, rtol=1e-12)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_the_map_depends_on_the_image_and_warns_nothing() -> None:
    model = make("vit_mha", classes=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, b = (sk.create_method("attention_rollout", model).attribute(_x(1, seed=s)) for s in (10, 11))
    assert not torch.allclose(a.maps, b.maps)
