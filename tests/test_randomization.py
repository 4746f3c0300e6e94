"""Model and data randomisation checks (Adebayo et al. 2018) on a tiny CNN trained in the test session."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from saliencekit.methods import explain, list_methods
from saliencekit.trust.randomization import (
    PASS_MARGIN,
    data_randomization,
    model_randomization,
    parameter_layers,
    randomize_layers,
    train_on_permuted_labels,
)
from saliencekit.trust.similarity import spearman
from trust_toys import assert_unchanged, blob_data, snapshot, trained_cnn

METRICS = ["spearman_abs", "ssim"]


def test_parameter_layers_groups_batchnorm_with_its_conv() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(),
                        nn.Linear(4, 2))
    assert parameter_layers(net) == [["0", "1"], ["3"], ["5"]]


def test_randomize_layers_touches_only_the_named_layers_and_is_seeded() -> None:
    net, _ = trained_cnn()
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    randomize_layers(a, ["9"], seed=3)
    randomize_layers(b, ["9"], seed=3)
    for (name, p), q, r in zip(net.named_parameters(), a.parameters(), b.parameters()):
        assert torch.equal(q, r)  # same seed, same weights
        assert torch.equal(p, q) != name.startswith("9.")
    c = copy.deepcopy(net)
    randomize_layers(c, ["9"], seed=4)
    assert not torch.equal(c[9].weight, a[9].weight)


def test_cascading_reproduces_the_published_finding() -> None:
    """Gradient and Grad-CAM fall to near the null level once the top layers are random; guided backprop stays."""
    net, acc = trained_cnn()
    assert acc > 0.95
    x, _, _ = blob_data(12, seed=5)
    methods = ["gradient", "gradcam"] + (["guided_backprop"] if "guided_backprop" in list_methods() else [])
    before = snapshot(net)
    res = model_randomization(net, x, methods, metrics=METRICS, progress=False)
    assert_unchanged(net, before)
    assert res.steps == ["original", "11", "9", "6", "3", "0"]
    assert res.half_step == 3
    null = float(res.null["spearman_abs"].mean())
    assert abs(null) < 0.1  # unrelated random maps do not correlate
    for label in methods:
        curve = res.curve(label)
        assert curve[0] == pytest.approx(1.0)
        assert res.verdicts[label].reason
    for label in ("gradient", "gradcam"):
        v = res.verdicts[label]
        assert v.passed, v.reason
        assert v.value <= null + PASS_MARGIN
    if "guided_backprop" in methods:
        v = res.verdicts["guided_backprop"]
        assert not v.passed, v.reason
        assert v.value > null + 0.5  # clearly above the null level: guided backprop barely reacts


@pytest.mark.skipif("guided_backprop" not in list_methods(), reason="guided backprop is not registered yet")
def test_guided_backprop_is_registered() -> None:
    assert "guided_backprop" in list_methods()


def _literal_similarity(net: nn.Module, x: torch.Tensor, groups: list[list[str]], seed: int) -> float:
    """Reference: randomise the groups on a copy, recompute gradient maps, mean Spearman of |maps|."""
    target = (net(x)[:, 0] > 0).long()
    orig = explain(net, x, ["gradient"], target=target)["gradient"].maps
    work = copy.deepcopy(net)
    for g in groups:
        randomize_layers(work, g, seed)
    new = explain(work, x, ["gradient"], target=target)["gradient"].maps
    return float(spearman(orig, new, absolute=True).mean())


def test_cascading_is_cumulative_and_independent_is_one_layer_at_a_time() -> None:
    net, _ = trained_cnn()
    x, _, _ = blob_data(6, seed=7)
    groups = parameter_layers(net)
    casc = model_randomization(net, x, ["gradient"], metrics=["spearman_abs"], seed=2, progress=False)
    ind = model_randomization(net, x, ["gradient"], mode="independent", metrics=["spearman_abs"], seed=2,
                              progress=False)
    assert ind.steps == casc.steps[1:]
    top = list(reversed(groups))
    # cascading step 2 = the top two layers random; independent step 1 = only the second layer random
    assert casc.curve("gradient")[2] == pytest.approx(_literal_similarity(net, x, top[:2], 2), abs=1e-9)
    assert ind.curve("gradient")[1] == pytest.approx(_literal_similarity(net, x, [top[1]], 2), abs=1e-9)
    assert casc.curve("gradient")[1] == pytest.approx(ind.curve("gradient")[0], abs=1e-9)  # same first step
    d = casc.to_dict()
    assert d["methods"]["gradient"]["passed"] in (True, False)
    assert len(d["methods"]["gradient"]["curves"]["spearman_abs"]) == len(casc.steps)
    assert len(d["methods"]["gradient"]["curves_ci"]["spearman_abs"]) == len(casc.steps)


def test_data_randomization_trains_on_permuted_labels_and_compares_maps() -> None:
    net, _ = trained_cnn()
    x, y, _ = blob_data(32, seed=11)
    before = snapshot(net)
    rnd, facts = train_on_permuted_labels(net, x, y, epochs=30, target_accuracy=0.9, seed=0, progress=False)
    assert_unchanged(net, before)
    assert rnd is not net
    assert facts["label_agreement"] < 0.9  # the labels really were permuted
    # the reported accuracy is the accuracy on the permuted labels, recomputed here
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        acc = float(((rnd(x)[:, 0] > 0).long() == y[perm]).float().mean())
    assert facts["train_accuracy"] == pytest.approx(acc)
    res = data_randomization(net, rnd, x[:8], ["gradient"], metrics=METRICS, training=facts)
    assert_unchanged(net, before)
    assert res.train_accuracy == facts["train_accuracy"]
    assert float(res.similarity["gradient"]["spearman_abs"].mean()) < 0.9
    same = data_randomization(net, net, x[:8], ["gradient"], metrics=METRICS)
    assert same.similarity["gradient"]["spearman_abs"] == pytest.approx(1.0)
    assert not same.verdicts["gradient"].passed  # a "random" model identical to the true one must fail
