"""``--threads`` / ``num_threads=``: parsed, validated and applied (and the old count restored) by every command."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from saliencekit._threads import check_threads, torch_threads
from saliencekit.cli import main
from saliencekit.data.preprocess import Preprocessing
from saliencekit.errors import InputError
from toy_models import make

COMMANDS = {
    "train": ["train", "data", "--out", "run"],
    "check": ["check", "run", "--out", "checks"],
    "demo": ["demo"],
    "explain": ["explain", "run", "image.png", "--out", "maps"],
}


class ThreadSpy(nn.Module):
    """Wraps a model and records torch's thread count at each forward call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return self.model(x)


def _other_count() -> int:
    """A thread count different from the current one (conftest sets 1)."""
    return 2 if torch.get_num_threads() != 2 else 1


def test_torch_threads_sets_and_restores_also_on_error() -> None:
    before = torch.get_num_threads()
    n = _other_count()
    with torch_threads(n):
        assert torch.get_num_threads() == n
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError), torch_threads(n):
        raise ValueError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(InputError, match="num_threads must be a positive integer"):
            check_threads(bad)  # type: ignore[arg-type]
    assert check_threads(3) == 3 and check_threads(None) is None


@pytest.mark.parametrize("command", list(COMMANDS))
def test_threads_flag_is_documented(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--threads THREADS" in out and "CPU threads for torch (default: all)" in out


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_threads_flag_rejects_non_positive_values(command: str, value: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*COMMANDS[command], "--threads", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --threads: expected a positive integer, got '{value}'" in err
    assert "Traceback" not in err


def test_check_cli_passes_threads_to_run_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import saliencekit.run
    import saliencekit.trust.runner as runner
    from saliencekit.trust.results import CheckResults

    seen: dict[str, Any] = {}

    def fake_run_checks(run: Any, **kw: Any) -> CheckResults:
        seen.update(kw)
        return CheckResults.from_json({"summary": {"methods": {}, "recommended": []}, "settings": {"skipped": {}}})

    monkeypatch.setattr(saliencekit.run, "load_run", lambda *a, **k: None)
    monkeypatch.setattr(runner, "run_checks", fake_run_checks)
    assert main(["check", "run", "--out", str(tmp_path), "--threads", "3", "--quiet"]) == 0
    assert seen["settings"].num_threads == 3
    assert main(["check", "run", "--out", str(tmp_path), "--quiet"]) == 0
    assert seen["settings"].num_threads is None


def test_run_checks_applies_threads_and_restores(tmp_path: Path) -> None:
    from saliencekit.trust import CheckSettings, run_checks

    torch.manual_seed(0)
    spy = ThreadSpy(make("plain", classes=2, dtype=torch.float32))
    images = torch.randn(4, 1, 16, 16)
    before, n = torch.get_num_threads(), _other_count()
    result = run_checks(model=spy, images=images, methods=["gradient"], checks=["faithfulness"], n_images=4,
                        progress=False, figures=False, num_threads=n,
                        settings=CheckSettings(deletion_steps=2, road_fractions=(0.5,)))
    assert spy.seen and set(spy.seen) == {n}
    assert torch.get_num_threads() == before
    assert result["settings"]["num_threads"] == n
    with pytest.raises(InputError, match="num_threads"):
        run_checks(model=spy, images=images, methods=["gradient"], checks=["faithfulness"], num_threads=0)
    assert torch.get_num_threads() == before


def _image(path: Path) -> Path:
    yy, xx = np.mgrid[:16, :16]
    Image.fromarray((128 + 100 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).astype(np.uint8)).save(path)
    return path


def test_explain_files_applies_threads_and_restores(tmp_path: Path) -> None:
    from saliencekit.viz.explain_files import explain_files

    spy = ThreadSpy(make("plain", classes=2, dtype=torch.float32))
    img = _image(tmp_path / "a.png")
    before, n = torch.get_num_threads(), _other_count()
    explain_files(spy, Preprocessing(size=(16, 16)), [img], ["gradient"], tmp_path / "out", progress=False,
                  num_threads=n)
    assert spy.seen and set(spy.seen) == {n}
    assert torch.get_num_threads() == before
    with pytest.raises(InputError, match="num_threads"):
        explain_files(spy, Preprocessing(size=(16, 16)), [img], ["gradient"], tmp_path / "o2", num_threads=-1)


def test_explain_cli_passes_threads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import saliencekit.viz.explain_files as ef

    seen: dict[str, Any] = {}
    model_path = tmp_path / "model.pt"
    torch.save(make("plain", classes=2, dtype=torch.float32), model_path)
    monkeypatch.setattr(ef, "explain_files", lambda *a, **kw: seen.update(kw) or [])
    img = _image(tmp_path / "a.png")
    assert main(["explain", "--model-file", str(model_path), str(img), "--out", str(tmp_path / "o"),
                 "--threads", "2", "--quiet"]) == 0
    assert seen["num_threads"] == 2


def test_run_demo_applies_threads_to_every_step_and_restores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import saliencekit.train.fit as fit
    from saliencekit.pipeline import Step, run_demo, train_step

    seen: list[int] = []
    configs: list[Any] = []

    def fake_train(data: Any, out: Any, config: Any, **kw: Any) -> SimpleNamespace:
        configs.append(config)
        seen.append(torch.get_num_threads())
        return SimpleNamespace(metrics={"accuracy": 1.0})

    monkeypatch.setattr(fit, "train", fake_train)
    steps = [Step("probe", "records the thread count", lambda ctx: seen.append(torch.get_num_threads())),
             Step("train", "training, faked", train_step)]
    before, n = torch.get_num_threads(), _other_count()
    ctx = run_demo(tmp_path / "demo", quick=True, steps=steps, log=None, progress=False, num_threads=n)
    assert seen == [n, n]
    assert configs[0].num_threads == n  # recorded in the run's config.json too
    assert ctx.num_threads == n
    assert torch.get_num_threads() == before
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["num_threads"] == n
    with pytest.raises(InputError, match="num_threads"):
        run_demo(tmp_path / "demo2", quick=True, steps=steps, log=None, num_threads=0)
    assert not (tmp_path / "demo2").exists()  # rejected before anything is written


def test_demo_cli_passes_threads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import saliencekit.pipeline as pipeline

    seen: dict[str, Any] = {}

    ctx = SimpleNamespace(metrics=None, timings={}, outputs={})
    monkeypatch.setattr(pipeline, "run_demo", lambda *a, **kw: seen.update(kw) or ctx)
    assert main(["demo", "--out", str(tmp_path), "--threads", "4", "--quiet"]) == 0
    assert seen["num_threads"] == 4
