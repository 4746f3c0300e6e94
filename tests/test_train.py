"""Splits, training (reproducible, learns, keeps the best epoch) and the run directory."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from saliencekit import run as rd
from saliencekit.data import load_split, save_split, stratified_split
from saliencekit.data.folder import default_class_order
from saliencekit.errors import DataError, RunDirError
from saliencekit.models import load_checkpoint
from saliencekit.train.fit import TrainConfig, fit_model, train


def make_blobs(root: Path, n: int = 12, size: int = 64, seed: int = 0, classes=("effusion", "normal")) -> Path:
    """Noise images; the first class has a bright disc (trivially separable)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = rng.normal(100, 20, (size, size))
            if c == classes[0]:
                y, x = rng.integers(size // 4, 3 * size // 4, 2)
                a[(yy - y) ** 2 + (xx - x) ** 2 < (size / 6) ** 2] += 120
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / c / f"{c}_{i:03d}.png")
    return root


FAST = dict(image_size=64, batch_size=8, lr=3e-3)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    return make_blobs(tmp_path_factory.mktemp("blobs"), n=16)


@pytest.fixture(scope="module")
def trained(blobs, tmp_path_factory) -> rd.Run:
    return train(blobs, tmp_path_factory.mktemp("run"), TrainConfig(epochs=8, **FAST), progress=False)


# ---------------------------------------------------------------- split


def test_split_is_stratified_and_reproducible() -> None:
    labels = [0] * 100 + [1] * 60 + [2] * 7
    s = stratified_split(labels, test_fraction=0.15, val_fraction=0.15, seed=3)
    parts = s.parts()
    all_idx = sorted(parts["train"] + parts["val"] + parts["test"])
    assert all_idx == list(range(len(labels)))  # disjoint and complete
    for cls, n in Counter(labels).items():
        n_test = max(1, round(n * 0.15))
        n_val = max(1, round((n - n_test) * 0.15))
        got = {k: sum(labels[i] == cls for i in v) for k, v in parts.items()}
        assert got == {"test": n_test, "val": n_val, "train": n - n_test - n_val}, cls
    assert stratified_split(labels, seed=3).parts() == stratified_split(labels, seed=3).parts()
    assert stratified_split(labels, seed=3).test != stratified_split(labels, seed=4).test


def test_split_file_round_trip(tmp_path) -> None:
    labels = [0] * 10 + [1] * 10
    rel = [f"c{label}/{i}.png" for i, label in enumerate(labels)]
    s = stratified_split(labels, seed=1)
    save_split(tmp_path / "split.json", s, rel)
    # the file lists names, so a re-ordered folder listing maps back to the same files
    shuffled = rel[::-1]
    back = load_split(tmp_path / "split.json", shuffled)
    for part, idx in s.parts().items():
        assert sorted(shuffled[i] for i in back.parts()[part]) == sorted(rel[i] for i in idx)
    with pytest.raises(DataError, match="not in the data folder"):
        load_split(tmp_path / "split.json", rel[:-1])


def test_default_class_order() -> None:
    assert default_class_order(["normal", "effusion"]) == ["normal", "effusion"]
    assert default_class_order(["effusion", "Normal"]) == ["Normal", "effusion"]
    assert default_class_order(["b", "a"]) == ["a", "b"]
    assert default_class_order(["normal", "x", "a"]) == ["a", "normal", "x"]


# ---------------------------------------------------------------- training


def test_training_is_reproducible(blobs, tmp_path) -> None:
    cfg = dict(epochs=2, **FAST)
    a = train(blobs, tmp_path / "a", TrainConfig(seed=5, **cfg), progress=False)
    b = train(blobs, tmp_path / "b", TrainConfig(seed=5, **cfg), progress=False)
    c = train(blobs, tmp_path / "c", TrainConfig(seed=6, **cfg), progress=False)
    sa, sb, sc = (r.model.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.history["epochs"] == [{**r, "seconds": a.history["epochs"][i]["seconds"]}
                                   for i, r in enumerate(b.history["epochs"])]
    assert json.loads((tmp_path / "a" / "split.json").read_text()) == json.loads(
        (tmp_path / "b" / "split.json").read_text())


def test_training_learns_separable_data(trained) -> None:
    hist = trained.history
    assert hist["best_val_loss"] < 0.45
    assert hist["epochs"][0]["val_loss"] > hist["best_val_loss"] + 0.1
    assert trained.metrics["accuracy"] >= 0.8
    assert trained.metrics["roc_auc"] >= 0.9
    # class order: "normal" is class 0, so the single logit scores effusion
    assert trained.class_names == ["normal", "effusion"]


def test_history_draws_its_curves_inline(trained) -> None:
    from saliencekit.run import History

    hist = trained.history
    assert isinstance(hist, History) and hist.best_epoch == hist["best_epoch"]
    fig = hist.plot(title="curves")
    loss_ax, _ = fig.axes
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert list(lines["validation"].get_ydata()) == [r["val_loss"] for r in hist["epochs"]]
    assert list(lines["training"].get_ydata()) == [r["train_loss"] for r in hist["epochs"]]
    assert lines[f"best epoch ({hist['best_epoch']})"].get_xdata()[0] == hist["best_epoch"]
    assert hist._repr_png_().startswith(b"\x89PNG\r\n\x1a\n")


def test_best_epoch_is_the_checkpoint(trained) -> None:
    hist = trained.history
    losses = [r["val_loss"] for r in hist["epochs"]]
    assert hist["best_epoch"] == int(np.argmin(losses)) + 1
    assert hist["best_val_loss"] == pytest.approx(min(losses))
    # recompute the validation loss of the saved weights: it is the best epoch's, not the last one's
    model, info = load_checkpoint(trained.path / rd.CHECKPOINT)
    val = trained.dataset("val")
    with torch.no_grad():
        z = model(val.images())[:, 0]
    loss = nn.functional.binary_cross_entropy_with_logits(z, val.labels().float()).item()
    assert loss == pytest.approx(hist["best_val_loss"], rel=1e-4, abs=1e-5)
    assert info.extra["best_epoch"] == hist["best_epoch"]


def test_early_stopping_and_augment_hook() -> None:
    class Flat(nn.Module):  # constant logits: the validation loss never improves after epoch 1
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(x), 1) + 0 * self.w

    calls = []

    def aug(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return x

    x, y = torch.randn(10, 1, 8, 8), torch.tensor([0, 1] * 5)
    cfg = TrainConfig(epochs=10, batch_size=4, patience=2, augment=aug)
    hist = fit_model(Flat(), x, y, x[:4], y[:4], cfg, torch.device("cpu"), 2, progress=False)
    assert len(hist["epochs"]) == 3 and hist["stopped_early"] and hist["best_epoch"] == 1
    assert hist["epochs"][0]["val_loss"] == pytest.approx(math.log(2))
    assert len(calls) == 3 * 10 and calls[0] == (1, 8, 8)  # once per training image per epoch


# ---------------------------------------------------------------- run directory


def test_run_directory_layout(trained, blobs) -> None:
    names = {p.name for p in trained.path.iterdir()}
    assert names == {rd.CHECKPOINT, rd.CONFIG, rd.SPLIT, rd.HISTORY, rd.CURVES, rd.METRICS, rd.CONFUSION, rd.ROC}
    cfg = json.loads((trained.path / rd.CONFIG).read_text())
    assert Path(cfg["data_root"]).is_absolute() and Path(cfg["data_root"]) == blobs.resolve()
    assert cfg["seed"] == 42 and cfg["config"]["epochs"] == 8 and cfg["versions"]["torch"]
    assert cfg["class_counts"] == {"normal": 16, "effusion": 16}
    for png in (rd.CURVES, rd.CONFUSION, rd.ROC):
        assert (trained.path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = rd.load_run(trained.path)
    assert run.info.arch == "effusion_cnn" and run.preprocessing.size == (64, 64)
    sizes = {part: len(run.dataset(part)) for part in ("train", "val", "test")}
    assert sizes == {k: len(v) for k, v in run.split.parts().items()} == cfg["split_sizes"]
    assert run.dataset("test") is run.dataset("test")  # cached
    assert set(run.dataset("test").indices) == set(run.split.test)
    assert run.metrics["n"] == sizes["test"]
    assert not run.model.training


def test_load_run_errors(tmp_path, trained) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        rd.load_run(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / rd.CONFIG).write_text("{}")
    with pytest.raises(RunDirError, match=r"missing checkpoint\.pt, split\.json"):
        rd.load_run(tmp_path / "half")
    run = rd.load_run(trained.path, data=tmp_path)  # a moved data folder: fails when the data are needed
    with pytest.raises(DataError):
        run.dataset("test")


def test_skip_bad_image(tmp_path) -> None:
    data = make_blobs(tmp_path / "d", n=6)
    (data / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(DataError, match=r"broken\.png"):
        train(data, tmp_path / "r1", TrainConfig(epochs=1, **FAST), progress=False)
    with pytest.warns(UserWarning, match=r"broken\.png"):
        run = train(data, tmp_path / "r2", TrainConfig(epochs=1, skip_bad=True, **FAST), progress=False)
    assert run.config["skipped_files"] == ["normal/broken.png"]
    assert sum(len(v) for v in run.split.parts().values()) == 12


def test_multiclass_training(tmp_path) -> None:
    data = make_blobs(tmp_path / "d", n=5, classes=("cat", "dog", "eel"))
    run = train(data, tmp_path / "r", TrainConfig(epochs=1, **FAST), progress=False)
    assert run.class_names == ["cat", "dog", "eel"]
    x = run.dataset("test").images()
    assert run.model(x).shape == (len(x), 3)
    assert run.metrics["n"] == 3 and len(run.metrics["confusion_matrix"]) == 3
    assert set(run.metrics["roc_curves"]) == {"cat", "dog", "eel"}
