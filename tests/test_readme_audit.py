"""The README's "Audit a whole dataset" commands and Python lines run as written (on a small stand-in: fewer,
smaller images, one epoch; the Ray line only where Ray is installed and starts)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

pytest.importorskip("zarr", reason="the audit store needs zarr v3 (pip install saliencekit[audit])")
pytest.importorskip("sklearn", reason="SpRAy needs scikit-learn (pip install saliencekit[audit])")

from saliencekit.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = {"data": ["--per-class", "12", "--size", "64"],
        "train": ["--epochs", "1", "--image-size", "64", "--batch-size", "8", "--quiet"],
        "audit": ["--chunk-size", "8", "--quiet", "--workers", "0", "--device", "cpu"],
        "report": ["--images", "0", "--quiet"]}


def _section() -> str:
    text = README.read_text()
    return text[text.index("## Audit a whole dataset"):text.index("## Performance")]


def test_readme_audit_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    section = _section()
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = [line.split("  #")[0].strip() for b in blocks for line in b.splitlines()
                if line.startswith("saliencekit ")]
    assert [shlex.split(c)[1] for c in commands] == ["data", "train", "audit", "report", "audit"]
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command)[1:]
        if "--engine" in argv:
            pytest.importorskip("ray", reason="the Ray line needs Ray (pip install saliencekit[ray])")
        rc = main(argv + FAST[argv[0]])
        err = capsys.readouterr().err
        if rc != 0 and "cannot start a local Ray instance" in err:
            pytest.skip(f"a local Ray instance does not start here: {err.strip()}")
        assert rc == 0, f"{command}: {err}"
    assert 'id="audit-link"' in (tmp_path / "runs" / "cxr_marker" / "report.html").read_text()
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(code) == 1
    exec(compile(code[0], "README.md", "exec"), {})
    from saliencekit.audit import open_store
    from saliencekit.audit.store import differing_files

    ray_store = tmp_path / "runs" / "cxr_marker" / "audit_ray" / "maps.zarr"
    assert differing_files(open_store("runs/cxr_marker/audit").path, ray_store) == []  # engines agree
