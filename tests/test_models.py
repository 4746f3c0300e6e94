"""Model registry, the lesson CNN's exact architecture, checkpoints and their atomic writes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from saliencekit import models
from saliencekit.errors import InputError, RunDirError, UnknownNameError
from saliencekit.models import io as mio

PREP = {"grayscale": True, "size": [64, 64], "standardize": "per_image"}


def test_effusion_cnn_parameter_count_and_layers() -> None:
    m = models.create("effusion_cnn", in_channels=1, num_classes=2)
    # literal count: 7 convs (k*k*cin*cout + cout), dense 50->128->32->1
    convs = [(1, 8, 3), (8, 8, 3), (8, 12, 3), (12, 12, 3), (12, 20, 5), (20, 20, 5), (20, 50, 5)]
    expected = sum(k * k * ci * co + co for ci, co, k in convs) + (50 * 128 + 128) + (128 * 32 + 32) + (32 + 1)
    assert expected == 54_627
    assert sum(p.numel() for p in m.parameters()) == 54_627
    conv_layers = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.padding) for c in conv_layers] == [
        (co, k, "same") for _, co, k in convs
    ]
    assert sum(isinstance(mod, nn.MaxPool2d) for mod in m.modules()) == 6
    assert sum(isinstance(mod, nn.ReLU) for mod in m.modules()) == 9  # 7 conv + 2 dense
    drops = [mod for mod in m.modules() if isinstance(mod, nn.Dropout)]
    assert len(drops) == 1 and drops[0].p == 0.6
    assert models.last_conv_layer(m) == "features.conv7"
    assert m.get_submodule("features.conv7") is conv_layers[-1]
    m.eval()
    with torch.no_grad():
        out = m(torch.randn(2, 1, 256, 256))
    assert out.shape == (2, 1)
    # 256 / 2**6 = 4: the last conv sees a 4x4 map
    feats = m.features(torch.randn(1, 1, 256, 256))
    assert feats.shape == (1, 50, 4, 4)


# Cheap to build: run a real forward pass. The rest are built on the meta device (shapes only, no memory).
_REAL = {"effusion_cnn", "rps_cnn", "resnet18", "mobilenet_v3_small"}


@pytest.mark.parametrize("name", models.list_models())
@pytest.mark.parametrize(("channels", "classes"), [(1, 2), (3, 5)])
def test_every_model_builds_and_runs(name: str, channels: int, classes: int) -> None:
    x = torch.randn(2, channels, 64, 64)
    if name in _REAL:
        m = models.create(name, in_channels=channels, num_classes=classes).eval()
        with torch.no_grad():
            out = m(x)
        assert torch.isfinite(out).all()
    else:
        with torch.device("meta"):
            m = models.create(name, in_channels=channels, num_classes=classes).eval()
            out = m(x.to("meta"))
    assert out.shape == (2, 1 if classes == 2 else classes)
    first = next(mod for mod in m.modules() if isinstance(mod, nn.Conv2d))
    assert first.in_channels == channels
    assert models.describe(name)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        models.create("effusion_cnnn")
    msg = str(info.value)
    assert "effusion_cnnn" in msg and "effusion_cnn," in msg and "resnet18" in msg


def test_bad_arguments() -> None:
    with pytest.raises(InputError):
        models.create("effusion_cnn", num_classes=1)
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("effusion_cnn")(lambda **kw: nn.Identity())


def _trained_like(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    m = models.create("effusion_cnn")
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_checkpoint_round_trip_predicts_identically(tmp_path) -> None:
    m = _trained_like()
    path = tmp_path / "checkpoint.pt"
    models.save_checkpoint(path, m, "effusion_cnn", {"in_channels": 1, "num_classes": 2}, PREP,
                           ["normal", "effusion"], extra={"best_epoch": 3})
    loaded, info = models.load_checkpoint(path)
    assert not loaded.training
    x = torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), loaded(x))
    assert info.arch == "effusion_cnn" and info.class_names == ["normal", "effusion"]
    assert info.preprocessing == PREP and info.extra == {"best_epoch": 3}
    assert info.versions["torch"] == str(torch.__version__)
    # the file is loadable with weights_only (plain data, no pickled classes)
    assert torch.load(path, weights_only=True)["arch"] == "effusion_cnn"


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.pt"
    old = _trained_like(1)
    models.save_checkpoint(path, old, "effusion_cnn", {"in_channels": 1, "num_classes": 2}, PREP, ["a", "b"])
    before = path.read_bytes()

    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # half-written file, then the "crash"
            fh.truncate(len(before) // 2)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        models.save_checkpoint(path, _trained_like(2), "effusion_cnn", {"in_channels": 1, "num_classes": 2}, PREP,
                               ["a", "b"])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left
    loaded, _ = models.load_checkpoint(path)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), old(x))


def test_not_a_checkpoint(tmp_path) -> None:
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="not a saliencekit checkpoint"):
        models.load_checkpoint(bad)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "y.pt")
    with pytest.raises(InputError, match="not a saliencekit checkpoint"):
        models.load_checkpoint(tmp_path / "y.pt")
    with pytest.raises(RunDirError):
        models.load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_load_model_file_formats(tmp_path) -> None:
    m = _trained_like()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref = m(x)
    torch.jit.save(torch.jit.trace(m, x), tmp_path / "ts.pt")
    torch.save(m, tmp_path / "whole.pt")
    models.save_checkpoint(tmp_path / "ck.pt", m, "effusion_cnn", {"in_channels": 1, "num_classes": 2}, PREP,
                           ["a", "b"])
    for name in ("ts.pt", "whole.pt", "ck.pt"):
        loaded = models.load_model_file(tmp_path / name)
        with torch.no_grad():
            assert torch.allclose(loaded(x), ref, atol=1e-6), name
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(InputError, match="state_dict"):
        mio.load_model_file(tmp_path / "sd.pt")
    (tmp_path / "junk.pt").write_text("hello")
    with pytest.raises(InputError, match="cannot load a model"):
        mio.load_model_file(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="not found"):
        mio.load_model_file(tmp_path / "nope.pt")
