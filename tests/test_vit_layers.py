"""CAMs on vision transformers: token layers read on their patch grid, channels-last Swin stages, and layers whose
4-D output is not image-like (attention heads, q/k norms) never chosen and refused with a reason.

Models are built with random weights (``pretrained=False``; nothing is downloaded) and small input sizes where the
architecture allows it; the issue's case (timm ``vit_tiny_patch16_224`` at 224 x 224) is reproduced once.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import saliencekit as sk
from saliencekit.errors import InputError
from saliencekit.methods._capture import resolve_feature_layer, spatial_layers
from test_method_contract import assert_unchanged, snapshot

timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install saliencekit[timm]")


def _vit(seed: int = 0, **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    args = {"pretrained": False, "num_classes": 3, "img_size": 64, **kwargs}
    return timm.create_model("vit_tiny_patch16_224", **args).eval()


def _x(n: int, size: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference_token_gradcam(model: nn.Module, module: nn.Module, x: torch.Tensor, target: list[int], prefix: int,
                            grid: tuple[int, int]) -> torch.Tensor:
    """Grad-CAM from the captured tokens, written out: drop the prefix tokens, lay the patch tokens out row by row
    on the grid, average the gradient over the grid (Eq. 1), weight the channels, ReLU (Eq. 2)."""
    seen: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda m, i, o: seen.setdefault("tokens", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    tokens = seen["tokens"]  # (N, T, D)
    (grad,) = torch.autograd.grad(out[torch.arange(len(x)), target].sum(), tokens)
    n, _, d = tokens.shape
    gh, gw = grid
    cams = torch.zeros(n, gh, gw, dtype=x.dtype)
    for i in range(n):
        for k in range(d):
            weight = sum(grad[i, prefix + r * gw + c, k] for r in range(gh) for c in range(gw)) / (gh * gw)
            for r in range(gh):
                for c in range(gw):
                    cams[i, r, c] += weight * tokens[i, prefix + r * gw + c, k].detach()
    return cams.clamp_min(0)


def test_the_issue_case_vit_tiny_at_224_picks_a_token_layer_and_refuses_k_norm() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    x = _x(1, 224)
    layer = resolve_feature_layer(model, None, x)
    assert layer.name == "blocks.11.norm1"  # the last token layer whose patch tokens reach the class token
    assert (layer.reader.layout, layer.reader.grid, layer.reader.prefix) == ("tokens", (14, 14), 1)
    assert not any(".attn." in name for name in spatial_layers(model, x))
    with pytest.raises(InputError, match="blocks.11.attn.k_norm.*inside an attention module.*attention heads"):
        sk.create_method("gradcam", model, layer="blocks.11.attn.k_norm").attribute(x)
    e = sk.create_method("gradcam", model, layer="blocks.11.norm1").attribute(x)  # refused before: now read
    assert e.layer_maps.shape == (1, 14, 14) and e.maps.shape == (1, 224, 224)
    assert e.params["layer"] == "blocks.11.norm1"


@pytest.mark.parametrize("kwargs,prefix", [({}, 1), ({"reg_tokens": 4}, 5), ({"no_embed_class": True}, 1)])
def test_gradcam_on_timm_vit_tokens_equals_the_literal_reference(kwargs: dict, prefix: int) -> None:
    model = _vit(**kwargs).double()
    x = _x(2, 64, torch.float64)
    e = sk.create_method("gradcam", model).attribute(x, target=[0, 2])
    assert e.params["layer"] == "blocks.11.norm1"
    ref = reference_token_gradcam(model, model.blocks[-1].norm1, x, [0, 2], prefix, (4, 4))
    assert float(ref.max()) > 0
    torch.testing.assert_close(e.layer_maps, ref, atol=1e-10, rtol=1e-8)


def test_deit_distilled_drops_the_class_and_distillation_tokens() -> None:
    torch.manual_seed(1)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=3, img_size=64)
    model = model.eval().double()
    x = _x(2, 64, torch.float64)
    layer = resolve_feature_layer(model, None, x)
    assert (layer.name, layer.reader.prefix, layer.reader.grid) == ("blocks.11.norm1", 2, (4, 4))
    e = sk.create_method("gradcam", model).attribute(x, target=1)
    ref = reference_token_gradcam(model, model.blocks[-1].norm1, x, [1, 1], 2, (4, 4))
    torch.testing.assert_close(e.layer_maps, ref, atol=1e-10, rtol=1e-8)


def test_average_pooled_vit_without_class_token_uses_its_last_tokens() -> None:
    model = _vit(class_token=False, global_pool="avg").double()
    x = _x(1, 64, torch.float64)
    layer = resolve_feature_layer(model, None, x)
    assert layer.reader.prefix == 0 and layer.name in ("norm", "blocks.11")  # every patch token reaches the pool
    e = sk.create_method("gradcam", model).attribute(x, target=0)
    ref = reference_token_gradcam(model, layer.module, x, [0], 0, (4, 4))
    torch.testing.assert_close(e.layer_maps, ref, atol=1e-10, rtol=1e-8)


def test_matches_pytorch_grad_cam_with_its_reshape_transform() -> None:
    """pytorch-grad-cam's documented ViT recipe (target layer blocks[-1].norm1, reshape_transform dropping the class
    token): our Grad-CAM, scaled and resized as it does, equals its output."""
    gradcam = pytest.importorskip("pytorch_grad_cam", reason="the peer comparison needs grad-cam (bench extra)")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _vit(seed=3)
    x = _x(2, 64, seed=1)

    def reshape_transform(t: torch.Tensor, height: int = 4, width: int = 4) -> torch.Tensor:
        result = t[:, 1:, :].reshape(t.size(0), height, width, t.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    with gradcam.GradCAM(model=model, target_layers=[model.blocks[-1].norm1],
                         reshape_transform=reshape_transform) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(2)])
    ours = sk.create_method("gradcam", model).attribute(x, target=[1, 2])
    # as pytorch-grad-cam does: scaled to [0, 1] and resized per layer, then scaled again after averaging the layers
    ours_scaled = scale_cam_image(scale_cam_image(ours.layer_maps.numpy(), (64, 64)))
    np.testing.assert_allclose(ours_scaled, theirs, atol=2e-4)
    # the same convention given to us as reshape= gives the same map as the automatic reading
    custom = sk.create_method("gradcam", model, layer="blocks.11.norm1", reshape=reshape_transform).attribute(
        x, target=[1, 2])
    torch.testing.assert_close(custom.layer_maps, ours.layer_maps)


def test_torchvision_vit_small_config() -> None:
    torch.manual_seed(4)
    model = torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=3)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: nothing would depend on anything
    model = model.eval().double()
    x = _x(2, 64, torch.float64)
    layer = resolve_feature_layer(model, None, x)
    assert layer.name == "encoder.layers.encoder_layer_1.ln_1"
    assert (layer.reader.grid, layer.reader.prefix) == ((4, 4), 1)
    e = sk.create_method("gradcam", model).attribute(x, target=[0, 1])
    ref = reference_token_gradcam(model, layer.module, x, [0, 1], 1, (4, 4))
    torch.testing.assert_close(e.layer_maps, ref, atol=1e-10, rtol=1e-8)


def _swin_timm() -> nn.Module:
    torch.manual_seed(5)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, img_size=64,
                             window_size=2, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)).eval()


def test_swin_channels_last_stages_timm_and_torchvision() -> None:
    tv = torchvision.models.swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1, 1], num_heads=[1, 1, 1], window_size=[2, 2], num_classes=3)
    for model, name, layout in ((_swin_timm(), "norm", "nhwc"), (tv.eval(), "permute", "nchw")):
        model = model.double()
        x = _x(2, 64, torch.float64)
        layer = resolve_feature_layer(model, None, x)
        assert (layer.name, layer.reader.layout) == (name, layout)
        e = sk.create_method("gradcam", model).attribute(x, target=[2, 0])
        seen: dict[str, torch.Tensor] = {}
        handle = layer.module.register_forward_hook(lambda m, i, o, seen=seen: seen.setdefault("a", o))
        try:
            out = model(x)
        finally:
            handle.remove()
        a = seen["a"]
        (g,) = torch.autograd.grad(out[[0, 1], [2, 0]].sum(), a)
        if layout == "nhwc":
            a, g = a.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2)
        ref = torch.einsum("nk,nkhw->nhw", g.mean((2, 3)), a.detach()).clamp_min(0)
        torch.testing.assert_close(e.layer_maps, ref, atol=1e-10, rtol=1e-8)
    # a Swin stage named by hand is read channels-last too; reshape="nchw" says otherwise and is obeyed
    swin = _swin_timm()
    x = _x(1, 64)
    assert resolve_feature_layer(swin, "layers.1", x).reader.layout == "auto"  # settled from its output
    e = sk.create_method("gradcam", swin, layer="layers.1").attribute(x)
    assert e.layer_maps.shape == (1, 8, 8)  # (N, 8, 8, 32) at 64 x 64
    forced = sk.create_method("gradcam", swin, layer="layers.1", reshape="nchw").attribute(x)
    assert forced.layer_maps.shape == (1, 8, 32)  # (N, H, W, C) read as NCHW: the user's explicit choice


def test_non_image_like_outputs_are_refused_with_a_reason() -> None:
    model = _vit()
    x = _x(1, 64)
    with pytest.raises(InputError, match="'norm'.*does not depend on its patch tokens.*blocks.11.norm1"):
        sk.create_method("gradcam", model, layer="norm").attribute(x)
    with pytest.raises(InputError, match="fc_norm.*2 dimensions"):
        sk.create_method("gradcam", model, layer="fc_norm").attribute(x)
    with pytest.raises(InputError, match="cannot be read as patch tokens"):
        sk.create_method("gradcam", model, layer="patch_embed.proj", reshape="tokens").attribute(x)
    with pytest.raises(InputError, match="reshape must be None"):
        sk.create_method("gradcam", model, reshape="tokenz")

    class Heads(nn.Module):
        """A layer outside any attention module whose output is (N, heads, tokens, dim)."""

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], 3, -1).permute(0, 2, 1, 3)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 12, 16, stride=16)
            self.heads = Heads()
            self.head = nn.Linear(12, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.embed(x).flatten(2).transpose(1, 2)  # (N, 16, 12)
            return self.head(self.heads(t).mean((1, 2)).repeat(1, 3))

    net = Net().eval()
    assert spatial_layers(net, x) == ["embed"]
    with pytest.raises(InputError, match="'heads' outputs \\(1, 3, 16, 4\\).*not an image-like feature map"):
        sk.create_method("gradcam", net, layer="heads").attribute(x)


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "hirescam", "layercam", "xgradcam", "scorecam",
                                  "guided_gradcam"])
def test_every_cam_runs_on_a_vit_and_leaves_it_untouched(name: str) -> None:
    model = _vit(seed=6).train()
    x = _x(2, 64)
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # guided_gradcam: a ViT has GELUs, no nn.ReLU
        e = sk.create_method(name, model).attribute(x, target=[0, 1])
    assert e.maps.shape == (2, 64, 64) and e.layer_maps.shape == (2, 4, 4) and torch.isfinite(e.maps).all()
    assert e.params["layer"] == "blocks.11.norm1"
    assert_unchanged(model, before)
