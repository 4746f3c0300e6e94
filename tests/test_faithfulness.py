"""Deletion / insertion curves, ROAD and the noisy linear imputation behind it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from reference import ref_metrics as ref
from saliencekit.errors import InputError, UnknownNameError
from saliencekit.trust._imputation import noisy_linear_impute, solve_linear_imputation
from saliencekit.trust.faithfulness import deletion_curve, insertion_curve, make_baseline, road

SPOT = (5, 7)


def _spot_images(n: int, device: torch.device, size: int = 12) -> torch.Tensor:
    """Dim noisy images with one bright pixel at SPOT, the only pixel the spot model looks at."""
    gen = torch.Generator().manual_seed(1)
    x = 0.1 * torch.rand(n, 1, size, size, generator=gen, dtype=torch.float64)
    x[:, 0, SPOT[0], SPOT[1]] = 1.0
    return x.to(device)


def spot_model(batch: torch.Tensor) -> torch.Tensor:
    """Probability that depends on one pixel only."""
    return torch.sigmoid(20 * (batch[:, 0, SPOT[0], SPOT[1]] - 0.5))


def _perfect_map(n: int, device: torch.device, size: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    m = torch.rand(n, size, size, generator=gen, dtype=torch.float64)
    m[:, SPOT[0], SPOT[1]] = 2.0
    return m.to(device)


def test_deletion_and_insertion_order_perfect_vs_reversed(device):
    x, m = _spot_images(3, device), _perfect_map(3, device)
    good = deletion_curve(spot_model, x, m, steps=12, targets="explained")
    bad = deletion_curve(spot_model, x, -m, steps=12, targets="explained")
    assert good.scores.shape == (3, 13) and good.fractions.shape == (13,)
    assert (good.auc < 0.2).all() and (bad.auc > 0.8).all()
    assert (good.auc < bad.auc).all()
    ins_good = insertion_curve(spot_model, x, m, steps=12, targets="explained")
    ins_bad = insertion_curve(spot_model, x, -m, steps=12, targets="explained")
    assert (ins_good.auc > ins_bad.auc + 0.5).all()
    # ends: deletion goes from the image to the baseline, insertion from the blurred image to the image
    assert torch.allclose(good.scores[:, 0], spot_model(x).double())
    assert torch.allclose(good.scores[:, -1], spot_model(torch.zeros_like(x)).double())
    assert torch.allclose(ins_good.scores[:, -1], spot_model(x).double())
    assert torch.allclose(ins_good.scores[:, 0], spot_model(make_baseline(x, "blur")).double())
    assert good.auc.device == x.device
    assert not good.scores.is_inference()


@pytest.mark.parametrize("baseline", ["zero", "mean", "blur", 0.25, "tensor"])
def test_deletion_matches_reference(device, baseline):
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 2, 6, 5, generator=gen, dtype=torch.float64).to(device)
    m = torch.rand(2, 6, 5, generator=gen, dtype=torch.float64).to(device)
    m[0, 0, :3] = m[0, 1, 1]  # ties are broken by pixel index
    w = torch.randn(2, 6, 5, generator=gen, dtype=torch.float64).to(device)
    if baseline == "tensor":
        baseline = torch.full((2, 1, 1), -1.0, dtype=torch.float64)

    def score(b: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((b * w).sum(dim=(1, 2, 3)))

    got = deletion_curve(score, x, m, steps=7, baseline=baseline, batch_size=5, targets="explained")
    end = make_baseline(x, baseline)
    for i in range(2):
        fr, sc, auc = ref.deletion_curve(lambda a: score(torch.as_tensor(a, device=device)[None]).item(),
                                         x[i].cpu().numpy(), m[i].cpu().numpy(), 7, end[i].cpu().numpy())
        np.testing.assert_allclose(got.fractions.cpu().numpy(), fr)
        np.testing.assert_allclose(got.scores[i].cpu().numpy(), sc, atol=1e-12)
        assert got.auc[i].item() == pytest.approx(auc, abs=1e-12)
    # the batch size changes nothing
    again = deletion_curve(score, x, m, steps=7, baseline=baseline, batch_size=1, targets="explained")
    assert torch.equal(again.scores, got.scores)
    assert got.to_dict()["kind"] == "deletion"


def test_curve_input_errors(device):
    x, m = _spot_images(2, device), _perfect_map(2, device)
    with pytest.raises(InputError, match="maps must have shape"):
        deletion_curve(spot_model, x, m[:, :5], targets="explained")
    with pytest.raises(UnknownNameError, match="baseline"):
        deletion_curve(spot_model, x, m, baseline="grey", targets="explained")
    with pytest.raises(InputError, match="one probability per image"):
        deletion_curve(lambda b: b.sum(dim=1), x, m, steps=2, targets="explained")
    with pytest.raises(UnknownNameError):
        road(spot_model, x, m, order="random", targets="explained")


# ------------------------------------------------------------------------------------------ per-image targets


def _class_prob(model: torch.nn.Module, c: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The probability of class ``c``, written out by hand: softmax column, or sigmoid(+-z) for one logit."""

    def score(b: torch.Tensor) -> torch.Tensor:
        out = model(b)
        if out.shape[1] == 1:
            return torch.sigmoid(out[:, 0] if c == 1 else -out[:, 0])
        return torch.exp(out[:, c]) / torch.exp(out).sum(1)

    return score


def _runs(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, m: torch.Tensor, **kw: Any) -> dict[str, Any]:
    """Every metric function with the same arguments."""
    return {"deletion": deletion_curve(fn, x, m, steps=5, batch_size=7, **kw),
            "insertion": insertion_curve(fn, x, m, steps=5, batch_size=7, **kw),
            "road_morf": road(fn, x, m, (0.2, 0.6), order="morf", generator=3, batch_size=7, **kw),
            "road_lerf": road(fn, x, m, (0.2, 0.6), order="lerf", generator=3, batch_size=7, **kw)}


@pytest.mark.parametrize("classes", [1, 3])
def test_per_image_targets_equal_separate_calls_per_class(device, classes):
    from toy_models import make

    model = make("plain", classes=classes, seed=classes).to(device)
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(7, 1, 10, 10, generator=gen, dtype=torch.float64).to(device)
    m = torch.rand(7, 10, 10, generator=gen, dtype=torch.float64).to(device)
    k = max(classes, 2)
    targets = [i % k for i in range(7)]
    got = _runs(model, x, m, targets=targets)
    for c in range(k):
        rows = torch.tensor([i for i, t in enumerate(targets) if t == c], device=device)
        # one class for every image (an int target) on the same batch: the ROAD noise streams match, values equal
        same_batch = _runs(model, x, m, targets=c)
        # the old way: each class's images alone, scored by a hand-written probability of that class
        alone = _runs(_class_prob(model, c), x[rows], m[rows], targets="explained")
        for kind, r in got.items():
            assert torch.equal(r.scores[rows], same_batch[kind].scores[rows]), kind
            assert torch.equal(r.auc[rows], same_batch[kind].auc[rows]), kind
            if kind in ("deletion", "insertion"):  # no noise: identical to the grouped calls
                torch.testing.assert_close(r.scores[rows], alone[kind].scores, rtol=0, atol=1e-12)
                torch.testing.assert_close(r.auc[rows], alone[kind].auc, rtol=0, atol=1e-12)
    # ROAD without noise is identical to the grouped calls too (with noise each image's draw follows its position)
    for c in range(k):
        rows = torch.tensor([i for i, t in enumerate(targets) if t == c], device=device)
        a = road(model, x, m, (0.2, 0.6), noise=0.0, targets=torch.tensor(targets)).scores[rows]
        b = road(_class_prob(model, c), x[rows], m[rows], (0.2, 0.6), noise=0.0, targets="explained").scores
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # the values depend on the class: a per-image target is really used
    other = _runs(model, x, m, targets=[(t + 1) % k for t in targets])
    assert not torch.allclose(other["deletion"].scores, got["deletion"].scores)


def test_targets_none_is_the_predicted_class_and_bad_targets_are_reported(device):
    from toy_models import make, predicted_classes

    model = make("plain", classes=3, seed=4).to(device)
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(5, 1, 10, 10, generator=gen, dtype=torch.float64).to(device)
    m = torch.rand(5, 10, 10, generator=gen, dtype=torch.float64).to(device)
    pred = predicted_classes(model, x)
    a = deletion_curve(model, x, m, steps=4, targets=None)
    b = deletion_curve(model, x, m, steps=4, targets=pred)
    assert torch.equal(a.scores, b.scores)
    # the first point is the clean image: the probability of the predicted class, the largest one
    torch.testing.assert_close(a.scores[:, 0], torch.softmax(model(x), 1).max(1).values.detach(), rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="out of range"):
        deletion_curve(model, x, m, steps=2, targets=3)
    with pytest.raises(InputError, match="one per image"):
        deletion_curve(model, x, m, steps=2, targets=[0, 1])
    with pytest.raises(InputError, match="targets must be 'explained'"):
        road(model, x, m, targets="predicted")
    with pytest.raises(InputError, match="must be the classifier"):
        insertion_curve(lambda b: b[:, 0], x, m, steps=2, targets=0)


# --------------------------------------------------------------------------------------------- imputation


def _removed(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    r = torch.rand(n, h, w, generator=gen) < 0.4
    r[0, 3:11, 2:12] = True  # a large hole, touching nothing
    r[1, :, :4] = True  # a hole on the border
    return r


@pytest.mark.parametrize("preconditioner", ["multigrid", "jacobi"])
def test_imputation_matches_scipy_direct_solve(device, preconditioner):
    gen = torch.Generator().manual_seed(5)
    img = torch.rand(3, 14, 15, generator=gen, dtype=torch.float64)
    removed = _removed(3, 14, 15, 6)
    got, res = solve_linear_imputation(img.to(device), removed.to(device), preconditioner=preconditioner)
    assert (res < 1e-10).all()
    for i in range(3):
        want = ref.linear_imputation(img[i].numpy(), removed[i].numpy())
        np.testing.assert_allclose(got[i].cpu().numpy(), want, atol=1e-9)
    # float32 reaches float32 accuracy
    got32, _ = solve_linear_imputation(img.float().to(device), removed.to(device))
    np.testing.assert_allclose(got32.cpu().numpy(), got.cpu().numpy(), atol=1e-4)


def test_imputation_reproduces_constant_and_interior_ramp(device):
    h, w = 20, 24
    removed = _removed(3, h, w, 7)
    const = torch.full((3, 1, h, w), 0.7, dtype=torch.float64, device=device)
    out = noisy_linear_impute(const, removed.to(device), noise=0.0)
    assert torch.allclose(out, const, atol=1e-10)
    # a linear ramp is reproduced wherever the removed pixels have all 8 neighbours inside the image
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    ramp = (0.3 * yy - 0.2 * xx + 1.0).expand(3, 1, h, w).to(device)
    interior = removed.clone()
    interior[:, 0, :] = interior[:, -1, :] = interior[:, :, 0] = interior[:, :, -1] = False
    out = noisy_linear_impute(ramp, interior.to(device), noise=0.0)
    assert torch.allclose(out, ramp, atol=1e-9)
    # ... but not across the border (the stencil loses its symmetry there), which the test must be able to see
    out_border = noisy_linear_impute(ramp, removed.to(device), noise=0.0)
    assert (out_border - ramp).abs().max() > 1e-3


def test_imputation_noise_only_on_removed_pixels(device):
    gen = torch.Generator().manual_seed(8)
    img = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64).to(device)
    removed = _removed(2, 16, 16, 9).to(device)
    clean = noisy_linear_impute(img, removed, noise=0.0)
    noisy = noisy_linear_impute(img, removed, noise=0.05, generator=3)
    assert torch.equal(noisy, noisy_linear_impute(img, removed, noise=0.05, generator=3))
    keep = ~removed.unsqueeze(1).expand_as(img)
    assert torch.equal(noisy[keep], img[keep])
    assert torch.equal(clean[keep], img[keep])
    diff = (noisy - clean)[~keep]
    assert diff.std().item() == pytest.approx(0.05, rel=0.15)
    assert abs(diff.mean().item()) < 0.01
    # every channel is imputed from its own values
    for c in range(3):
        plane, _ = solve_linear_imputation(img[:, c], removed)
        assert torch.allclose(clean[:, c], plane)
    # nothing kept: no solution, filled with 0
    everything = torch.ones_like(removed)
    assert torch.equal(noisy_linear_impute(img, everything, noise=0.0), torch.zeros_like(img))


def test_imputation_large_hole_converges(device):
    gen = torch.Generator().manual_seed(10)
    img = torch.rand(2, 64, 64, generator=gen)
    removed = torch.zeros(2, 64, 64, dtype=torch.bool)
    removed[:, 4:60, 2:62] = True
    removed[1] |= torch.rand(64, 64, generator=gen) < 0.5
    out64, res64 = solve_linear_imputation(img.double().to(device), removed.to(device))
    out32, res32 = solve_linear_imputation(img.to(device), removed.to(device))
    assert (res64 < 1e-10).all() and (res32 < 1e-4).all()
    assert (out32.double() - out64).abs().max() < 1e-3
    # the same solution without the multigrid preconditioner
    plain, _ = solve_linear_imputation(img.double().to(device), removed.to(device), preconditioner="jacobi")
    assert (plain - out64).abs().max() < 1e-8
    # odd sizes coarsen too
    odd, res_odd = solve_linear_imputation(img[:, :63, :61].double().to(device), removed[:, :63, :61].to(device))
    assert (res_odd < 1e-10).all()
    for i in range(1, 2):
        want = ref.linear_imputation(img[i, :63, :61].double().numpy(), removed[i, :63, :61].numpy())
        np.testing.assert_allclose(odd[i].cpu().numpy(), want, atol=1e-8)


# --------------------------------------------------------------------------------------------- ROAD


def test_road_morf_vs_lerf(device):
    x, m = _spot_images(3, device), _perfect_map(3, device)
    morf = road(spot_model, x, m, order="morf", targets="explained")
    lerf = road(spot_model, x, m, order="lerf", targets="explained")
    assert morf.scores.shape == (3, 9) and morf.kind == "road_morf"
    assert (morf.scores < 0.05).all()  # the spot is imputed away first
    assert (lerf.scores[:, :-1] > 0.95).all()  # kept until only the 10% most relevant pixels remain... and then
    assert (morf.auc < lerf.auc).all()
    again = road(spot_model, x, m, order="morf", generator=0, batch_size=4, targets="explained")
    assert torch.equal(again.scores, morf.scores)  # same seed, other batch size: same noise
    assert not torch.equal(road(spot_model, x, m, order="morf", generator=1, targets="explained").scores, morf.scores)
    # the imputation leaks no shape: with zero noise, removing the 10% least relevant keeps the score
    zero = road(spot_model, x, m, fractions=[0.0, 0.1], order="lerf", noise=0.0, targets="explained")
    assert torch.allclose(zero.scores[:, 0], spot_model(x).double())
    with pytest.raises(InputError, match="fractions"):
        road(spot_model, x, m, fractions=[0.5, 1.5], targets="explained")


@pytest.mark.gpu
def test_cuda_matches_cpu():
    cpu = torch.device("cpu")
    cuda = torch.device("cuda")
    img = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    removed = torch.rand(2, 32, 32) < 0.6
    a = noisy_linear_impute(img, removed, noise=0.01, generator=1)
    b = noisy_linear_impute(img.to(cuda), removed.to(cuda), noise=0.01, generator=1)
    assert b.device.type == "cuda"
    assert torch.allclose(a, b.to(cpu), atol=1e-8)
    x, m = _spot_images(2, cpu), _perfect_map(2, cpu)
    r_cpu = road(spot_model, x, m, targets="explained")
    r_gpu = road(spot_model, x.to(cuda), m.to(cuda), targets="explained")
    assert torch.allclose(r_cpu.scores, r_gpu.scores.cpu(), atol=1e-6)


# ------------------------------------------------------------------------------ the model argument, unambiguously


def test_a_function_must_say_what_it_returns():
    x, m = _spot_images(2, torch.device("cpu")), _perfect_map(2, torch.device("cpu"))
    for fn in (deletion_curve, insertion_curve, road):
        with pytest.raises(InputError, match="targets='explained' when it returns the probability"):
            fn(spot_model, x, m)


def test_a_classifier_module_needs_no_targets_runs_in_eval_mode_and_by_its_output_rule():
    from toy_models import make

    gen = torch.Generator().manual_seed(5)
    x = torch.rand(4, 1, 10, 10, generator=gen, dtype=torch.float64)
    m = torch.rand(4, 10, 10, generator=gen, dtype=torch.float64)
    logits_model = make("plain", classes=1, seed=2)
    want = {kind: r.scores for kind, r in _runs(logits_model, x, m, targets=None).items()}
    for kind, r in _runs(logits_model, x, m).items():  # no targets: the predicted class
        assert torch.equal(r.scores, want[kind]), kind
    # the same network ending in a Sigmoid module: its probabilities are not read as logits
    with_sigmoid = torch.nn.Sequential(logits_model, torch.nn.Sigmoid())
    with_sigmoid.train()
    for kind, r in _runs(with_sigmoid, x, m).items():
        torch.testing.assert_close(r.scores, want[kind], rtol=0, atol=1e-12)
    assert with_sigmoid.training and all(mod.training for mod in with_sigmoid.modules())  # restored
    assert not any(mod._forward_hooks for mod in with_sigmoid.modules())  # the bypass hook is gone
    # a module that returns the explained class's probability itself says so, as a function does
    prob = torch.nn.Sequential(logits_model, torch.nn.Flatten(0), torch.nn.Sigmoid())
    r = deletion_curve(prob, x, m, steps=5, batch_size=7, targets="explained")
    assert r.scores.shape == (4, 6)
