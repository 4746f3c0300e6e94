"""Model and data randomisation checks (Adebayo et al. 2018) on a tiny CNN trained in the test session."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from saliencekit.methods import explain, list_methods
from saliencekit.trust import randomization as R
from saliencekit.trust._controls import edge_maps, random_maps_keyed, weights_digest
from saliencekit.trust.randomization import (
    RETAINED_LIMIT,
    data_randomization,
    judge,
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
    """Gradient and Grad-CAM pass once the top layers are random; guided backprop fails; the controls behave."""
    net, acc = trained_cnn()
    assert acc > 0.95
    x, _, _ = blob_data(12, seed=5)
    methods = ["gradient", "gradcam", "guided_backprop"]
    before = snapshot(net)
    res = model_randomization(net, x, methods, metrics=METRICS, progress=False)
    assert_unchanged(net, before)
    assert res.steps == ["original", "11", "9", "6", "3", "0"]
    assert res.half_step == 3
    assert set(res.metrics) >= {"spearman", "spearman_abs"}  # the verdict's readings are always computed
    null = float(res.null["spearman_abs"].mean())
    assert abs(null) < 0.1  # unrelated random maps do not correlate
    assert res.controls_ok, res.controls_reason
    assert res.control_verdicts["control_edges"].level == "fails"
    assert res.control_verdicts["control_random"].level == "passes"
    for label in methods:
        curve = res.curve(label)
        assert curve[0] == pytest.approx(1.0)
        assert res.verdicts[label].reason
    for label in ("gradient", "gradcam"):
        v = res.verdicts[label]
        assert v.level == "passes" and v.passed, v.reason
        for reading in v.readings.values():
            assert reading.retained["mean"] <= RETAINED_LIMIT
            assert reading.similarity <= reading.threshold
    v = res.verdicts["guided_backprop"]
    assert v.level == "fails" and v.passed is False, v.reason
    assert min(r.retained["mean"] for r in v.readings.values()) > RETAINED_LIMIT
    d = res.to_dict()
    assert d["controls_ok"] is True and d["controls"]["control_edges"]["as_expected"] is True
    assert d["methods"]["guided_backprop"]["level"] == "fails"
    assert d["methods"]["gradient"]["readings"]["spearman"]["reference_from"] in ("noise", "other_images")


def _reading_inputs(signed: list[float], absolute: list[float]) -> dict[str, np.ndarray]:
    return {"spearman": np.array(signed), "spearman_abs": np.array(absolute)}


def test_judge_levels_from_the_two_readings_against_the_reference() -> None:
    noise = _reading_inputs([0.0, 0.02, -0.02], [0.0, 0.0, 0.0])
    other = _reading_inputs([0.1, 0.1, 0.1], [0.4, 0.4, 0.4])  # reference: signed 0.1, |map| 0.4
    none = np.zeros(3, dtype=bool)
    # retained = (s - ref) / (1 - ref): signed (0.1 - 0.1) / 0.9 = 0; |map| (0.7 - 0.4) / 0.6 = 0.5 -> destroyed
    v = judge(_reading_inputs([0.1] * 3, [0.7] * 3), none, noise, other, "the top")
    assert v.level == "passes" and v.passed
    assert v.readings["spearman"].reference == pytest.approx(0.1)
    assert v.readings["spearman_abs"].reference == pytest.approx(0.4)
    assert v.readings["spearman_abs"].retained["mean"] == pytest.approx(0.5)
    assert v.readings["spearman_abs"].threshold == pytest.approx(0.7)
    assert v.value == pytest.approx(0.7) and v.threshold == pytest.approx(0.7)
    # |map| just above its threshold: partly (sign pattern gone, magnitudes kept)
    v = judge(_reading_inputs([0.1] * 3, [0.71] * 3), none, noise, other, "the top")
    assert v.level == "partly" and v.passed is False and "magnitudes mostly survive" in v.reason
    v = judge(_reading_inputs([0.9] * 3, [0.5] * 3), none, noise, other, "the top")
    assert v.level == "partly" and "sign pattern mostly survives" in v.reason
    v = judge(_reading_inputs([0.9] * 3, [0.95] * 3), none, noise, other, "the top")
    assert v.level == "fails"
    # the noise null is the floor of the reference: other images less alike than noise
    v = judge(_reading_inputs([0.0] * 3, [0.0] * 3), none, _reading_inputs([0.2] * 3, [0.2] * 3),
              _reading_inputs([-0.3] * 3, [-0.3] * 3), "the top")
    assert v.readings["spearman"].reference == pytest.approx(0.2)
    assert v.readings["spearman"].to_dict()["reference_from"] == "noise"
    # without other-image values, the noise null alone
    v = judge(_reading_inputs([0.0] * 3, [0.0] * 3), none, noise, {}, "the top")
    assert v.readings["spearman_abs"].reference == pytest.approx(0.0) and v.level == "passes"


def test_judge_edge_cases_constant_maps_shared_structure_and_borderline() -> None:
    noise = _reading_inputs([0.0] * 4, [0.0] * 4)
    other = _reading_inputs([0.2] * 4, [0.2] * 4)
    # a constant randomised map (NaN similarity) counts at the reference level; a constant original map is skipped
    nan = float("nan")
    constant = np.array([True, True, False, False])
    v = judge(_reading_inputs([nan, nan, 0.9, nan], [nan, nan, 0.9, nan]), constant, noise, other, "x")
    r = v.readings["spearman"]
    assert r.retained["n"] == 3  # image 3's original map was constant: left out
    assert r.similarity == pytest.approx((0.2 + 0.2 + 0.9) / 3)
    assert "2 constant randomised map(s)" in v.reason
    # every original map constant: no verdict
    v = judge(_reading_inputs([nan] * 4, [nan] * 4), np.zeros(4, dtype=bool), noise, other, "x")
    assert v.level is None and v.passed is None and "constant" in v.reason
    # maps of different images nearly identical: no verdict
    v = judge(_reading_inputs([0.96] * 4, [0.97] * 4), np.zeros(4, dtype=bool), noise,
              _reading_inputs([0.96] * 4, [0.96] * 4), "x")
    assert v.level is None and "nearly identical" in v.reason
    # the interval of the retained share straddles the limit: the level stands, the reason says borderline
    v = judge(_reading_inputs([0.0, 0.1, 0.9, 1.0], [0.0, 0.1, 0.9, 1.0]), np.zeros(4, dtype=bool), noise,
              _reading_inputs([0.0] * 4, [0.0] * 4), "x")
    assert v.level == "passes" and v.borderline and "borderline" in v.reason


def test_edge_control_is_a_literal_sobel_and_ignores_the_model() -> None:
    from scipy import ndimage

    x = torch.randn(3, 2, 20, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = edge_maps(nn.Identity(), x)
    for i in range(3):
        img = x[i].mean(0).numpy()
        want = np.hypot(ndimage.sobel(img, axis=1, mode="nearest"), ndimage.sobel(img, axis=0, mode="nearest"))
        np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-12, atol=1e-12)


def test_random_control_is_keyed_by_every_weight_and_the_image() -> None:
    net, _ = trained_cnn()
    x, _, _ = blob_data(4, seed=3)
    before = snapshot(net)
    a = random_maps_keyed(net, x)
    assert_unchanged(net, before)
    assert a.shape == (4, 32, 32) and a.dtype == torch.float64
    assert torch.equal(a, random_maps_keyed(copy.deepcopy(net), x))  # same weights, same maps
    assert not torch.equal(a[0], a[1])  # another image, another map
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[0].weight[0, 0, 0, 0] += 1e-6  # the smallest change of one weight
    b = random_maps_keyed(other, x)
    assert weights_digest(other) != weights_digest(net)
    assert float(spearman(a, b).abs().max()) < 0.5


def test_controls_withhold_every_verdict_when_the_randomisation_does_not_reach_the_model(monkeypatch) -> None:
    """A broken randomisation (weights left as they were) is caught by the positive control: no verdict at all."""
    net, _ = trained_cnn()
    x, _, _ = blob_data(6, seed=5)
    monkeypatch.setattr(R, "randomize_layers", lambda model, names, seed=0: None)
    res = model_randomization(net, x, ["gradient", "guided_backprop"], metrics=["spearman_abs"], progress=False)
    assert res.controls_ok is False
    assert res.control_verdicts["control_random"].level == "fails"
    assert "control_random fails (expected: passes)" in res.controls_reason
    for v in res.verdicts.values():
        assert v.level is None and v.passed is None
        assert "controls did not come out as expected" in v.reason and "would read: fails" in v.reason
    d = res.to_dict()
    assert d["controls_ok"] is False and d["methods"]["gradient"]["level"] is None


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
    assert d["methods"]["gradient"]["level"] in R.LEVELS
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
    assert res.controls_ok, res.controls_reason
    assert res.control_verdicts["control_edges"].level == "fails"  # the negative control shows the check can fail
    assert res.verdicts["gradient"].level in R.LEVELS
    assert f"fits its training labels to {facts['train_accuracy']:.0%}" in res.verdicts["gradient"].reason
    d = res.to_dict()
    assert d["controls"]["control_edges"]["similarity"]["spearman_abs"]["mean"] == pytest.approx(1.0)
    # a "random" model identical to the true one: the positive control fails, so there is no verdict
    same = data_randomization(net, net, x[:8], ["gradient"], metrics=METRICS)
    assert same.similarity["gradient"]["spearman_abs"] == pytest.approx(1.0)
    assert same.controls_ok is False and same.verdicts["gradient"].level is None
    assert "would read: fails" in same.verdicts["gradient"].reason
