"""``saliencekit --help`` and ``--version`` answer without importing torch; each command imports only its module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from saliencekit.cli import _COMMANDS, build_parser

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["-h"], []])
def test_top_level_help_and_version_do_not_import_torch(argv: list[str]) -> None:
    out = _run(
        "import sys\n"
        "from saliencekit.cli import main\n"
        "try:\n"
        f"    code = main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'matplotlib', 'PIL') if m in sys.modules)\n"
        "print('IMPORTED', heavy, 'CODE', code)\n"
    )
    assert out.returncode == 0, out.stderr
    assert "IMPORTED [] CODE" in out.stdout, out.stdout
    if argv == ["--version"]:
        assert "saliencekit 0." in out.stdout
    else:
        for name in _COMMANDS:
            assert name in out.stdout


def test_the_console_script_answers_help_and_version() -> None:
    for flag in ("--help", "--version"):
        out = subprocess.run([sys.executable, "-m", "saliencekit", flag], capture_output=True, text=True,
                             timeout=120, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0 and out.stdout.strip(), out.stderr


def test_every_command_is_registered_by_its_module_with_the_tables_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert list(sub.choices) == list(_COMMANDS)
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert helps == {name: text for name, (_, text) in _COMMANDS.items()}
    for name, (module, _) in _COMMANDS.items():
        assert name in build_parser(name)._subparsers._group_actions[0].choices, (name, module)


def test_unknown_command_lists_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    from saliencekit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["explian"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'explian'" in err and "explain" in err
