"""Evaluation metrics against hand-computed values and slow literal references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saliencekit.predict import logits_to_proba, predict_proba
from saliencekit.train.evaluate import (
    compute_metrics,
    confusion_matrix,
    evaluate,
    format_metrics,
    roc_auc,
    roc_curve,
)
from saliencekit.train.fit import TrainConfig, train


def slow_auc(labels, scores) -> float:
    """Literal definition: P(score of a random positive > score of a random negative), ties count 1/2."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(n), 1)  # rounding makes ties
    assert roc_auc(labels, scores) == pytest.approx(slow_auc(labels, scores), abs=1e-12)
    # the ROC curve's trapezoid area is the same number
    c = roc_curve(labels, scores)
    assert c["fpr"][0] == c["tpr"][0] == 0 and c["fpr"][-1] == pytest.approx(1) and c["tpr"][-1] == pytest.approx(1)
    assert np.all(np.diff(c["fpr"]) >= 0) and np.all(np.diff(c["tpr"]) >= 0)
    assert np.trapezoid(c["tpr"], c["fpr"]) == pytest.approx(slow_auc(labels, scores), abs=1e-12)


def test_auc_edge_cases() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_binary_metrics_by_hand() -> None:
    # 10 images, class 1 positive. p(class 1):
    labels = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    p1 = [0.1, 0.2, 0.3, 0.6, 0.7, 0.4, 0.9, 0.8, 0.45, 0.5]
    # threshold 0.5: predicted 0 0 0 1 1 0 | 1 1 0 1  ->  TN=4 FP=2 FN=1 TP=3
    proba = np.stack([1 - np.array(p1), p1], 1)
    m = compute_metrics(labels, proba, ["normal", "effusion"])
    assert m["confusion_matrix"] == [[4, 2], [1, 3]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    # pairs (pos > neg): 0.9 > all 6, 0.8 > all 6, 0.45 > 0.1 0.2 0.3 0.4, 0.5 > 0.1 0.2 0.3 0.4 -> 20 / 24
    assert m["roc_auc"] == pytest.approx(20 / 24)
    assert m["positive_class"] == "effusion" and m["n"] == 10
    assert m["per_class"]["normal"]["sensitivity"] == pytest.approx(4 / 6)
    assert m["per_class"]["normal"]["auc"] == pytest.approx(20 / 24)
    table = format_metrics(m)
    assert "0.700" in table and "0.750" in table and "0.667" in table and "0.833" in table
    assert "effusion" in table.splitlines()[-1]


def test_multiclass_metrics_by_hand() -> None:
    labels = [0, 0, 1, 1, 2, 2]
    proba = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.1, 0.7, 0.2], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8],
                      [0.5, 0.2, 0.3]])
    m = compute_metrics(labels, proba, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(np.mean([1 / 2, 2 / 2, 1 / 2]))
    # specificity of a: TN 3 of 4 non-a; b: 3 of 4; c: 4 of 4
    assert m["specificity"] == pytest.approx(np.mean([3 / 4, 3 / 4, 4 / 4]))
    aucs = [slow_auc([int(y == c) for y in labels], proba[:, c]) for c in range(3)]
    assert m["roc_auc"] == pytest.approx(np.mean(aucs))
    assert set(m["roc_curves"]) == {"a", "b", "c"}


def test_confusion_and_proba_helpers() -> None:
    assert confusion_matrix([0, 1, 1, 2], [0, 2, 1, 2], 3).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    z = torch.tensor([[0.0], [2.0]])
    p = logits_to_proba(z)
    assert torch.allclose(p, torch.tensor([[0.5, 0.5], [1 - torch.sigmoid(torch.tensor(2.0)),
                                                          torch.sigmoid(torch.tensor(2.0))]]))
    lin = torch.nn.Linear(3, 4)
    x = torch.randn(10, 3)
    lin.train()
    out = predict_proba(lin, x, batch_size=3)
    assert lin.training  # mode restored
    assert torch.allclose(out, torch.softmax(lin(x), 1), atol=1e-6) and out.shape == (10, 4)


def _make(root: Path, n: int, seed: int) -> Path:
    from test_train import make_blobs

    return make_blobs(root, n=n, seed=seed)


def test_evaluate_run_and_other_folder(tmp_path) -> None:
    data = _make(tmp_path / "train_data", 10, 0)
    run = train(data, tmp_path / "run", TrainConfig(epochs=1, image_size=64, batch_size=8), progress=False)
    m = evaluate(run.path)
    saved = json.loads((run.path / "metrics.json").read_text())
    assert saved["accuracy"] == pytest.approx(m["accuracy"]) and saved["split"] == "test"
    test_files = {run.index.samples[i].relpath for i in run.split.test}
    assert {p["file"] for p in m["predictions"]} == test_files
    # the metrics follow from the saved per-file probabilities
    labels = [p["label"] for p in m["predictions"]]
    proba = np.array([p["probabilities"] for p in m["predictions"]])
    again = compute_metrics(labels, proba, m["class_names"])
    assert again["confusion_matrix"] == m["confusion_matrix"]
    assert again["roc_auc"] == pytest.approx(m["roc_auc"], abs=1e-5)

    other = _make(tmp_path / "holdout set", 4, 1)
    m2 = evaluate(run.path, data=other)
    assert m2["split"] == "folder" and m2["n"] == 8
    assert (run.path / "metrics_holdout_set.json").is_file() and (run.path / "roc_holdout_set.png").is_file()
    assert json.loads((run.path / "metrics.json").read_text())["split"] == "test"  # untouched
