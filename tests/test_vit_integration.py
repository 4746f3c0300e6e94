"""The attention methods through the commands: ``explain --model-file`` and ``check --model-file`` on vision
transformers saved whole with ``torch.save`` (timm DeiT-tiny, torchvision ViT), refusals by name, and torchvision's
``vit_b_16`` (random weights, 32 x 32 images) against the literal reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import saliencekit as sk
from reference.ref_attention import (
    readout_map,
    ref_attention_gradients,
    ref_relevance_matrix,
    ref_rollout_matrix,
    ref_torchvision_vit,
)
from saliencekit.cli import main
from saliencekit.models import load_model

METHODS = "attention_rollout,transformer_attribution"


def _timm() -> object:
    return pytest.importorskip("timm", reason="timm is an optional extra: pip install saliencekit[timm]")


def _deit(path: Path) -> nn.Module:
    timm = _timm()
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=2).eval()
    torch.save(model, path)
    return model


def _torchvision_vit(path: Path, zero_head: bool = False) -> nn.Module:
    torch.manual_seed(1)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3).eval()
    if not zero_head:
        nn.init.normal_(model.heads.head.weight)
    torch.save(model, path)
    return model


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in range(3):
        (folder / f"class_{c}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"class_{c}" / "im.png")
    return folder


def test_a_pickled_vit_is_fed_the_image_size_it_is_built_for(tmp_path: Path) -> None:
    """A whole timm or torchvision ViT saved with torch.save fixes its input size; the loader reads it (before, the
    default 256 x 256 made explain fail with 'try --image-size 32')."""
    _deit(tmp_path / "deit.pt")
    _torchvision_vit(tmp_path / "tv.pt")
    assert load_model(tmp_path / "deit.pt").input_shape == (3, 32, 32)
    assert load_model(tmp_path / "tv.pt").input_shape == (3, 32, 32)


def test_explain_a_pickled_deit_with_the_attention_methods(tmp_path: Path, images: Path) -> None:
    model = _deit(tmp_path / "deit.pt")
    out = tmp_path / "maps"
    assert main(["explain", "--model-file", str(tmp_path / "deit.pt"), str(images), "--methods", METHODS,
                 "--target", "2", "--out", str(out), "--no-progress"]) == 0
    image = images / "class_1" / "im.png"
    saved = np.load(out / "class_1__im" / "maps.npz")
    x = load_model(tmp_path / "deit.pt").preprocessing_or_default().load(image)[None]
    expected = sk.explain(model, x, methods=METHODS.split(","), target=2)
    for name, e in expected.items():
        np.testing.assert_allclose(saved[name], e.maps[0].numpy(), rtol=1e-5, atol=1e-7)
        assert (out / "class_1__im" / f"{name}.png").is_file()


@pytest.mark.parametrize("case", ["zero_head", "cnn"])
def test_explain_refuses_by_name_and_writes_nothing(tmp_path: Path, images: Path, case: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.pt"
    if case == "zero_head":  # a freshly built torchvision ViT: its head is zero, no output depends on anything
        _torchvision_vit(path, zero_head=True)
        expected = "attention_rollout: the model's output does not depend on the last attention layer"
    else:
        torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 3)).eval(), path)
        expected = "attention_rollout explains vision transformers: Sequential computes no attention"
    out = tmp_path / "maps"
    assert main(["explain", "--model-file", str(path), str(images), "--image-size", "32", "--methods", METHODS,
                 "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert expected in err
    assert not out.exists()


def test_check_a_pickled_torchvision_vit_with_the_attention_methods(tmp_path: Path, images: Path) -> None:
    _torchvision_vit(tmp_path / "tv.pt")
    out = tmp_path / "checks"
    assert main(["check", "--model-file", str(tmp_path / "tv.pt"), str(images), "--methods", METHODS,
                 "--checks", "model_randomization,input_invariance", "--images", "3", "--randomization-modes",
                 "cascading", "--no-figures", "--quiet", "--out", str(out)]) == 0
    result = json.loads((out / "checks.json").read_text())
    assert set(result["summary"]["methods"]) == set(METHODS.split(","))
    assert set(result["checks"]) >= {"model_randomization", "input_invariance"}


def test_torchvision_vit_b_16_equals_the_literal_reference() -> None:
    """torchvision's vit_b_16 as built (12 layers, 12 heads, 768 wide; random weights at 32 x 32, so 4 patches), in
    float32 against the literal forward pass of the same weights."""
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=3)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    model.eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = sk.explain(model, x, methods=METHODS.split(","), target=1)
    _, attentions, grads = ref_attention_gradients(ref_torchvision_vit, model, x, [1])
    rollout = readout_map(ref_rollout_matrix([a[0].double() for a in attentions]), (0,), 1, (2, 2))
    relevance = readout_map(ref_relevance_matrix([a[0].double() for a in attentions], [g[0].double() for g in grads]),
                            (0,), 1, (2, 2))
    assert out["attention_rollout"].params["attention_layers"] == 12
    torch.testing.assert_close(out["attention_rollout"].layer_maps[0].double(), rollout, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["transformer_attribution"].layer_maps[0].double(), relevance, rtol=1e-3,
                               atol=1e-4 * float(relevance.abs().max()))


def test_check_refuses_the_attention_methods_on_a_cnn_by_name(tmp_path: Path, images: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cnn.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 3)).eval(), path)
    out = tmp_path / "checks"
    assert main(["check", "--model-file", str(path), str(images), "--image-size", "32", "--methods",
                 "gradient,attention_rollout", "--images", "3", "--no-figures", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "attention_rollout explains vision transformers: Sequential computes no attention" in err
    assert not out.exists()
