"""The README's data-section commands run as written (on small stand-in data, with fewer epochs and pixels)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from saliencekit.cli import main
from test_data_labels import make_nih
from test_train import make_blobs

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = {"train": ["--epochs", "1", "--image-size", "64", "--batch-size", "8", "--quiet"], "evaluate": ["--quiet"]}


def _commands() -> list[str]:
    text = README.read_text()
    section = text[text.index("### Your own images"):text.index("## Training and the run directory")]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.split("  #")[0].strip() for b in blocks for line in b.splitlines() if line.startswith("saliencekit ")]


def test_readme_data_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    commands = _commands()
    assert len(commands) >= 6 and any("--multilabel" in c for c in commands)
    monkeypatch.chdir(tmp_path)
    make_blobs(tmp_path / "data" / "cxr", n=6)
    make_nih(tmp_path / "nih")
    for command in commands:
        argv = shlex.split(command)[1:]
        rc = main(argv + FAST.get(argv[0], []))
        assert rc == 0, f"{command}: {capsys.readouterr().err}"
