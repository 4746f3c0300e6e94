"""Open the generated report in a real headless Chromium: every image loads, nothing goes to the console as an
error, no request leaves the file, every section is there; a full-page screenshot is saved.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python package (``pip install
playwright``; no ``playwright install``: the system browser is used). Skips with the reason when either is missing.
Set ``SALIENCEKIT_SCREENSHOT_DIR`` to keep the screenshot; ``SALIENCEKIT_CHROMIUM`` to use another browser binary.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str | None:
    for candidate in (os.environ.get("SALIENCEKIT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def test_report_in_headless_chromium(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                                 "(pip install playwright)")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary (apt-get install -y chromium, or set SALIENCEKIT_CHROMIUM)")

    from saliencekit.viz.report import build_report
    from test_report import SECTIONS, TRUST_SUBSECTIONS, make_checks, shared_run

    run_dir = shared_run(tmp_path_factory)
    checks = make_checks(tmp_path / "checks", detected=True, seed=11)
    report = build_report(run_dir, tmp_path / "report.html", checks=checks, images=2, progress=False)

    problems: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        except Exception as exc:  # a broken browser install is an environment problem, not a report bug
            pytest.skip(f"Chromium at {exe} does not start: {exc}")
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => ({w: i.naturalWidth, h: i.naturalHeight, done: i.complete,"
                " alt: i.alt}))"
            )
            ids = set(page.evaluate("Array.from(document.querySelectorAll('[id]')).map(e => e.id)"))
            visible = page.evaluate(
                "['verdict-table', 'shortcut-warning'].map(id => { const r = document.getElementById(id)"
                ".getBoundingClientRect(); return r.width > 0 && r.height > 0; })"
            )
            warning_top = page.evaluate("document.getElementById('shortcut-warning').getBoundingClientRect().top")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            keep = os.environ.get("SALIENCEKIT_SCREENSHOT_DIR")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(keep) / "report_full.png")
                page.screenshot(path=str(Path(keep) / "report_top.png"))
        finally:
            browser.close()

    assert problems == []
    # only the file itself (and its embedded data: URIs) was fetched
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
    assert len(images) >= 8
    broken = [i["alt"] for i in images if not (i["done"] and i["w"] > 0 and i["h"] > 0)]
    assert broken == []
    missing = [s for s in (*SECTIONS, *TRUST_SUBSECTIONS, "shortcut-warning", "verdict-table") if s not in ids]
    assert missing == []
    assert visible == [True, True]
    assert warning_top < 400  # at the top of the page, before the verdict
    assert shot.stat().st_size > 10_000
