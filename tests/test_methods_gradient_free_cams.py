"""Eigen-CAM, Ablation-CAM and FullGrad: literal float64 references, hand-derived maps, shared passes, peers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import saliencekit as sk
from reference.ref_backprop import residual_cnn, small_cnn
from reference.ref_cam import ref_activation, ref_upsample
from reference.ref_gradient_free_cam import ref_ablationcam, ref_eigencam, ref_fullgrad
from saliencekit.errors import InputError
from saliencekit.methods.fullgrad import bias_layers
from toy_models import Counter

D = torch.float64


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


# ------------------------------------------------------------------------------------------ Eigen-CAM


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("center", [True, False])
def test_eigencam_matches_literal_reference(name: str, center: bool) -> None:
    model, x, target, layer_name = MODELS[name]
    layer = model.get_submodule(layer_name)
    for relu in (True, False):
        e = sk.create_method("eigencam", model, center=center, relu=relu).attribute(x, target)
        assert e.params["layer"] == layer_name
        for n in range(x.shape[0]):
            ref = ref_eigencam(ref_activation(model, layer, x[n:n + 1])[0], center=center, relu=relu)
            torch.testing.assert_close(e.layer_maps[n], ref, atol=1e-9, rtol=1e-7)
            torch.testing.assert_close(e.maps[n], ref_upsample(ref, x.shape[-2:]), atol=1e-9, rtol=1e-7)
        if center and not relu:
            assert (e.layer_maps < 0).any() and (e.layer_maps > 0).any()  # a signed projection, not a trivial one
        if not center and not relu:
            assert (e.layer_maps >= 0).all()  # uncentred activations after a ReLU: v >= 0, so M v >= 0


def test_eigencam_hand_example_and_sign_convention() -> None:
    # Channel 1 = 2 x channel 0 at every position: rank one, v = (1, 2)/sqrt(5) (sum > 0), M v = sqrt(5) * A^0.
    conv = nn.Conv2d(1, 2, 1, bias=False).to(D)
    conv.weight.data = torch.tensor([1.0, 2.0], dtype=D).view(2, 1, 1, 1)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(8, 1).to(D)).eval()
    x = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]], dtype=D)
    e = sk.create_method("eigencam", model, layer="0", center=False, relu=False).attribute(x)
    torch.testing.assert_close(e.layer_maps[0], 5 ** 0.5 * x[0, 0])
    torch.testing.assert_close(e.extras["explained_variance"], torch.ones(1, dtype=D))
    # Negating the activations (both channels) negates the map: the sign follows the data, not LAPACK.
    conv.weight.data = -conv.weight.data
    flipped = sk.create_method("eigencam", model, layer="0", center=False, relu=False).attribute(x)
    torch.testing.assert_close(flipped.layer_maps[0], -5 ** 0.5 * x[0, 0])
    # Centred: the map correlates positively with the channel-summed (centred) activation map.
    model, x, _target, layer_name = MODELS["residual"]
    e = sk.create_method("eigencam", model, relu=False).attribute(x)
    a = ref_activation(model, model.get_submodule(layer_name), x).sum(1)
    for n in range(x.shape[0]):
        summed = a[n] - a[n].mean()
        assert float((e.layer_maps[n] * summed).sum()) > 0


def test_eigencam_ignores_the_target_but_records_it() -> None:
    model, x, _target, _ = MODELS["plain"]
    a = sk.create_method("eigencam", model).attribute(x, target=0)
    b = sk.create_method("eigencam", model).attribute(x, target=2)
    assert torch.equal(a.maps, b.maps)
    assert a.targets.tolist() == [0, 0] and b.targets.tolist() == [2, 2]


def test_eigencam_matches_pytorch_grad_cam_up_to_the_documented_sign() -> None:
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    for name in MODELS:
        model, x, _target, layer_name = MODELS[name]
        e = sk.create_method("eigencam", model, relu=False).attribute(x)
        a = ref_activation(model, model.get_submodule(layer_name), x)
        theirs = torch.from_numpy(get_2d_projection(a.numpy())).to(D)  # float32, LAPACK's sign
        for n in range(x.shape[0]):
            ours = e.layer_maps[n]
            sign = 1.0 if float((ours * theirs[n]).sum()) >= 0 else -1.0
            torch.testing.assert_close(ours, sign * theirs[n], atol=1e-5 * float(ours.abs().max()), rtol=1e-4)


# --------------------------------------------------------------------------------------- Ablation-CAM


@pytest.mark.parametrize("name", list(MODELS))
def test_ablationcam_matches_literal_reference(name: str) -> None:
    model, x, target, layer_name = MODELS[name]
    layer = model.get_submodule(layer_name)
    classes = _classes(model, x, target)
    e = sk.create_method("ablationcam", model, batch_size=3).attribute(x, target)
    for n in range(x.shape[0]):
        ref, weights = ref_ablationcam(model, layer, x[n:n + 1], classes[n])
        torch.testing.assert_close(e.extras["weights"][n], torch.tensor(weights, dtype=D), atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(e.layer_maps[n], ref, atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(e.maps[n], ref_upsample(ref, x.shape[-2:]), atol=1e-10, rtol=1e-8)
    assert (e.layer_maps > 0).float().mean() > 0.1


def test_ablationcam_hand_weighted_gap_model() -> None:
    # S = 3 mean(A^0) - 1 mean(A^1) + 0.5 with A^0 = relu(x), A^1 = relu(-2x): zeroing A^k drops S by v_k mean(A^k).
    conv = nn.Conv2d(1, 2, 1, bias=False).to(D)
    conv.weight.data = torch.tensor([1.0, -2.0], dtype=D).view(2, 1, 1, 1)
    head = nn.Linear(2, 1).to(D)
    head.weight.data = torch.tensor([[3.0, -1.0]], dtype=D)
    head.bias.data = torch.tensor([0.5], dtype=D)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    x = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]], dtype=D)
    a0, a1 = x[0, 0].clamp_min(0), (-2 * x[0, 0]).clamp_min(0)
    e = sk.create_method("ablationcam", model, layer="1").attribute(x, target=1)
    torch.testing.assert_close(e.extras["weights"][0], torch.tensor([3 * 0.75, -1 * 0.5], dtype=D))
    torch.testing.assert_close(e.layer_maps[0], (2.25 * a0 - 0.5 * a1).clamp_min(0))
    # Class 0 of a single logit is -z: the drops change sign, and the map is not mirrored by a division by S < 0.
    neg = sk.create_method("ablationcam", model, layer="1").attribute(x, target=0)
    torch.testing.assert_close(neg.extras["weights"][0], torch.tensor([-2.25, 0.5], dtype=D))


def test_ablationcam_skips_channels_that_are_zero_everywhere() -> None:
    first = Counter()
    conv = nn.Conv2d(1, 4, 3, padding=1).to(D)
    conv.bias.data = torch.tensor([0.0, -100.0, 0.0, -100.0], dtype=D)  # channels 1 and 3 are dead after the ReLU
    model = nn.Sequential(first, conv, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9 * 9, 2).to(D)).eval()
    x = _x(2, 1)
    e = sk.create_method("ablationcam", model, layer="2").attribute(x)
    assert e.extras["weights"][:, [1, 3]].eq(0).all()
    ran = ~e.extras["channel_scores"].isnan()
    assert not ran[:, [1, 3]].any() and ran[:, [0, 2]].all()
    assert sum(first.batches) == 2 + 2 * 2  # the clean pass (2 images) + 2 live channels x 2 images


def test_ablationcam_chunking_and_bf16() -> None:
    model, x, target, _ = MODELS["residual"]
    ref = sk.create_method("ablationcam", model, batch_size=64).attribute(x, target)
    for bs in (1, 3, "auto"):
        e = sk.create_method("ablationcam", model, batch_size=bs).attribute(x, target)
        torch.testing.assert_close(e.maps, ref.maps, atol=1e-12, rtol=1e-10)
    f32 = copy.deepcopy(model).float()
    a = sk.create_method("ablationcam", f32).attribute(x.float(), target)
    b = sk.create_method("ablationcam", f32, precision="bf16").attribute(x.float(), target)
    corr = np.corrcoef(a.maps.flatten().numpy(), b.maps.flatten().numpy())[0, 1]
    assert corr > 0.9
    with pytest.raises(InputError, match="batch_size"):
        sk.create_method("ablationcam", model, batch_size=0)


def test_ablationcam_matches_pytorch_grad_cam_where_the_definitions_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytorch-grad-cam divides the drop by S and min-max scales the map: for S > 0 and a post-ReLU layer (its
    ablation value is then 0, as ours), the scaled maps are equal."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, _target, layer_name = MODELS["plain"]
    with torch.no_grad():
        classes = model(x).argmax(1).tolist()
    theirs_model = copy.deepcopy(model).float()
    cam = AblationCAM(theirs_model, [theirs_model.get_submodule(layer_name)], batch_size=8)
    import pytorch_grad_cam.ablation_cam as pgc_ablation

    # its progress bar, silenced for this test only (tqdm.tqdm patched for good broke a later `import timm`)
    monkeypatch.setattr(pgc_ablation.tqdm, "tqdm", lambda it, **_kw: it)
    theirs = cam(input_tensor=x.float(), targets=[ClassifierOutputTarget(c) for c in classes])
    with torch.no_grad():
        assert (model(x).max(1).values > 0).all()  # S > 0: the paper's division by S does not mirror the map
    ours = sk.create_method("ablationcam", model).attribute(x, classes).maps
    for n in range(x.shape[0]):
        o = ours[n] - ours[n].min()
        o = o / o.max()
        np.testing.assert_allclose(o.numpy(), theirs[n], atol=2e-3)


# ------------------------------------------------------------------------------------------ FullGrad


def _spatial_bias_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d) and m.bias is not None]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("normalize", ["channel", "layer"])
def test_fullgrad_matches_literal_reference(name: str, normalize: str) -> None:
    model, x, target, _ = MODELS[name]
    classes = _classes(model, x, target)
    e = sk.create_method("fullgrad", model, normalize=normalize).attribute(x, target)
    for n in range(x.shape[0]):
        ref, gap = ref_fullgrad(model, x[n:n + 1], classes[n], _spatial_bias_layers(model), model[-1], normalize)
        torch.testing.assert_close(e.maps[n], ref, atol=1e-6, rtol=1e-6)
        # A ReLU network whose biases all live in modules: the decomposition is exact (Eq. 2) ...
        assert abs(gap) < 1e-6
        assert abs(float(e.extras["completeness_gap"][n])) < 1e-9


def test_fullgrad_gap_reports_a_bias_it_cannot_reach() -> None:
    class HiddenBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1).to(D)
            self.fc = nn.Linear(2, 1).to(D)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x) + 0.25).mean((2, 3)))  # + 0.25: a bias outside any module

    model = HiddenBias().eval()
    x = _x(2, 1)
    e = sk.create_method("fullgrad", model).attribute(x, target=1)
    with torch.no_grad():
        z = model.conv(x) + 0.25
        hidden = 0.25 * ((z > 0).to(D) * model.fc.weight.view(1, 2, 1, 1) / 81).sum((1, 2, 3))
    torch.testing.assert_close(e.extras["completeness_gap"], -hidden)


def test_fullgrad_linear_bias_on_token_outputs_is_added_along_the_last_dimension() -> None:
    class Tokens(nn.Module):  # a linear layer on (N, T, D) tokens, as in a transformer block
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 2, stride=2).to(D)
            self.lin = nn.Linear(4, 4).to(D)
            self.head = nn.Linear(4, 2).to(D)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.conv(x).flatten(2).transpose(1, 2)
            return self.head(torch.relu(self.lin(t)).mean(1))

    e = sk.create_method("fullgrad", Tokens()).attribute(_x(2, 1, size=8), target=1)
    assert float(e.extras["completeness_gap"].abs().max()) < 1e-12


def test_fullgrad_reads_the_right_layers_and_leaves_batchnorm_alone() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1, bias=False),
                          nn.BatchNorm2d(2, affine=False), nn.GroupNorm(1, 2), nn.Flatten(), nn.Linear(8, 1))
    assert bias_layers(model) == [model[0], model[1], model[3], model[6]]
    model.train()
    e = sk.create_method("fullgrad", model).attribute(torch.randn(2, 1, 4, 4))
    assert e.maps.shape == (2, 4, 4) and model[1].training and model[1].num_batches_tracked == 0


def test_fullgrad_chunked_equals_one_pass_and_options() -> None:
    model, x, target, _ = MODELS["residual"]
    one = sk.create_method("fullgrad", model).attribute(x, target)
    chunked = sk.create_method("fullgrad", model, batch_size=1).attribute(x, target)
    torch.testing.assert_close(chunked.maps, one.maps, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(chunked.extras["completeness_gap"], one.extras["completeness_gap"])
    with pytest.raises(InputError, match="normalize"):
        sk.create_method("fullgrad", model, normalize="image")
    with pytest.raises(InputError, match="TorchScript"):
        sk.create_method("fullgrad", torch.jit.script(small_cnn().to(D).eval())).attribute(_x(1, 1))


def test_fullgrad_matches_pytorch_grad_cam() -> None:
    """pytorch-grad-cam's FullGrad min-max scales the final map; on a network whose layers all keep the input's
    size (no upsampling: OpenCV and torch would interpolate differently at the border) the scaled maps agree. Its
    ``1e-7`` in the scaling's denominator weighs down channels whose bias-gradient spans less than ~1e-5, so the
    biases here are large enough for every channel to span more."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import FullGrad as PgcFullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
        model[0].bias.uniform_(-1, 1)
        model[1].bias.uniform_(-1, 1)
        model[3].bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 12, 12)
    theirs = PgcFullGrad(copy.deepcopy(model), [])(input_tensor=x, targets=[ClassifierOutputTarget(1)] * 2)
    ours = sk.create_method("fullgrad", model).attribute(x, target=1).maps
    for n in range(2):
        o = ours[n] - ours[n].min()
        np.testing.assert_allclose((o / o.max()).numpy(), theirs[n], atol=5e-4)


# ----------------------------------------------------------------------------------- shared passes


def test_gradient_free_cams_share_the_gradient_cams_pass() -> None:
    model, x, target, _ = MODELS["residual"]
    names = ["gradcam", "eigencam", "ablationcam", "layercam"]
    together = sk.explain(model, x, methods=names, target=target)
    for name in names:
        alone = sk.create_method(name, model).attribute(x, target)
        torch.testing.assert_close(together[name].maps, alone.maps, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(together[name].scores, alone.scores)


def test_gradient_free_cams_alone_run_forward_only() -> None:
    first, after = Counter(), Counter()
    model = nn.Sequential(first, nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), after, nn.Linear(4 * 9 * 9, 3)).to(D).eval()
    x = _x(3, 1)
    sk.explain(model, x, methods=["eigencam"], layer="4")
    assert first.batches == [3] and after.counts["backward"] == 0
    first.batches.clear()
    out = sk.explain(model, x, methods=["eigencam", "gradcam"], layer="4")
    assert first.batches == [3] and after.counts["backward"] == 1  # one forward and one backward for both
    assert out["eigencam"].params["layer"] == "4"


@pytest.mark.parametrize("arch,size", [("resnet18", 64), ("vgg11", 32), ("densenet121", 64)])
def test_torchvision_models_run(arch: str, size: int) -> None:
    """Random weights, small inputs (at 32 pixels VGG-11's last 2x2 map is its last ReLU, features.19); Ablation-CAM
    at the default layer runs one pass per channel (512 or 1024), the slowest part."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=3).eval()
    x = torch.randn(1, 3, size, size)
    out = sk.explain(model, x, methods={"eigencam": {}, "fullgrad": {}, "ablationcam": {"batch_size": 256}})
    layer = {"resnet18": "layer4.1", "vgg11": "features.19", "densenet121": "features.norm5"}[arch]
    for name, e in out.items():
        assert e.maps.shape == (1, size, size) and torch.isfinite(e.maps).all() and e.maps.abs().sum() > 0, name
        assert name == "fullgrad" or e.params["layer"] == layer
    # Eq. 2 holds for these ReLU networks (batch norm folded): the gap is small next to the score
    gap, score = float(out["fullgrad"].extras["completeness_gap"][0]), float(out["fullgrad"].scores[0])
    assert abs(gap) < 1e-3 * max(1.0, abs(score))


# ------------------------------------------------------------------------------- token and channels-last layers


def _ablated_scores_by_hand(model: nn.Module, module: nn.Module, x: torch.Tensor, cls: int, zero) -> list[float]:  # type: ignore[no-untyped-def]
    """``S`` with each channel zeroed in the module's raw output by ``zero(raw, k)``, one plain-hook pass each."""
    store: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda _m, _i, o: store.setdefault("raw", o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    raw = store["raw"]
    out = []
    for k in range(raw.shape[-1]):
        handle = module.register_forward_hook(lambda _m, _i, _o, k=k: zero(raw.clone(), k))
        try:
            with torch.no_grad():
                out.append(float(model(x)[0, cls]))
        finally:
            handle.remove()
    return out


def test_ablationcam_and_eigencam_on_vit_tokens_and_swin_channels_last() -> None:
    timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install saliencekit[timm]")

    def zero_tokens(raw: torch.Tensor, k: int) -> torch.Tensor:
        raw[:, 1:, k] = 0  # the patch tokens' channel k; the class token kept
        return raw

    def zero_last(raw: torch.Tensor, k: int) -> torch.Tensor:
        raw[..., k] = 0
        return raw

    torch.manual_seed(6)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32).eval().double()
    torch.manual_seed(5)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, img_size=64,
                             window_size=2, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)).eval().double()
    for model, name, zero, size in ((vit, "blocks.11.norm1", zero_tokens, 32), (swin, "norm", zero_last, 64)):
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=D)
        e = sk.create_method("ablationcam", model).attribute(x, target=2)
        assert e.params["layer"] == name
        with torch.no_grad():
            clean = float(model(x)[0, 2])
        ablated = torch.tensor(_ablated_scores_by_hand(model, model.get_submodule(name), x, 2, zero), dtype=D)
        live = ~e.extras["channel_scores"][0].isnan()
        torch.testing.assert_close(e.extras["channel_scores"][0][live], ablated[live], atol=1e-9, rtol=1e-7)
        torch.testing.assert_close(e.extras["weights"][0][live], clean - ablated[live], atol=1e-9, rtol=1e-7)
        eig = sk.create_method("eigencam", model).attribute(x)
        assert eig.layer_maps.shape == e.layer_maps.shape and torch.isfinite(eig.maps).all()
    x = x[..., :32, :32]
    with pytest.raises(InputError, match="reshape= callable"):
        sk.create_method("ablationcam", vit, layer="blocks.11.norm1",
                         reshape=lambda t: t[:, 1:].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)).attribute(x)
