"""The trust checks read a model's outputs by its output rule (issue #11): a model ending in nn.Sigmoid gives the
same checks as its logit twin, and multi-label probabilities are per-label sigmoids."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from saliencekit.trust.runner import CheckSettings, run_checks
from trust_toys import assert_unchanged, blob_data, snapshot, trained_cnn

CHEAP = CheckSettings(deletion_steps=4, road_fractions=(0.2, 0.6), sensitivity_samples=2,
                      similarity_metrics=("spearman_abs",), randomization_modes=("cascading",))
CHECKS = ["input_invariance", "faithfulness", "complexity", "agreement"]
METHODS = {"gradient": {"method": "gradient"}, "gradcam": {"method": "gradcam"}}


def _numbers(d: Any, path: str = "") -> dict[str, float]:
    """Every number in a JSON-like tree, by its path (timings and the output description left out)."""
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            if k not in ("seconds", "created", "output"):
                out.update(_numbers(v, f"{path}/{k}"))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.update(_numbers(v, f"{path}/{i}"))
    elif isinstance(d, int | float) and not isinstance(d, bool):
        out[path] = float(d)
    return out


def _same(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert math.isclose(a[k], b[k], rel_tol=1e-4, abs_tol=1e-6), (k, a[k], b[k])


def test_checks_of_a_sigmoid_model_equal_those_of_its_logit_twin() -> None:
    net, _ = trained_cnn()
    x, y, _ = blob_data(4, seed=3)
    with_sigmoid = nn.Sequential(copy.deepcopy(net), nn.Sigmoid()).eval()
    before = snapshot(with_sigmoid)
    kw = dict(images=x, labels=y, methods=METHODS, checks=CHECKS, n_images=4, settings=CHEAP, progress=False)
    a = run_checks(model=with_sigmoid, **kw).to_json()
    b = run_checks(model=net, **kw).to_json()
    assert_unchanged(with_sigmoid, before)
    assert a["settings"]["output"]["final_activation"] == {"kind": "sigmoid", "name": "1", "bypassed": True}
    assert b["settings"]["output"]["final_activation"] is None
    _same(_numbers(a["checks"]), _numbers(b["checks"]))
    _same(_numbers(a["images"]), _numbers(b["images"]))
    with torch.no_grad():
        z = net(x)[:, 0]  # four images, none left out: the rows are the images in order
    p = torch.sigmoid(z)
    assert [r["prediction"] for r in a["images"]] == (z > 0).long().tolist()
    got = torch.tensor([r["probability"] for r in a["images"]])
    torch.testing.assert_close(got, torch.where(z > 0, p, 1 - p))  # the model's own probabilities


def test_multilabel_checks_use_per_label_sigmoids() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).eval()
    x, _, _ = blob_data(4, seed=1)
    kw = dict(images=x, methods=METHODS, checks=CHECKS, n_images=4, settings=CHEAP, progress=False)
    a = run_checks(model=nn.Sequential(net, nn.Sigmoid()).eval(), **kw).to_json()
    b = run_checks(model=net, output="multilabel", **kw).to_json()
    assert a["settings"]["output"]["kind"] == b["settings"]["output"]["kind"] == "multilabel"
    _same(_numbers(a["checks"]), _numbers(b["checks"]))
    with torch.no_grad():
        probs = torch.sigmoid(net(x))
    # one row per (image, explained label): every positive label, most probable first (at most 3; the top label
    # when none is positive), rows label rank by label rank
    per_image = [[c for c in p.argsort(descending=True).tolist() if p[c] >= 0.5] or [int(p.argmax())]
                 for p in probs]
    rows = [(i, t[r]) for r in range(3) for i, t in enumerate(per_image) if r < len(t)]
    assert [(r["image"], r["prediction"]) for r in b["images"]] == rows
    for r in b["images"]:
        p = float(probs[r["image"], r["prediction"]])
        assert math.isclose(r["probability"], p, rel_tol=1e-6)  # the label's sigmoid, not a softmax share
