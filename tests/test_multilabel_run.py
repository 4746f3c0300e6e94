"""A multi-label run directory (labels from an NIH-style CSV) through explain, check and report: per-label sigmoid
probabilities in explain, one checked row per (image, positive label), and report sections that read the per-label
metrics of evaluate and of the checks."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from saliencekit.cli import main
from saliencekit.methods.outputs import OutputRule
from saliencekit.run import load_run
from test_data_labels import make_nih


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("mlrun")
    root, csv = make_nih(tmp / "nih", n=32)
    run = tmp / "run"
    assert main(["train", str(root), "--labels", str(csv), "--multilabel", "--out", str(run), "--epochs", "2",
                 "--image-size", "64", "--batch-size", "8", "--lr", "0.003", "--quiet", "--test-fraction", "0.25"]) == 0
    return root, run


def test_explain_on_a_multilabel_run_gives_per_label_sigmoids(ml_run: tuple[Path, Path], tmp_path: Path) -> None:
    root, run_dir = ml_run
    image = sorted(root.rglob("*.png"))[0]
    assert main(["explain", str(run_dir), str(image), "--methods", "gradient", "--out", str(tmp_path / "x"),
                 "--no-progress"]) == 0
    summary = json.loads((tmp_path / "x" / "summary.json").read_text())
    assert summary["output"]["kind"] == "multilabel" and summary["output"]["declared"] == "multilabel"
    run = load_run(run_dir)
    with torch.no_grad():
        p = torch.sigmoid(run.model(run.preprocessing.load(image)[None]))[0]
    row = summary["images"][0]
    for k, name in enumerate(run.class_names):
        assert math.isclose(row["probabilities"][name], float(p[k]), rel_tol=1e-5)  # not a softmax share
    order = [run.class_names[k] for k in p.argsort(descending=True).tolist()]
    positive = [n for n in order if row["probabilities"][n] >= 0.5]
    assert row["explained_classes"] == (positive or order[:1])


def test_check_and_report_of_a_multilabel_run(ml_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run_dir = ml_run
    checks = tmp_path / "checks"
    assert main(["check", str(run_dir), "--out", str(checks), "--images", "4", "--methods", "gradient,gradcam",
                 "--checks", "model_randomization,data_randomization,faithfulness", "--randomization-modes",
                 "cascading", "--random-label-epochs", "2", "--random-label-images", "8", "--labels-per-image", "2",
                 "--quiet"]) == 0
    d = json.loads((checks / "checks.json").read_text())
    assert d["settings"]["images"] == 4 and d["settings"]["labels_per_image"] == 2
    assert d["settings"]["output"]["kind"] == "multilabel"
    # the rows are each image's positive labels by sigmoid (computed here from the model), most probable first
    run = load_run(run_dir)
    test = run.dataset("test")
    by_file = {test.sample(i).relpath: i for i in range(len(test))}
    files = list(dict.fromkeys(r["file"] for r in d["images"]))
    x = torch.stack([test.image(by_file[f]) for f in files])
    with torch.no_grad():
        logits = run.model(x)
    targets, _ = OutputRule(multilabel=True).default_targets(logits, 2)
    expected = [(i, t[r]) for r in range(2) for i, t in enumerate(targets) if r < len(t)]
    assert [(r["image"], r["prediction"]) for r in d["images"]] == expected
    assert d["settings"]["rows"] == len(expected)
    for r in d["images"]:
        assert math.isclose(r["probability"], float(torch.sigmoid(logits[r["image"], r["prediction"]])), rel_tol=1e-5)
        truth = test.labels()[by_file[r["file"]]]
        assert r["true_labels"] == [n for k, n in enumerate(run.class_names) if truth[k] > 0.5]
    assert set(d["checks"]["faithfulness"]["by_label"]) == {run.class_names[c] for _, c in expected}
    assert d["checks"]["data_randomization"]["training"]["images"] == 8

    html = tmp_path / "report.html"
    assert main(["report", str(run_dir), "--checks", str(checks), "--out", str(html), "--images", "2", "--quiet"]) == 0
    page = html.read_text()
    text = re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]+"', "", page))
    assert "independent labels: Atelectasis, Effusion, Mass" in text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    perf = page[page.index('id="performance"'):page.index('id="explanations"')]
    for name, v in metrics["per_class"].items():  # evaluate's per-label AUC / sensitivity / specificity
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", perf[perf.index(f"<td>{name}</td>"):])[:6]
        assert cells[0] == name and cells[1] == str(v["positives"])
        for got, key in zip(cells[2:5], ("auc", "sensitivity", "specificity")):
            assert got == ("n/a" if v[key] is None or v[key] != v[key] else f"{v[key]:.3f}")
    assert "exact match" in perf
    expl = page[page.index('id="explanations"'):page.index('id="trust"')]
    assert "explained for its <em>positive</em> labels" in expl and expl.count("<figure") == 2
    trust = page[page.index('id="trust"'):]
    assert f"{d['settings']['rows']} (image, label) rows" in re.sub(r"<[^>]+>", "", trust)
    assert "By explained label" in trust[trust.index('id="trust-faithfulness"'):]
