"""LRP and DeepLIFT take part in the trust checks like every other method (no special case anywhere)."""

from __future__ import annotations

from saliencekit.trust.runner import CheckSettings, run_checks
from trust_toys import assert_unchanged, blob_data, snapshot, trained_cnn

CHEAP = CheckSettings(deletion_steps=4, road_fractions=(0.2, 0.6), sensitivity_samples=2,
                      similarity_metrics=("spearman_abs", "ssim"))


def test_lrp_and_deeplift_go_through_the_checks_with_their_declared_expectations(tmp_path) -> None:
    net, _ = trained_cnn()
    x, y, masks = blob_data(12, seed=3)
    methods = {"lrp": {"method": "lrp"}, "lrp_box": {"method": "lrp", "composite": "epsilon_gamma_box"},
               "deeplift": {"method": "deeplift"}, "deeplift_zero": {"method": "deeplift", "baseline": "zero"},
               "deeplift_shap": {"method": "deeplift_shap", "samples": 2}}
    before = snapshot(net)
    result = run_checks(model=net, images=x, labels=y, masks={"lesion": masks}, methods=methods, n_images=4,
                        checks=["model_randomization", "input_invariance", "faithfulness", "localization"],
                        settings=CHEAP, out_dir=tmp_path, progress=False)
    assert_unchanged(net, before)
    summary = result["summary"]["methods"]
    assert set(summary) == set(methods)
    inv = result["checks"]["input_invariance"]["compensated"]["methods"]
    # the declared expectations (docs/methods.md) and what the check measures agree
    assert inv["deeplift"]["invariant"] and inv["deeplift"]["as_expected"]
    assert inv["deeplift_shap"]["invariant"] and inv["deeplift_shap"]["as_expected"]
    assert not inv["deeplift_zero"]["invariant"] and inv["deeplift_zero"]["as_expected"]
    assert not inv["lrp"]["invariant"] and inv["lrp"]["as_expected"]
    assert inv["lrp_box"]["expected_invariant"] is None
