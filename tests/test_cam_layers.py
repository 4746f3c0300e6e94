"""Which layer the CAMs are taken at, how they localise layer by layer, and the report's advice and caveat
(issue #12: Grad-CAM on the demo model's 4x4 layer never pointed at the effusion while the report recommended it)."""

from __future__ import annotations

import math

import pytest
import torch

from saliencekit import explain, models
from saliencekit.trust import run_checks
from saliencekit.trust.checks import get_check
from saliencekit.trust.checks import localization as L
from saliencekit.trust.localization import cam_layer_scan, cam_stages, pointing_game, relevance_mass
from trust_toys import assert_unchanged, blob_data, snapshot, trained_cnn


def test_cam_stages_are_the_last_module_at_each_resolution() -> None:
    net = models.create("effusion_cnn").eval()
    assert cam_stages(net, torch.zeros(1, 1, 256, 256)) == [
        ("features.relu1", (256, 256)), ("features.relu2", (128, 128)), ("features.relu3", (64, 64)),
        ("features.relu4", (32, 32)), ("features.relu5", (16, 16)), ("features.relu6", (8, 8)),
        ("features.relu7", (4, 4))]
    # at 64 px the last convolution is 1x1: not a spatial map, so not a candidate
    assert cam_stages(net, torch.zeros(1, 1, 64, 64))[-1] == ("features.relu6", (2, 2))


def test_cam_layer_scan_equals_the_methods_at_each_layer() -> None:
    net, _ = trained_cnn()
    x, y, masks = blob_data(6, seed=2)
    before = snapshot(net)
    scan = cam_layer_scan(net, x, masks, ("gradcam", "layercam"), target=y, tolerance=2.0)
    assert_unchanged(net, before)
    assert list(scan) == ["1", "4", "7"]  # the ReLUs after the convolutions at 32, 16 and 8 px
    for layer, per in scan.items():
        maps = explain(net, x, {"g": {"method": "gradcam", "layer": layer}, "l": {"method": "layercam",
                                                                                 "layer": layer}}, target=y)
        for label, name in (("g", "gradcam"), ("l", "layercam")):
            m = maps[label].maps.detach().double()
            torch.testing.assert_close(per[name]["relevance_mass"], relevance_mass(m, masks), equal_nan=True)
            torch.testing.assert_close(per[name]["pointing_game"], pointing_game(m, masks, tolerance=2.0))


def test_localization_records_the_cam_layer_and_scans_the_stages() -> None:
    net, _ = trained_cnn()
    x, y, masks = blob_data(8, seed=4)
    res = run_checks(model=net, images=x, labels=y, masks={"lesion": masks}, methods=["gradient", "gradcam"],
                     checks=["localization"], progress=False, figures=False)
    cam = res["checks"]["localization"]["cam_layers"]
    assert cam["used"] == "7" and cam["used_size"] == [8, 8]  # the default: the last spatial stage
    assert cam["cam_methods"] == ["gradcam"] and cam["scan_methods"] == ["gradcam", "layercam"]
    assert list(cam["layers"]) == ["1", "4", "7"]
    assert [cam["layers"][k]["size"] for k in cam["layers"]] == [[32, 32], [16, 16], [8, 8]]
    # the scanned Grad-CAM at the used layer is the check's own Grad-CAM row
    row = res["checks"]["localization"]["methods"]["gradcam"]["relevance_mass"]
    assert cam["layers"]["7"]["methods"]["gradcam"]["relevance_mass"]["values"] == row["values"]
    res = run_checks(model=net, images=x, labels=y, masks={"lesion": masks}, methods=["gradcam"], layer="4",
                     checks=["localization"], progress=False, figures=False)
    assert res["checks"]["localization"]["cam_layers"]["used"] == "4"
    res = run_checks(model=net, images=x, labels=y, masks={"lesion": masks}, methods=["gradient"],
                     checks=["localization"], progress=False, figures=False)
    assert "cam_layers" not in res["checks"]["localization"]  # no CAM method, no scan


def _scan(values: dict[str, dict[str, float]]) -> object:
    """A fake cam_layer_scan: layer -> method -> relevance mass (pointing game 1 where it is above 0.1)."""
    def fake(model, images, masks, methods, target=None, tolerance=15.0, layers=None, batch_size=16):
        n = images.shape[0]
        return {layer: {m: {"relevance_mass": torch.full((n,), values[layer][m], dtype=torch.float64),
                            "pointing_game": torch.full((n,), float(values[layer][m] > 0.1), dtype=torch.float64)}
                        for m in methods} for layer in layers}
    return fake


def test_advice_names_a_better_layer_only_when_it_is_clearly_better(monkeypatch: pytest.MonkeyPatch) -> None:
    net, _ = trained_cnn()
    x, y, masks = blob_data(4, seed=4)
    import saliencekit.trust.localization as tl

    good = {"1": {"gradcam": 0.05, "layercam": 0.30}, "4": {"gradcam": 0.10, "layercam": 0.12},
            "7": {"gradcam": 0.02, "layercam": 0.03}}
    monkeypatch.setattr(tl, "cam_layer_scan", _scan(good))
    res = run_checks(model=net, images=x, labels=y, masks={"lesion": masks}, methods=["gradient", "gradcam"],
                     checks=["localization"], progress=False, figures=False)
    cam = res["checks"]["localization"]["cam_layers"]
    assert cam["best"] == {"gradcam": "4", "layercam": "1"}
    assert "taken at 7 (8x8)" in cam["advice"] and "layercam at 1 (32x32) puts 30%" in cam["advice"]
    assert "--layer 1 and add layercam to --methods" in cam["advice"]
    # within the margin: no advice
    close = {k: {"gradcam": 0.10, "layercam": 0.11} for k in good}
    monkeypatch.setattr(tl, "cam_layer_scan", _scan(close))
    res = run_checks(model=net, images=x, labels=y, masks={"lesion": masks}, methods=["gradcam"],
                     checks=["localization"], progress=False, figures=False)
    assert res["checks"]["localization"]["cam_layers"]["advice"] is None


def test_a_recommended_method_that_localises_worst_says_so() -> None:
    check = get_check("localization")
    entry = {"mask": "lesion", "mask_area_share": {"mean": 0.022},
             "cam_layers": {"cam_methods": ["gradcam", "gradcam++"], "advice": "a sentence",
                            "advice_short": "layercam at layer features.relu4 (32x32) localises better (19%)"}}
    rows = {"gradient": {"relevance_mass": 0.14}, "gradcam": {"relevance_mass": 0.015},
            "gradcam++": {"relevance_mass": 0.03}, "smoothgrad": {"relevance_mass": math.nan}}
    text = check.caveat(entry, "gradcam", rows)
    assert text == ("it localises worst of the 3 methods checked (relevance mass 2%, gradient 14%); it puts less of "
                    "its mass on the lesion (1.5%) than a uniform map would (the mask covers 2.2% of the image); "
                    "layercam at layer features.relu4 (32x32) localises better (19%)")
    assert check.caveat(entry, "gradient", rows) is None
    assert check.caveat(entry, "gradcam++", rows) is None  # neither the worst nor below the uniform level
    rows["gradcam++"]["relevance_mass"] = 0.02  # below the mask's area share, not the worst
    assert check.caveat(entry, "gradcam++", rows).startswith("it puts less of its mass on the lesion (2.0%)")
    assert check.caveat({}, "gradcam", {"gradcam": {"relevance_mass": 0.01}}) is None  # nothing to compare with
    # through the summary: the caveat is appended to the recommended method's reason
    from saliencekit.trust.results import build_summary

    results = {"localization": {"methods": {lb: {"relevance_mass": {"mean": v["relevance_mass"]},
                                                 "pointing_game": {"mean": 0.0}} for lb, v in rows.items()},
                                **entry}}
    summary = build_summary(results, list(rows), {})
    assert "gradcam" in summary.recommended
    assert summary.reasons["gradcam"].endswith("But " + text + ".")
    assert "But" not in summary.reasons["gradient"]
    assert L.ADVICE_FACTOR > 1 and L.ADVICE_MARGIN > 0
