"""CAM family and Score-CAM: literal references in float64, hand-derived maps, shared passes, layers, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import saliencekit as sk
from reference.ref_backprop import ResBlock, residual_cnn, small_cnn
from reference.ref_cam import (
    ref_activation_gradient,
    ref_gradcam,
    ref_gradcampp,
    ref_hirescam,
    ref_layercam,
    ref_scorecam,
    ref_upsample,
    ref_xgradcam,
)
from saliencekit.errors import InputError, UnknownNameError
from toy_models import Counter

D = torch.float64
CAMS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]


def _x(n: int, c: int, size: int = 9, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g, dtype=D)


def _models() -> dict[str, tuple[nn.Module, torch.Tensor, object, str]]:
    """name -> (model, inputs, target, default layer name)."""
    torch.manual_seed(0)
    return {
        "plain": (small_cnn().to(D).eval(), _x(2, 1), [0, 2], "4"),
        "inplace": (small_cnn(inplace=True).to(D).eval(), _x(2, 1, seed=2), None, "4"),
        "residual": (residual_cnn().to(D), _x(2, 2, seed=3), [1, 0], "3.1.0.relu2"),
    }


MODELS = _models()


def _classes(model: nn.Module, x: torch.Tensor, target: object) -> list[int]:
    if target is not None:
        return list(target)  # type: ignore[call-overload]
    with torch.no_grad():
        out = model(x)
    return (out[:, 0] > 0).long().tolist() if out.shape[1] == 1 else out.argmax(1).tolist()


@pytest.mark.parametrize("name", list(MODELS))
def test_gradient_cams_match_literal_reference(name: str) -> None:
    model, x, target, layer_name = MODELS[name]
    out = sk.explain(model, x, methods=CAMS, target=target)
    layer = model.get_submodule(layer_name)
    classes = _classes(model, x, target)
    for n in range(x.shape[0]):
        a, g = ref_activation_gradient(model, layer, x[n:n + 1], classes[n])
        refs = {
            "gradcam": ref_gradcam(a, g)[0], "gradcam++": ref_gradcampp(a, g)[0], "xgradcam": ref_xgradcam(a, g)[0],
            "hirescam": ref_hirescam(a, g), "layercam": ref_layercam(a, g),
        }
        for method, ref in refs.items():
            e = out[method]
            assert e.params["layer"] == layer_name
            torch.testing.assert_close(e.layer_maps[n], ref, atol=1e-7, rtol=1e-6, msg=f"{method} layer map")
            torch.testing.assert_close(e.maps[n], ref_upsample(ref, x.shape[-2:]), atol=1e-7, rtol=1e-6,
                                       msg=f"{method} upsampled map")
            assert e.targets[n] == classes[n]
    for method in CAMS:  # the comparison is not between empty maps
        assert (out[method].layer_maps > 0).float().mean() > 0.2, method
    # Channel weights of the weighting methods are exposed and match too (last image).
    torch.testing.assert_close(out["gradcam"].extras["weights"][-1], torch.tensor(ref_gradcam(a, g)[1], dtype=D),
                               atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(out["gradcam++"].extras["weights"][-1],
                               torch.tensor(ref_gradcampp(a, g)[1], dtype=D), atol=1e-6, rtol=1e-6)


def test_relu_false_returns_the_signed_map() -> None:
    model, x, _, layer_name = MODELS["plain"]
    e = sk.create_method("gradcam", model, relu=False).attribute(x[:1], target=1)
    a, g = ref_activation_gradient(model, model.get_submodule(layer_name), x[:1], 1)
    ref, _ = ref_gradcam(a, g, relu=False)
    assert (ref < 0).any()
    torch.testing.assert_close(e.layer_maps[0], ref, atol=1e-7, rtol=1e-6)


class _GapHead(nn.Module):
    """A = conv(x) with known 1x1 weights; S = v . mean_ij A (global average pooling, linear head)."""

    def __init__(self, conv_w: list[float], v: list[float], gap: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(1, len(conv_w), 1, bias=False)
        self.conv.weight.data = torch.tensor(conv_w, dtype=D).view(-1, 1, 1, 1)
        self.head = nn.Linear(len(v), 1, bias=False).to(D)
        self.head.weight.data = torch.tensor([v], dtype=D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_hand_weighted_gap_model() -> None:
    # A^0 = x, A^1 = -2x; S = 3 mean(A^0) - 1 mean(A^1), so g^0 = 3/4, g^1 = -1/4 everywhere (h*w = 4).
    model = _GapHead([1.0, -2.0], [3.0, -1.0]).eval()
    x = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]], dtype=D)
    a0, a1 = x[0, 0], -2 * x[0, 0]
    out = sk.explain(model, x, methods=CAMS, target=1, layer="conv")
    # Grad-CAM: w = head weights / (h*w) = (3/4, -1/4); map relu(3/4 x + 1/4 * 2x) = relu(5/4 x).
    torch.testing.assert_close(out["gradcam"].extras["weights"][0], torch.tensor([0.75, -0.25], dtype=D))
    expected = (0.75 * a0 - 0.25 * a1).clamp_min(0)
    torch.testing.assert_close(out["gradcam"].layer_maps[0], expected)
    assert out["gradcam"].layer_maps[0].tolist() == [[1.25, 2.5], [0.0, 0.0]]
    # HiResCAM: g is constant over space, so it equals Grad-CAM times h*w ... per pixel sum_k g^k A^k = same map.
    torch.testing.assert_close(out["hirescam"].layer_maps[0], expected)
    # LayerCAM: relu(g) kills channel 1: relu(3/4 x).
    torch.testing.assert_close(out["layercam"].layer_maps[0], (0.75 * a0).clamp_min(0))
    # XGrad-CAM: w_k = sum g A / sum A = g^k (constant gradient) -> same as Grad-CAM.
    torch.testing.assert_close(out["xgradcam"].extras["weights"][0], torch.tensor([0.75, -0.25], dtype=D))
    # Grad-CAM++: alpha = g^2 / (2 g^2 + sum(A) g^3) = 1 / (2 + sum(A) g); sum(A^0) = 2, sum(A^1) = -4.
    # w_0 = 4 * (1 / (2 + 2 * 0.75)) * 0.75 = 3 / 3.5; w_1 = 0 (relu of a negative gradient).
    torch.testing.assert_close(out["gradcam++"].extras["weights"][0], torch.tensor([3 / 3.5, 0.0], dtype=D))
    torch.testing.assert_close(out["gradcam++"].layer_maps[0], (3 / 3.5 * a0).clamp_min(0))
    # The explained score is the logit.
    assert float(out["gradcam"].scores[0]) == pytest.approx(3 * 0.5 - (-1.0))


def test_hand_weighted_flatten_head() -> None:
    # S = sum_kij W_kij A_kij, so g = W: HiResCAM = relu(sum_k W^k A^k), Grad-CAM w_k = mean(W^k).
    conv = nn.Conv2d(1, 2, 1, bias=False).to(D)
    conv.weight.data = torch.tensor([1.0, 0.5], dtype=D).view(2, 1, 1, 1)
    lin = nn.Linear(8, 1, bias=False).to(D)
    w = torch.tensor([[1.0, -1.0, 2.0, 0.0, 0.5, 0.5, -3.0, 1.0]], dtype=D)
    lin.weight.data = w
    model = nn.Sequential(conv, nn.Flatten(), lin).eval()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=D)
    out = sk.explain(model, x, methods=["hirescam", "gradcam"], target=1, layer="0")
    wk = w.view(2, 2, 2)
    a = torch.stack([x[0, 0], 0.5 * x[0, 0]])
    # sum_k W^k A^k = [[1+0.25, -2+0.5], [6-4.5, 0+2]] = [[1.25, -1.5], [1.5, 2]]
    torch.testing.assert_close(out["hirescam"].layer_maps[0], torch.tensor([[1.25, 0.0], [1.5, 2.0]], dtype=D))
    torch.testing.assert_close(out["gradcam"].extras["weights"][0], wk.mean(dim=(1, 2)))
    torch.testing.assert_close(out["gradcam"].layer_maps[0], (0.5 * a[0] + (-0.25) * a[1]).clamp_min(0))


def test_shared_pass_equals_separate_calls() -> None:
    model, x, target, _ = MODELS["residual"]
    shared = sk.explain(model, x, methods=CAMS, target=target)
    for name in CAMS:
        alone = sk.create_method(name, model).attribute(x, target)
        assert torch.equal(shared[name].maps, alone.maps), name
        assert torch.equal(shared[name].layer_maps, alone.layer_maps), name
        assert torch.equal(shared[name].scores, alone.scores)


def _counted_model() -> tuple[nn.Module, Counter, Counter]:
    first, after = Counter(), Counter()
    model = nn.Sequential(first, nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), after, nn.Linear(4 * 9 * 9, 3)).to(D).eval()
    return model, first, after


def test_shared_pass_runs_one_forward_and_one_backward() -> None:
    model, first, after = _counted_model()
    x = _x(3, 1)
    sk.explain(model, x, methods=CAMS, layer="4")
    assert first.counts["forward"] == 1 and first.batches == [3]
    assert after.counts["backward"] == 1
    assert first.counts["backward"] == 0  # the backward pass stops at the layer
    # Default layer: after the first call has found it, the same holds.
    sk.explain(model, x, methods=CAMS)
    first.counts.update(forward=0, backward=0)
    after.counts.update(forward=0, backward=0)
    out = sk.explain(model, x, methods=CAMS)
    assert out["gradcam"].params["layer"] == "4"
    assert (first.counts["forward"], after.counts["backward"], first.counts["backward"]) == (1, 1, 0)


def test_batched_equals_per_image() -> None:
    model, x, target, _ = MODELS["plain"]
    batched = sk.explain(model, x, methods=[*CAMS, "scorecam"], target=target)
    for n in range(x.shape[0]):
        single = sk.explain(model, x[n:n + 1], methods=[*CAMS, "scorecam"], target=target[n])
        for name in batched:
            torch.testing.assert_close(batched[name].maps[n], single[name].maps[0], atol=1e-12, rtol=1e-10)


def test_layer_by_name_module_and_default() -> None:
    model, x, _, layer_name = MODELS["residual"]
    module = model.get_submodule(layer_name)
    maps = [sk.create_method("gradcam", model, layer=layer).attribute(x) for layer in (None, layer_name, module)]
    for e in maps:
        assert e.params["layer"] == layer_name
        assert torch.equal(e.maps, maps[0].maps)
    signed = sk.create_method("gradcam", model, relu=False).attribute(x)
    other = sk.create_method("gradcam", model, layer="3.0", relu=False).attribute(x)
    assert other.params["layer"] == "3.0"
    assert not torch.allclose(other.maps, signed.maps)


def test_wrong_layer_name_lists_candidates() -> None:
    model, x, _, _ = MODELS["plain"]
    with pytest.raises(UnknownNameError) as err:
        sk.create_method("gradcam", model, layer="features.99").attribute(x)
    assert "features.99" in str(err.value) and "'4'" not in str(err.value)
    assert "3" in err.value.valid and "4" in err.value.valid
    with pytest.raises(UnknownNameError):
        sk.create_method("scorecam", model, layer="nope").attribute(x)


def test_model_without_conv_layer_is_a_clear_error() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(81, 8), nn.ReLU(), nn.Linear(8, 2)).to(D)
    for name in [*CAMS, "scorecam", "guided_gradcam"]:
        with pytest.raises(InputError, match="no layer with a spatial feature map"):
            sk.create_method(name, model).attribute(_x(1, 1))
    # A non-spatial layer given explicitly is refused too.
    with pytest.raises(InputError, match="not a spatial feature map"):
        sk.create_method("gradcam", model, layer="1").attribute(_x(1, 1))


def test_reused_layer_and_bad_layer_option_are_refused() -> None:
    block = ResBlock(2).to(D).eval()
    block.relu2 = block.relu1  # one ReLU module called twice
    model = nn.Sequential(nn.Conv2d(1, 2, 3), block, nn.Flatten(), nn.Linear(2 * 7 * 7, 2)).to(D)
    with pytest.raises(InputError, match="called 2 times"):
        sk.create_method("gradcam", model, layer="1.relu1").attribute(_x(1, 1))
    with pytest.raises(InputError, match="layer must be"):
        sk.create_method("gradcam", model, layer=3)


def test_torchscript_model_is_refused_clearly() -> None:
    model = torch.jit.script(small_cnn().to(D).eval())
    with pytest.raises(InputError, match="TorchScript"):
        sk.create_method("gradcam", model).attribute(_x(1, 1))


def test_torchvision_resnet18_runs_every_cam() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    out = sk.explain(model, x, methods={**{n: {} for n in CAMS}, "scorecam": {"top_n": 8}, "guided_gradcam": {}})
    for name, e in out.items():
        assert e.params["layer"] == "layer4.1", name
        assert e.maps.shape == (1, 64, 64) and e.layer_maps.shape == (1, 2, 2), name
        assert torch.isfinite(e.maps).all(), name
        assert e.maps.abs().sum() > 0, name
    assert (out["scorecam"].extras["weights"] > 0).sum(1).tolist() == [8]


# ------------------------------------------------------------------------------------- Score-CAM


@pytest.mark.parametrize("name", list(MODELS))
def test_scorecam_matches_literal_reference(name: str) -> None:
    model, x, target, layer_name = MODELS[name]
    classes = _classes(model, x, target)
    layer = model.get_submodule(layer_name)
    for top_n in (None, 2):
        e = sk.create_method("scorecam", model, top_n=top_n, batch_size=3).attribute(x, target)
        for n in range(x.shape[0]):
            ref, weights = ref_scorecam(model, layer, x[n:n + 1], classes[n], top_n=top_n)
            torch.testing.assert_close(e.extras["weights"][n], torch.tensor(weights, dtype=D), atol=1e-10, rtol=1e-8)
            torch.testing.assert_close(e.layer_maps[n], ref, atol=1e-10, rtol=1e-8)
            torch.testing.assert_close(e.maps[n], ref_upsample(ref, x.shape[-2:]), atol=1e-10, rtol=1e-8)


def test_scorecam_top_n_all_channels_equals_full() -> None:
    model, x, target, _ = MODELS["residual"]
    full = sk.create_method("scorecam", model).attribute(x, target)
    top = sk.create_method("scorecam", model, top_n=4).attribute(x, target)
    more = sk.create_method("scorecam", model, top_n=100).attribute(x, target)
    torch.testing.assert_close(top.maps, full.maps, atol=0, rtol=0)
    torch.testing.assert_close(more.maps, full.maps, atol=0, rtol=0)


def test_scorecam_constant_channels_get_weight_zero() -> None:
    conv = nn.Conv2d(1, 4, 3, padding=1).to(D)
    with torch.no_grad():
        conv.weight[1].zero_()  # channel 1 = its bias everywhere: constant
        conv.weight[3].zero_()
        conv.bias[3] = 0.0  # channel 3 = 0 everywhere
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(4 * 9 * 9, 2)).to(D).eval()
    e = sk.create_method("scorecam", model, layer="0").attribute(_x(2, 1))
    w = e.extras["weights"]
    assert (w[:, [1, 3]] == 0).all()
    assert (w[:, [0, 2]] > 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(2, dtype=D))
    assert torch.isnan(e.extras["channel_scores"][:, [1, 3]]).all()  # no forward pass spent on them
    # A layer whose channels are all constant gives an all-zero map, not NaN.
    with torch.no_grad():
        conv.weight.zero_()
    e = sk.create_method("scorecam", model, layer="0").attribute(_x(1, 1))
    assert (e.maps == 0).all() and (e.extras["weights"] == 0).all()


def test_scorecam_baseline_subtract_changes_scores_not_map() -> None:
    model, x, target, _ = MODELS["plain"]
    plain = sk.create_method("scorecam", model).attribute(x, target)
    sub = sk.create_method("scorecam", model, baseline_subtract=True).attribute(x, target)
    torch.testing.assert_close(sub.maps, plain.maps, atol=1e-12, rtol=1e-10)
    with torch.no_grad():
        zero_scores = model(torch.zeros_like(x[:1]))[0, target]
    torch.testing.assert_close(sub.extras["baseline_scores"], zero_scores)
    torch.testing.assert_close(sub.extras["channel_scores"], plain.extras["channel_scores"] - zero_scores[:, None],
                               equal_nan=True)


def test_scorecam_chunking_and_memory_layout_do_not_change_the_map() -> None:
    model, x, target, _ = MODELS["residual"]
    ref = sk.create_method("scorecam", model).attribute(x, target)
    for opts in ({"batch_size": 1}, {"batch_size": 3, "channels_last": True}):
        e = sk.create_method("scorecam", model, **opts).attribute(x, target)
        torch.testing.assert_close(e.maps, ref.maps, atol=1e-12, rtol=1e-10)


def test_scorecam_bad_options() -> None:
    model = MODELS["plain"][0]
    for bad in ({"top_n": 0}, {"top_n": 1.5}, {"batch_size": 0}, {"precision": "fp8"}):
        with pytest.raises(InputError):
            sk.create_method("scorecam", model, **bad)


def test_scorecam_bf16_on_cpu_correlates_with_fp32() -> None:
    torch.manual_seed(4)
    model = small_cnn(classes=2).eval()
    x = _x(3, 1).float()
    ref = sk.create_method("scorecam", model).attribute(x)
    low = sk.create_method("scorecam", model, precision="bf16").attribute(x)
    for n in range(3):
        r = torch.corrcoef(torch.stack([ref.maps[n].flatten(), low.maps[n].flatten()]))[0, 1]
        assert r > 0.99, float(r)
    with pytest.raises(InputError, match="fp16"):
        sk.create_method("scorecam", model, precision="fp16").attribute(x)


@pytest.mark.gpu
def test_scorecam_bf16_and_fp16_correlate_with_fp32() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10).eval().cuda()
    x = torch.randn(2, 3, 128, 128, device="cuda")
    ref = sk.create_method("scorecam", model).attribute(x).maps
    assert ref.device.type == "cuda"
    for precision in ("bf16", "fp16"):
        for channels_last in (False, True):
            low = sk.create_method("scorecam", model, precision=precision, channels_last=channels_last).attribute(x)
            for n in range(2):
                r = torch.corrcoef(torch.stack([ref[n].flatten(), low.maps[n].flatten().float()]))[0, 1]
                assert r > 0.99, (precision, channels_last, float(r))


@pytest.mark.gpu
def test_cams_on_cuda_match_cpu() -> None:
    model, x, target, _ = MODELS["residual"]
    cpu = sk.explain(model, x, methods=[*CAMS, "scorecam"], target=target)
    gpu = sk.explain(copy.deepcopy(model).cuda(), x.cuda(), methods=[*CAMS, "scorecam"], target=target)
    for name, e in cpu.items():
        assert gpu[name].maps.device.type == "cuda"
        torch.testing.assert_close(gpu[name].maps.cpu(), e.maps, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("shape,size", [((5, 4, 4), (256, 256)), ((3, 7, 5), (224, 97)), ((2, 32, 32), (33, 300)),
                                        ((2, 1, 1), (8, 8)), ((2, 40, 40), (256, 256))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upsample_is_bilinear_interpolation(shape, size, dtype):
    from saliencekit.methods.cam import upsample

    maps = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    expected = torch.nn.functional.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(upsample(maps, size), expected, rtol=tol, atol=tol)


def test_upsample_keeps_non_finite_values_local_like_interpolate():
    from saliencekit.methods.cam import upsample

    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1))
    maps[0, 3, 4] = float("nan")
    maps[1, 5, 5] = float("inf")
    expected = torch.nn.functional.interpolate(maps[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(upsample(maps, (32, 32)), expected, equal_nan=True)
