"""The published sanity-check ordering (Adebayo et al. 2018) on real images, through the command line, at 3 seeds.

The digits that ship with scikit-learn are written as a class-folder dataset (``saliencekit data digits``), the
lesson CNN is trained on them at three seeds (``saliencekit train``) and model randomisation is run
(``saliencekit check``). A smaller version of ``bench/digits_sanity.py`` (docs/checks.md, "Real images"): fewer
images, epochs, SmoothGrad samples and IG steps, so that it fits the CI budget.

Expected, as published: gradient, SmoothGrad and Grad-CAM pass; guided backprop fails; guided Grad-CAM does not pass
and its sign pattern survives; gradient x input and integrated gradients sit in between (their |map| reading keeps
more than gradient's and less than guided backprop's); the controls come out as expected.
"""

from __future__ import annotations

import json

import pytest

from saliencekit.cli import main

pytest.importorskip("sklearn.datasets", reason="the digits ship with scikit-learn (pip install saliencekit[digits])")

SEEDS = (1, 2, 3)
METHOD_OPTIONS = ("smoothgrad=smoothgrad:samples=10", "integrated_gradients=integrated_gradients:steps=16")
METHODS = "gradient,gradcam,guided_backprop,guided_gradcam,gradient_x_input"


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    root = tmp_path_factory.mktemp("digits")
    data = root / "digits"
    assert main(["data", "digits", str(data), "--per-class", "150"]) == 0
    out = {}
    for seed in SEEDS:
        run = root / f"run{seed}"
        assert main(["train", str(data), "--out", str(run), "--image-size", "64", "--epochs", "10", "--seed", str(seed),
                     "--threads", "1", "--quiet"]) == 0
        argv = ["check", str(run), "--out", str(run / "checks"), "--checks", "model_randomization", "--methods",
                METHODS, "--layer", "features.relu5", "--images", "10", "--seed", "0", "--threads", "1",
                "--randomization-modes", "cascading", "--no-figures", "--quiet"]
        for opt in METHOD_OPTIONS:
            argv += ["--method-options", opt]
        assert main(argv) == 0
        out[seed] = json.loads((run / "checks" / "checks.json").read_text())
        out[seed]["accuracy"] = json.loads((run / "metrics.json").read_text())["accuracy"]
    return out


def _verdicts(result: dict) -> dict[str, dict]:
    return result["checks"]["model_randomization"]["cascading"]["methods"]


def _kept(entry: dict, reading: str) -> float:
    return entry["readings"][reading]["retained"]["mean"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_published_ordering_on_real_digits(checks: dict[int, dict], seed: int) -> None:
    result = checks[seed]
    assert result["accuracy"] > 0.85  # the model learned the digits
    casc = result["checks"]["model_randomization"]["cascading"]
    assert casc["controls_ok"] is True, casc["controls_reason"]
    assert casc["controls"]["control_edges"]["level"] == "fails"
    assert casc["controls"]["control_random"]["level"] == "passes"
    v = _verdicts(result)
    for label in ("gradient", "smoothgrad", "gradcam"):
        assert v[label]["level"] == "passes", (label, v[label]["reason"])
    assert v["guided_backprop"]["level"] == "fails", v["guided_backprop"]["reason"]
    assert v["guided_gradcam"]["level"] != "passes", v["guided_gradcam"]["reason"]
    assert _kept(v["guided_gradcam"], "spearman") > 0.5  # its sign pattern (guided backprop's) survives
    for label in ("gradient_x_input", "integrated_gradients"):
        kept = _kept(v[label], "spearman_abs")
        assert _kept(v["gradient"], "spearman_abs") < kept < _kept(v["guided_backprop"], "spearman_abs"), label
    assert result["schema_version"] == 2
    assert result["summary"]["methods"]["guided_backprop"]["model_randomization"] == "fails"
    assert "guided_backprop" not in result["summary"]["recommended"]
