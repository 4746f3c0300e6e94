"""The top-level API: the three steps after training are one import away, and ``import saliencekit`` stays cheap."""

from __future__ import annotations

import subprocess
import sys


def test_top_level_names_are_the_library_functions() -> None:
    import saliencekit
    from saliencekit.run import load_run
    from saliencekit.trust.results import load_checks
    from saliencekit.trust.runner import run_checks
    from saliencekit.trust.settings import CheckSettings
    from saliencekit.viz.report import build_report

    assert saliencekit.run_checks is run_checks and saliencekit.load_run is load_run
    assert saliencekit.build_report is build_report and saliencekit.load_checks is load_checks
    assert saliencekit.CheckSettings is CheckSettings
    assert {"run_checks", "load_run", "build_report"} <= set(saliencekit.__all__)


def test_import_saliencekit_does_not_import_torch() -> None:
    code = "import sys, saliencekit; saliencekit.__version__; print('torch' in sys.modules, 'jinja2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_audit_is_one_attribute_away() -> None:
    """``sk.audit`` is the audit package (not a function shadowing it) and ``sk.run_audit`` its entry point."""
    code = ("import sys, saliencekit as sk; before = 'saliencekit.audit' in sys.modules; "
            "import saliencekit.audit as pkg; from saliencekit.audit import run_audit; "
            "print(before, sk.audit is pkg, sk.run_audit is run_audit, 'audit' in dir(sk))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True", "True"]
