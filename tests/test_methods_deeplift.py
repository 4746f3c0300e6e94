"""DeepLIFT and DeepLIFT-SHAP against the literal float64 reference, summation-to-delta, captum where both apply."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import saliencekit as sk
from reference.ref_deeplift import ref_deeplift
from reference.ref_lrp import dense_like, resnet_like, vgg_like
from saliencekit.errors import InputError
from saliencekit.methods.deeplift import _baseline
from test_method_contract import assert_unchanged, snapshot

D = torch.float64
CLASSES = [0, 2, 3]


def smooth_like(in_channels: int = 3, classes: int = 4) -> nn.Sequential:
    """Sigmoid and tanh units, max-pooling right after a sigmoid (for 8x8 inputs)."""
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.Sigmoid(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(), nn.AvgPool2d(4), nn.Flatten(),
                         nn.Linear(4, classes)).eval()


NETS = {"vgg_like": vgg_like, "resnet_like": resnet_like, "dense_like": dense_like, "smooth_like": smooth_like}


def _x(n: int = 3, c: int = 3, size: int = 8, seed: int = 1, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g, dtype=D) * scale


def _net(name: str) -> nn.Module:
    torch.manual_seed(0)
    return NETS[name]().to(D)


@pytest.mark.parametrize("baseline", ["tensor", "black", "blurred", "zero"])
@pytest.mark.parametrize("name", list(NETS))
def test_deeplift_matches_the_literal_reference(name: str, baseline: str) -> None:
    net, x = _net(name), _x()
    option: object = _x(seed=7, scale=0.3) if baseline == "tensor" else baseline
    base = _baseline(x, option, 0, 5.0)
    ref, s, sb = ref_deeplift(net, x, base, CLASSES)
    e = sk.create_method("deeplift", net, baseline=option).attribute(x, target=CLASSES)
    scale = float(ref.abs().max())
    torch.testing.assert_close(e.attributions, ref, rtol=1e-9, atol=1e-12 * scale)
    torch.testing.assert_close(e.scores, s)
    torch.testing.assert_close(e.extras["baseline_scores"], sb)
    # summation-to-delta (Shrikumar 2017, Eq. 1), also for overlapping max-pooling windows (resnet_like)
    assert e.extras["completeness_gap"].abs().max() < 1e-12 * max(1.0, float(s.abs().max()))
    torch.testing.assert_close(e.extras["completeness_gap"], e.attributions.flatten(1).sum(1) - (s - sb))


def test_rescale_differs_from_gradient_times_delta_and_eps_falls_back_to_the_gradient() -> None:
    net, x = _net("vgg_like"), _x()
    dl = sk.create_method("deeplift", net, baseline="zero").attribute(x, target=CLASSES)
    gxi = sk.create_method("gradient_x_input", net).attribute(x, target=CLASSES)
    assert not torch.allclose(dl.attributions, gxi.attributions)
    same = sk.create_method("deeplift", net, baseline=x.clone()).attribute(x, target=CLASSES)
    assert torch.equal(same.attributions, torch.zeros_like(x))
    # a baseline closer than eps everywhere: every multiplier is the gradient
    near = x + 1e-13
    e = sk.create_method("deeplift", net, baseline=near).attribute(x, target=CLASSES)
    grad = sk.create_method("gradient", net).attribute(x, target=CLASSES).attributions
    torch.testing.assert_close(e.attributions / (x - near), grad)


def test_functional_relus_and_reused_modules_get_the_rule() -> None:
    class Modules(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu1(self.conv1(x))
            x = self.relu2(self.conv2(x) + x)
            return self.fc(F.max_pool2d(x, 2).mean((2, 3)))

    class Functions(Modules):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu1(self.conv1(x))
            y = self.conv2(x)
            y += x
            x = self.relu1(y)  # the same module used twice, in place of relu2
            return self.fc(F.max_pool2d(x, 2, return_indices=True)[0].mean((2, 3)))

    torch.manual_seed(0)
    a, b = Modules().to(D).eval(), Functions().to(D).eval()
    b.load_state_dict(a.state_dict())
    x = _x(2, 1, 6)
    ea = sk.create_method("deeplift", a).attribute(x, target=[0, 2])
    eb = sk.create_method("deeplift", b).attribute(x, target=[0, 2])
    torch.testing.assert_close(ea.attributions, eb.attributions)
    assert ea.extras["completeness_gap"].abs().max() < 1e-12


@pytest.mark.parametrize("name", list(NETS))
def test_deeplift_shap_is_the_mean_of_deeplift_over_the_baselines(name: str) -> None:
    net, x = _net(name), _x()
    refs = _x(4, seed=9, scale=0.5)
    e = sk.create_method("deeplift_shap", net, baselines=refs, batch_size=5).attribute(x, target=CLASSES)
    parts = [ref_deeplift(net, x, refs[k].expand_as(x), CLASSES) for k in range(refs.shape[0])]
    mean = torch.stack([p[0] for p in parts]).mean(0)
    torch.testing.assert_close(e.attributions, mean, rtol=1e-9, atol=1e-12 * float(mean.abs().max()))
    base_mean = torch.stack([p[2] for p in parts]).mean(0)
    torch.testing.assert_close(e.extras["baseline_scores"], base_mean)
    assert e.extras["completeness_gap"].abs().max() < 1e-12


def test_deeplift_shap_distributions() -> None:
    net, x = _net("vgg_like"), _x()
    # one baseline: DeepLIFT itself
    one = sk.create_method("deeplift_shap", net, baselines=["blurred"]).attribute(x, target=CLASSES)
    dl = sk.create_method("deeplift", net, baseline="blurred").attribute(x, target=CLASSES)
    torch.testing.assert_close(one.attributions, dl.attributions)
    # a list of named baselines: the mean of DeepLIFT from each
    named = sk.create_method("deeplift_shap", net, baselines=["black", "white", 0.5]).attribute(x, target=CLASSES)
    each = [sk.create_method("deeplift", net, baseline=b).attribute(x, target=CLASSES).attributions
            for b in ("black", "white", 0.5)]
    torch.testing.assert_close(named.attributions, torch.stack(each).mean(0))
    # uniform noise: seeded, shared by the images (batched = per image), within each image's range
    uni = sk.create_method("deeplift_shap", net, samples=3, seed=4)
    a, b = uni.attribute(x, target=CLASSES), uni.attribute(x, target=CLASSES)
    torch.testing.assert_close(a.attributions, b.attributions)
    single = uni.attribute(x[1:2], target=CLASSES[1])
    torch.testing.assert_close(single.attributions[0], a.attributions[1])
    dist = uni._distribution(x)
    assert dist.shape == (3, *x.shape)
    lo, hi = x.flatten(1).amin(1), x.flatten(1).amax(1)
    assert (dist.flatten(2).amin(2) >= lo).all() and (dist.flatten(2).amax(2) <= hi).all()
    other = sk.create_method("deeplift_shap", net, samples=3, seed=5).attribute(x, target=CLASSES)
    assert not torch.allclose(other.attributions, a.attributions)


def test_bad_options_are_refused_by_name() -> None:
    net = _net("vgg_like")
    with pytest.raises(InputError, match="unknown baseline 'grey'"):
        sk.create_method("deeplift", net, baseline="grey")
    with pytest.raises(InputError, match="eps must be a number"):
        sk.create_method("deeplift", net, eps=-1)
    with pytest.raises(InputError, match="unknown baseline distribution 'normal'"):
        sk.create_method("deeplift_shap", net, baselines="normal")
    with pytest.raises(InputError, match=r"\(K, C, H, W\)"):
        sk.create_method("deeplift_shap", net, baselines=torch.zeros(3, 8, 8, dtype=D))
    with pytest.raises(InputError, match="do not match"):
        sk.create_method("deeplift_shap", net, baselines=torch.zeros(2, 3, 4, 4, dtype=D)).attribute(_x())
    with pytest.raises(InputError, match="samples must be a positive int"):
        sk.create_method("deeplift_shap", net, samples=0)
    with pytest.raises(InputError, match="TorchScript"):
        sk.create_method("deeplift", torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(4, 1))))


def test_a_model_that_mixes_the_batch_is_refused() -> None:
    class Mixing(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.flatten(1)
            return torch.relu(h.reshape(1, -1)).sum(1).expand(x.shape[0]).reshape(-1, 1)

    with pytest.raises(InputError, match="batch dimension first"):
        sk.create_method("deeplift", Mixing()).attribute(_x(2, 1, 2))


@pytest.mark.parametrize("method", ["deeplift", "deeplift_shap"])
def test_matches_captum_where_both_apply(method: str) -> None:
    """captum applies its rules at modules: each non-linearity an nn.Module used once, and (captum issue #1104)
    no two non-linearity modules in a row (ReLU then MaxPool: captum's hooks then break summation-to-delta)."""
    ca = pytest.importorskip("captum.attr", reason="captum is not installed: pip install -e .[test]")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(2),
                        nn.Conv2d(4, 4, 3, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(64, 6), nn.Tanh(),
                        nn.Linear(6, 4)).to(D).eval()
    x = _x()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum's notes about its hooks
        if method == "deeplift":
            base = _x(seed=3, scale=0.5)
            theirs = ca.DeepLift(net).attribute(x, base, target=CLASSES)
            ours = sk.create_method("deeplift", net, baseline=base).attribute(x, target=CLASSES)
        else:
            refs = _x(5, seed=3, scale=0.5)
            theirs = ca.DeepLiftShap(net).attribute(x, refs, target=CLASSES)
            ours = sk.create_method("deeplift_shap", net, baselines=refs).attribute(x, target=CLASSES)
    theirs = theirs.detach()
    torch.testing.assert_close(ours.attributions, theirs, rtol=1e-9, atol=1e-12 * float(theirs.abs().max()))


_TORCHVISION = ("resnet18", "vgg11", "densenet121")


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    out = {name: torchvision.models.__dict__[name](weights=None, num_classes=3).eval() for name in _TORCHVISION}
    from saliencekit.models import create

    out["effusion_cnn"] = create("effusion_cnn").eval()
    return out


@pytest.mark.parametrize("name", ["effusion_cnn", *_TORCHVISION])
def test_runs_on_the_lesson_cnn_and_torchvision_models(name: str, models: dict[str, nn.Module]) -> None:
    model = models[name]
    size, channels = (64, 1) if name == "effusion_cnn" else (32, 3)
    x = torch.randn(2, channels, size, size)
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = sk.create_method("deeplift", model).attribute(x)
        s = sk.create_method("deeplift_shap", model, samples=2).attribute(x)
    assert_unchanged(model, before)
    for out in (e, s):
        assert out.maps.shape == (2, size, size) and torch.isfinite(out.maps).all()
        # float32 summation-to-delta over the whole depth
        delta = (out.scores - out.extras["baseline_scores"]).abs().max()
        assert out.extras["completeness_gap"].abs().max() <= 1e-3 * max(float(delta), 1e-3)
