"""The check runner: checks.json contents, thin metric runners, shortcut detection, model hygiene."""

from __future__ import annotations

import json

import pytest
import torch

from saliencekit.errors import InputError, UnknownNameError
from saliencekit.methods import explain
from saliencekit.methods.specs import parse_method_option
from saliencekit.trust.faithfulness import deletion_curve, insertion_curve
from saliencekit.trust.runner import CheckSettings, faithfulness_curves, run_checks
from trust_toys import assert_unchanged, blob_data, snapshot, trained_cnn, validate_checks_json

CHEAP = CheckSettings(deletion_steps=4, road_fractions=(0.2, 0.6), sensitivity_samples=2, random_label_epochs=5,
                      random_label_images=24, similarity_metrics=("spearman_abs", "ssim"))


def test_run_checks_writes_every_check_and_leaves_the_model_alone(tmp_path) -> None:
    net, _ = trained_cnn()
    net.train()  # a user's model in training mode, with a frozen parameter and a stale gradient
    net[0].weight.requires_grad_(False)
    net[9].weight.grad = torch.ones_like(net[9].weight)
    x, y, masks = blob_data(24, seed=2)
    shortcut = torch.zeros_like(masks)
    shortcut[::2, :4, :4] = True  # a "marker" in the corner of every other image
    methods = {"gradient": {"method": "gradient"},
               "ig_zero": {"method": "integrated_gradients", "baseline": "zero", "steps": 4}}
    before = snapshot(net)
    result = run_checks(model=net, images=x, labels=y, masks={"lesion": masks, "shortcut": shortcut},
                        files=[f"img{i}.png" for i in range(24)], class_names=["left", "right"],
                        train_data=(x, y), methods=methods, out_dir=tmp_path, n_images=4, settings=CHEAP,
                        progress=False, command="test")
    assert_unchanged(net, before)
    on_disk = json.loads((tmp_path / "checks.json").read_text())
    validate_checks_json(on_disk, tmp_path)
    assert set(on_disk["checks"]) == {"model_randomization", "data_randomization", "input_invariance", "agreement",
                                      "faithfulness", "localization", "complexity"}
    assert on_disk["settings"]["images"] == 4 and on_disk["settings"]["skipped"] == {}
    assert sorted(r["label"] for r in on_disk["images"]) == [0, 0, 1, 1]  # balanced choice
    assert on_disk["methods"]["ig_zero"] == {"method": "integrated_gradients",
                                             "options": {"baseline": "zero", "steps": 4}}
    assert result["summary"]["methods"]["gradient"]["input_invariance"] is True
    assert result["summary"]["methods"]["ig_zero"]["input_invariance"] is False
    loc = on_disk["checks"]["localization"]["methods"]["gradient"]
    assert loc["shortcut_share"]["n"] == sum(int(f[3:-4]) % 2 == 0 for f in [r["file"] for r in on_disk["images"]])
    # the per-image predictions in the JSON are the model's
    with torch.no_grad():
        net.eval()
        files = [r["file"] for r in on_disk["images"]]
        idx = [int(f[3:-4]) for f in files]
        pred = (net(x[idx])[:, 0] > 0).long().tolist()
    assert [r["prediction"] for r in on_disk["images"]] == pred


def test_localization_is_skipped_without_masks_and_refused_names() -> None:
    net, _ = trained_cnn()
    x, _, _ = blob_data(4, seed=1)
    res = run_checks(model=net, images=x, methods=["gradient"], checks=["localization", "complexity"],
                     settings=CHEAP, progress=False)
    assert "localization" not in res["checks"] and "no ground-truth masks" in res["settings"]["skipped"]["localization"]
    assert "complexity" in res["checks"]
    with pytest.raises(UnknownNameError, match="valid checks"):
        run_checks(model=net, images=x, methods=["gradient"], checks=["sanity"], progress=False)
    with pytest.raises(UnknownNameError, match="valid methods"):
        run_checks(model=net, images=x, methods=["no_such_method"], progress=False)
    with pytest.raises(InputError, match="run directory"):
        run_checks(methods=["gradient"], progress=False)


def test_faithfulness_curves_score_each_image_with_its_own_class() -> None:
    """Grouping by class must equal a literal per-image loop with that image's class probability."""
    net, _ = trained_cnn()
    x, _, _ = blob_data(6, seed=4)
    with torch.no_grad():
        logit = net(x)[:, 0]
    pred = (logit > 0).long()
    assert 0 < int(pred.sum()) < 6  # both classes present
    maps = explain(net, x, ["gradient"], target=pred)["gradient"].maps
    curves = faithfulness_curves(net, x, maps, pred, steps=4, road_fractions=(0.5,))
    for i in range(6):
        c = int(pred[i])

        def score(b, c=c):
            z = net(b)[:, 0]
            return torch.sigmoid(z if c == 1 else -z)

        ref_d = deletion_curve(score, x[i : i + 1], maps[i : i + 1], steps=4, targets="explained")
        ref_i = insertion_curve(score, x[i : i + 1], maps[i : i + 1], steps=4, targets="explained")
        torch.testing.assert_close(curves["deletion"].scores[i], ref_d.scores[0].double())
        torch.testing.assert_close(curves["insertion"].auc[i], ref_i.auc[0].double())


def _corner_model(size: int = 32) -> torch.nn.Module:
    """A linear model that only looks at the top-left 4x4 corner: it has learned a "marker" there."""
    lin = torch.nn.Linear(size * size, 1)
    with torch.no_grad():
        w = torch.zeros(size, size)
        w[:4, :4] = 1.0
        lin.weight.copy_(w.flatten()[None])
        lin.bias.fill_(-0.5)
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


def test_shortcut_detection_follows_where_the_maps_are() -> None:
    net = _corner_model()
    x, y, blobs = blob_data(8, seed=6)
    corner = torch.zeros_like(blobs)
    corner[1::2, :4, :4] = True  # the marker is on every other image
    used = run_checks(model=net, images=x, labels=y, masks={"lesion": blobs, "shortcut": corner},
                      methods=["gradient"], checks=["localization"], progress=False)
    sc = used["summary"]["shortcut"]
    assert sc["present_in_data"] is True and sc["detected"] is True, sc["evidence"]
    assert sc["marker_share"] == pytest.approx(1.0) and sc["lesion_share"] == pytest.approx(0.0)
    elsewhere = torch.zeros_like(blobs)
    elsewhere[1::2, -6:, -6:] = True  # a marker the model does not look at
    unused = run_checks(model=net, images=x, labels=y, masks={"lesion": blobs, "shortcut": elsewhere},
                        methods=["gradient"], checks=["localization"], progress=False)
    assert unused["summary"]["shortcut"]["detected"] is False
    assert unused["summary"]["shortcut"]["marker_share"] == pytest.approx(0.0)
    none = run_checks(model=net, images=x, labels=y, masks={"lesion": blobs}, methods=["gradient"],
                      checks=["localization"], progress=False)
    assert none["summary"]["shortcut"]["present_in_data"] is False


def test_parse_method_option() -> None:
    assert parse_method_option("sg=smoothgrad:samples=8,noise=0.1,base=gradient_x_input") == (
        "sg", {"method": "smoothgrad", "samples": 8, "noise": 0.1, "base": "gradient_x_input"})
    assert parse_method_option("g=gradient") == ("g", {"method": "gradient"})
    for bad in ("gradient", "=gradient", "x=ig:steps"):
        with pytest.raises(InputError):
            parse_method_option(bad)


def test_agreement_matrix_cells_are_the_pairwise_metric_means() -> None:
    from saliencekit.trust.method_agreement import agreement
    from saliencekit.trust.similarity import spearman, ssim, topk_iou

    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 16, 16, generator=g, dtype=torch.float64)
    maps = {"a": a, "b": a + 0.3 * torch.rand(5, 16, 16, generator=g, dtype=torch.float64),
            "c": torch.rand(5, 16, 16, generator=g, dtype=torch.float64)}
    res = agreement(maps, topk=0.2)
    sp, ss, iou = res.matrix("spearman"), res.matrix("ssim"), res.matrix("topk_iou")
    for i, x in enumerate("abc"):
        for j, y in enumerate("abc"):
            if i == j:
                assert sp[i, j] == 1.0 and iou[i, j] == 1.0
                continue
            assert sp[i, j] == pytest.approx(float(spearman(maps[x], maps[y]).mean()))
            assert ss[i, j] == pytest.approx(float(ssim(maps[x], maps[y]).mean()))
            assert iou[i, j] == pytest.approx(float(topk_iou(maps[x], maps[y], k=0.2).mean()))
    assert sp[0, 1] > sp[0, 2] + 0.3  # a noisy copy agrees more than an unrelated map
    d = res.to_dict()
    assert d["matrices"]["spearman"][1][0] == d["matrices"]["spearman"][0][1]
    assert set(d["pairs"]) == {"a|b", "a|c", "b|c"}
    with pytest.raises(InputError, match="at least 2"):
        agreement({"a": a})


def test_cost_knobs_cap_the_costly_checks_and_skip_independent(tmp_path) -> None:
    net, _ = trained_cnn()
    x, y, masks = blob_data(8, seed=3)
    methods = {"gradient": {"method": "gradient"}}
    full = run_checks(model=net, images=x, labels=y, masks={"lesion": masks}, methods=methods, n_images=4,
                      checks=["model_randomization", "faithfulness"], settings=CHEAP, progress=False)
    cheap = CheckSettings(**{**CHEAP.__dict__, "randomization_modes": ("cascading",), "costly_images": 2})
    capped = run_checks(model=net, images=x, labels=y, masks={"lesion": masks}, methods=methods, n_images=4,
                        train_data=(x, y), settings=cheap, progress=False, out_dir=tmp_path)
    validate_checks_json(json.loads((tmp_path / "checks.json").read_text()), tmp_path)
    c = capped["checks"]
    assert "independent" in full["checks"]["model_randomization"]
    assert "independent" not in c["model_randomization"]
    for name in ("model_randomization", "data_randomization", "input_invariance", "complexity"):
        assert c[name]["images"] == 2, name
    for name in ("faithfulness", "localization"):
        assert c[name]["images"] == 4, name
    assert capped["settings"]["costly_images"] == 2 and capped["settings"]["randomization_modes"] == ["cascading"]
    # the capped check is the full one on the first two images (the layers are re-initialised with the same seeds)
    got = c["model_randomization"]["cascading"]["methods"]["gradient"]["values"]["spearman_abs"]
    want = full["checks"]["model_randomization"]["cascading"]["methods"]["gradient"]["values"]["spearman_abs"]
    assert [row for row in got] == [row[:2] for row in want]
    with pytest.raises(InputError, match="cascading"):
        CheckSettings(randomization_modes=("independent",))
    with pytest.raises(UnknownNameError):
        CheckSettings(randomization_modes=("cascading", "sideways"))
    with pytest.raises(InputError, match="costly_images"):
        CheckSettings(costly_images=1)
