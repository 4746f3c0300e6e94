"""The SHAP family: expected gradients and GradientSHAP against literal references and captum, reference images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import saliencekit as sk
from reference.ref_shap import ref_eg_draws, ref_expected_gradients
from saliencekit.errors import InputError
from saliencekit.methods.references import (
    ReferenceSet,
    current_references,
    reference_scope,
    training_references,
)
from saliencekit.trust.invariance import expected_invariance
from toy_models import LinearModel, make

D = torch.float64


def _x(n: int, c: int = 1, size: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed), dtype=D)


def _model(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return make("smooth", classes=classes).to(D).eval()


# -------------------------------------------------------------------------------- expected gradients


@pytest.mark.parametrize("method,noise", [("expected_gradients", 0.0), ("gradient_shap", 0.0), ("gradient_shap", 0.2)])
@pytest.mark.parametrize("references", [True, False])
def test_matches_literal_reference(method: str, noise: float, references: bool) -> None:
    model = _model()
    x = _x(3)
    refs = _x(5, seed=7) if references else None
    classes = [0, 2, 1]
    opts = {"baselines": refs if references else "uniform", "samples": 6, "seed": 3, "batch_size": 4}
    if method == "gradient_shap":
        opts["noise"] = noise
    e = sk.create_method(method, model, **opts).attribute(x, target=classes)
    bases, alpha, noisy = ref_eg_draws(x, refs, 6, 3, noise)
    ref = ref_expected_gradients(model, classes, bases, alpha, noisy)
    torch.testing.assert_close(e.attributions, ref, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(e.maps, ref.sum(1))
    # the baselines' mean score is reported with the gap
    with torch.no_grad():
        base_scores = [float(np.mean([float(model(b[None])[0, c]) for b in bases[i]])) for i, c in enumerate(classes)]
    torch.testing.assert_close(e.extras["baseline_scores"], torch.tensor(base_scores, dtype=D))
    gap = e.attributions.flatten(1).sum(1) - (e.scores - e.extras["baseline_scores"])
    torch.testing.assert_close(e.extras["completeness_gap"], gap)


def test_gradient_shap_without_noise_is_expected_gradients() -> None:
    model, x, refs = _model(), _x(2), _x(4, seed=9)
    a = sk.create_method("gradient_shap", model, baselines=refs, noise=0.0, samples=10).attribute(x)
    b = sk.create_method("expected_gradients", model, baselines=refs, samples=10).attribute(x)
    assert torch.equal(a.maps, b.maps)
    c = sk.create_method("gradient_shap", model, baselines=refs, samples=10).attribute(x)  # default noise 0.1
    assert not torch.equal(a.maps, c.maps)


def test_linear_model_is_exact_for_any_draw() -> None:
    # S = w . x + b: every draw gives (x - x') . w = S(x) - S(x'), so the estimate is complete whatever the draws.
    w = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(2), dtype=D)
    model = LinearModel(w, torch.tensor([0.3, -0.1], dtype=D))
    x = _x(3, size=5)
    for baselines in ("uniform", _x(4, size=5, seed=4)):
        e = sk.create_method("expected_gradients", model, baselines=baselines, samples=3).attribute(x, target=1)
        assert float(e.extras["completeness_gap"].abs().max()) < 1e-12


def test_converges_to_integrated_gradients_with_one_reference() -> None:
    # One reference image: expected gradients is integrated gradients with that baseline, integrated by Monte Carlo.
    model, x = _model(), _x(2)
    ref = _x(1, seed=5)
    eg = sk.create_method("expected_gradients", model, baselines=ref, samples=4000).attribute(x, target=1)
    ig = sk.create_method("integrated_gradients", model, baseline=ref, steps=64).attribute(x, target=1)
    r = np.corrcoef(eg.maps.flatten().numpy(), ig.maps.flatten().numpy())[0, 1]
    assert r > 0.99
    assert float(eg.extras["completeness_gap"].abs().max()) < 0.05 * float(ig.scores.abs().max() + 1)


def test_batch_and_chunking_do_not_change_the_maps() -> None:
    model, x, refs = _model(), _x(3), _x(6, seed=8)
    full = sk.create_method("gradient_shap", model, baselines=refs, samples=7, batch_size=64).attribute(x)
    for bs in (1, 5, "auto"):
        e = sk.create_method("gradient_shap", model, baselines=refs, samples=7, batch_size=bs).attribute(x)
        torch.testing.assert_close(e.maps, full.maps, atol=1e-12, rtol=1e-10)
    one = sk.create_method("gradient_shap", model, baselines=refs, samples=7).attribute(x[1:2], target=full.targets[1])
    torch.testing.assert_close(one.maps[0], full.maps[1], atol=1e-12, rtol=1e-10)


def test_matches_captum_with_the_same_draws() -> None:
    """captum's GradientShap draws baseline indices and path points with NumPy and the noise with torch.normal; with
    those draws replayed, the literal reference equals captum, as it equals ours with our draws above."""
    ca = pytest.importorskip("captum.attr")
    model, x, refs = _model(), _x(2), _x(5, seed=6)
    n, std = 7, 0.2
    np.random.seed(3)
    torch.manual_seed(5)
    theirs = ca.GradientShap(model).attribute(x, refs, n_samples=n, stdevs=std, target=[0, 2])
    np.random.seed(3)
    torch.manual_seed(5)
    idx = np.random.choice(5, n * 2)  # captum's order: rows i * n + j
    noise = torch.normal(0, torch.tensor(std).repeat((2 * n, 1, 8, 8)))  # float32 std, as captum's
    alpha = np.random.uniform(0.0, 1.0, 2 * n)
    for i in range(2):
        rows = range(i * n, (i + 1) * n)
        bases = [[refs[int(idx[r])] for r in rows]]
        noisy = [[x[i] + noise[r] for r in rows]]
        ref = ref_expected_gradients(model, [[0, 2][i]], bases, [float(alpha[r]) for r in rows], noisy)
        torch.testing.assert_close(theirs[i], ref[0], atol=1e-12, rtol=1e-9)


def test_agrees_with_captum_statistically() -> None:
    ca = pytest.importorskip("captum.attr")
    model, x, refs = _model(), _x(2), _x(8, seed=6)
    torch.manual_seed(0)
    np.random.seed(0)
    theirs = ca.GradientShap(model).attribute(x, refs, n_samples=3000, stdevs=0.0, target=[1, 1]).sum(1)
    ours = sk.create_method("expected_gradients", model, baselines=refs, samples=3000).attribute(x, target=1).maps
    for i in range(2):
        r = np.corrcoef(ours[i].flatten().numpy(), theirs[i].flatten().numpy())[0, 1]
        assert r > 0.98, r


# --------------------------------------------------------------------------------- reference images


def test_auto_uses_the_references_in_scope_and_training_needs_one() -> None:
    model, x, refs = _model(), _x(2), _x(4, seed=3)
    with pytest.raises(InputError, match="baselines='training' needs the reference images of a run"):
        sk.create_method("expected_gradients", model, baselines="training").attribute(x)
    auto = sk.create_method("expected_gradients", model, samples=5).attribute(x)
    uniform = sk.create_method("expected_gradients", model, baselines="uniform", samples=5).attribute(x)
    assert torch.equal(auto.maps, uniform.maps)
    assert auto.params["references"] == "uniform noise (no reference images offered)"
    given = sk.create_method("expected_gradients", model, baselines=refs, samples=5).attribute(x)
    with reference_scope(refs, "four test images"):
        for baselines in ("auto", "training"):
            e = sk.create_method("expected_gradients", model, baselines=baselines, samples=5).attribute(x)
            assert torch.equal(e.maps, given.maps) and e.params["references"] == "four test images"
        with reference_scope(None):  # an inner scope without references
            assert current_references() is None
    assert current_references() is None


def test_reference_images_are_loaded_once_and_only_when_used() -> None:
    calls = []

    def load() -> torch.Tensor:
        calls.append(1)
        return _x(3, seed=2)

    refs = ReferenceSet(load, "lazy")
    with reference_scope(refs):
        sk.explain(_model(), _x(2), ["gradient"])
        assert calls == []
        sk.explain(_model(), _x(2), {"expected_gradients": {"samples": 2}, "gradient_shap": {"samples": 2}})
    assert calls == [1]


def test_bad_baselines_and_options_are_refused_by_name() -> None:
    model, x = _model(), _x(2)
    for bad, match in ((torch.zeros(2, 1, 8, 8, dtype=torch.long), "floating point"), ("black", "baselines must be"),
                       (torch.full((2, 1, 8, 8), float("nan")), "NaN"), (torch.zeros(1, 8, 8), "K, C, H, W")):
        with pytest.raises(InputError, match=match):
            sk.create_method("expected_gradients", model, baselines=bad)
    with pytest.raises(InputError, match=r"reference images have shape \(C, H, W\) = \(1, 4, 4\)"):
        sk.create_method("expected_gradients", model, baselines=torch.zeros(2, 1, 4, 4, dtype=D)).attribute(x)
    for key, value in (("samples", 0), ("noise", -1.0), ("seed", 1.5)):
        with pytest.raises(InputError, match=key):
            sk.create_method("gradient_shap", model, **{key: value})


def test_training_references_pick_seeded_training_images() -> None:
    images = _x(10, seed=4)

    class Train:
        def __len__(self) -> int:
            return 10

        def image(self, i: int) -> torch.Tensor:
            return images[i]

    class FakeRun:
        path = "runs/fake"
        device = torch.device("cpu")

        def dataset(self, part: str) -> Train:
            assert part == "train"
            return Train()

    refs = training_references(FakeRun(), count=4, seed=1)  # type: ignore[arg-type]
    pick = torch.randperm(10, generator=torch.Generator().manual_seed(1))[:4].sort().values
    torch.testing.assert_close(refs.images(), images[pick])
    assert refs.source == "up to 4 training images of runs/fake (seed 1)"
    assert training_references(FakeRun(), count=50).images().shape[0] == 10  # type: ignore[arg-type]
    with pytest.raises(InputError, match="count"):
        training_references(FakeRun(), count=0)  # type: ignore[arg-type]


def test_input_invariance_expectation_follows_the_baselines() -> None:
    for name in ("expected_gradients", "gradient_shap"):
        assert expected_invariance({"method": name, "options": {"baselines": "uniform"}}) is True
        assert expected_invariance({"method": name, "options": {"baselines": "training"}}) is False
        assert expected_invariance({"method": name, "options": {}}) is True  # auto, no references offered
        with reference_scope(_x(2), "refs"):
            assert expected_invariance({"method": name, "options": {}}) is False


# ------------------------------------------------------------------------------------ run directories

_ARCH = "shap_test_cnn"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from saliencekit.models import zoo
    from saliencekit.train.fit import TrainConfig, train
    from trust_toys import write_blob_folder

    def tiny(in_channels: int = 1, num_classes: int = 2) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 1))

    zoo.register_model(_ARCH)(tiny)
    try:
        root = tmp_path_factory.mktemp("shap_run")
        data = write_blob_folder(root / "data", n_per_class=8, size=16)
        train(data, root / "run", TrainConfig(model=_ARCH, image_size=16, epochs=1, batch_size=8, device="cpu",
                                               seed=0), progress=False, command="test")
        yield root / "run", data
    finally:
        zoo._REGISTRY.pop(_ARCH, None)


def test_explain_on_a_run_draws_from_its_training_images(run_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from saliencekit.cli import main
    from saliencekit.run import load_run

    run_path, data = run_dir
    image = sorted(data.rglob("*.png"))[0]
    out = tmp_path / "out"
    assert main(["explain", str(run_path), str(image), "--out", str(out), "--methods",
                 '{"eg": {"method": "expected_gradients", "samples": 6}}', "--no-progress"]) == 0
    saved = np.load(next(out.rglob("maps.npz")))["eg"]
    run = load_run(run_path)
    refs = training_references(run).images()
    assert refs.shape[0] == len(run.dataset("train")) < 64  # every training image of this small run
    x = run.preprocessing.load(image)[None]
    want = sk.create_method("expected_gradients", run.model, baselines=refs, samples=6).attribute(x).maps[0]
    np.testing.assert_allclose(saved, want.numpy(), rtol=1e-5, atol=1e-6)
    uniform = sk.create_method("expected_gradients", run.model, baselines="uniform", samples=6).attribute(x).maps[0]
    assert not np.allclose(saved, uniform.numpy())


def test_check_on_a_run_offers_its_training_images(run_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from saliencekit.trust.runner import run_checks

    run_path, _ = run_dir
    seen = []

    import saliencekit.methods.expected_gradients as eg

    original = eg.resolve_baselines

    def spy(baselines):  # type: ignore[no-untyped-def]
        refs, source = original(baselines)
        seen.append(source)
        return refs, source

    eg.resolve_baselines = spy
    try:
        res = run_checks(run_path, methods={"eg": {"method": "expected_gradients", "samples": 2}},
                         checks=["input_invariance"], n_images=2, figures=False)
    finally:
        eg.resolve_baselines = original
    assert seen and all(s.startswith("up to 64 training images of") for s in seen)
    # fixed reference images do not move with the shifted input: expected (and found) not invariant
    eg_entry = res["checks"]["input_invariance"]["compensated"]["methods"]["eg"]
    assert eg_entry["expected_invariant"] is False and eg_entry["as_expected"] is True


@pytest.mark.parametrize("arch", ["resnet18", "vgg11", "densenet121"])
def test_torchvision_models_run(arch: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    refs = torch.randn(3, 3, 32, 32)
    out = sk.explain(model, x, methods={
        "expected_gradients": {"baselines": refs, "samples": 4}, "gradient_shap": {"samples": 4},
        "lime": {"grid": 4, "samples": 24}, "kernel_shap": {"grid": 4, "samples": 24}})
    for name, e in out.items():
        assert e.maps.shape == (2, 32, 32) and torch.isfinite(e.maps).all() and e.maps.abs().sum() > 0, name
    ks = out["kernel_shap"]
    with torch.no_grad():
        empty = model(torch.zeros(1, 3, 32, 32))[0, ks.targets]
    torch.testing.assert_close(ks.extras["coefficients"].sum(1), ks.scores - empty, atol=1e-4, rtol=1e-4)


def test_lesson_cnn_runs_the_new_methods() -> None:
    """The lesson CNN (one logit, greyscale): the methods of issue 14 by this module and the CAM module, together."""
    from saliencekit.models import create

    torch.manual_seed(0)
    model = create("effusion_cnn").eval()
    x = torch.randn(2, 1, 64, 64)
    out = sk.explain(model, x, methods={
        "eigencam": {}, "ablationcam": {}, "fullgrad": {}, "expected_gradients": {"samples": 4},
        "gradient_shap": {"samples": 4}, "lime": {"samples": 24}, "kernel_shap": {"samples": 24}})
    with torch.no_grad():
        predicted = (model(x)[:, 0] > 0).long()
    for name, e in out.items():
        assert e.maps.shape == (2, 64, 64) and torch.isfinite(e.maps).all() and e.maps.abs().sum() > 0, name
        assert torch.equal(e.targets, predicted), name
