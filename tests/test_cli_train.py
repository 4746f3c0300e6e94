"""`saliencekit train / evaluate / models / demo` through the CLI, including every bad input."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path

import pytest

from saliencekit.cli import build_parser, main
from test_train import make_blobs

TINY = ["--epochs", "1", "--image-size", "64", "--batch-size", "8", "--quiet"]


def _fail(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.startswith("saliencekit: error: ")
    return err


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    data = make_blobs(root / "data", n=8)
    assert main(["train", str(data), "--out", str(root / "run"), *TINY]) == 0
    return data, root / "run"


def test_train_evaluate_models(cli_run, capsys, tmp_path) -> None:
    _, run = cli_run
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["epochs"] == 1 and cfg["config"]["image_size"] == 64
    assert cfg["command"].startswith("saliencekit")
    assert main(["evaluate", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "ROC AUC" in out and "sensitivity" in out and "confusion matrix" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"{metrics['accuracy']:.3f}" in out
    other = make_blobs(tmp_path / "other", n=3, seed=5)
    assert main(["evaluate", str(run), "--data", str(other), "--quiet"]) == 0
    assert "images       6" in capsys.readouterr().out
    assert (run / "metrics_other.json").is_file()
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "effusion_cnn" in out and "resnet18" in out and "rps_cnn" in out


def test_bad_inputs(capsys, tmp_path, cli_run) -> None:
    err = _fail(capsys, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), *TINY])
    assert "not found" in err and "missing" in err
    (tmp_path / "empty").mkdir()
    err = _fail(capsys, ["train", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), *TINY])
    assert "no class folders" in err
    single = make_blobs(tmp_path / "single", n=4, classes=("only",))
    err = _fail(capsys, ["train", str(single), "--out", str(tmp_path / "r"), *TINY])
    assert "only 1 class" in err
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "b").mkdir()
    err = _fail(capsys, ["train", str(tmp_path / "noimg"), "--out", str(tmp_path / "r"), *TINY])
    assert "holds no images" in err
    err = _fail(capsys, ["train", str(cli_run[0]), "--out", str(tmp_path / "r"), "--model", "resnet19", *TINY])
    assert "unknown model 'resnet19'" in err and "effusion_cnn" in err and "resnet18" in err
    err = _fail(capsys, ["evaluate", str(tmp_path)])
    assert "not a saliencekit run directory" in err and "checkpoint.pt" in err
    err = _fail(capsys, ["evaluate", str(tmp_path / "nowhere")])
    assert "not a saliencekit run directory" in err
    err = _fail(capsys, ["evaluate", str(cli_run[1]), "--data", str(single)])
    assert "not found" in err  # the run's classes are not in that folder


def _fake_augment(monkeypatch) -> None:
    """A stand-in for saliencekit.data.augment when this checkout does not have it yet."""
    try:
        importlib.import_module("saliencekit.data.augment")
        return
    except ImportError:
        pass
    mod = types.ModuleType("saliencekit.data.augment")

    class Augmentation:
        @classmethod
        def standard(cls) -> Augmentation:
            return cls()

        def __call__(self, x):
            return x.flip(-1)

        def to_dict(self) -> dict:
            return {"hflip": True}

    mod.Augmentation = Augmentation
    monkeypatch.setitem(sys.modules, "saliencekit.data.augment", mod)


def test_corrupt_image_skip_bad_and_augment(capsys, tmp_path, monkeypatch) -> None:
    data = make_blobs(tmp_path / "d", n=6)
    (data / "effusion" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    err = _fail(capsys, ["train", str(data), "--out", str(tmp_path / "r"), *TINY])
    assert "corrupt.png" in err and "--skip-bad" in err
    _fake_augment(monkeypatch)
    assert main(["train", str(data), "--out", str(tmp_path / "r"), "--skip-bad", "--augment", *TINY]) == 0
    err = capsys.readouterr().err
    assert "saliencekit: warning: skipping unreadable image" in err and "corrupt.png" in err
    assert "Traceback" not in err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["config"]["augment"]["hflip"] is True
    assert cfg["skipped_files"] == ["effusion/corrupt.png"]


def test_every_flag_is_explained() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("train", "evaluate", "models", "demo"):
        p = sub.choices[name]
        assert p.description
        for action in p._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_preprocessing_flags_are_stored_and_bad_ones_named(capsys, tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from saliencekit.run import load_run

    rng = np.random.default_rng(0)
    for cls, level in (("effusion", 40000), ("normal", 20000)):  # 16-bit, wider than high
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(6):
            a = np.clip(rng.normal(level, 3000, (48, 80)), 0, 65535).astype(np.uint16)
            Image.fromarray(a).save(tmp_path / "d" / cls / f"{i}.png")
    argv = ["train", str(tmp_path / "d"), "--out", str(tmp_path / "r"), *TINY, "--resize", "crop", "--mean", "0.5",
            "--std", "0.2", "--bit-depth", "16"]
    assert main(argv) == 0
    run = load_run(tmp_path / "r")
    p = run.preprocessing
    assert (p.resize, p.normalize, p.mean, p.std, p.bit_depth) == ("crop", "custom", (0.5,), (0.2,), 16)
    x = run.dataset("test").images()
    assert x.shape[1:] == (1, 64, 64) and -2.6 < float(x.min()) and float(x.max()) < 2.6  # (v - 0.5) / 0.2, v in [0, 1]
    data = str(tmp_path / "d")
    err = _fail(capsys, ["train", data, "--out", str(tmp_path / "r2"), *TINY, "--mean", "0.5"])
    assert "needs both mean and std" in err
    err = _fail(capsys, ["train", data, "--out", str(tmp_path / "r2"), *TINY, "--mean", "0.1,0.2", "--std", "1"])
    assert "mean has 2 values; valid: 1 or 1 (one per channel)" in err
    err = _fail(capsys, ["train", data, "--out", str(tmp_path / "r2"), *TINY, "--bit-depth", "12"])
    assert "holds values up to" in err and "12-bit range" in err
    assert not (tmp_path / "r2").exists()
