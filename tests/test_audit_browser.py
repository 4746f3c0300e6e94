"""Open the audit page in a real headless Chromium: every image loads, no console error, no request leaves the
file, the flagged cluster is at the top; a screenshot is saved (kept in ``SALIENCEKIT_SCREENSHOT_DIR`` when set).
Skips with the reason when Chromium or playwright is missing (see tests/test_report_browser.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

pytest.importorskip("zarr", reason="the audit store needs zarr v3 (pip install saliencekit[audit])")
pytest.importorskip("sklearn", reason="SpRAy needs scikit-learn (pip install saliencekit[audit])")


def test_audit_page_in_headless_chromium(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from audit_toys import planted_store
    from saliencekit.audit.runner import analyze
    from test_report_browser import CHROMIUM_ARGS, _chromium

    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary (apt-get install -y chromium, or set SALIENCEKIT_CHROMIUM)")
    out, _ = planted_store(tmp_path / "audit", shortcut=True)
    _, page_path = analyze(out, progress=False)
    problems: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        except Exception as exc:
            pytest.skip(f"Chromium at {exe} does not start: {exc}")
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => ({w: i.naturalWidth, h: i.naturalHeight,"
                                   " done: i.complete, alt: i.alt}))")
            ids = set(page.evaluate("Array.from(document.querySelectorAll('[id]')).map(e => e.id)"))
            box = page.evaluate("(() => { const r = document.getElementById('flagged').getBoundingClientRect();"
                                " return [r.top, r.width, r.height]; })()")
            shot = tmp_path / "audit.png"
            page.screenshot(path=str(shot), full_page=True)
            keep = os.environ.get("SALIENCEKIT_SCREENSHOT_DIR")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(keep) / "audit_full.png")
                page.screenshot(path=str(Path(keep) / "audit_top.png"))
        finally:
            browser.close()
    assert problems == []
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
    assert len(images) >= 4 and all(i["done"] and i["w"] > 0 and i["h"] > 0 for i in images)
    assert {"flagged", "dataset", "clusters", "errors", "reproducibility"} <= ids
    top, width, height = box
    assert top < 200 and width > 0 and height > 200  # the flagged cluster is the first thing on the page
    assert shot.stat().st_size > 10_000
