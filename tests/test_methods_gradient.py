"""Gradient family: gradient, gradient x input, integrated gradients and the SmoothGrad wrappers.

Compared in float64 against the literal references in tests/reference/ref_gradient.py, against
hand-derived maps of linear models, and on the invariants of docs/methods.md.
"""

from __future__ import annotations

import pytest
import torch

import saliencekit as sk
from reference.ref_gradient import (
    ref_gradient,
    ref_gradient_fd,
    ref_gradient_x_input,
    ref_integrated_gradients,
    ref_noise_tunnel,
)
from saliencekit.errors import InputError, UnknownNameError
from saliencekit.methods.integrated import make_baseline, quadrature
from toy_models import Boom, LinearModel, make
from toy_models import predicted_classes as _classes

D = torch.float64
ATOL = 1e-10


def _x(n: int = 3, c: int = 1, size: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g, dtype=D)


# ------------------------------------------------------------------------------- gradient, gradient x input


@pytest.mark.parametrize("kind,classes", [("plain", 1), ("inplace", 1), ("functional", 3), ("residual", 1),
                                          ("nested", 3)])
def test_gradient_matches_reference(kind: str, classes: int) -> None:
    model = make(kind, classes=classes)
    x = _x()
    cls = _classes(model, x)
    e = sk.create_method("gradient", model).attribute(x)
    assert e.targets.tolist() == cls
    torch.testing.assert_close(e.attributions, ref_gradient(model, x, cls), atol=ATOL, rtol=1e-7)
    torch.testing.assert_close(e.maps, e.attributions.sum(1))
    gxi = sk.create_method("gradient_x_input", model).attribute(x)
    torch.testing.assert_close(gxi.attributions, ref_gradient_x_input(model, x, cls), atol=ATOL, rtol=1e-7)


def test_gradient_matches_finite_differences_on_a_smooth_model() -> None:
    model = make("smooth", in_channels=2, classes=3)
    x = _x(n=2, c=2, size=5)
    cls = [0, 2]
    e = sk.create_method("gradient", model).attribute(x, target=cls)
    torch.testing.assert_close(e.attributions, ref_gradient_fd(model, x, cls), atol=1e-7, rtol=1e-5)


def test_gradient_reductions() -> None:
    model = make("plain", in_channels=3, classes=3)
    x = _x(n=2, c=3)
    a = sk.create_method("gradient", model).attribute(x).attributions
    for reduce, expected in [("sum", a.sum(1)), ("abs_sum", a.abs().sum(1)), ("max_abs", a.abs().amax(1)),
                             ("mean", a.mean(1))]:
        torch.testing.assert_close(sk.create_method("gradient", model, reduce=reduce).attribute(x).maps, expected)


def test_linear_model_hand_derived_maps() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2, 1, 4, 4, generator=g, dtype=D)
    model = LinearModel(w, bias=0.5)  # two classes: logits z_k = <w_k, x> + b
    x = _x(n=2, size=4)
    e = sk.create_method("gradient", model).attribute(x, target=[1, 0])
    torch.testing.assert_close(e.attributions, torch.stack([w[1], w[0]]))
    gxi = sk.create_method("gradient_x_input", model).attribute(x, target=1)
    torch.testing.assert_close(gxi.attributions, x * w[1])
    for rule in ("riemann_left", "riemann_trapezoid", "gauss_legendre"):
        for baseline in ("black", "zero", "white", "uniform", "blurred"):
            ig = sk.create_method("integrated_gradients", model, steps=3, rule=rule, baseline=baseline)
            e = ig.attribute(x, target=0)
            base = e.extras["baselines"]
            torch.testing.assert_close(e.attributions, (x - base) * w[0], atol=1e-12, rtol=1e-10)
            assert e.extras["completeness_gap"].abs().max() < 1e-10


def test_single_logit_target_contract() -> None:
    w = torch.randn(1, 1, 4, 4, dtype=D)
    model = LinearModel(w)  # single logit z
    x = _x(n=2, size=4)
    g1 = sk.create_method("gradient", model).attribute(x, target=1)
    g0 = sk.create_method("gradient", model).attribute(x, target=0)
    torch.testing.assert_close(g1.attributions, w.expand(2, -1, -1, -1))
    torch.testing.assert_close(g0.attributions, -w.expand(2, -1, -1, -1))
    z = model(x)[:, 0].detach()
    torch.testing.assert_close(g1.scores, z)
    torch.testing.assert_close(g0.scores, -z)
    # Non-linear model: every gradient-family method flips sign with the class.
    model = make("residual")
    x = _x()
    for name, opts in [("gradient", {}), ("gradient_x_input", {}), ("integrated_gradients", {"steps": 4}),
                       ("smoothgrad", {"samples": 3}), ("vargrad", {"samples": 3})]:
        a1 = sk.create_method(name, model, **opts).attribute(x, target=1).maps
        a0 = sk.create_method(name, model, **opts).attribute(x, target=0).maps
        expected = a1 if name == "vargrad" else -a1  # the variance is even in the sign
        torch.testing.assert_close(a0, expected, atol=1e-12, rtol=1e-9)


def test_callable_target() -> None:
    model = make("nested", classes=3)
    x = _x()
    e = sk.create_method("gradient", model).attribute(x, target=lambda out: out[:, 0] - out[:, 2])
    expected = ref_gradient(model, x, [0] * 3) - ref_gradient(model, x, [2] * 3)
    torch.testing.assert_close(e.attributions, expected, atol=ATOL, rtol=1e-7)
    assert e.targets.tolist() == [-1, -1, -1]


# ------------------------------------------------------------------------------------ integrated gradients


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
                                  "gauss_legendre"])
def test_integrated_gradients_matches_reference(rule: str) -> None:
    model = make("inplace")
    x = _x(n=2)
    cls = _classes(model, x)
    e = sk.create_method("integrated_gradients", model, steps=5, rule=rule, baseline="black").attribute(x)
    baseline = x.flatten(1).amin(1).view(2, 1, 1, 1).expand_as(x)  # black = each image's minimum
    ref = ref_integrated_gradients(model, x, cls, baseline, 5, rule)
    torch.testing.assert_close(e.attributions, ref, atol=ATOL, rtol=1e-7)


@pytest.mark.parametrize("baseline", ["zero", "white", "uniform", "blurred", "tensor", "number"])
def test_integrated_gradients_baselines(baseline: str) -> None:
    model = make("residual", classes=1)
    x = _x(n=2)
    cls = _classes(model, x)
    user = torch.linspace(-1, 1, 64, dtype=D).view(1, 8, 8)
    opt = user if baseline == "tensor" else 0.25 if baseline == "number" else baseline
    e = sk.create_method("integrated_gradients", model, steps=4, baseline=opt, blur_sigma=1.5).attribute(x)
    b = e.extras["baselines"]
    lo = x.flatten(1).amin(1).view(2, 1, 1, 1)
    hi = x.flatten(1).amax(1).view(2, 1, 1, 1)
    if baseline == "zero":
        assert (b == 0).all()
    elif baseline == "white":
        torch.testing.assert_close(b, hi.expand_as(x))
    elif baseline == "uniform":
        assert ((b >= lo) & (b <= hi)).all() and b.std() > 0
        u = (b - lo) / (hi - lo)  # one draw shared by all images
        torch.testing.assert_close(u[0], u[1])
        e2 = sk.create_method("integrated_gradients", model, steps=4, baseline="uniform").attribute(x)
        torch.testing.assert_close(e2.extras["baselines"], b)  # seeded
    elif baseline == "blurred":
        # literal Gaussian blur at an interior pixel
        r = 5
        t = torch.arange(-r, r + 1, dtype=D)
        k = torch.exp(-(t**2) / (2 * 1.5**2))
        k2 = torch.outer(k, k) / k.sum() ** 2
        xp = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate")
        expected = (xp[:, 0, 4 - r + r: 4 + r + 1 + r, 3 - r + r: 3 + r + 1 + r] * k2).sum((1, 2))
        torch.testing.assert_close(b[:, 0, 4, 3], expected)
    elif baseline == "tensor":
        torch.testing.assert_close(b, user.expand_as(x))
    else:
        assert (b == 0.25).all()
    ref = ref_integrated_gradients(model, x, cls, b, 4, "gauss_legendre")
    torch.testing.assert_close(e.attributions, ref, atol=ATOL, rtol=1e-7)


def test_integrated_gradients_completeness_within_one_percent() -> None:
    model = make("smooth", classes=3)
    x = _x(n=3, size=10) * 2
    for baseline in ("black", "zero", "blurred"):
        for rule in ("riemann_trapezoid", "gauss_legendre", "riemann_middle"):
            e = sk.create_method("integrated_gradients", model, steps=64, rule=rule, baseline=baseline).attribute(x)
            diff = e.scores - e.extras["baseline_scores"]
            total = e.attributions.flatten(1).sum(1)
            torch.testing.assert_close(e.extras["completeness_gap"], total - diff)
            assert (e.extras["completeness_gap"].abs() <= 0.01 * diff.abs()).all(), (baseline, rule)


def test_one_step_right_riemann_ig_from_zero_is_gradient_x_input() -> None:
    model = make("residual", classes=1)
    x = _x()
    ig = sk.create_method("integrated_gradients", model, steps=1, rule="right", baseline="zero").attribute(x)
    gxi = sk.create_method("gradient_x_input", model).attribute(x)
    torch.testing.assert_close(ig.attributions, gxi.attributions, atol=ATOL, rtol=1e-9)


def test_quadrature_rules_integrate_polynomials() -> None:
    for rule, steps, degree in [("riemann_middle", 40, 1), ("riemann_trapezoid", 40, 1), ("gauss_legendre", 4, 7)]:
        a, w = quadrature(rule, steps)
        assert abs(w.sum() - 1) < 1e-12
        assert abs((w * a**degree).sum() - 1 / (degree + 1)) < 1e-12
    assert sk.create_method("integrated_gradients", make("plain"), rule="trapezoid").rule == "riemann_trapezoid"


def test_make_baseline_black_is_not_zero() -> None:
    x = torch.rand(2, 1, 8, 8, dtype=D) + 3.0
    b = make_baseline(x, "black")
    assert (b > 0).all()
    torch.testing.assert_close(b[:, 0, 0, 0], x.flatten(1).amin(1))


# ------------------------------------------------------------------------------------------------ smoothgrad


@pytest.mark.parametrize("base,opts", [("gradient", {}), ("gradient_x_input", {}),
                                       ("integrated_gradients", {"steps": 3, "baseline": "zero"})])
def test_smoothgrad_zero_noise_is_the_wrapped_method(base: str, opts: dict) -> None:
    model = make("inplace")
    x = _x()
    wrapped = sk.create_method(base, model, **opts).attribute(x)
    for name in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        e = sk.create_method(name, model, base=base, base_options=opts, noise=0.0).attribute(x)
        expected = {"smoothgrad": wrapped.attributions, "smoothgrad_sq": wrapped.attributions**2,
                    "vargrad": torch.zeros_like(x)}[name]
        torch.testing.assert_close(e.attributions, expected, atol=0, rtol=0)


@pytest.mark.parametrize("stat,name", [("mean", "smoothgrad"), ("mean_sq", "smoothgrad_sq"), ("var", "vargrad")])
def test_noise_tunnel_matches_reference(stat: str, name: str) -> None:
    model = make("residual", classes=3)
    x = _x(n=2)
    cls = [2, 0]
    e = sk.create_method(name, model, samples=6, noise=0.2, seed=7).attribute(x, target=cls)
    ref = ref_noise_tunnel(lambda xi, i: ref_gradient(model, xi, [cls[i]])[0], x, 6, 0.2, 7, stat)
    torch.testing.assert_close(e.attributions, ref, atol=ATOL, rtol=1e-7)


def test_smoothgrad_of_integrated_gradients_matches_reference() -> None:
    model = make("plain")
    x = _x(n=2)
    cls = _classes(model, x)
    opts = {"steps": 3, "rule": "riemann_middle", "baseline": "black"}
    e = sk.create_method("smoothgrad", model, base="integrated_gradients", base_options=opts, samples=3,
                         noise=0.1, seed=1).attribute(x)

    def ig(xi: torch.Tensor, i: int) -> torch.Tensor:
        b = xi.flatten(1).amin(1).view(1, 1, 1, 1).expand_as(xi)  # black baseline of the noisy copy
        return ref_integrated_gradients(model, xi, [cls[i]], b, 3, "riemann_middle")[0]

    torch.testing.assert_close(e.attributions, ref_noise_tunnel(ig, x, 3, 0.1, 1, "mean"), atol=ATOL, rtol=1e-7)
    assert sk.create_method("smoothgrad", model).uses_gradients
    assert sk.create_method("smoothgrad", model, base="integrated_gradients").multiplies_by_inputs


def test_smoothgrad_variants_together_share_one_set_of_passes() -> None:
    boom = Boom()
    model = torch.nn.Sequential(boom, make("plain", classes=3))
    x = _x()
    opts = {"samples": 5, "noise": 0.1, "seed": 3}
    names = ("smoothgrad", "smoothgrad_sq", "vargrad")
    boom.rows = 0
    together = sk.explain(model, x, methods={n: opts for n in names})
    rows_together = boom.rows
    separate = {}
    for n in names:
        boom.rows = 0
        separate[n] = sk.create_method(n, model, **opts).attribute(x)
        assert boom.rows == x.shape[0] * (1 + opts["samples"])  # one clean pass, then the noisy ones
    assert rows_together == boom.rows  # one set of noisy passes for all three
    for n in names:
        torch.testing.assert_close(together[n].maps, separate[n].maps, atol=0, rtol=0)
        torch.testing.assert_close(together[n].attributions, separate[n].attributions, atol=0, rtol=0)
        assert together[n].method == n
    # Different options: not shared, still correct.
    mixed = sk.explain(model, x, methods={"smoothgrad": opts, "vargrad": {**opts, "seed": 4}})
    torch.testing.assert_close(mixed["smoothgrad"].maps, separate["smoothgrad"].maps)
    assert not torch.allclose(mixed["vargrad"].maps, separate["vargrad"].maps)


def test_smoothgrad_seed_and_noise() -> None:
    model = make("plain")
    x = _x()
    a = sk.create_method("smoothgrad", model, samples=4, seed=1).attribute(x).maps
    b = sk.create_method("smoothgrad", model, samples=4, seed=1).attribute(x).maps
    c = sk.create_method("smoothgrad", model, samples=4, seed=2).attribute(x).maps
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)


# ------------------------------------------------------------------------------- batching, precision, errors


@pytest.mark.parametrize("name,opts", [
    ("gradient", {}), ("gradient_x_input", {}), ("integrated_gradients", {"steps": 6, "baseline": "uniform"}),
    ("smoothgrad", {"samples": 4}), ("vargrad", {"samples": 4}),
    ("smoothgrad", {"samples": 2, "base": "integrated_gradients", "base_options": {"steps": 3}}),
])
def test_batched_equals_per_image(name: str, opts: dict) -> None:
    model = make("residual", classes=3)
    x = _x(n=4)
    batched = sk.create_method(name, model, **opts).attribute(x)
    for bs in (1, 3):
        chunked = sk.create_method(name, model, batch_size=bs, **opts).attribute(x)
        torch.testing.assert_close(chunked.maps, batched.maps, atol=1e-12, rtol=1e-9)
    for i in range(4):
        single = sk.create_method(name, model, **opts).attribute(x[i : i + 1])
        torch.testing.assert_close(single.maps[0], batched.maps[i], atol=1e-12, rtol=1e-9)
        assert single.targets[0] == batched.targets[i]


def test_bf16_on_cpu_correlates_with_fp32() -> None:
    model = make("plain", classes=3, dtype=torch.float32, width=8)
    x = _x(n=2, size=16).float()
    for name in ("gradient", "integrated_gradients"):
        ref = sk.create_method(name, model).attribute(x).maps.flatten()
        low = sk.create_method(name, model, precision="bf16").attribute(x).maps.flatten()
        assert low.dtype == torch.float32
        assert torch.corrcoef(torch.stack([ref, low]))[0, 1] > 0.98


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda_correlates_with_fp32(precision: str) -> None:
    model = make("residual", classes=3, dtype=torch.float32, width=16).cuda()
    x = _x(n=4, size=32).float().cuda()
    for name, opts in [("gradient", {}), ("integrated_gradients", {}), ("smoothgrad", {"samples": 8})]:
        if name == "smoothgrad":
            low_opts = {**opts, "base_options": {"precision": precision}}
        else:
            low_opts = {**opts, "precision": precision}
        ref = sk.create_method(name, model, **opts).attribute(x)
        low = sk.create_method(name, model, **low_opts).attribute(x)
        assert low.maps.device.type == "cuda"
        r = torch.corrcoef(torch.stack([ref.maps.flatten(), low.maps.flatten()]))[0, 1]
        assert r > 0.99, (name, float(r))


@pytest.mark.parametrize("bad,match", [
    (lambda x: x[:, :0], "empty|channel"),
    (lambda x: x[:0], "empty batch"),
    (lambda x: torch.cat([x, x], 1), "expects 1-channel images, got 2"),
    (lambda x: (x * 10).long(), "floating point"),
    (lambda x: x.index_put((torch.tensor([1]), torch.tensor([0]), torch.tensor([2]), torch.tensor([2])),
                           torch.tensor(float("nan"), dtype=D)), "NaN"),
    (lambda x: x[0], r"\(N, C, H, W\)"),
    (lambda x: x.numpy(), "torch.Tensor"),
])
@pytest.mark.parametrize("name", ["gradient", "integrated_gradients", "smoothgrad", "vargrad"])
def test_bad_inputs_raise_input_error(name: str, bad, match: str) -> None:
    model = make("plain")
    x = _x()
    with pytest.raises(InputError, match=match):
        sk.create_method(name, model).attribute(bad(x))


@pytest.mark.parametrize("name,opts,match", [
    ("gradient", {"smoothness": 1}, r"no option\(s\) \['smoothness'\]"),
    ("gradient", {"reduce": "median"}, "unknown channel reduction 'median'"),
    ("gradient", {"batch_size": 0}, "batch_size"),
    ("gradient", {"precision": "fp8"}, "precision"),
    ("integrated_gradients", {"steps": 0}, "steps"),
    ("integrated_gradients", {"rule": "simpson"}, "unknown integration rule 'simpson'"),
    ("integrated_gradients", {"baseline": "grey"}, "unknown baseline 'grey'"),
    ("integrated_gradients", {"rule": "trapezoid", "steps": 1}, "steps >= 2"),
    ("smoothgrad", {"samples": 0}, "samples"),
    ("smoothgrad", {"noise": -0.1}, "noise"),
    ("smoothgrad", {"base": "occlusion"}, "does not use gradients"),
    ("smoothgrad", {"base_options": {"stepz": 3}, "base": "integrated_gradients"}, "stepz"),
])
def test_bad_options_raise_input_error(name: str, opts: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        sk.create_method(name, make("plain"), **opts)


def test_unknown_names() -> None:
    with pytest.raises(UnknownNameError, match=r"valid methods: .*gradient"):
        sk.create_method("gradientt", make("plain"))
    with pytest.raises(UnknownNameError, match="smoothgrad"):
        sk.create_method("smoothgrad", make("plain"), base="nope")


def test_bad_target_and_baseline_shape() -> None:
    model = make("plain")
    x = _x()
    with pytest.raises(InputError, match="target class 7 is out of range for a single-logit binary model"):
        sk.create_method("integrated_gradients", model).attribute(x, target=7)
    with pytest.raises(InputError, match="baseline tensor must broadcast"):
        sk.create_method("integrated_gradients", model, baseline=torch.zeros(1, 5, 5, dtype=D)).attribute(x)


def test_explanation_contents() -> None:
    model = make("nested", classes=3)
    x = _x()
    e = sk.create_method("integrated_gradients", model, steps=8, baseline="zero").attribute(x)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(e.predictions, out.argmax(1))
    torch.testing.assert_close(e.scores, out.gather(1, out.argmax(1)[:, None])[:, 0])
    torch.testing.assert_close(e.extras["baseline_scores"], model(torch.zeros_like(x)).gather(
        1, out.argmax(1)[:, None])[:, 0].detach())
    assert e.params["steps"] == 8 and e.params["rule"] == "gauss_legendre" and e.params["baseline"] == "zero"
    import json

    json.dumps(e.params)
    json.dumps(sk.create_method("smoothgrad", model, base="integrated_gradients",
                                base_options={"baseline": torch.zeros(1)}).params)


def test_smoothgrad_wraps_a_method_through_its_public_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gradient method that is no PixelGradientMethod (e.g. a CAM) is wrapped through attribute(); its maps are
    averaged and the result has no (N, C, H, W) attribution."""
    from saliencekit.methods import registry
    from saliencekit.methods.base import Explanation, Method

    class MapsOnly(Method):
        """Squared gradient summed over channels, as maps only (a stand-in for a layer method)."""

        description = "test stand-in"
        family = "cam"
        uses_gradients = True

        def attribute(self, inputs: torch.Tensor, target: object = None) -> Explanation:
            e = sk.create_method("gradient", self.model).attribute(inputs, target)
            return Explanation(self.name, (e.attributions**2).sum(1), scores=e.scores, targets=e.targets,
                               predictions=e.predictions)

    MapsOnly.name = "maps_only"
    monkeypatch.setitem(registry._REGISTRY, "maps_only", MapsOnly)
    model = make("residual", in_channels=2, classes=3)
    x = _x(n=2, c=2)
    cls = [1, 2]
    plain = MapsOnly(model).attribute(x, target=cls)
    zero = sk.create_method("smoothgrad", model, base="maps_only", noise=0.0).attribute(x, target=cls)
    torch.testing.assert_close(zero.maps, plain.maps, atol=0, rtol=0)
    e = sk.create_method("vargrad", model, base="maps_only", samples=4, noise=0.3).attribute(x, target=cls)
    assert e.attributions is None
    ref = ref_noise_tunnel(lambda xi, i: (ref_gradient(model, xi, [cls[i]])[0] ** 2).sum(0, keepdim=True),
                           x, 4, 0.3, 0, "var")
    torch.testing.assert_close(e.maps, ref[:, 0], atol=ATOL, rtol=1e-7)


@pytest.mark.parametrize("name", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize(("base", "options"), [("gradient", {}), ("integrated_gradients", {"steps": 3}),
                                               ("guided_backprop", {}), ("gradcam", {"layer": "2"})])
def test_noise_tunnel_takes_a_method_instance_as_its_base(name: str, base: str, options: dict) -> None:
    model = make("plain", classes=3)
    x = _x(n=2)
    by_name = sk.create_method(name, model, base=base, base_options=options, samples=3, noise=0.1)
    instance = sk.create_method(base, model, **options)
    by_instance = sk.create_method(name, model, base=instance, samples=3, noise=0.1)
    a, b = by_name.attribute(x), by_instance.attribute(x)
    torch.testing.assert_close(b.maps, a.maps, rtol=0, atol=0)
    assert by_instance.base is instance and by_instance.params["base"] == base
    assert type(by_instance).expected_input_invariance({"base": instance}) == \
        type(by_name).expected_input_invariance({"base": base})
    # variants over one instance share one set of noisy passes, as the name form does
    assert sk.create_method("vargrad", model, base=instance, samples=3, noise=0.1).share_key() == \
        sk.create_method("smoothgrad", model, base=instance, samples=3, noise=0.1).share_key()


def test_noise_tunnel_instance_base_errors() -> None:
    model, other = make("plain", classes=3), make("plain", classes=3, seed=1)
    grad = sk.create_method("gradient", other)
    with pytest.raises(InputError, match="built for another model"):
        sk.create_method("smoothgrad", model, base=grad)
    ig = sk.create_method("integrated_gradients", model)
    with pytest.raises(InputError, match="base_options cannot be combined with a method instance"):
        sk.create_method("smoothgrad", model, base=ig, base_options={"steps": 4})
    with pytest.raises(InputError, match="precision cannot be combined"):
        sk.create_method("smoothgrad", model, base=ig, precision="bf16")
    with pytest.raises(InputError, match="does not use gradients"):
        sk.create_method("smoothgrad", model, base=sk.create_method("occlusion", model))
    with pytest.raises(InputError, match="base must be a method name .* or a method instance, got int"):
        sk.create_method("smoothgrad", model, base=3)
