"""Trust checks of multi-label models (issue #11): every image is checked once per explained label (its positive
labels by per-label sigmoid, most probable first, at most ``labels_per_image``; its most probable label when none is
positive), the per-label localisation and faithfulness equal the metrics computed directly on those rows, masks named
after a label localise that label, the randomisation references compare different images, and the random-label model
is fit on whole shuffled label rows."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import saliencekit as sk
from saliencekit.errors import InputError
from saliencekit.methods.outputs import output_scope
from saliencekit.trust.checks.faithfulness import faithfulness_curves
from saliencekit.trust.localization import pointing_game, relevance_mass
from saliencekit.trust.randomization import image_null_levels, train_on_permuted_labels
from saliencekit.trust.runner import CheckSettings
from saliencekit.trust.similarity import null_level_from_maps, other_image_index, similarity_all
from trust_toys import assert_unchanged, snapshot, validate_checks_json

NAMES = ["Atelectasis", "Effusion", "Mass"]
SIZE = 16
CHEAP = CheckSettings(deletion_steps=4, road_fractions=(0.2, 0.6), sensitivity_samples=2,
                      similarity_metrics=("spearman_abs",), randomization_modes=("cascading",), figures=False)
METHODS = ["gradient", "gradcam"]


def _model(always: float = 0.2) -> nn.Module:
    """Three labels read off the first pooled feature f (0.29 to 0.36 on :func:`_data`): Atelectasis when f < 0.30,
    Effusion when f > 0.34, Mass at the constant logit ``always`` (positive on every image when > 0)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        net[-1].weight.zero_()
        net[-1].weight[0, 0], net[-1].weight[1, 0] = -100.0, 100.0
        net[-1].bias.copy_(torch.tensor([30.0, -34.0, always]))
    return net.eval()


def _data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, SIZE, SIZE, generator=g)
    y = (torch.rand(n, 3, generator=g) > 0.5).float()
    masks = torch.rand(n, SIZE, SIZE, generator=g) > 0.7
    return x, y, masks


def _close(got: float | None, want: torch.Tensor) -> None:
    """A summary's mean (None when no value was finite) against the direct computation."""
    if got is None:
        assert math.isnan(float(want))
    else:
        assert math.isclose(got, float(want), rel_tol=1e-5, abs_tol=1e-9), (got, float(want))


def _expected_rows(model: nn.Module, x: torch.Tensor, limit: int) -> list[tuple[int, int]]:
    """(image, label) rows by hand: positives by sigmoid >= 0.5, most probable first, at most ``limit`` (the top
    label when none is positive), label rank by label rank."""
    with torch.no_grad():
        p = torch.sigmoid(model(x))
    per_image = []
    for row in p:
        order = sorted(range(3), key=lambda c: -float(row[c]))
        pos = [c for c in order if row[c] >= 0.5]
        per_image.append((pos or order[:1])[:limit])
    return [(i, t[r]) for r in range(3) for i, t in enumerate(per_image) if r < len(t)]


def test_rows_are_the_positive_labels_most_probable_first_and_metrics_per_label_equal_direct_ones() -> None:
    model = _model()
    x, y, masks = _data()
    before = snapshot(model)
    res = sk.run_checks(model=model, images=x, labels=y, masks={"lesion": masks}, class_names=NAMES,
                        output="multilabel", methods=METHODS, checks=["faithfulness", "localization"], n_images=8,
                        labels_per_image=2, settings=CHEAP, progress=False).to_json()
    assert_unchanged(model, before)
    validate_checks_json(res, figures_drawn=False)
    rows = _expected_rows(model, x, 2)
    assert len({c for _, c in rows}) >= 2 and len(rows) > 8  # the toy explains several labels and images twice
    got = [(r["image"], r["prediction"]) for r in res["images"]]
    assert got == rows
    assert res["settings"]["images"] == 8 and res["settings"]["rows"] == len(rows)
    assert res["settings"]["positive_not_explained"] == 0
    with torch.no_grad():
        p = torch.sigmoid(model(x))
    for r in res["images"]:
        assert r["prediction_name"] == NAMES[r["prediction"]]
        assert math.isclose(r["probability"], float(p[r["image"], r["prediction"]]), rel_tol=1e-6)  # a sigmoid
        assert r["true_labels"] == [NAMES[c] for c in range(3) if y[r["image"], c]]
        assert r["explained_positive"] == bool(p[r["image"], r["prediction"]] >= 0.5)
    # per explained label: the metrics of the maps of that label's rows, computed directly
    loc, faith = res["checks"]["localization"]["by_label"], res["checks"]["faithfulness"]["by_label"]
    assert list(loc) == [NAMES[c] for c in sorted({c for _, c in rows})]
    finite = 0
    for c in sorted({c for _, c in rows}):
        imgs = [i for i, cc in rows if cc == c]
        maps = sk.explain(model, x[imgs], METHODS, target=c, output="multilabel")
        for m in METHODS:
            rm_rows = relevance_mass(maps[m].maps.double(), masks[imgs])
            rm = rm_rows.nanmean() if torch.isfinite(rm_rows).any() else rm_rows.mean()
            pg = pointing_game(maps[m].maps.double(), masks[imgs], tolerance=15.0 * SIZE / 256).mean()
            _close(loc[NAMES[c]][m]["relevance_mass"]["mean"], rm)
            _close(loc[NAMES[c]][m]["pointing_game"]["mean"], pg)
            assert loc[NAMES[c]][m]["relevance_mass"]["n"] == int(torch.isfinite(rm_rows).sum())
            finite += int(torch.isfinite(rm_rows).sum())
            with output_scope(model, "multilabel", 0.5, x[:1]):  # each copy scored by the label's sigmoid
                curves = faithfulness_curves(model, x[imgs], maps[m].maps.double(), torch.full((len(imgs),), c),
                                             CHEAP.deletion_steps, CHEAP.road_fractions, 0, batch_size=32)
            _close(faith[NAMES[c]][m]["deletion_auc"]["mean"], curves["deletion"].auc.mean())
            _close(faith[NAMES[c]][m]["insertion_auc"]["mean"], curves["insertion"].auc.mean())
    assert finite >= 8  # most rows have a map with positive mass to compare


def test_a_mask_named_after_a_label_localises_that_label() -> None:
    model = _model()
    x, _, masks = _data()
    top = torch.zeros_like(masks)
    top[:, : SIZE // 2] = True
    kw = dict(model=model, images=x, class_names=NAMES, output="multilabel", methods=["gradient"],
              checks=["localization"], n_images=8, labels_per_image=2, settings=CHEAP, progress=False)
    res = sk.run_checks(masks={"lesion": masks, "Atelectasis": top}, **kw).to_json()
    rows = _expected_rows(model, x, 2)
    maps = {c: sk.explain(model, x[[i for i, cc in rows if cc == c]], ["gradient"], target=c,
                          output="multilabel")["gradient"].maps.double() for c in {c for _, c in rows}}
    by = res["checks"]["localization"]["by_label"]
    for c, m in maps.items():
        imgs = [i for i, cc in rows if cc == c]
        own = top[imgs] if NAMES[c] == "Atelectasis" else masks[imgs]
        _close(by[NAMES[c]]["gradient"]["relevance_mass"]["mean"], relevance_mass(m, own).mean())


def test_labels_must_fit_the_model() -> None:
    model = _model()
    x, y, _ = _data(4)
    kw = dict(model=model, images=x, methods=["gradient"], checks=["faithfulness"], settings=CHEAP, progress=False)
    with pytest.raises(InputError, match=r"must be \(N, 3\) 0/1 rows"):
        sk.run_checks(labels=torch.tensor([0, 1, 2, 0]), output="multilabel", **kw)
    with pytest.raises(InputError, match="declare output='multilabel'"):
        sk.run_checks(labels=y, output="logits", **kw)
    with pytest.raises(InputError, match="2 class names for a model with 3 labels"):
        sk.run_checks(class_names=["a", "b"], output="multilabel", **kw)


def test_other_image_reference_never_compares_an_image_with_itself() -> None:
    image = torch.tensor([0, 1, 2, 0, 2, 0])
    other = other_image_index(image)
    assert (image[other] != image).all()
    assert other.tolist() == [4, 0, 1, 2, 3, 4]  # the nearest earlier row of another image, cyclic
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 8, 8, generator=g, dtype=torch.float64)
    got = null_level_from_maps(maps, ["spearman_abs"], image)["spearman_abs"]
    torch.testing.assert_close(got, similarity_all(maps, maps[other], ["spearman_abs"])["spearman_abs"])
    assert image_null_levels({"m": maps[:2]}, ["spearman_abs"], torch.tensor([3, 3])) == {}  # one image: no reference
    with pytest.raises(InputError, match="at least 2 images"):
        other_image_index([1, 1])


def test_random_label_model_of_a_multilabel_model_shuffles_whole_label_rows() -> None:
    model = _model()
    x, y, _ = _data(16)
    rnd, facts = train_on_permuted_labels(model, x, y, epochs=5, target_accuracy=0.99, seed=3, progress=False)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    assert math.isclose(facts["label_agreement"], float((y[perm] == y).float().mean()), rel_tol=1e-6)
    assert facts["epochs"] == 5 and 0.0 <= facts["train_accuracy"] <= 1.0
    assert rnd(x).shape == (16, 3) and rnd is not model
    res = sk.run_checks(model=model, images=x[:6], labels=y[:6], train_data=(x, y), class_names=NAMES,
                        output="multilabel", methods=["gradient"], checks=["data_randomization"],
                        random_label_epochs=5, settings=CHEAP, progress=False).to_json()
    entry = res["checks"]["data_randomization"]
    assert entry["training"]["images"] == 16 and entry["methods"]["gradient"]["level"] in (
        "passes", "partly", "fails", None)


def test_images_without_a_positive_label_explain_their_most_probable_one_and_the_cap_is_recorded() -> None:
    x, _, _ = _data()
    kw = dict(images=x, class_names=NAMES, output="multilabel", methods=["gradient"], checks=["faithfulness"],
              n_images=8, settings=CHEAP, progress=False)
    model = _model(always=-0.2)
    res = sk.run_checks(model=model, labels_per_image=2, **kw).to_json()
    rows = _expected_rows(model, x, 2)
    assert [(r["image"], r["prediction"]) for r in res["images"]] == rows
    none = [r for r in res["images"] if not r["positive_labels"]]
    assert none and all(not r["explained_positive"] and r["prediction_name"] == "Mass" for r in none)
    capped = sk.run_checks(model=_model(), labels_per_image=1, **kw).to_json()
    assert len(capped["images"]) == 8  # one row per image: its most probable positive label
    two = sum(len(r["positive_labels"]) == 2 for r in capped["images"])
    assert two and capped["settings"]["positive_not_explained"] == two
