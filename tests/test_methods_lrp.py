"""LRP: every composite and rule against the literal float64 reference, canonisation, residual sums,
concatenations, functional operations, conservation, the model left alone, zennit's numbers."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import saliencekit as sk
from reference.ref_lrp import COMPOSITES, dense_like, ref_lrp, resnet_like, vgg_like
from saliencekit.errors import InputError, UnknownNameError
from saliencekit.methods.lrp import LRP, AlphaBeta, Epsilon, Gamma, ZBox
from test_method_contract import assert_unchanged, snapshot

D = torch.float64
NETS = {"vgg_like": vgg_like, "resnet_like": resnet_like, "dense_like": dense_like}


def _x(n: int = 3, c: int = 3, size: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g, dtype=D)


def _net(name: str) -> nn.Module:
    torch.manual_seed(0)
    return NETS[name]().to(D)


CLASSES = [0, 2, 3]


@pytest.mark.parametrize("composite", list(COMPOSITES))
@pytest.mark.parametrize("name", list(NETS))
def test_composites_match_the_literal_reference(name: str, composite: str) -> None:
    net, x = _net(name), _x()
    ref, score = ref_lrp(net, x, CLASSES, composite)
    e = sk.create_method("lrp", net, composite=composite).attribute(x, target=CLASSES)
    torch.testing.assert_close(e.attributions, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))
    torch.testing.assert_close(e.maps, ref.sum(1), rtol=1e-9, atol=1e-12 * float(ref.abs().max()))
    torch.testing.assert_close(e.scores, score)
    torch.testing.assert_close(e.extras["conservation_gap"], ref.flatten(1).sum(1) - score)


def test_composites_differ_and_rule_options_reach_the_rules() -> None:
    net, x = _net("vgg_like"), _x()
    maps = {c: sk.create_method("lrp", net, composite=c).attribute(x, target=CLASSES).attributions
            for c in COMPOSITES}
    names = list(maps)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(maps[a], maps[b]), (a, b)
    for options, ref_settings in (
        ({"composite": "epsilon", "epsilon": 0.25}, {"epsilon": 0.25}),
        ({"composite": "epsilon_gamma_box", "gamma": 1.0, "low": -3.0, "high": 3.0},
         {"gamma": 1.0, "low": -3.0, "high": 3.0}),
        ({"composite": "epsilon_plus", "ignore_bias": True, "stabilizer": 1e-3}, {"ignore_bias": True,
                                                                                  "stabilizer": 1e-3}),
    ):
        ref, _ = ref_lrp(net, x, CLASSES, options["composite"], **ref_settings)
        got = sk.create_method("lrp", net, **options).attribute(x, target=CLASSES).attributions
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()), msg=str(options))


def test_user_rules_by_module_name_and_type() -> None:
    net, x = _net("resnet_like"), _x()
    # names win over the composite's first layer; a container's name covers the layers inside it
    rules = {"0": "wsquare", "4": "epsilon", nn.Linear: "zplus"}
    block = net[4]
    ref, _ = ref_lrp(net, x, CLASSES, "epsilon_gamma_box", by_module={
        id(net[0]): "wsquare", id(block.conv1): "epsilon", id(block.conv2): "epsilon", id(block.down[0]): "epsilon",
        id(net[8]): "zplus"})
    got = sk.create_method("lrp", net, composite="epsilon_gamma_box", rules=rules).attribute(x, target=CLASSES)
    torch.testing.assert_close(got.attributions, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))
    # a class name works like the class; a Rule object like its name with these parameters
    by_class_name = sk.create_method("lrp", net, rules={"Conv2d": Gamma(gamma=0.5)}).attribute(x, target=CLASSES)
    by_class = sk.create_method("lrp", net, composite="epsilon_gamma_box", gamma=0.5,
                                rules={"0": "gamma"}).attribute(x, target=CLASSES)
    torch.testing.assert_close(by_class_name.attributions, by_class.attributions)


def test_rule_identities() -> None:
    net, x = _net("vgg_like"), _x()

    def lrp(**kw: object) -> torch.Tensor:
        return sk.create_method("lrp", net, **kw).attribute(x, target=CLASSES).attributions

    conv = nn.Conv2d
    # z+ is alpha1-beta0; gamma = 0 is epsilon with the stabiliser; gamma -> infinity tends to z+ where the outputs
    # are positive, and every convolution here feeds a ReLU (so negative outputs carry no relevance)
    torch.testing.assert_close(lrp(rules={conv: "zplus"}), lrp(rules={conv: "alpha1beta0"}))
    torch.testing.assert_close(lrp(rules={conv: "zplus"}), lrp(rules={conv: AlphaBeta(1.0, 0.0)}))
    torch.testing.assert_close(lrp(rules={conv: Gamma(0.0, 1e-6)}), lrp(rules={conv: Epsilon(1e-6)}))
    big = lrp(rules={conv: "gamma"}, gamma=1e7)
    torch.testing.assert_close(big, lrp(rules={conv: "zplus"}), rtol=1e-5, atol=1e-8)


def test_zbox_bounds_and_flat_first_layer_by_hand() -> None:
    # One linear layer, one image of two pixels: every rule by hand.
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 1)).to(D)
    net[1].weight.data = torch.tensor([[2.0, -1.0]], dtype=D)
    net[1].bias.data = torch.tensor([0.5], dtype=D)
    x = torch.tensor([[[[1.0, 3.0]]]], dtype=D)  # z = 2 - 3 + 0.5 = -0.5

    def r(rule: object, **kw: object) -> list[float]:
        e = sk.create_method("lrp", net, rules={nn.Linear: rule}, stabilizer=0.0, epsilon=0.0, **kw)
        return e.attribute(x, target=1).attributions.flatten().tolist()

    s = -0.5  # the explained score (class 1 of a single logit)
    assert r("epsilon") == pytest.approx([2 / -0.5 * s, -3 / -0.5 * s])
    assert r("zplus") == pytest.approx([2 / 2.5 * s, 0.0])  # c+ = (2, 0), b+ = 0.5
    assert r("alpha2beta1") == pytest.approx([2 * 2 / 2.5 * s, -1 * -3 / -3 * s])
    assert r("flat") == pytest.approx([s / 2, s / 2])
    assert r("wsquare") == pytest.approx([4 / 5 * s, 1 / 5 * s])
    # z^B with l = 0, h = 4: c - l w+ - h w- = (2 - 0, -3 + 4) = (2, 1)
    assert r(ZBox(0.0, 4.0, 0.0)) == pytest.approx([2 / 3 * s, 1 / 3 * s])
    # default bounds: the image's minimum 1 and maximum 3: (2 - 2, -3 + 3) -> zero denominator, stabiliser 1e-6
    e = sk.create_method("lrp", net, rules={nn.Linear: "zbox"}).attribute(x, target=1)
    assert torch.isfinite(e.attributions).all()
    # gamma where z < 0: c + gamma c- = (2, -3 - 0.25 * 3) over z + gamma (c- + b-) = -0.5 - 0.75
    assert r(Gamma(0.25, 0.0)) == pytest.approx([2 / -1.25 * s, -3.75 / -1.25 * s])


@pytest.mark.parametrize("name", list(NETS))
def test_conservation_for_epsilon_without_biases(name: str) -> None:
    net, x = _net(name), _x()
    e = sk.create_method("lrp", net, composite="epsilon", epsilon=1e-12, stabilizer=1e-12,
                         ignore_bias=True).attribute(x, target=CLASSES)
    gap = e.extras["conservation_gap"]
    torch.testing.assert_close(gap, e.attributions.flatten(1).sum(1) - e.scores)
    assert gap.abs().max() < 1e-8 * e.scores.abs().max()
    # with the biases (and the folded batch norms' shifts) relevance is absorbed, and the gap reports it
    biased = sk.create_method("lrp", net, composite="epsilon").attribute(x, target=CLASSES)
    assert biased.extras["conservation_gap"].abs().max() > 1e-3 * biased.scores.abs().max()


def test_batch_norm_folded_without_touching_the_model() -> None:
    net = _net("vgg_like")
    x = _x()
    before = snapshot(net)
    folded = sk.create_method("lrp", net).attribute(x, target=CLASSES).attributions
    assert_unchanged(net, before)
    # the same network with the batch norm merged by hand into the convolution
    merged = copy.deepcopy(net)
    conv, bn = merged[0], merged[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
    merged[1] = nn.Identity()
    by_hand = sk.create_method("lrp", merged).attribute(x, target=CLASSES).attributions
    torch.testing.assert_close(folded, by_hand)
    # canonize=False: the batch norm passes relevance, the convolution gets z+ with its own parameters
    unfolded = sk.create_method("lrp", net, canonize=False).attribute(x, target=CLASSES).attributions
    assert not torch.allclose(unfolded, folded)


def test_a_convolution_feeding_batch_norm_and_another_branch() -> None:
    """The fold covers only the batch norm's path; the other consumer of the convolution gets the plain rule."""

    class Fork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)
            self.head = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            a = F.relu(self.bn(y)).mean((2, 3))
            b = F.relu(y).mean((2, 3))
            return self.head(torch.cat([a, b], 1))

    torch.manual_seed(0)
    net = Fork().to(D).eval()
    net.bn.running_mean.uniform_(-0.3, 0.3)
    net.bn.running_var.uniform_(0.5, 1.5)
    x = _x(2, 2, 6)
    got = sk.create_method("lrp", net, composite="epsilon", epsilon=1e-12, stabilizer=1e-12,
                           ignore_bias=True).attribute(x, target=[0, 1])
    # relevance is conserved only when both paths are explained (the fold on one, the plain rule on the other)
    assert got.extras["conservation_gap"].abs().max() < 1e-9 * got.scores.abs().max()


def test_functional_operations_equal_their_modules() -> None:
    class Modules(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.relu1, self.relu2 = nn.ReLU(), nn.ReLU(inplace=True)
            self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu1(self.conv1(x))
            x = self.relu2(self.conv2(x) + x)
            return self.fc(self.pool(x).flatten(1))

    class Functions(Modules):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.conv1(x))
            y = self.conv2(x)
            y += x  # an in-place residual sum
            x = y.relu_()
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    a = Modules().to(D).eval()
    b = Functions().to(D).eval()
    b.load_state_dict(a.state_dict())
    x = _x(2, 1, 6)
    for composite in ("epsilon_plus", "epsilon_gamma_box"):
        ea = sk.create_method("lrp", a, composite=composite).attribute(x, target=[0, 2])
        eb = sk.create_method("lrp", b, composite=composite).attribute(x, target=[0, 2])
        torch.testing.assert_close(ea.attributions, eb.attributions)


def test_residual_sum_shares_relevance_by_contribution() -> None:
    """``z = a + b``: each term gets ``term / z`` of the relevance (zennit's Sum + Norm)."""

    class Sum(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = x[:, :, :, :1] * 3.0  # a scaling by a constant passes relevance unchanged
            b = x[:, :, :, 1:]
            return (a + b).flatten(1)

    x = torch.tensor([[[[1.0, 2.0]]]], dtype=D)  # a = 3, b = 2, z = 5
    e = sk.create_method("lrp", Sum(), stabilizer=0.0).attribute(x, target=lambda out: out[:, 0])
    assert e.attributions.flatten().tolist() == pytest.approx([3 / 5 * 5, 2 / 5 * 5])


def test_in_place_change_of_a_saved_input_is_an_error() -> None:
    class Mutating(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv1(x).relu()
            y = self.conv2(h)
            h.mul_(0.5)  # the input conv2 read is overwritten after the fact
            return (y.mean((2, 3)) + h.mean((2, 3))).sum(1, keepdim=True)

    net = Mutating().to(D)
    with pytest.raises(InputError, match="modified the input of a convolution or linear layer in place"):
        sk.create_method("lrp", net).attribute(_x(1, 1, 5))


def test_operations_without_a_rule_are_reported() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(64, 2)).to(D)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sk.create_method("lrp", net).attribute(_x(1, 1, 4))
    assert any("group_norm" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none for the networks with rules everywhere
        sk.create_method("lrp", _net("dense_like")).attribute(_x(1))


def test_bad_options_are_refused_by_name() -> None:
    net = _net("vgg_like")
    with pytest.raises(UnknownNameError, match="epsilon_plus_flat"):
        sk.create_method("lrp", net, composite="plus")
    with pytest.raises(UnknownNameError, match="alpha2beta1"):
        sk.create_method("lrp", net, rules={nn.Conv2d: "alpha3beta2"})
    with pytest.raises(UnknownNameError, match="module name or type"):
        sk.create_method("lrp", net, rules={"features.99": "epsilon"})
    with pytest.raises(InputError, match="alpha - beta = 1"):
        AlphaBeta(2.0, 2.0)
    with pytest.raises(InputError, match="epsilon must be a number"):
        sk.create_method("lrp", net, epsilon=-1.0)
    with pytest.raises(InputError, match="does not broadcast"):
        sk.create_method("lrp", net, composite="epsilon_gamma_box", low=torch.zeros(5)).attribute(_x(1))
    with pytest.raises(InputError, match="TorchScript"):
        sk.create_method("lrp", torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(4, 1))))


_TORCHVISION = {"resnet18": 3, "vgg11": 3, "densenet121": 3}


@pytest.fixture(scope="module")
def torchvision_models() -> dict[str, nn.Module]:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    models = {name: torchvision.models.__dict__[name](weights=None, num_classes=3).eval() for name in _TORCHVISION}
    from saliencekit.models import create

    models["effusion_cnn"] = create("effusion_cnn").eval()
    return models


@pytest.mark.parametrize("name", ["effusion_cnn", *_TORCHVISION])
def test_runs_on_the_lesson_cnn_and_torchvision_models(name: str, torchvision_models: dict[str, nn.Module]) -> None:
    model = torchvision_models[name]
    channels = 1 if name == "effusion_cnn" else 3
    x = torch.randn(2, channels, 64 if name == "effusion_cnn" else 32, 64 if name == "effusion_cnn" else 32)
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every operation of these models has a rule
        e = sk.create_method("lrp", model, composite="epsilon_gamma_box").attribute(x)  # z^B, gamma, epsilon
        assert e.maps.shape == (2, *x.shape[-2:]) and torch.isfinite(e.maps).all()
        e = sk.create_method("lrp", model, composite="epsilon", epsilon=1e-9, stabilizer=1e-9,
                             ignore_bias=True).attribute(x)
    assert_unchanged(model, before)
    # float32: conservation to single precision over the whole depth
    assert e.extras["conservation_gap"].abs().max() < 1e-3 * e.scores.abs().max()


def _zennit_relevance(model: nn.Module, x: torch.Tensor, classes: list[int], composite: str) -> torch.Tensor:
    import zennit.composites as zc
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    canonizers = [ResNetCanonizer()] if any(type(m).__name__ == "BasicBlock" for m in model.modules()) \
        else [SequentialMergeBatchNorm()]
    flat = x.flatten(1)
    low = flat.amin(1).view(-1, 1, 1, 1).expand_as(x)
    high = flat.amax(1).view(-1, 1, 1, 1).expand_as(x)
    comps = {"epsilon_plus": lambda: zc.EpsilonPlus(canonizers=canonizers),
             "epsilon_plus_flat": lambda: zc.EpsilonPlusFlat(canonizers=canonizers),
             "epsilon_gamma_box": lambda: zc.EpsilonGammaBox(low=low, high=high, canonizers=canonizers),
             "epsilon_alpha2_beta1": lambda: zc.EpsilonAlpha2Beta1(canonizers=canonizers)}
    with Gradient(model=model, composite=comps[composite]()) as attributor:
        _, relevance = attributor(x, lambda out: torch.eye(out.shape[1], dtype=out.dtype)[classes] * out)
    return relevance


def _vgg11_bn_features_small_head() -> nn.Module:
    """torchvision's VGG-11-BN feature extractor with a small classifier (its 25088 x 4096 one is 400 MB)."""
    from torchvision.models.vgg import cfgs, make_layers

    return nn.Sequential(make_layers(cfgs["A"], batch_norm=True), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(2048, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 4))


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box",
                                       "epsilon_alpha2_beta1"])
@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18"])
def test_matches_zennit_on_vgg_and_resnet(arch: str, composite: str) -> None:
    pytest.importorskip("zennit", reason="zennit (the LRP reference) is not installed: pip install -e .[test]")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    if arch == "vgg11_bn":
        model = _vgg11_bn_features_small_head().to(D).eval()
    else:
        model = torchvision.models.resnet18(weights=None, num_classes=4).to(D).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            # zennit's canonised batch norm still divides by sqrt(1 + eps) (the identity it leaves behind keeps
            # eps); with eps = 0 both compute the same network (bench/README.md shows the eps > 0 difference)
            m.eps = 0.0
    x = torch.randn(2, 3, 32, 32, dtype=D)
    classes = [1, 3]
    theirs = _zennit_relevance(model, x, classes, composite)
    ours = sk.create_method("lrp", model, composite=composite).attribute(x, target=classes).attributions
    scale = float(theirs.abs().max())
    assert float((ours - theirs).abs().max()) <= 1e-9 * scale


def test_compensated_input_shift_changes_z_plus_maps_but_not_flat_or_zbox_inside_the_image() -> None:
    """Kindermans et al. 2017: z+ weighs the input values (not invariant); the flat and z^B first layers (with each
    image's bounds) are, except within the first convolution's reach of the border, where the compensated copy pads
    with the shift instead of zeros (why lrp declares no expectation for those composites)."""
    from saliencekit.trust.invariance import compensated_copy

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1)).to(D).eval()
    shifted = compensated_copy(net, 1.0)
    x = _x(2, 1, 12)
    for composite, invariant in (("epsilon_plus", False), ("epsilon_plus_flat", True), ("epsilon_gamma_box", True)):
        a = sk.create_method("lrp", net, composite=composite).attribute(x, target=1).maps
        b = sk.create_method("lrp", shifted, composite=composite).attribute(x + 1.0, target=1).maps
        inside = (a - b)[:, 2:-2, 2:-2].abs().max() / a.abs().max()
        assert (inside < 1e-12) == invariant, composite
        expected = LRP.expected_input_invariance({"composite": composite})
        assert expected is (False if not invariant else None)
