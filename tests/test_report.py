"""The HTML trust report: sections, verdict table against checks.json, shortcut warning, graceful gaps, CLI.

The fixtures build a tiny real run (a few 64x64 images, two epochs) and a checks.json that follows
docs/checks_json.md, with seeded random numbers so that no value in the page can be hard-coded.
"""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from saliencekit.cli import main
from saliencekit.errors import DataError, RunDirError
from saliencekit.viz.report import SECTION_IDS, build_report, select_images

SECTIONS = ("verdict", "data", "training", "performance", "explanations", "trust", "reproducibility")
TRUST_SUBSECTIONS = ("trust-model-randomization", "trust-data-randomization", "trust-input-invariance",
                     "trust-agreement", "trust-faithfulness", "trust-localization")
VERDICT_KEYS = ("model_randomization", "data_randomization", "input_invariance", "deletion_auc", "insertion_auc",
                "relevance_mass", "pointing_game")


# ----------------------------------------------------------------------------------------------- fixtures


def make_data(root: Path, per_class: int = 12, size: int = 64, seed: int = 0) -> Path:
    """Two classes: 'effusion' images have a bright blob at the bottom (with a lesion mask), 'normal' do not."""
    rng = np.random.default_rng(seed)
    for cls in ("effusion", "normal"):
        (root / cls).mkdir(parents=True)
    (root / "masks" / "effusion").mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(per_class):
        for cls in ("effusion", "normal"):
            img = rng.normal(90, 20, (size, size))
            if cls == "effusion":
                cy, cx = size * 0.75 + rng.integers(-4, 5), size * (0.3 + 0.4 * rng.random())
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 6) ** 2
                img[mask] += 110
                Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / cls / f"{i:03d}.png")
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / cls / f"{i:03d}.png")
    (root / "dataset.json").write_text(json.dumps({"generator": "test blobs", "per_class": per_class, "size": size,
                                                   "seed": seed, "shortcut_fraction": 0.0}))
    return root


def make_run(tmp: Path) -> Path:
    from saliencekit.train.fit import TrainConfig, train

    data = make_data(tmp / "data")
    cfg = TrainConfig(epochs=2, image_size=64, batch_size=8, device="cpu", seed=0)
    train(data, tmp / "run", cfg, progress=False, command="saliencekit train data --out run")
    return tmp / "run"


def _summary(rng: np.random.Generator, n: int = 4) -> dict[str, Any]:
    values = rng.random(n).round(6).tolist()
    mean = float(np.mean(values))
    return {"mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05, "n": n, "values": values}


def _png(path: Path, seed: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
    return path.name


def make_checks(out: Path, methods: tuple[str, ...] = ("gradient", "gradient_x_input"), detected: bool = False,
                present: bool = True, seed: int = 0, localization: bool = True) -> Path:
    """A checks.json following docs/checks_json.md, with seeded random values and real PNG figures."""
    rng = np.random.default_rng(seed)
    fig = 0

    def figure(rel: str) -> str:
        nonlocal fig
        fig += 1
        _png(out / rel, seed * 100 + fig)
        return rel

    metrics = ["spearman_abs", "spearman", "ssim", "hog"]
    steps = ["original", "classifier.out", "classifier.fc2", "features.conv7", "features.conv1"]
    summary_methods = {}
    for k, m in enumerate(methods):
        summary_methods[m] = {
            "model_randomization": bool(rng.random() > 0.5), "data_randomization": bool(rng.random() > 0.5),
            "input_invariance": None if k == len(methods) - 1 else bool(rng.random() > 0.5),
            "deletion_auc": float(rng.random()), "insertion_auc": float(rng.random()),
            "relevance_mass": float(rng.random()) if localization else None,
            "pointing_game": float(rng.random()) if localization else None,
        }
    checks: dict[str, Any] = {
        "model_randomization": {
            "metrics": metrics,
            "cascading": {
                "steps": steps, "null": {k: _summary(rng) for k in metrics},
                "methods": {m: {"curves": {k: rng.random(len(steps)).tolist() for k in metrics},
                                "curves_ci": {k: [[0.0, 1.0]] * len(steps) for k in metrics},
                                "passed": summary_methods[m]["model_randomization"], "reason": f"{m} reason mr",
                                "figures": [figure(f"model_randomization/strip_{m}.png")]} for m in methods},
            },
            "figures": [figure("model_randomization/cascading_curves.png")],
        },
        "data_randomization": {
            "random_model_train_accuracy": 0.97, "epochs": 30,
            "methods": {m: {"similarity": {"spearman_abs": _summary(rng)}, "passed": True, "reason": "r",
                            "figures": []} for m in methods},
            "null": {"spearman_abs": _summary(rng)}, "figures": [figure("data_randomization/maps.png")],
        },
        "input_invariance": {
            "shift": 0.5,
            "compensated": {"output_max_abs_change": 1e-6, "methods": {
                m: {"similarity": {"spearman": _summary(rng), "ssim": _summary(rng)}, "max_abs_change": _summary(rng),
                    "invariant": bool(k % 2), "figures": []} for k, m in enumerate(methods)}},
            "uncompensated": {"prediction_changed_fraction": 0.1, "probability_max_abs_change": 0.2,
                              "methods": {m: {"similarity": {}, "figures": []} for m in methods}},
            "figures": [figure("input_invariance/maps.png")],
        },
        "agreement": {"methods": list(methods), "metrics": ["spearman"],
                      "matrices": {"spearman": np.eye(len(methods)).tolist()},
                      "figures": [figure("agreement/matrix.png")]},
        "faithfulness": {"methods": {m: {"deletion_auc": _summary(rng), "insertion_auc": _summary(rng),
                                         "figures": [figure(f"faithfulness/curves_{m}.png")]} for m in methods},
                         "ranking": list(methods), "figures": [figure("faithfulness/curves.png")]},
    }
    skipped = []
    if localization:
        checks["localization"] = {"mask": "lesion", "methods": {
            m: {"pointing_game": _summary(rng), "energy_pointing_game": _summary(rng), "relevance_mass": _summary(rng),
                "relevance_rank": _summary(rng), "shortcut_share": _summary(rng) if present else None, "figures": []}
            for m in methods}, "ranking": list(methods), "figures": [],
            "mask_area_share": _summary(rng), "shortcut_area_share": {"mean": float(rng.uniform(0.001, 0.009))}}
    else:
        skipped.append({"check": "localization", "reason": "the data has no lesion masks"})
    marker, lesion = float(rng.uniform(0.5, 0.9)), float(rng.uniform(0.01, 0.2))
    data = {
        "saliencekit_version": "0.1.0", "created": "2026-11-23T13:00:00Z",
        "command": f"saliencekit check run --out {out}", "run_dir": "run",
        "settings": {"images": 4, "seed": 7, "device": "cpu", "checks": list(checks), "skipped": skipped},
        "methods": {m: {"method": m, "options": {}} for m in methods},
        "images": [{"file": "effusion/000.png", "label": 0, "label_name": "effusion", "prediction": 0,
                    "probability": 0.9}] * 4,
        "checks": checks,
        "summary": {
            "methods": summary_methods, "recommended": [methods[0]],
            "reasons": {methods[0]: f"{methods[0]} passes the randomisation checks and is the most faithful."},
            "shortcut": {"present_in_data": present, "detected": detected, "marker_share": marker,
                         "lesion_share": lesion, "evidence": "maps sit on the marker", "method": methods[0],
                         "marker_area_share": checks["localization"]["shortcut_area_share"]["mean"] if localization
                         else None, "marker_share_by_method": {m: marker / (k + 1) for k, m in enumerate(methods)}},
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "checks.json").write_text(json.dumps(data, indent=1))
    return out / "checks.json"


def shared_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny trained run per test session, shared by the report tests and the browser test."""
    base = tmp_path_factory.getbasetemp() / "report_shared"
    if not (base / "run" / "metrics.json").is_file():
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        base.mkdir()
        make_run(base)
    return base / "run"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_run(tmp_path_factory)


# ----------------------------------------------------------------------------------------------- HTML parsing


class _Page(HTMLParser):
    """Collects ids, images, links, scripts and the verdict table's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.verdict: dict[str, dict[str, dict[str, str]]] = {}
        self._in_verdict = False
        self._row: str | None = None
        self._cell: dict[str, str] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.imgs.append(a)
        for k in ("src", "href"):
            if k in a:
                self.urls.append(a[k])
        if tag == "table" and a.get("id") == "verdict-table":
            self._in_verdict = True
        if self._in_verdict and tag == "tr" and "data-method" in a:
            self._row = a["data-method"]
            self.verdict[self._row] = {}
        if self._in_verdict and self._row and tag == "td":
            self._cell = {**a, "text": ""}

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_verdict = False
        if tag == "td" and self._cell is not None and self._row is not None:
            self.verdict[self._row][self._cell.get("data-key", "")] = self._cell
            self._cell = None
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell["text"] += data


def parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def expected_cell(value: Any) -> str:
    """What the page must show for a summary value (written independently of the report's formatter)."""
    if value is True:
        return "pass"
    if value is False:
        return "fail"
    if value is None:
        return "not run"
    if isinstance(value, str):  # a verdict level: passes / partly / fails / no verdict
        return value
    return "%.3f" % value  # noqa: UP031


# ----------------------------------------------------------------------------------------------- tests


def test_select_images_covers_every_category() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 40)
    predicted = np.where(rng.random(40) < 0.3, 1 - labels, labels)
    conf = rng.random(40)
    chosen = select_images(labels, predicted, conf, 8)
    assert len(chosen) == 8 and len(set(chosen)) == 8
    cats = {(int(labels[i]), bool(labels[i] != predicted[i])) for i in chosen}
    assert cats == {(0, False), (0, True), (1, False), (1, True)}
    # within a category, the most confident image is taken first
    for cat in cats:
        members = [i for i in range(40) if (int(labels[i]), bool(labels[i] != predicted[i])) == cat]
        picked = [i for i in chosen if i in members]
        assert picked[0] == max(members, key=lambda i: conf[i])
    assert select_images([0, 1], [0, 1], [0.5, 0.5], 10) == [0, 1]


def test_full_report_sections_verdict_and_embedding(run_dir: Path, tmp_path: Path) -> None:
    checks = make_checks(tmp_path / "checks", seed=1)
    out = build_report(run_dir, tmp_path / "r.html", checks=checks.parent, images=4, progress=False)
    page = parse(out)
    html_text = out.read_text()
    for sid in (*SECTIONS, *TRUST_SUBSECTIONS, "verdict-table", "recommended"):
        assert sid in page.ids, sid
    assert tuple(SECTION_IDS) == SECTIONS
    # the sections come in page order
    order = [page.ids.index(s) for s in SECTIONS]
    assert order == sorted(order)
    # self-contained: every image is an embedded PNG, links are in-page, no scripts or stylesheets
    assert len(page.imgs) >= 10
    for img in page.imgs:
        assert img["src"].startswith("data:image/png;base64,"), img["src"][:60]
        assert img.get("alt")
    for url in page.urls:
        assert url.startswith(("data:image/png;base64,", "#")), url[:80]
    assert "script" not in page.tags and "link" not in page.tags
    assert not re.search(r"https?://", html_text)
    # each check's own figures are embedded once; per-method figures that repeat them are listed by name
    trust = html_text[html_text.index('id="trust"'):html_text.index('id="reproducibility"')]
    assert trust.count("<img ") == 5
    assert "model_randomization/strip_gradient.png" in trust and "faithfulness/curves_gradient.png" in trust
    # the verdict table shows exactly what checks.json says
    data = json.loads(checks.read_text())
    summary = data["summary"]["methods"]
    assert set(page.verdict) == set(summary)
    for method, values in summary.items():
        row = page.verdict[method]
        for key in VERDICT_KEYS:
            cell = row[key]
            assert cell["text"].strip() == expected_cell(values[key]), (method, key)
            raw = json.loads(cell["data-value"])
            if isinstance(values[key], float):
                assert math.isclose(raw, values[key], rel_tol=0, abs_tol=1e-12)
            else:
                assert raw == values[key]
        assert (row["recommended"]["text"].strip() == "yes") == (method in data["summary"]["recommended"])
    # the recommendation's reason is on the page, and no warning without a detected shortcut
    assert data["summary"]["reasons"]["gradient"] in html_text
    assert "shortcut-warning" not in page.ids
    assert "shortcut-note" in page.ids  # present in the data but not learned: a quiet note, not a warning
    # performance numbers come from metrics.json
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"{metrics['accuracy']:.3f}" in html_text
    # reproducibility: commands, seeds and method parameters
    assert "saliencekit train data --out run" in html_text
    assert data["command"] in html_text
    assert "build_report(" in html_text
    assert '"reduce": "sum"' in "".join(page.text)  # the page's text, entities decoded
    # atomic write: no temporary file left beside the report
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["r.html"]


@pytest.mark.parametrize("detected", [True, False])
def test_shortcut_warning_iff_detected(run_dir: Path, tmp_path: Path, detected: bool) -> None:
    checks = make_checks(tmp_path / "checks", detected=detected, seed=2 + detected)
    out = build_report(run_dir, tmp_path / "r.html", checks=checks, methods=["gradient"], images=0, progress=False)
    page = parse(out)
    assert ("shortcut-warning" in page.ids) == detected
    if detected:
        text = out.read_text()
        sc = json.loads(checks.read_text())["summary"]["shortcut"]
        loc = json.loads(checks.read_text())["checks"]["localization"]
        warning = text[text.index('id="shortcut-warning"'):text.index("</aside>")]
        words = " ".join(re.sub(r"<[^>]+>", " ", warning).split())
        # what was measured: the method, the marker's share of the map mass against its share of the image area,
        # and the lesion's for comparison
        marker, area = sc["marker_share"], sc["marker_area_share"]
        lesion, lesion_area = sc["lesion_share"], loc["mask_area_share"]["mean"]
        assert (f"The {sc['method']} maps put {100 * marker:.0f}% of their mass on the marker, which covers "
                f"{100 * area:.1f}% of the image ({marker / area:.0f}\u00d7 its area share)") in words
        assert (f"and {100 * lesion:.0f}% of their mass on the lesion, which covers {100 * lesion_area:.0f}% of the "
                f"image ({lesion / lesion_area:.1f}\u00d7 its area share)") in words
        other = sc["marker_share_by_method"]["gradient_x_input"]
        assert f"gradient_x_input {100 * other:.0f}% ({other / area:.0f}\u00d7)" in words
        # what it means, without claiming more than the maps show, and how to test it
        assert "instead of" not in words and "may depend on the marker" in words
        assert "cover or remove the marker" in words
        # the warning comes before every section
        assert text.index('id="shortcut-warning"') < text.index('id="verdict"')
        assert "shortcut-note" not in page.ids


def test_no_shortcut_in_data_no_warning_no_note(run_dir: Path, tmp_path: Path) -> None:
    checks = make_checks(tmp_path / "c", present=False, detected=False, localization=False, seed=5)
    out = build_report(run_dir, tmp_path / "r.html", checks=checks, methods=["gradient"], images=0, progress=False)
    page = parse(out)
    assert "shortcut-warning" not in page.ids and "shortcut-note" not in page.ids
    text = out.read_text()
    # a check that does not apply says why, and its scores show as "not run"
    loc = text[text.index('id="trust-localization"'):]
    assert "the data has no lesion masks" in loc[:2000]
    assert page.verdict["gradient"]["relevance_mass"]["text"] == "not run"


def test_missing_checks_degrade_gracefully(run_dir: Path, tmp_path: Path) -> None:
    out = build_report(run_dir, tmp_path / "r.html", methods=["gradient"], images=2, progress=False)
    page = parse(out)
    for sid in SECTIONS:
        assert sid in page.ids
    text = out.read_text()
    hint = f"saliencekit check {run_dir} --out {run_dir / 'checks'}"
    for sid in ("verdict", "trust"):
        part = text[text.index(f'id="{sid}"'):]
        assert "Not computed" in part[:1500] and hint in part[:1500]
    assert "shortcut-warning" not in page.ids
    assert "verdict-table" not in page.ids
    # the explanations are still there: one figure per chosen image
    expl = text[text.index('id="explanations"'):text.index('id="trust"')]
    assert expl.count("<img ") == 2


def test_missing_run_files_data_and_broken_checks_degrade(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    run2 = tmp_path / "run2"
    shutil.copytree(run_dir, run2)
    for name in ("curves.png", "history.json", "metrics.json", "confusion.png", "roc.png"):
        (run2 / name).unlink()
    bad = run2 / "checks" / "checks.json"  # the default location, holding a broken file
    bad.parent.mkdir()
    bad.write_text("{not json")
    out = build_report(run2, None, methods=["gradient"], images=2, progress=False, data=tmp_path / "moved")
    assert out == run2 / "report.html"
    page = parse(out)
    for sid in SECTIONS:
        assert sid in page.ids
    text = out.read_text()
    assert "No test metrics" in text and "No training history" in text
    assert "data folder not found" in text
    assert "cannot read checks file" in text and "Not computed" in text


def test_errors_for_bad_paths(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="not a saliencekit run directory"):
        build_report(tmp_path, tmp_path / "r.html", progress=False)
    with pytest.raises(DataError, match="checks file not found"):
        build_report(run_dir, tmp_path / "r.html", checks=tmp_path / "nope", progress=False)
    assert not (tmp_path / "r.html").exists()


def test_cli_report(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checks = make_checks(tmp_path / "checks", seed=9)
    out = tmp_path / "cli.html"
    rc = main(["report", str(run_dir), "--out", str(out), "--checks", str(checks.parent), "--methods",
               "gradient,nosuchmethod", "--images", "1", "--no-progress"])
    assert rc == 0
    assert str(out) in capsys.readouterr().out
    text = out.read_text()
    assert f"saliencekit report {run_dir} --out {out}" in text  # the command that made the report
    page = parse(out)
    assert set(page.verdict) == {"gradient", "gradient_x_input"}
    assert "nosuchmethod" in text and "is not registered" in text  # an unknown method is skipped with a note
    assert main(["report", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "not a saliencekit run directory" in capsys.readouterr().err


def test_compact_png_shrinks_wide_transparent_figures() -> None:
    import io

    from saliencekit.viz.report._images import compact_png as _compact_png

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 255, (700, 2400, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:10, :10, 3] = 0  # a transparent corner becomes white
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    small = _compact_png(buf.getvalue())
    with Image.open(io.BytesIO(small)) as im:
        assert im.width == 1120 and im.height == round(700 * 1120 / 2400)
        assert im.mode in ("RGB", "P", "L")
        assert im.convert("RGB").getpixel((0, 0)) == (255, 255, 255)
    assert len(small) < len(buf.getvalue())
    tiny = io.BytesIO()
    Image.fromarray(rgba[:20, :20, :3]).save(tiny, format="PNG")
    assert len(_compact_png(tiny.getvalue())) <= len(tiny.getvalue())  # never larger than the original
