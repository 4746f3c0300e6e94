"""The trust report: one self-contained HTML page that answers "should I believe this model, and
which saliency maps can I trust for it?".

The page is built from a run directory (``saliencekit train``), the checks' ``checks.json``
(``saliencekit check``, see ``docs/checks_json.md``) and explanations computed here for a few test
images. Every image is an embedded PNG (``data:`` URI), the styles are inline, there is no
JavaScript and no external URL: the file opens offline, from anywhere. Inputs that are missing
leave a note ("not computed: run ...") in their section instead of an error.

Sections (each a ``<section>`` with a stable ``id``): ``verdict`` (per-method verdict table and the
recommended methods; preceded by the ``shortcut-warning`` box when the checks found a method's maps
concentrated on a planted shortcut), ``data``, ``training``, ``performance``, ``explanations``, ``trust``
and ``reproducibility``.

>>> from saliencekit.viz.report import build_report
>>> build_report("runs/cxr", "runs/cxr/report.html")  # doctest: +SKIP
PosixPath('runs/cxr/report.html')
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import string
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from saliencekit import _atomic
from saliencekit._versions import library_versions
from saliencekit.errors import DataError, SaliencekitError
from saliencekit.methods.normalize import minmax_scale

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from saliencekit.run import Run

#: The ``id`` of every section, in page order.
SECTION_IDS = ("verdict", "data", "training", "performance", "explanations", "trust", "reproducibility")
SECTION_TITLES = {
    "verdict": "Verdict: which saliency maps to trust",
    "data": "Data",
    "training": "Training",
    "performance": "Test performance",
    "explanations": "Explanations",
    "trust": "Trust checks",
    "reproducibility": "Reproducibility",
}
#: The ``id`` of each trust-check subsection, by its key in ``checks.json``.
TRUST_IDS = {
    "model_randomization": "trust-model-randomization",
    "data_randomization": "trust-data-randomization",
    "input_invariance": "trust-input-invariance",
    "agreement": "trust-agreement",
    "faithfulness": "trust-faithfulness",
    "localization": "trust-localization",
    "complexity": "trust-complexity",
}
#: Columns of the verdict table: key in ``summary.methods``, header, kind ("check" or "score").
VERDICT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model_randomization", "Model random\u00adisation", "check"),
    ("data_randomization", "Data random\u00adisation", "check"),
    ("input_invariance", "Input invari\u00adance", "check"),
    ("deletion_auc", "Deletion AUC \u2193", "score"),
    ("insertion_auc", "Insertion AUC \u2191", "score"),
    ("relevance_mass", "Relevance mass \u2191", "score"),
    ("pointing_game", "Pointing game \u2191", "score"),
)
_CHECK_SENTENCES = {
    "model_randomization": "Model randomisation (Adebayo et al. 2018): the map must change when the model's weights "
                           "are re-initialised layer by layer, or it does not depend on what the model learned.",
    "data_randomization": "Data randomisation: the map must differ from that of the same network trained on shuffled "
                          "labels, or it does not depend on the labels.",
    "input_invariance": "Input invariance (Kindermans et al. 2017): adding a constant to every pixel, compensated in "
                        "the first layer so the model computes the same function, must leave the map unchanged.",
    "deletion_auc": "Deletion AUC: the target probability while the most salient pixels are removed first; lower "
                    "means the map found pixels the model needs.",
    "insertion_auc": "Insertion AUC: the probability while the most salient pixels are put back first; higher is "
                     "better.",
    "relevance_mass": "Relevance mass: the share of the map's positive mass inside the ground-truth lesion mask.",
    "pointing_game": "Pointing game: the share of images whose map maximum falls inside the lesion mask.",
    "shortcut_share": "Marker mass: the share of the map's mass on the planted shortcut marker (images with one).",
    "sparseness": "Sparseness: Gini index of the map (higher = fewer, stronger pixels).",
}
_EXTRA_HEADERS = {"shortcut_share": "Marker mass \u2193", "sparseness": "Sparseness",
                  "energy_pointing_game": "Energy pointing game \u2191"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PANELS_PER_ROW = 5  # image + maps per row of an explanation figure
_QUANTIZE_ABOVE = 600_000  # pixels: larger figures are reduced to 256 colours (small ones keep smooth colour bars)
_MAX_WIDTH = 1120  # pixels: the page's content width; wider images are scaled down before embedding


@dataclass
class _Context:
    """Everything the sections read (each part may be missing)."""

    run_dir: Path
    run: Run
    checks: dict[str, Any] | None = None
    checks_path: Path | None = None
    checks_problem: str | None = None
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    command: str = ""

    @property
    def checks_dir(self) -> Path | None:
        return None if self.checks_path is None else self.checks_path.parent

    @property
    def check_hint(self) -> str:
        return f"saliencekit check {self.run_dir} --out {self.run_dir / 'checks'}"


# --------------------------------------------------------------------------------------------- formatting


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def _value(v: Any) -> Any:
    """The number behind a value: the mean of a summary dict, else the value itself."""
    if isinstance(v, Mapping):
        return v.get("mean")
    return v


def _num(v: Any, digits: int = 3) -> str:
    v = _value(v)
    if _is_missing(v):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.2e}" if 0 < abs(v) < 10 ** -digits else f"{v:.{digits}f}"
    return str(v)


def _summary(v: Any) -> str:
    """``mean [ci_low, ci_high]`` of a summary dict (or a plain number)."""
    if isinstance(v, Mapping):
        mean, lo, hi = v.get("mean"), v.get("ci_low"), v.get("ci_high")
        if _is_missing(mean):
            return "n/a"
        if _is_missing(lo) or _is_missing(hi):
            return _num(mean)
        return f"{_num(mean)} [{_num(lo)}, {_num(hi)}]"
    return _num(v)


def _pct(v: Any) -> str:
    v = _value(v)
    if _is_missing(v):
        return "n/a"
    v = 100 * float(v)
    return f"{v:.0f}%" if abs(v) >= 1 or v == 0 else f"{v:.1f}%"


def verdict_cell(value: Any) -> tuple[str, str]:
    """Text and CSS class of one verdict-table cell: ``pass`` / ``fail`` for a check, ``not run`` when it was not,
    a number with three decimals for a score (``n/a`` when it could not be computed).

    >>> verdict_cell(True), verdict_cell(0.12345), verdict_cell(None)
    (('pass', 'pass'), ('0.123', 'num'), ('not run', 'na'))
    """
    value = _value(value)
    if isinstance(value, bool):
        return ("pass", "pass") if value else ("fail", "fail")
    if value is None:
        return "not run", "na"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a", "na"
    if isinstance(value, int | float):
        return f"{float(value):.3f}", "num"
    return str(value), ""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "", num_cols: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped unless they are ``_Raw``."""
    head = "".join(f'<th{" class=num" if i in num_cols else ""}>{_e(h)}</th>' for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            text = c.html if isinstance(c, _Raw) else _e(c)
            klass = " class=num" if i in num_cols else " class=text" if header[i] == "reason" else ""
            cells.append(f"<td{klass}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls_attr = f' class="{cls}"' if cls else ""
    return (f'<div class="table-wrap"><table{cls_attr}><thead><tr>{head}</tr></thead><tbody>'
            + "".join(body) + "</tbody></table></div>")


@dataclass
class _Raw:
    """Already-escaped HTML inside a table cell."""

    html: str


def _kv_table(items: Mapping[str, Any]) -> str:
    rows = []
    for k, v in items.items():
        if isinstance(v, Mapping | list | tuple) and v:
            cell = _Raw(f"<code>{_e(json.dumps(v, default=str))}</code>")
        else:
            cell = _num(v) if isinstance(v, float) else ("n/a" if v is None else v)
        rows.append(f"<tr><th>{_e(k)}</th><td>{cell.html if isinstance(cell, _Raw) else _e(cell)}</td></tr>")
    return f'<div class="table-wrap"><table class="kv"><tbody>{"".join(rows)}</tbody></table></div>'


def _code(obj: Any) -> _Raw:
    return _Raw(f"<code>{_e(json.dumps(obj, default=str))}</code>")


def _missing(text: str) -> str:
    return f'<p class="missing">{text}</p>'


def _not_computed(ctx: _Context, what: str = "") -> str:
    extra = f" ({_e(what)})" if what else ""
    problem = f" {_e(ctx.checks_problem)}." if ctx.checks_problem else ""
    return _missing(f"Not computed{extra}: run <code>{_e(ctx.check_hint)}</code>, then build the report "
                    f"again.{problem}")


def _section(sid: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{_e(SECTION_TITLES[sid])}</h2>\n{body}\n</section>'


def _subsection(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}" class="subsection">\n<h3>{_e(title)}</h3>\n{body}\n</section>'


# --------------------------------------------------------------------------------------------- images


def _figure_png(fig: Figure, dpi: int = 90) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    try:  # a pyplot figure would otherwise stay alive; a bare Figure is freed when it goes out of scope
        import matplotlib.pyplot as plt

        plt.close(fig)
    except Exception:  # pragma: no cover - pyplot unavailable
        pass
    return buf.getvalue()


def _as_png(data: bytes) -> bytes:
    """PNG bytes of an image file's bytes (PNGs pass through, other formats are re-encoded)."""
    if data.startswith(_PNG_MAGIC):
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        out = io.BytesIO()
        im.save(out, format="PNG")
        return out.getvalue()


def _compact_png(png: bytes, max_width: int = _MAX_WIDTH) -> bytes:
    """A smaller PNG for embedding: flattened on white, at most ``max_width`` pixels wide, 256 colours when that
    is smaller (saliency figures survive it well); the original when nothing helps."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                flat = Image.new("RGB", im.size, "white")
                flat.paste(im, mask=im.getchannel("A"))
                im = flat
            elif im.mode not in ("RGB", "L", "P"):
                im = im.convert("RGB")
            if im.width > max_width:
                im = im.resize((max_width, max(1, round(im.height * max_width / im.width))), Image.LANCZOS)
            if im.mode == "RGB" and im.width * im.height > _QUANTIZE_ABOVE:
                im = im.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
            out = io.BytesIO()
            im.save(out, format="PNG")
    except (OSError, ValueError):  # not decodable: embed as is and let the browser decide
        return png
    small = out.getvalue()
    return small if len(small) < len(png) else png


def _img(png: bytes, alt: str, caption: str | None = None, cls: str = "") -> str:
    png = _compact_png(png)
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    cls_attr = f' class="{cls}"' if cls else ""
    return f'<figure{cls_attr}><img src="{uri}" alt="{_e(alt)}">{cap}</figure>'


def _fig_img(fig: Figure, alt: str, caption: str | None = None, dpi: int = 90) -> str:
    return _img(_figure_png(fig, dpi=dpi), alt, caption)


def _file_img(path: Path, alt: str, caption: str | None = None) -> str:
    """An image file embedded, or a note when it is missing or unreadable."""
    try:
        png = _as_png(path.read_bytes())
    except (OSError, ValueError) as exc:
        return _missing(f"Figure not available: <code>{_e(path)}</code> ({_e(type(exc).__name__)}).")
    return _img(png, alt, caption)


def _check_figures(ctx: _Context, paths: Sequence[str] | None, alt: str, per_method: Sequence[str] = ()) -> str:
    """The check's own figures, full width; per-method figures only when the check has none of its own
    (otherwise they are listed by name: they repeat what the combined figures show)."""
    if ctx.checks_dir is None:
        return ""
    top = list(dict.fromkeys(str(p) for p in paths or []))
    extra = [p for p in dict.fromkeys(str(p) for p in per_method) if p not in top]
    if not top:
        top, extra = extra, []
    figs = [_file_img(ctx.checks_dir / p, f"{alt}: {p}", _e(p)) for p in top]
    out = f'<div class="grid wide">{"".join(figs)}</div>' if figs else ""
    if extra:
        out += ("<p class=hint>Per-method figures in the checks folder: "
                + ", ".join(f"<code>{_e(p)}</code>" for p in extra) + ".</p>")
    return out


def _display_image(x: np.ndarray) -> np.ndarray:
    """(C, H, W) preprocessed image -> (H, W) or (H, W, 3) in [0, 1] for display."""
    x = minmax_scale(np.asarray(x, dtype=np.float64), start_dim=0)
    return x[0] if x.shape[0] == 1 else np.transpose(x[:3], (1, 2, 0))


def _explanation_figure(image: np.ndarray, maps: Mapping[str, np.ndarray]) -> Figure:
    """One row: the image, then each method's map over it, with one shared colour bar."""
    from matplotlib.figure import Figure

    n = 1 + len(maps)
    cols = min(n, _PANELS_PER_ROW)
    rows = -(-n // cols)
    fig = Figure(figsize=(2.2 * cols + 0.7, 2.35 * rows))
    gs = fig.add_gridspec(rows, cols + 1, width_ratios=[1.0] * cols + [0.06], wspace=0.06, hspace=0.16)
    cmap_img = "gray" if image.ndim == 2 else None
    panels: list[tuple[str, np.ndarray | None]] = [("image", None), *maps.items()]
    mappable = None
    for j, (label, m) in enumerate(panels):
        ax = fig.add_subplot(gs[j // cols, j % cols])
        ax.imshow(image, cmap=cmap_img, vmin=0, vmax=1)
        if m is not None:
            mappable = ax.imshow(m, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    if mappable is not None:
        cax = fig.add_subplot(gs[:, cols])
        cb = fig.colorbar(mappable, cax=cax)
        cb.set_label("saliency (1 = most salient)", fontsize=9)
        cb.ax.tick_params(labelsize=8)
    return fig


def _display_normalization(method: str) -> str:
    """The project's display convention: the method class's ``display_normalization`` (percentile for unknown names)."""
    from saliencekit.methods.normalize import display_normalization

    try:
        return display_normalization(method)
    except SaliencekitError:
        return "percentile"


def _sample_figure(run: Run, per_class: int = 4, size: int = 160) -> Figure:
    """A grid of raw images per class (rows) with their mask outlines."""
    try:  # the data helpers' figure (lesion and shortcut masks outlined)
        from saliencekit.viz.samples import plot_samples

        return plot_samples(run.data_root, per_class=per_class)
    except SaliencekitError:
        pass
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from PIL import Image

    index = run.index
    colours = {"lesion": "red"}
    extra = iter(("yellow", "cyan", "magenta", "lime"))
    fig = Figure(figsize=(2.0 * per_class, 2.1 * len(index.classes) + 0.3))
    axes = np.atleast_2d(fig.subplots(len(index.classes), per_class, squeeze=False))
    for r, cls in enumerate(index.classes):
        samples = [s for s in index.samples if s.class_name == cls]
        with_masks = [s for s in samples if s.masks]
        pool = with_masks if len(with_masks) >= per_class else samples
        picks = [pool[i] for i in np.linspace(0, len(pool) - 1, min(per_class, len(pool))).round().astype(int)]
        for c in range(per_class):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(picks):
                continue
            s = picks[c]
            with Image.open(s.path) as im:
                img = np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float64) / 255
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            for kind, mpath in sorted(s.masks.items()):
                if kind not in colours:
                    colours[kind] = next(extra, "white")
                with Image.open(mpath) as mim:
                    mask = np.asarray(mim.convert("L").resize((size, size), Image.NEAREST)) > 127
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(float), levels=[0.5], colors=colours[kind], linewidths=1.2)
            ax.set_title(f"{cls}: {Path(s.relpath).name}", fontsize=8)
    used = sorted({k for s in index.samples for k in s.masks})
    if used:
        handles = [Line2D([], [], color=colours.get(k, "white"), lw=2, label=f"{k} mask") for k in used]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05 if used else 0, 1, 1))
    return fig


# --------------------------------------------------------------------------------------------- inputs


def load_checks(path: str | Path) -> dict[str, Any]:
    """Read a ``checks.json`` (or the one in a folder).

    Raises:
        DataError: the file is missing or is not valid JSON; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checks.json"
    if not path.is_file():
        raise DataError(f"checks file not found: {path} (written by `saliencekit check RUN --out DIR`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read checks file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"checks file {path} does not hold a JSON object (see docs/checks_json.md)")
    return data


def _resolve_checks(run_dir: Path, checks: str | Path | None) -> tuple[dict[str, Any] | None, Path | None, str | None]:
    """(checks, path, problem): an explicit path must exist; the default location may be absent."""
    if checks is None:
        path = run_dir / "checks" / "checks.json"
        if not path.is_file():
            return None, None, None
    else:
        path = Path(checks)
        path = path / "checks.json" if path.is_dir() else path
        if not path.is_file():
            raise DataError(f"checks file not found: {path} (give the folder or file written by `saliencekit check`)")
    try:
        return load_checks(path), path, None
    except DataError as exc:
        return None, path, str(exc)


def select_images(labels: Sequence[int], predicted: Sequence[int], confidence: Sequence[float], n: int) -> list[int]:
    """Pick up to ``n`` images covering correct and wrong predictions of every class.

    Categories (true class, correct?) take turns, each giving its most confident image first, so
    that the selection shows confident successes and confident mistakes of both classes.
    Returns indices grouped by category (class order, correct before wrong).

    >>> select_images([0, 0, 1, 1], [0, 1, 1, 1], [0.9, 0.8, 0.7, 0.95], 3)
    [0, 1, 3]
    """
    labels, predicted = list(map(int, labels)), list(map(int, predicted))
    cats: dict[tuple[int, bool], list[int]] = {}
    for i, (y, p) in enumerate(zip(labels, predicted)):
        cats.setdefault((y, y != p), []).append(i)
    order = sorted(cats)
    for k in order:
        cats[k].sort(key=lambda i: (-float(confidence[i]), i))
    chosen: dict[tuple[int, bool], list[int]] = {k: [] for k in order}
    total, depth = 0, 0
    while total < n and any(depth < len(cats[k]) for k in order):
        for k in order:
            if total < n and depth < len(cats[k]):
                chosen[k].append(cats[k][depth])
                total += 1
        depth += 1
    return [i for k in order for i in chosen[k]]


def _method_spec(methods: Any, checks: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``label -> {"method": name, **options}`` from the argument, else the checks, else the defaults."""
    from saliencekit.methods.specs import default_methods, engine_specs, parse_methods

    if not methods and checks and isinstance(checks.get("methods"), Mapping) and checks["methods"]:
        methods = {str(k): v if isinstance(v, Mapping) else {} for k, v in checks["methods"].items()}
    return engine_specs(parse_methods(methods or default_methods(), validate=False))


# --------------------------------------------------------------------------------------------- sections


def _shortcut(ctx: _Context) -> dict[str, Any]:
    s = ((ctx.checks or {}).get("summary") or {}).get("shortcut")
    return s if isinstance(s, Mapping) else {}


def _ratio(share: Any, area: Any) -> float | None:
    """``share / area`` when both are finite and the area is positive, else None."""
    share, area = _value(share), _value(area)
    if _is_missing(share) or _is_missing(area) or float(area) <= 0:
        return None
    return float(share) / float(area)


def _times(ratio: float) -> str:
    """``51\u00d7`` (one decimal below 10: ``1.9\u00d7``)."""
    return f"{ratio:.1f}\u00d7" if ratio < 10 else f"{ratio:.0f}\u00d7"


def _share_phrase(share: Any, area: Any, cls: str, region: str) -> str:
    """``<strong>5%</strong> of their mass on the marker, which covers 0.1% of the image (51x its area share)``."""
    text = f'<strong class="{cls}">{_pct(share)}</strong> of their mass on the {region}'
    if not _is_missing(_value(area)):
        text += f", which covers {_pct(area)} of the image"
        ratio = _ratio(share, area)
        if ratio is not None:
            text += f" ({_times(ratio)} its area share)"
    return text


def _warning_html(ctx: _Context) -> str:
    """The top warning box, only when the checks detected that a method's maps sit on a planted shortcut.

    It says what was measured (which method, the marker's share of the map mass against its share of the image
    area, the lesion's for comparison), what that means and how to test it, without claiming more than the
    maps show.
    """
    from saliencekit.trust.checks.localization import SHORTCUT_FACTOR

    sc = _shortcut(ctx)
    if sc.get("detected") is not True:
        return ""
    checks = ctx.checks or {}
    loc = (checks.get("checks") or {}).get("localization") or {}
    marker, lesion = sc.get("marker_share"), sc.get("lesion_share")
    marker_area = sc.get("marker_area_share", loc.get("shortcut_area_share"))
    lesion_area = loc.get("mask_area_share")
    method = sc.get("method")
    recommended = [str(m) for m in (checks.get("summary") or {}).get("recommended") or []]

    maps = f"The {_e(method)} maps" if method else "The saliency maps"
    measured = f"{maps} put {_share_phrase(marker, marker_area, 'marker-share', 'marker')}"
    if not _is_missing(_value(lesion)):
        measured += f", and {_share_phrase(lesion, lesion_area, 'lesion-share', 'lesion')}"
    measured += ". (Means over the checked images that carry each region.)"
    others = {str(k): v for k, v in (sc.get("marker_share_by_method") or {}).items()
              if str(k) != str(method) and not _is_missing(_value(v))}
    if others:
        parts = []
        for k, v in others.items():
            ratio = _ratio(v, marker_area)
            parts.append(f"{_e(k)} {_pct(v)}" + (f" ({_times(ratio)})" if ratio is not None else ""))
        measured += f" Marker share of the other methods: {', '.join(parts)}."
    if method and method not in recommended:
        measured += (f" {_e(method)} is not among the methods that passed the sanity checks, so its maps are "
                     "doubtful too.")
    rule = (f" The report flags a shortcut when a method puts at least {SHORTCUT_FACTOR:g}\u00d7 the marker's area "
            "share of its map mass on the marker.")
    return (
        '<aside id="shortcut-warning" class="warning" role="alert">'
        "<h2>Warning: this model's saliency maps point at a planted shortcut</h2>"
        "<p>The data carry a planted marker (a burned-in letter or tag) whose presence goes with the label. "
        f"{measured}{rule}</p>"
        "<p>What this means: according to these maps, the model's evidence includes the marker, far more than its size "
        "would explain. "
        "Its predictions may depend on the marker, and then its test score (on images that carry the marker too) "
        "would not carry over to images without it. The maps alone do not show how much the predictions depend on "
        "it.</p>"
        "<p>How to test it: cover or remove the marker in the test images (or compare images with and without it) and "
        "see whether the predictions and the accuracy change; if they do, retrain on data without the marker "
        "before using this model.</p></aside>"
    )


def _verdict_section(ctx: _Context) -> str:
    if ctx.checks is None:
        return _section("verdict", _not_computed(ctx, "no checks.json found"))
    summary = ctx.checks.get("summary") or {}
    per_method = summary.get("methods") or {}
    recommended = [str(m) for m in summary.get("recommended") or []]
    reasons = summary.get("reasons") or {}
    if not per_method:
        return _section("verdict", _missing("The checks file has no per-method summary "
                                            "(<code>summary.methods</code>)."))
    keys = [k for k, _, _ in VERDICT_COLUMNS]
    extra = []
    for vals in per_method.values():
        for k in vals or {}:
            if k not in keys and k not in extra:
                extra.append(k)
    columns = [*VERDICT_COLUMNS, *((k, _EXTRA_HEADERS.get(k, k.replace("_", " ").capitalize()), "score")
                                   for k in extra)]
    head = "<th>Method</th>" + "".join(f'<th data-key="{_e(k)}">{_e(t)}</th>' for k, t, _ in columns)
    head += "<th>Recom\u00admended</th>"
    rows = []
    method_names = (ctx.checks.get("methods") or {})
    for label, vals in per_method.items():
        vals = vals or {}
        rec = label in recommended
        inner = method_names.get(label, {}).get("method") if isinstance(method_names.get(label), Mapping) else None
        name = _e(label) + (f' <span class="hint">({_e(inner)})</span>' if inner and inner != label else "")
        cells = [f'<td data-key="method">{name}</td>']
        for k, _, _ in columns:
            raw = _value(vals.get(k))
            text, cls = verdict_cell(raw)
            data_value = json.dumps(None if _is_missing(raw) else raw)
            cells.append(f'<td data-key="{_e(k)}" data-value="{_e(data_value)}" class="{cls}">{_e(text)}</td>')
        cells.append(f'<td data-key="recommended" class="{"pass" if rec else "na"}">{"yes" if rec else ""}</td>')
        rows.append(f'<tr data-method="{_e(label)}"{" class=recommended" if rec else ""}>{"".join(cells)}</tr>')
    table = (f'<div class="table-wrap"><table id="verdict-table" class="verdict-table"><thead><tr>{head}</tr></thead>'
             f'<tbody>{"".join(rows)}</tbody></table></div>')
    if recommended:
        items = "".join(
            f'<li data-method="{_e(m)}"><strong>{_e(m)}</strong>: {_e(reasons.get(m, "passes the checks."))}</li>'
            for m in recommended
        )
        rec_html = ('<div class="recommend" id="recommended"><strong>Recommended for this model:</strong>'
                    f"<ul>{items}</ul></div>")
    else:
        rec_html = ('<div class="recommend" id="recommended"><strong>No method passed every check.</strong> '
                    "Treat every saliency map of this model with caution.</div>")
    other = {m: r for m, r in reasons.items() if m not in recommended}
    other.update({m: r for m, r in (summary.get("not_recommended") or {}).items() if m not in recommended})
    if other:
        items = "".join(f'<li data-method="{_e(m)}"><strong>{_e(m)}</strong>: {_e(r) or "not recommended"}.</li>'
                        for m, r in other.items())
        rec_html += f'<div class="note" id="not-recommended"><strong>Not recommended:</strong><ul>{items}</ul></div>'
    if summary.get("recommendation_rule"):
        rec_html += f'<p class="hint">Rule: {_e(summary["recommendation_rule"])}.</p>'
    sc = _shortcut(ctx)
    note = ""
    if sc.get("present_in_data") and sc.get("detected") is not True:
        evidence = f" Evidence: {_e(str(sc['evidence']).rstrip('.'))}." if sc.get("evidence") else ""
        note = ('<p class="note" id="shortcut-note">The data contains a planted shortcut marker; the checks found no '
                f"sign that the model relies on it (map mass on the marker {_pct(sc.get('marker_share'))}, on the "
                f"lesion {_pct(sc.get('lesion_share'))}).{evidence}</p>")
    legend = "<ul class=hint>" + "".join(
        f"<li>{_e(_CHECK_SENTENCES[k])}</li>" for k, _, _ in columns if k in _CHECK_SENTENCES) + (
        "<li>\u2191: higher is better; \u2193: lower is better. A check shows <em>not run</em> when it was not "
        "computed for that method.</li></ul>")
    settings = ctx.checks.get("settings") or {}
    n = settings.get("images")
    intro = ("<p>Each row is a saliency method, each column a check it must pass or a score "
             f"(means over {_e(n)} test images; confidence intervals in the trust checks section).</p>"
             if n else "<p>Each row is a saliency method, each column a check it must pass or a score.</p>")
    legend = f"<details open><summary class=hint>What the columns mean</summary>{legend}</details>"
    return _section("verdict", intro + table + rec_html + note + legend)


def _brief(meta: Any, limit: int = 300) -> dict[str, Any]:
    """The short entries of a JSON object, nested objects flattened to ``a.b`` keys; long ones summarised."""
    if not isinstance(meta, Mapping):
        return {"value": meta}
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, Mapping) and len(json.dumps(v, default=str)) > 80:
            for k2, v2 in _brief(v, limit).items():
                out[f"{k}.{k2}"] = v2
        elif len(json.dumps(v, default=str)) > limit:
            n = len(v) if isinstance(v, Sized) else None
            out[str(k)] = f"({n} entries; see the file)" if n is not None else "(long; see the file)"
        else:
            out[str(k)] = v
    return out


def _data_section(ctx: _Context) -> str:
    run = ctx.run
    parts = []
    cfg = run.config
    counts = cfg.get("class_counts") or {}
    sizes = cfg.get("split_sizes") or {}
    rows = [[c, counts.get(c, "n/a")] for c in run.class_names]
    parts.append(f"<p>Data folder: <code>{_e(run.data_root)}</code>. Classes (label order): "
                 + ", ".join(f"<strong>{_e(c)}</strong> = {i}" for i, c in enumerate(run.class_names)) + ".</p>")
    if counts:
        parts.append(_table(["class", "images"], rows, num_cols=(1,)))
    if sizes:
        split = ", ".join(f"{_e(k)} {_e(v)}" for k, v in sizes.items())
        parts.append(f"<p>Split (fixed seed): {split} images.</p>")
    meta_path = run.data_root / "dataset.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            parts.append("<h3>How the data was made</h3>" + _kv_table(_brief(meta)))
        except (OSError, json.JSONDecodeError) as exc:
            parts.append(_missing(f"Cannot read <code>{_e(meta_path)}</code>: {_e(exc)}"))
    try:
        fig = _sample_figure(run)
        parts.append("<h3>Sample images</h3>" + _fig_img(fig, "sample images per class with mask outlines",
                                                          "Sample images of each class; outlines show the masks."))
    except (DataError, OSError) as exc:
        parts.append(_missing(f"Sample images not available: {_e(exc)}"))
    return _section("data", "".join(parts))


def _training_section(ctx: _Context) -> str:
    run = ctx.run
    parts = []
    h = run.history
    if h:
        info = {"epochs run": len(h.get("epochs", [])), "best epoch (kept)": h.get("best_epoch"),
                "best validation loss": h.get("best_val_loss"), "training time (s)": h.get("fit_seconds"),
                "device": h.get("device")}
        parts.append(_kv_table({k: v for k, v in info.items() if v is not None}))
    curves = run.path / "curves.png"
    if curves.is_file():
        parts.append(_file_img(curves, "training curves", "Loss and accuracy per epoch; the dotted line marks the "
                                                          "epoch kept (lowest validation loss)."))
    elif h:
        from saliencekit.viz.training import plot_history

        parts.append(_fig_img(plot_history(h), "training curves", "Loss and accuracy per epoch."))
    else:
        parts.append(_missing("No training history (<code>history.json</code>) in the run directory."))
    cfg = run.config.get("config")
    if isinstance(cfg, Mapping):
        parts.append("<h3>Settings</h3>" + _kv_table(cfg))
    return _section("training", "".join(parts))


def _performance_section(ctx: _Context) -> str:
    run = ctx.run
    m = run.metrics
    if not m:
        return _section("performance", _missing(f"No test metrics: run <code>saliencekit evaluate {_e(run.path)}"
                                                "</code> (or train again)."))
    items = {"test images": m.get("n"), "accuracy": m.get("accuracy"), "ROC AUC": m.get("roc_auc"),
             "sensitivity": m.get("sensitivity"), "specificity": m.get("specificity")}
    if m.get("positive_class") is not None:
        items["positive class"] = m.get("positive_class")
        items["threshold"] = m.get("threshold")
    parts = ['<div id="metrics-table">' + _kv_table(items) + "</div>"]
    names = m.get("class_names") or run.class_names
    cm = m.get("confusion_matrix")
    if cm:
        rows = [[f"true {n}", *row] for n, row in zip(names, cm)]
        parts.append("<h3>Confusion matrix</h3>" + _table(["", *(f"predicted {n}" for n in names)], rows,
                                                          num_cols=range(1, len(names) + 1)))
    figs = []
    for fname, alt in (("confusion.png", "confusion matrix"), ("roc.png", "ROC curve")):
        if (run.path / fname).is_file():
            figs.append(_file_img(run.path / fname, alt))
    if not (run.path / "roc.png").is_file() and m.get("roc_curves"):
        from saliencekit.viz.training import plot_roc

        figs.append(_fig_img(plot_roc(m), "ROC curve"))
    if figs:
        parts.append(f'<div class="grid">{"".join(figs)}</div>')
    return _section("performance", "".join(parts))


def _explanations_section(ctx: _Context, methods: Any, n_images: int, progress: bool) -> str:
    import torch

    from saliencekit.methods import explain, list_methods

    run = ctx.run
    try:
        ds = run.dataset("test")
        x_all = ds.images()
    except (SaliencekitError, OSError) as exc:
        return _section("explanations", _missing(f"Test images not available: {_e(exc)}"))
    if n_images <= 0 or len(ds) == 0:
        return _section("explanations", _missing("No images chosen (<code>--images 0</code>)."))
    labels = ds.labels().tolist()
    preds_by_file = {p["file"]: p for p in (run.metrics or {}).get("predictions", []) if "file" in p}
    files = [ds.sample(i).relpath for i in range(len(ds))]
    if all(f in preds_by_file for f in files):
        proba = [preds_by_file[f]["probabilities"] for f in files]
        predicted = [int(preds_by_file[f]["predicted"]) for f in files]
    else:
        p = run.predict(x_all)
        proba = p.tolist()
        predicted = (p[:, 1] >= 0.5).long().tolist() if run.binary else p.argmax(1).tolist()
    confidence = [pr[k] for pr, k in zip(proba, predicted)]
    chosen = select_images(labels, predicted, confidence, n_images)

    spec = _method_spec(methods, ctx.checks)
    registered = set(list_methods())
    notes = [f"<code>{_e(lbl)}</code> (method <code>{_e(s['method'])}</code> is not registered)"
             for lbl, s in spec.items() if s["method"] not in registered]
    spec = {lbl: s for lbl, s in spec.items() if s["method"] in registered}
    parts = []
    if notes:
        parts.append(_missing("Skipped: " + ", ".join(notes) + "."))
    if not spec:
        return _section("explanations", "".join(parts) + _missing("No registered method to explain with."))
    x = x_all[chosen].to(run.device)
    torch.manual_seed(ctx.seed)
    try:
        results = explain(run.model, x, methods=spec)
    except SaliencekitError as exc:
        return _section("explanations", "".join(parts) + _missing(f"Explaining failed: {_e(exc)}"))
    norms = {lbl: _display_normalization(spec[lbl]["method"]) for lbl in results}
    ctx.method_params = {lbl: {"method": e.method, **e.params, "display_normalization": norms[lbl]}
                         for lbl, e in results.items()}
    shown = {lbl: e.normalized(norms[lbl]).detach().float().cpu().numpy() for lbl, e in results.items()}
    names = run.class_names
    parts.append(
        f"<p>{len(chosen)} test images: the most confident correct and wrong predictions of each class. Each map "
        "explains the <em>predicted</em> class and is drawn over the preprocessed image, scaled per map so that 1 "
        "is its most salient pixel (gradient and backprop maps: |map| clipped at its 99th percentile; CAM and other "
        "maps: min-max).</p>"
    )
    rows = []
    figs = []
    from tqdm.auto import tqdm

    for j, i in enumerate(tqdm(chosen, desc="report: explanation figures", disable=not progress, leave=False)):
        y, p = labels[i], predicted[i]
        ok = y == p
        badge = f'<span class="badge {"correct" if ok else "wrong"}">{"correct" if ok else "wrong"}</span>'
        prob = " / ".join(f"{n} {float(v):.3f}" for n, v in zip(names, proba[i]))
        rows.append([_Raw(badge), files[i], names[y], names[p], prob])
        title = f"{files[i]}: true {names[y]}, predicted {names[p]} ({'correct' if ok else 'wrong'})"
        image = _display_image(x_all[i].cpu().numpy())
        fig = _explanation_figure(image, {lbl: m[j] for lbl, m in shown.items()})
        figs.append(_fig_img(fig, f"saliency maps of {files[i]}", f"{badge} {_e(title)}"))
    parts.append(_table(["", "file", "true class", "predicted", "probabilities"], rows))
    parts.append('<div class="grid wide">' + "".join(figs) + "</div>")
    return _section("explanations", "".join(parts))


def _method_table(methods: Mapping[str, Any], columns: Sequence[tuple[str, str]], fmt: Any = _summary) -> str:
    rows = []
    for label, vals in methods.items():
        vals = vals or {}
        rows.append([label, *(fmt(vals.get(k)) for k, _ in columns)])
    return _table(["method", *(t for _, t in columns)], rows, num_cols=range(1, len(columns) + 1))


def _verdict_raw(v: Any, yes: str = "pass", no: str = "fail") -> _Raw:
    if v is True:
        return _Raw(f'<span class="verdict-pass">{_e(yes)}</span>')
    if v is False:
        return _Raw(f'<span class="verdict-fail">{_e(no)}</span>')
    return _Raw("n/a")


def _trust_model_randomization(ctx: _Context, c: Mapping[str, Any]) -> str:
    parts = []
    casc = c.get("cascading") or {}
    steps = casc.get("steps") or []
    if steps:
        parts.append("<p>Cascading randomisation, layers re-initialised from the output down: "
                     + " &rarr; ".join(f"<code>{_e(s)}</code>" for s in steps) + ".</p>")
    metrics = c.get("metrics") or []
    null = casc.get("null") or {}
    methods = casc.get("methods") or {}
    rows = []
    if any("value" in (v or {}) for v in methods.values()):
        # the verdict's own number: the similarity at the decision step against the pass threshold
        for label, v in methods.items():
            v = v or {}
            rows.append([label, _verdict_raw(v.get("passed")), _num(v.get("value")), _num(v.get("threshold")),
                         v.get("reason", "")])
        if casc.get("pass_rule"):
            parts.append(f"<p>Rule: {_e(casc['pass_rule'])}.</p>")
        parts.append(_table(["method", "verdict", "similarity", "pass if at most", "reason"], rows, num_cols=(2, 3)))
        rows = []
    else:
        for label, v in methods.items():
            curves = (v or {}).get("curves") or {}
            finals = [_num(curves[k][-1]) if curves.get(k) else "n/a" for k in metrics]
            rows.append([label, _verdict_raw((v or {}).get("passed")), *finals, (v or {}).get("reason", "")])
        if null and rows:
            rows.append([_Raw("<em>two unrelated random maps</em>"), "", *(_num(null.get(k)) for k in metrics),
                         "the level a passing method falls to"])
        if rows:
            parts.append("<p>Similarity of each method's maps to the original ones once every layer is randomised "
                         "(1 = unchanged):</p>")
            parts.append(_table(["method", "verdict", *metrics, "reason"], rows,
                                num_cols=range(2, 2 + len(metrics))))
    if null:
        levels = ", ".join(f"{_e(k)} {_summary(v)}" for k, v in null.items())
        parts.append("<p class=hint>Similarity of two unrelated random maps (the level a passing method falls to): "
                     f"{levels}.</p>")
    figs: list[str] = []
    for v in (casc.get("methods") or {}).values():
        figs += list((v or {}).get("figures") or [])
    parts.append(_check_figures(ctx, c.get("figures"), "model randomisation", figs))
    indep = c.get("independent") or {}
    if indep.get("methods"):
        parts.append(f"<p class=hint>Independent randomisation (one layer at a time) was also computed for "
                     f"{len(indep['methods'])} method(s); see checks.json.</p>")
    return "".join(parts)


def _trust_data_randomization(ctx: _Context, c: Mapping[str, Any]) -> str:
    parts = []
    training = c.get("training") if isinstance(c.get("training"), Mapping) else {}
    info = {"random-label model's training accuracy": c.get("random_model_train_accuracy"),
            "its target training accuracy": training.get("target_accuracy"),
            "epochs": c.get("epochs"), "training images": training.get("images")}
    parts.append(_kv_table({k: v for k, v in info.items() if v is not None}))
    if c.get("pass_rule"):
        parts.append(f"<p>Rule: {_e(c['pass_rule'])}.</p>")
    methods = c.get("methods") or {}
    metrics: list[str] = []
    for v in methods.values():
        for k in (v or {}).get("similarity") or {}:
            if k not in metrics:
                metrics.append(k)
    rows = [[label, _verdict_raw((v or {}).get("passed")),
             *(_num(((v or {}).get("similarity") or {}).get(k)) for k in metrics), (v or {}).get("reason", "")]
            for label, v in methods.items()]
    if rows:
        parts.append("<p>Similarity of each method's maps between the true and the random-label model (lower = the "
                     "maps depend on the labels):</p>")
        parts.append(_table(["method", "verdict", *metrics, "reason"], rows, num_cols=range(2, 2 + len(metrics))))
    null = c.get("null") or {}
    if null:
        parts.append("<p class=hint>Random-map level: " + ", ".join(f"{_e(k)} {_summary(v)}" for k, v in null.items())
                     + ".</p>")
    figs: list[str] = []
    for v in methods.values():
        figs += list((v or {}).get("figures") or [])
    parts.append(_check_figures(ctx, c.get("figures"), "data randomisation", figs))
    return "".join(parts)


def _trust_input_invariance(ctx: _Context, c: Mapping[str, Any]) -> str:
    parts = []
    comp = c.get("compensated") or {}
    unc = c.get("uncompensated") or {}
    parts.append(_kv_table({k: v for k, v in {
        "constant shift added to every input": c.get("shift"),
        "model output change (compensated)": comp.get("output_max_abs_change"),
        "predictions changed (uncompensated)": unc.get("prediction_changed_fraction"),
        "largest probability change (uncompensated)": unc.get("probability_max_abs_change"),
    }.items() if v is not None}))
    methods = comp.get("methods") or {}
    metrics: list[str] = []
    for v in methods.values():
        for k in (v or {}).get("similarity") or {}:
            if k not in metrics:
                metrics.append(k)
    rows = []
    for label, v in methods.items():
        v = v or {}
        inv = v.get("invariant")
        rows.append([label, _verdict_raw(inv, "invariant", "not invariant"),
                     *(_summary((v.get("similarity") or {}).get(k)) for k in metrics),
                     _summary(v.get("max_abs_change"))])
    if rows:
        parts.append("<p>With the first layer compensated (same function), a trustworthy map does not change:</p>")
        parts.append(_table(["method", "verdict", *metrics, "largest map change"], rows,
                            num_cols=range(2, 3 + len(metrics))))
    figs: list[str] = []
    for part in (comp, unc):
        for v in (part.get("methods") or {}).values():
            figs += list((v or {}).get("figures") or [])
    parts.append(_check_figures(ctx, c.get("figures"), "input invariance", figs))
    return "".join(parts)


def _trust_agreement(ctx: _Context, c: Mapping[str, Any]) -> str:
    parts = []
    names = [str(m) for m in c.get("methods") or []]
    for metric, mat in (c.get("matrices") or {}).items():
        if not isinstance(mat, list) or len(mat) != len(names):
            continue
        rows = [[a, *(_num(v, 2) for v in row)] for a, row in zip(names, mat)]
        parts.append(f"<p><strong>{_e(metric)}</strong> between methods (1 = identical maps):</p>"
                     + _table(["", *names], rows, num_cols=range(1, len(names) + 1)))
    parts.append(_check_figures(ctx, c.get("figures"), "agreement"))
    return "".join(parts)


def _trust_faithfulness(ctx: _Context, c: Mapping[str, Any]) -> str:
    parts = []
    cols = [("deletion_auc", "deletion AUC (lower better)"), ("insertion_auc", "insertion AUC (higher better)"),
            ("road_morf_auc", "ROAD MoRF AUC (lower better)"), ("road_lerf_auc", "ROAD LeRF AUC (higher better)")]
    methods = c.get("methods") or {}
    cols = [(k, t) for k, t in cols if any(k in (v or {}) for v in methods.values())]
    if methods:
        parts.append(_method_table(methods, cols))
    if c.get("ranking"):
        parts.append("<p>Ranking (most faithful first): " + ", ".join(f"<code>{_e(m)}</code>" for m in c["ranking"])
                     + ".</p>")
    figs: list[str] = []
    for v in methods.values():
        figs += list((v or {}).get("figures") or [])
    parts.append(_check_figures(ctx, c.get("figures"), "faithfulness", figs))
    return "".join(parts)


def _trust_localization(ctx: _Context, c: Mapping[str, Any]) -> str:
    parts = [f"<p>Against the <strong>{_e(c.get('mask', 'lesion'))}</strong> masks.</p>"]
    cols = [("pointing_game", "pointing game"), ("energy_pointing_game", "energy pointing game"),
            ("relevance_mass", "relevance mass"), ("relevance_rank", "relevance rank"),
            ("shortcut_share", "mass on the shortcut marker")]
    methods = c.get("methods") or {}
    cols = [(k, t) for k, t in cols if any((v or {}).get(k) is not None for v in methods.values())]
    if methods:
        parts.append(_method_table(methods, cols))
    if c.get("ranking"):
        parts.append("<p>Ranking (best localised first): " + ", ".join(f"<code>{_e(m)}</code>" for m in c["ranking"])
                     + ".</p>")
    figs: list[str] = []
    for v in methods.values():
        figs += list((v or {}).get("figures") or [])
    parts.append(_check_figures(ctx, c.get("figures"), "localisation", figs))
    return "".join(parts)


def _trust_complexity(ctx: _Context, c: Mapping[str, Any]) -> str:
    cols = [("sparseness", "sparseness (Gini, higher = sparser)"), ("complexity", "complexity (entropy)"),
            ("max_sensitivity", "max-sensitivity (lower = more stable)")]
    return _method_table(c.get("methods") or {}, cols) + _check_figures(ctx, c.get("figures"), "complexity")


_TRUST_PARTS = (
    ("model_randomization", "Model randomisation (cascading)", _trust_model_randomization),
    ("data_randomization", "Data randomisation", _trust_data_randomization),
    ("input_invariance", "Input invariance", _trust_input_invariance),
    ("agreement", "Agreement between methods", _trust_agreement),
    ("faithfulness", "Faithfulness (deletion / insertion)", _trust_faithfulness),
    ("localization", "Localisation", _trust_localization),
    ("complexity", "Sparseness and stability", _trust_complexity),
)


def _skipped(checks: Mapping[str, Any]) -> dict[str, str]:
    s = (checks.get("settings") or {}).get("skipped") or {}
    if isinstance(s, Mapping):
        return {str(k): str(v) for k, v in s.items()}
    out = {}
    for item in s if isinstance(s, list) else []:
        if isinstance(item, Mapping):
            out[str(item.get("check", item.get("name", "?")))] = str(item.get("reason", ""))
        else:
            out[str(item)] = ""
    return out


def _trust_section(ctx: _Context) -> str:
    if ctx.checks is None:
        return _section("trust", _not_computed(ctx, "no checks.json found"))
    checks = ctx.checks.get("checks") or {}
    skipped = _skipped(ctx.checks)
    images = ctx.checks.get("images") or []
    parts = []
    if images:
        parts.append(f"<p>Computed on {len(images)} test images (file <code>{_e(ctx.checks_path)}</code>).</p>")
    for key, title, render in _TRUST_PARTS:
        c = checks.get(key)
        if isinstance(c, Mapping):
            try:
                body = render(ctx, c)
            except (KeyError, TypeError, ValueError, IndexError) as exc:  # a malformed entry must not sink the report
                body = _missing(f"Cannot show this check ({_e(type(exc).__name__)}: {_e(exc)}); see checks.json.")
        elif key in skipped:
            body = _missing(f"Not applicable: {_e(skipped[key]) or 'skipped'}.")
        else:
            body = _not_computed(ctx, f"{key} is not in checks.json")
        parts.append(_subsection(TRUST_IDS[key], title, body))
    return _section("trust", "".join(parts))


def _reproducibility_section(ctx: _Context) -> str:
    run = ctx.run
    cfg = run.config
    now = library_versions()
    trained = cfg.get("versions") or {}
    checked = {"saliencekit": ctx.checks.get("saliencekit_version")} if ctx.checks else {}
    names = list(dict.fromkeys([*now, *trained]))
    rows = [[n, now.get(n, ""), trained.get(n, ""), checked.get(n, "") or ""] for n in names]
    parts = ["<h3>Versions</h3>", _table(["package", "this report", "training", "checks"], rows)]
    settings = (ctx.checks or {}).get("settings") or {}
    seeds = {"training (split, initialisation, batches)": cfg.get("seed"),
             "checks": settings.get("seed") if ctx.checks else None,
             "report (noise of sampling methods; the image choice is deterministic)": ctx.seed}
    parts += ["<h3>Seeds</h3>", _kv_table({k: ("n/a" if v is None else v) for k, v in seeds.items()})]
    if ctx.method_params:
        rows = [[lbl, p.get("method", lbl), _code({k: v for k, v in p.items() if k != "method"})]
                for lbl, p in ctx.method_params.items()]
        parts += ["<h3>Methods in the explanations</h3>", _table(["label", "method", "parameters"], rows)]
    if ctx.checks:
        cm = ctx.checks.get("methods") or {}
        if cm:
            rows = [[lbl, (v or {}).get("method", lbl), _code((v or {}).get("options", {}))] for lbl, v in cm.items()]
            parts += ["<h3>Methods in the checks</h3>", _table(["label", "method", "options"], rows)]
        if settings:
            parts += ["<h3>Check settings</h3>", _kv_table(settings)]
        params = {}
        for key, c in (ctx.checks.get("checks") or {}).items():
            if isinstance(c, Mapping):
                p = {k: v for k, v in c.items() if k not in ("methods", "figures", "null", "matrices", "ranking")
                     and (isinstance(v, str | int | float | bool) or (isinstance(v, list) and len(v) <= 30
                                                                        and all(isinstance(s, str) for s in v)))}
                casc = c.get("cascading")
                if isinstance(casc, Mapping) and casc.get("steps"):
                    p["cascading steps"] = casc["steps"]
                if p:
                    params[key] = p
        if params:
            parts += ["<h3>Check parameters</h3>", _kv_table(params)]
    cmds = {"train": cfg.get("command"), "check": (ctx.checks or {}).get("command"), "report": ctx.command}
    parts.append("<h3>Commands</h3>")
    parts.append("".join(f"<p>{_e(k)}:</p><pre>{_e(v)}</pre>" for k, v in cmds.items() if v))
    paths = {"run directory": str(run.path.resolve()), "data folder": str(run.data_root),
             "checks file": str(ctx.checks_path) if ctx.checks_path else "none"}
    parts += ["<h3>Files</h3>", _kv_table(paths)]
    return _section("reproducibility", "".join(parts))


# --------------------------------------------------------------------------------------------- page


def _template(name: str) -> str:
    return resources.files("saliencekit.viz").joinpath("templates").joinpath(name).read_text(encoding="utf-8")


def render_page(title: str, subtitle: str, warning: str, sections: Mapping[str, str], created: str) -> str:
    """Fill the page template: the inline stylesheet, the warning box, the table of contents and the sections."""
    from saliencekit import __version__

    toc = "".join(f'<a href="#{sid}">{_e(SECTION_TITLES.get(sid, sid))}</a>' for sid in sections)
    page = string.Template(_template("report.html"))
    return page.substitute(title=_e(title), subtitle=subtitle, css=_template("report.css"), warning=warning, toc=toc,
                           body="\n".join(sections.values()), version=_e(__version__), created=_e(created))


def build_report(
    run_dir: str | Path,
    out_html: str | Path | None = None,
    checks: str | Path | None = None,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] | str | None = None,
    images: int = 8,
    progress: bool = True,
    device: str = "cpu",
    data: str | Path | None = None,
    seed: int = 0,
    command: str | None = None,
) -> Path:
    """Write the trust report of a run as one self-contained HTML file.

    Args:
        run_dir: the run directory written by ``saliencekit train``.
        out_html: where to write the report (default ``RUN/report.html``); written atomically.
        checks: ``checks.json`` or the folder holding it (default ``RUN/checks/checks.json``; when that is
            absent the verdict and trust sections say how to compute it).
        methods: methods to explain with: names, or ``{label: {"method": name, **options}}``; default: the
            methods in ``checks.json``, else :func:`saliencekit.methods.specs.default_methods`.
        images: how many test images to explain (correct and wrong predictions of each class).
        progress: show a progress bar.
        device: where to run the model (``"cpu"``, ``"cuda"``).
        data: the data folder, when it moved since training.
        seed: seeds the noise of sampling methods (SmoothGrad, RISE...).
        command: the command line shown in the reproducibility section (default: the Python call).

    Returns:
        The path of the written report.

    Raises:
        RunDirError: ``run_dir`` is not a run directory.
        DataError: ``checks`` was given but does not exist.
    """
    from tqdm.auto import tqdm

    from saliencekit.run import load_run

    run_dir = Path(run_dir)
    run = load_run(run_dir, device=device, data=data)  # raises RunDirError
    out_html = Path(out_html) if out_html is not None else run_dir / "report.html"
    checks_data, checks_path, problem = _resolve_checks(run_dir, checks)
    if command is None:
        args = [repr(str(run_dir)), repr(str(out_html))]
        args += [f"{k}={v!r}" for k, v in (("checks", checks and str(checks)), ("methods", methods)) if v]
        command = f"saliencekit.viz.report.build_report({', '.join([*args, f'images={images}'])})"
    ctx = _Context(run_dir=run_dir, run=run, checks=checks_data, checks_path=checks_path, checks_problem=problem,
                   seed=seed, command=command)
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    steps = tqdm(total=len(SECTION_IDS), desc="report", disable=not progress)
    sections: dict[str, str] = {}
    builders = {
        "verdict": lambda: _verdict_section(ctx),
        "data": lambda: _data_section(ctx),
        "training": lambda: _training_section(ctx),
        "performance": lambda: _performance_section(ctx),
        "explanations": lambda: _explanations_section(ctx, methods, images, progress),
        "trust": lambda: _trust_section(ctx),
        "reproducibility": lambda: _reproducibility_section(ctx),  # last: it lists the methods' parameters
    }
    try:
        for sid in SECTION_IDS:
            steps.set_postfix_str(sid)
            sections[sid] = builders[sid]()
            steps.update()
    finally:
        steps.close()
    m = run.metrics or {}
    perf = (f"test accuracy {_num(m.get('accuracy'))}, ROC AUC {_num(m.get('roc_auc'))} on {m.get('n')} images"
            if m else "no test metrics")
    subtitle = (f"Model <code>{_e(run.info.arch)}</code> ({_e(' vs '.join(run.class_names))}), {_e(perf)}. "
                f"Run <code>{_e(run_dir)}</code>, report made {_e(created)}.")
    title = f"Trust report: {run.info.arch} on {run.data_root.name}"
    page = render_page(title, subtitle, _warning_html(ctx), sections, created)
    _atomic.write_text(out_html, page)
    return out_html


__all__ = ["SECTION_IDS", "TRUST_IDS", "VERDICT_COLUMNS", "build_report", "load_checks",
           "render_page", "select_images", "verdict_cell"]
