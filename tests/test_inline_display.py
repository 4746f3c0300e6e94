"""Inline display in notebooks: Explanation.plot and its reprs, saliencekit.compare, the check results' verdict table.

Every figure is checked by what it draws (the arrays in its image layers, its titles, its colour-bar labels), every
HTML by parsing it, every PNG by decoding it.
"""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

import saliencekit as sk
from saliencekit.errors import InputError
from saliencekit.methods.base import Explanation
from saliencekit.trust.results import CheckResults
from saliencekit.viz.overlay import comparison_figure, overlay

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)).eval()


@pytest.fixture(scope="module")
def explained() -> tuple[dict[str, Explanation], torch.Tensor]:
    torch.manual_seed(1)
    x = torch.rand(3, 1, 20, 20)
    return sk.explain(_net(), x, methods=["gradient", "gradcam"]), x


def _overlay_axes(fig: Figure) -> list:
    """The panels that show a heat map (colour-bar axes hold no image)."""
    return [ax for ax in fig.axes if ax.images and ax.get_title() not in ("", "image")]


def _decode_png(png: bytes) -> Image.Image:
    assert png.startswith(PNG_MAGIC)
    im = Image.open(io.BytesIO(png))
    im.load()
    assert im.width > 50 and im.height > 50
    return im


class _Tables(HTMLParser):
    """Collects tables (rows of cell texts), the attributes of every td, and img sources."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.cells: list[dict[str, str | None]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("img", "br"):
            self.open.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
            if tag == "td":
                self.cells.append(dict(attrs))
        elif tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(html: str) -> _Tables:
    p = _Tables()
    p.feed(html)
    p.close()
    assert not p.open, f"unclosed tags: {p.open}"
    return p


# ----------------------------------------------------------------------------------------------- Explanation.plot


def test_plot_draws_each_map_over_its_image_normalised_for_display(explained) -> None:
    maps, x = explained
    for label, how in (("gradient", "percentile"), ("gradcam", "minmax")):
        e = maps[label]
        fig = e.plot(x, class_names=["normal", "effusion"])
        assert isinstance(fig, Figure)
        panels = _overlay_axes(fig)
        assert len(panels) == 3
        want = e.normalized("auto").numpy()
        for i, ax in enumerate(panels):
            image_layer, heat_layer = ax.images
            assert np.allclose(heat_layer.get_array(), want[i], atol=1e-6)  # the map as the CLI draws it
            assert np.allclose(image_layer.get_array(), (x[i, 0] - x[i, 0].min()) / (x[i, 0].max() - x[i, 0].min()))
            assert heat_layer.get_alpha() == 0.5
            cls = ["normal", "effusion"][int(e.targets[i])]
            assert ax.get_title().startswith(f"image {i}: explaining {cls}")
        bars = [ax for ax in fig.axes if ax.get_ylabel().startswith("saliency")]
        assert {ax.get_ylabel() for ax in bars} == {f"saliency ({how})"} and len(bars) == 3
        assert fig.texts and fig.texts[0].get_text().startswith(label)  # the suptitle names the method


def test_plot_choices_index_alone_and_errors(explained) -> None:
    maps, x = explained
    e = maps["gradient"]
    fig = e.plot(x, index=[2, 0], normalization="signed")
    panels = _overlay_axes(fig)
    assert [ax.get_title().split(":")[0] for ax in panels] == ["image 2", "image 0"]
    assert np.allclose(panels[0].images[-1].get_array(), e.normalized("signed")[2].numpy(), atol=1e-6)
    alone = e.plot()  # no images: the maps alone, opaque
    assert all(len(ax.images) == 1 and ax.images[0].get_alpha() == 1.0 for ax in _overlay_axes(alone))
    one = e.select(1).plot(x[1])  # one image given as (C, H, W)
    assert len(_overlay_axes(one)) == 1
    with pytest.raises(InputError, match="2 images for 3 maps"):
        e.plot(x[:2])
    with pytest.raises(InputError, match="out of range"):
        e.plot(x, index=5)
    with pytest.raises(InputError, match="shape"):
        e.plot(torch.rand(3, 1, 10, 10))
    with pytest.raises(InputError, match="normalisation"):
        e.plot(x, normalization="loud")
    five = Explanation("not_registered", torch.rand(7, 6, 6))  # unknown method: min-max, said on the colour bar
    grid = five.plot(max_columns=3)
    assert len(_overlay_axes(grid)) == 7
    assert {ax.get_ylabel() for ax in grid.axes if ax.get_ylabel()} == {"saliency (minmax)"}


def test_explanation_reprs_are_png_and_html(explained) -> None:
    maps, _ = explained
    e = maps["gradcam"]
    assert repr(e) == "Explanation('gradcam', 3 maps of 20x20, layer='3')"  # the last ReLU
    _decode_png(e._repr_png_())
    page = _parse(e._repr_html_())
    rows = page.rows
    assert rows[0] == ["image", "target", "predicted", "explained score"]
    assert len(rows) == 1 + 3
    for i, row in enumerate(rows[1:]):
        assert row[:3] == [str(i), str(int(e.targets[i])), str(int(e.predictions[i]))]
        assert float(row[3]) == pytest.approx(float(e.scores[i]), rel=1e-3)
    assert len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,")
    _decode_png(base64.b64decode(page.images[0].split(",", 1)[1]))
    bundle = e._repr_mimebundle_()
    assert set(bundle) == {"text/html", "image/png", "text/plain"}
    assert base64.b64encode(bundle["image/png"]).decode() in bundle["text/html"]  # drawn once, used twice
    many = Explanation("gradient", torch.rand(12, 8, 8), targets=torch.zeros(12, dtype=torch.long))
    assert len(_parse(many._repr_html_()).rows) == 1 + 8  # the first eight inline
    assert "the first 8 shown" in many._repr_html_()


def test_html_escapes_names() -> None:
    e = Explanation("<script>x</script>", torch.rand(1, 6, 6), params={"layer": "<b>"})
    page = e._repr_html_()
    assert "<script>" not in page and "<b>" not in page and "&lt;script&gt;" in page


# ----------------------------------------------------------------------------------------------- compare


def test_compare_is_the_comparison_grid_one_block_per_image(explained) -> None:
    maps, x = explained
    fig = sk.compare(maps, x, class_names=["normal", "effusion"], labels=torch.tensor([1, 0, 1]), title="three images")
    assert isinstance(fig, Figure)
    images = [ax for ax in fig.axes if ax.get_title() == "image"]
    assert len(images) == 3
    for i, ax in enumerate(images):
        assert ax.get_ylabel().startswith(f"image {i} ({['effusion', 'normal', 'effusion'][i]}): explaining ")
        shown = ax.images[0].get_array()
        assert np.allclose(shown, (x[i, 0] - x[i, 0].min()) / (x[i, 0].max() - x[i, 0].min()))
    panels = _overlay_axes(fig)
    assert [ax.get_title() for ax in panels] == ["gradient", "gradcam"] * 3
    for k, ax in enumerate(panels):
        label = ["gradient", "gradcam"][k % 2]
        assert np.allclose(ax.images[-1].get_array(), maps[label].normalized("auto")[k // 2].numpy(), atol=1e-6)
    assert fig.texts[0].get_text() == "three images"
    one = sk.compare([maps["gradient"]], x, index=1)  # a list of explanations, labelled by method
    assert [ax.get_title() for ax in _overlay_axes(one)] == ["gradient"]
    with pytest.raises(InputError, match="different numbers of images"):
        sk.compare({"a": maps["gradient"], "b": maps["gradcam"].select([0, 1])}, x)
    with pytest.raises(InputError, match="2 labels for 3 images"):
        sk.compare(maps, x, labels=[0, 1])
    with pytest.raises(InputError, match="explained images"):
        sk.compare(maps, None)
    with pytest.raises(InputError, match="needs explanations"):
        sk.compare({}, x)


def test_comparison_figure_takes_an_image_per_block_and_overlay_takes_none() -> None:
    a, b = np.zeros((6, 6)), np.ones((6, 6))
    a[0, 0] = b[0, 0] = 0.5
    fig = comparison_figure([a, b], [{"m": np.eye(6)}, {"m": np.eye(6)}])
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.get_title() == "image"]
    assert np.allclose(shown[0], a / 0.5) and shown[1][0, 0] == 0 and shown[1][1, 1] == 1
    with pytest.raises(InputError, match="3 images for 2 blocks"):
        comparison_figure([a, b, a], [{"m": np.eye(6)}, {"m": np.eye(6)}])
    ax = overlay(None, np.eye(6))
    assert len(ax.images) == 1 and ax.images[0].get_alpha() == 1.0


def test_library_never_calls_pyplot_show() -> None:
    src = Path(sk.__file__).parent
    offenders = [str(p) for p in src.rglob("*.py") if re.search(r"\.show\(", p.read_text())]
    assert offenders == []


# ----------------------------------------------------------------------------------------------- check results


def _results() -> CheckResults:
    return CheckResults.from_json({
        "settings": {"images": 8, "skipped": {"localization": "no masks"}},
        "methods": {"gradient": {"method": "gradient"}, "gradcam": {"method": "gradcam"},
                    "edges<i>": {"method": "gradient"}},
        "checks": {},
        "summary": {
            "methods": {
                "gradient": {"model_randomization": "passes", "input_invariance": True, "deletion_auc": 0.2},
                "gradcam": {"model_randomization": "fails", "input_invariance": False},
                "edges<i>": {"model_randomization": {"level": "partly", "note": "signed only"},
                             "input_invariance": None},
            },
            "recommended": ["gradient"], "reasons": {"gradient": "passes randomisation"},
        },
    })


def test_check_results_html_is_the_verdict_table() -> None:
    results = _results()
    verdicts = results.verdicts()
    assert {k: {c: cell.text for c, cell in row.items()} for k, row in verdicts.items()} == {
        "gradient": {"model_randomization": "passes", "input_invariance": "pass"},
        "gradcam": {"model_randomization": "fails", "input_invariance": "fail"},
        "edges<i>": {"model_randomization": "partly", "input_invariance": "not run"},
    }
    page = _parse(results._repr_html_())
    header, *rows = page.rows[:4]
    assert header[0] == "method" and header[-1] == "recommended" and len(header) == 4
    assert [r[0] for r in rows] == ["gradient", "gradcam", "edges<i>"]
    keys = [c["data-key"] for c in page.cells[:3]]
    assert keys == ["model_randomization", "input_invariance", "recommended"]
    for row, (label, cells) in zip(rows, verdicts.items()):
        assert row[1:3] == [cells[k].text for k in keys[:2]]  # the table's cells are the result's verdicts
        assert row[3] == ("yes" if label in results.summary.recommended else "no")
    assert page.cells[3]["style"] and "8a1c12" in page.cells[3]["style"]  # fails: in red
    assert any(c.get("title") == "signed only" for c in page.cells)  # a level's note on hover
    html = results._repr_html_()
    assert "passes randomisation" in html and "localization: no masks" in html
    assert "<i>" not in html


def test_check_results_html_without_verdicts() -> None:
    empty = CheckResults.from_json({"summary": {"methods": {"gradient": {"deletion_auc": 0.3}}}})
    page = _parse(empty._repr_html_())
    assert page.rows == []
    assert "No method passed every check" in empty._repr_html_()


# ----------------------------------------------------------------------------------------------- what Jupyter calls


def test_ipython_display_formatter_finds_every_inline_display(explained) -> None:
    # what a notebook cell ending in the object shows: IPython's formatter, as ipykernel calls it
    formatters = pytest.importorskip("IPython.core.formatters", reason="needs IPython (ipykernel, in the test extra)")
    from saliencekit.run import History

    fmt = formatters.DisplayFormatter()
    maps, _ = explained
    data, _ = fmt.format(maps["gradcam"])
    assert {"image/png", "text/html"} <= set(data) and data["text/plain"] == repr(maps["gradcam"])
    _decode_png(data["image/png"])
    assert len(_parse(data["text/html"]).images) == 1

    data, _ = fmt.format(History({"epochs": [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69},
                                             {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6}], "best_epoch": 2}))
    _decode_png(data["image/png"])

    results = _results()
    data, _ = fmt.format(results)
    assert [r[0] for r in _parse(data["text/html"]).rows[1:4]] == ["gradient", "gradcam", "edges<i>"]
    # a short plain-text form (a terminal shows it), not every per-image number
    assert data["text/plain"] == "CheckResults(3 methods, 8 images; recommended: gradient)"
