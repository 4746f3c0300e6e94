"""No raw HTML reaches the report: class names, file names and method labels with markup, quotes and ampersands go
through training, the checks and the report, and Chromium shows them as text and runs no script.

Skips like tests/test_report_browser.py when Chromium or playwright is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CLASSES = ('ef<img src=x onerror="window.__xss=1">&\'fusion', "normal<b>&amp;")
FILE = "x<svg onload=window.__xss=2>&\"'"
LABEL = "</code></td><script>window.__xss=3</script>&\"'"


def _evil_data(root: Path, per_class: int = 8, size: int = 64) -> Path:
    """Two classes (a bright blob or not) whose folder and file names are markup; blob masks for localisation."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for k, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        (root / "masks" / cls).mkdir(parents=True)
        for i in range(per_class):
            img = rng.normal(90, 20, (size, size))
            mask = (yy - size * 0.6) ** 2 + (xx - size * (0.3 + 0.4 * rng.random())) ** 2 < (size / 6) ** 2
            if k == 0:
                img[mask] += 110
            name = f"{FILE}{i}.png"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / cls / name)
            Image.fromarray((mask * (k == 0) * 255).astype(np.uint8)).save(root / "masks" / cls / name)
    return root


def test_markup_in_names_is_shown_as_text_and_never_run(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                                 "(pip install playwright)")
    from test_report_browser import CHROMIUM_ARGS, _chromium

    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary (apt-get install -y chromium, or set SALIENCEKIT_CHROMIUM)")

    from saliencekit.train.fit import TrainConfig, train
    from saliencekit.trust import run_checks
    from saliencekit.viz.report import build_report

    data = _evil_data(tmp_path / "data")
    run = train(data, tmp_path / "run", TrainConfig(epochs=1, image_size=64, batch_size=8, device="cpu", seed=0),
                progress=False, command="saliencekit train <data> --out run")
    checks = tmp_path / "run" / "checks"
    result = run_checks(run, methods={LABEL: {"method": "gradient"}, "gradcam": {"method": "gradcam"}}, n_images=4,
                        checks=["faithfulness", "localization", "agreement", "input_invariance"], out_dir=checks,
                        deletion_steps=2, road_fractions=(0.5,), progress=False, command=f"check '{LABEL}'")
    assert LABEL in result.summary.methods
    assert any(FILE in r.file for r in result.images)
    report = build_report(tmp_path / "run", tmp_path / "report.html", images=2, progress=False)
    html = report.read_text()
    assert "<script" not in html and "<svg" not in html and "onerror=" not in html.replace("onerror=&#34;", "")

    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        except Exception as exc:  # a broken browser install is an environment problem, not a report bug
            pytest.skip(f"Chromium at {exe} does not start: {exc}")
        try:
            page = browser.new_page()
            page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.goto(report.resolve().as_uri(), wait_until="load")
            state = page.evaluate("""() => ({
                xss: window.__xss === undefined ? null : window.__xss,
                scripts: document.scripts.length,
                svgs: document.querySelectorAll('svg').length,
                handlers: [...document.querySelectorAll('*')].filter(
                    e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
                text: document.body.innerText,
                rows: [...document.querySelectorAll('#verdict-table tr[data-method]')].map(r => r.dataset.method),
            })""")
        finally:
            browser.close()
    assert problems == []
    assert state["xss"] is None and state["scripts"] == 0 and state["svgs"] == 0 and state["handlers"] == 0
    assert sorted(state["rows"]) == sorted([LABEL, "gradcam"])  # the label, intact, as an attribute value
    for text in (*CLASSES, FILE, LABEL):  # shown as text: in the data, verdict, explanations and checks sections
        assert text in state["text"], text


def test_no_template_or_python_marks_text_safe() -> None:
    """Autoescaping cannot be bypassed: no template turns it off or marks a value safe, no Python builds Markup."""
    import saliencekit

    root = Path(saliencekit.__file__).parent
    templates = [*root.glob("viz/report/templates/**/*.j2"), *root.glob("trust/checks/templates/*.j2")]
    assert len(templates) >= 15
    for path in templates:
        text = path.read_text().lower().replace(" ", "")
        assert "|safe" not in text and "autoescapefalse" not in text, path
    for path in [*root.glob("viz/report/*.py"), *root.glob("trust/checks/*.py")]:
        assert "Markup" not in path.read_text(), path
