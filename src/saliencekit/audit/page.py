"""The audit page: one self-contained HTML file (Jinja2 template, autoescaped; images embedded as ``data:``
URIs; no JavaScript, no network) in the style of the trust report.

Sections (stable ``id``\\ s): ``flagged`` (the flagged clusters first, with what was measured and how to
confirm it; a note when none is flagged), ``dataset``, ``clusters`` (per method and class: the cluster
table, each cluster's mean map and typical images), ``errors`` (prediction errors by cluster) and
``reproducibility``.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from saliencekit import _atomic
from saliencekit.audit.spray import RULE, Cluster, Group, MethodAnalysis

PAGE_NAME = "audit.html"
SECTIONS = (("dataset", "Dataset"), ("clusters", "Clusters"), ("errors", "Errors by cluster"),
            ("reproducibility", "Reproducibility"))
_PANEL = 112  # pixels per panel of a cluster strip
_GAP = 3


def _pct(v: float | None, digits: int = 0) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{100 * v:.{digits}f}%" if abs(100 * v) >= 1 or v == 0 else f"{100 * v:.1f}%"


def _anchor(*parts: Any) -> str:
    from saliencekit._filenames import safe_filename

    return "-".join(safe_filename(str(p), plus="p") for p in parts)


# ------------------------------------------------------------------------------------------------ pictures


def _png_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _jet(x: np.ndarray) -> np.ndarray:
    """(h, w) in [0, 1] -> (h, w, 3) float RGB."""
    from matplotlib import colormaps

    return colormaps["jet"](np.clip(x, 0, 1))[..., :3]


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    mode = "F"
    im = Image.fromarray(a.astype(np.float32), mode=mode)
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64)


def _unit(m: np.ndarray, pct: float = 99.5) -> np.ndarray:
    m = np.abs(np.nan_to_num(m))
    top = float(np.percentile(m, pct)) if m.size else 0.0
    return np.clip(m / top, 0, 1) if top > 0 else np.zeros_like(m)


def _image(preprocessing: Any, root: Path | None, rel: str, size: int) -> np.ndarray | None:
    """The image as the model saw it (same fitting), in [0, 1], ``size`` pixels square: (s, s) or (s, s, 3)."""
    from saliencekit.errors import SaliencekitError

    if root is None:
        return None
    try:
        arr = np.asarray(preprocessing.fit(preprocessing.read(root / rel)), dtype=np.float64)
    except (OSError, ValueError, SaliencekitError):
        return None
    chans = [_resize(np.clip(c, 0, 1), size) for c in arr[:3]]
    return chans[0] if len(chans) == 1 else np.stack(chans, axis=-1)


def _strip(mean_map: np.ndarray | None, rule: dict[str, Any], images: Sequence[np.ndarray | None],
           maps: Sequence[np.ndarray]) -> str:
    """One row of panels: the mean map with the spot outlined, then each typical image with its map over it."""
    panels = []
    mm = np.zeros((_PANEL, _PANEL, 3))
    if mean_map is not None:
        mm = _jet(_resize(_unit(mean_map, 99.0), _PANEL))
        if rule:
            g, w = rule["grid"], rule["size"]
            s = _PANEL / g
            r0, c0 = round(rule["row"] * s), round(rule["col"] * s)
            r1, c1 = min(_PANEL - 1, round((rule["row"] + w) * s)), min(_PANEL - 1, round((rule["col"] + w) * s))
            for t in range(2):
                mm[r0 + t, c0:c1 + 1] = mm[r1 - t, c0:c1 + 1] = 1.0
                mm[r0:r1 + 1, c0 + t] = mm[r0:r1 + 1, c1 - t] = 1.0
    panels.append(mm)
    for img, m in zip(images, maps):
        heat = _jet(_resize(_unit(m), _PANEL))
        base = img if img is not None else np.full((_PANEL, _PANEL), 0.5)
        base = base if base.ndim == 3 else np.repeat(base[..., None], 3, axis=2)
        panels.append(0.55 * base + 0.45 * heat)
    width = len(panels) * _PANEL + (len(panels) - 1) * _GAP
    out = np.ones((_PANEL, width, 3))
    for k, p in enumerate(panels):
        x = k * (_PANEL + _GAP)
        out[:, x : x + _PANEL] = p
    return _png_uri((out * 255).round().astype(np.uint8))


# ------------------------------------------------------------------------------------------------ text


def _measured(g: Group, c: Cluster) -> str:
    r = c.rule
    rows = f"{r['row']}-{r['row'] + r['size'] - 1}"
    cols = f"{r['col']}-{r['col'] + r['size'] - 1}"
    return (f"The cluster's mean map puts {_pct(r['spot_mass'])} of its relevance mass on a spot covering "
            f"{_pct(r['area_share'], 1)} of the image (rows {rows}, columns {cols} of a {r['grid']} x {r['grid']} "
            f"grid, row 0 at the top), {r['spot_mass'] / max(r['area_share'], 1e-12):.1f} times its area share, "
            f"against {_pct(r['rest_spot_mass'])} for the other {g.n - c.size} images of the class. "
            f"{_pct(r['consistent_share'])} of the cluster's images put more of their own mass there than 90% of "
            f"the others do. Its extra mass over the rest of the class: {100 * r['excess']:.1f} points in the spot, "
            f"{100 * r['halo_excess']:.1f} in the {3 * r['size']} x {3 * r['size']} cells around and including it. "
            f"The class's eigengap score is {g.eigengap:.3f}.")


def _masks_text(c: Cluster) -> str:
    parts = []
    for kind in sorted(c.mask_shares):
        name = "planted marker" if kind == "shortcut" else kind
        parts.append(f"{_pct(c.mask_shares[kind])} of the map mass on the {name} mask (area "
                     f"{_pct(c.mask_areas[kind], 1)}, {c.mask_images[kind]} of its {c.size} images have one)")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------ page


def build_page(store: Any, analysis: dict[str, MethodAnalysis], out: str | os.PathLike[str], *,
               data: str | os.PathLike[str] | None = None, command: str = "") -> Path:
    """Write the audit page.

    Args:
        store: the :class:`~saliencekit.audit.AuditStore`.
        analysis: the result of :func:`saliencekit.audit.spray.spray`.
        out: the HTML file to write (atomically).
        data: the data folder, for the example images (default: the store's, when it exists).
        command: the command that made it (shown under Reproducibility).

    Returns:
        The path written.
    """
    import jinja2

    from saliencekit import __version__

    root = Path(data) if data is not None else Path(store.info.get("data_root", ""))
    root = root if root.is_dir() else None
    preprocessing = store.preprocessing
    files = [str(f) for f in store.files[:]]
    labels = np.asarray(store.labels[:])
    preds = np.asarray(store.predictions[:])
    names = store.class_names
    mask_kinds = sorted({k for ma in analysis.values() for g in ma.groups.values() for c in g.clusters
                         for k in c.mask_shares})

    def typical(label: str, c: Cluster) -> tuple[list[np.ndarray | None], list[np.ndarray]]:
        idx = list(c.typical)
        if not idx:
            return [], []
        maps = store.maps[label][idx]
        return [_image(preprocessing, root, files[i], _PANEL) for i in idx], [maps[k] for k in range(len(idx))]

    strips: dict[tuple[str, str, int], str] = {}
    for label, ma in analysis.items():
        for g in ma.groups.values():
            for c in g.clusters:
                imgs, maps = typical(label, c)
                strips[(label, g.class_name, c.id)] = _strip(c.mean_map, c.rule, imgs, maps)

    flagged = []
    for label, ma in analysis.items():
        for g, c in ma.flagged:
            flagged.append({
                "anchor": _anchor(label, g.class_name, c.id), "method": label, "class_name": g.class_name,
                "cluster_id": c.id, "size": c.size, "share": _pct(c.size / g.n), "measured": _measured(g, c),
                "masks": _masks_text(c), "strip": strips[(label, g.class_name, c.id)],
            })
    analysed = [(label, g) for label, ma in analysis.items() for g in ma.groups.values() if not g.skipped]
    no_flag = (f"Spectral relevance analysis clustered the maps of {len(analysed)} (method, class) group(s); no "
               "cluster put its extra relevance on one small spot that the rest of its class ignores (rule: "
               "docs/spray.md). This does not prove the absence of shortcuts: a shortcut spread over a large area, "
               "or one present in most images of a class, is not what this rule looks for.") if analysed else (
               "No group was large enough to analyse (or the analysis was not run).")

    methods = []
    for label, ma in analysis.items():
        groups = []
        for g in ma.groups.values():
            rows = []
            for c in g.clusters:
                r = c.rule
                rows.append({
                    "anchor": _anchor(label, g.class_name, c.id), "id": c.id, "size": c.size,
                    "share": _pct(c.size / g.n), "flagged": c.flagged,
                    "spot": f"{_pct(r['spot_mass'])} ({_pct(r['rest_spot_mass'])})",
                    "compact": f"{_pct(r['excess'])} / {_pct(r['halo_excess'])}",
                    "consistent": _pct(r["consistent_share"]), "errors": len(c.errors),
                    "masks": [f"{_pct(c.mask_shares[k])} ({_pct(c.mask_areas[k], 1)})" if k in c.mask_shares
                              else "n/a" for k in mask_kinds],
                    "strip": strips[(label, g.class_name, c.id)],
                })
            groups.append({"name": g.class_name, "n": g.n, "skipped": g.skipped, "clusters": rows,
                           "eigengap": None if g.eigengap is None else f"{g.eigengap:.3f}"})
        methods.append({"label": label, "anchor": _anchor(label), "groups": groups})

    errors_method = next(iter(analysis), "")
    error_rows = []
    for g in (analysis[errors_method].groups.values() if errors_method else []):
        for c in g.clusters:
            error_rows.append({"class_name": g.class_name, "cluster": c.id, "flagged": c.flagged, "size": c.size,
                               "errors": len(c.errors), "rate": _pct(len(c.errors) / c.size if c.size else None),
                               "examples": ", ".join(files[i] for i in c.errors[:5])
                               + (" ..." if len(c.errors) > 5 else "")})

    confusion = []
    for k, name in enumerate(names):
        sel = labels == k
        confusion.append({"name": name, "n": int(sel.sum()),
                          "predicted": [int(((preds == j) & sel).sum()) for j in range(len(names))],
                          "errors": int((sel & (preds != k)).sum())})
    ident, info = store.identity, store.info
    acc = float((preds == labels).mean()) if len(labels) else float("nan")
    size_mb = sum(p.stat().st_size for p in store.path.rglob("*") if p.is_file()) / 2**20
    summary = [
        ("images", f"{store.n_images} (" + ", ".join(f"{r['n']} {r['name']}" for r in confusion) + ")"),
        ("accuracy (prediction = folder class)", _pct(acc, 1)),
        ("explained class", str(ident.get("target"))),
        ("methods", ", ".join(f"{label} ({spec['method']})" for label, spec in ident.get("methods", {}).items())),
        ("map size", f"{store.image_shape[0]} x {store.image_shape[1]}, stored as {ident.get('dtype')}"),
        ("store", f"{store.path} ({store.n_chunks} chunks of {store.chunk_size}, {size_mb:.1f} MiB)"),
        ("model", f"{info.get('model_source')} (weights fingerprint {str(ident['model']['fingerprint'])[:16]})"),
        ("data", str(info.get("data_root"))),
        ("masks", ", ".join(mask_kinds) + " (used only to describe clusters, never to find them)" if mask_kinds
         else "none found"),
    ]
    repro = [("command", command or "(Python API)"), ("saliencekit", __version__),
             ("torch", str(ident.get("torch"))), ("seed rule", str(info.get("seed_rule"))),
             ("flagging rule", ", ".join(f"{k}={v:g}" for k, v in RULE.items())),
             ("method parameters", str(info.get("method_params")))]

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(resources.files("saliencekit.audit") / "templates")),
                             autoescape=jinja2.select_autoescape(["html"]), trim_blocks=False, lstrip_blocks=False)
    css = "\n".join((resources.files(pkg) / "templates" / name).read_text(encoding="utf-8")
                    for pkg, name in (("saliencekit.viz.report", "report.css"), ("saliencekit.audit", "audit.css")))
    title = "Dataset audit"
    subtitle = (f"{store.n_images} images of {', '.join(names)} explained with {', '.join(store.methods)}; "
                f"spectral relevance analysis of every class's maps")
    html = env.get_template("audit.html").render(
        version=__version__, title=title, subtitle=subtitle, css=css, flagged=flagged, no_flag_text=no_flag,
        sections=[{"id": i, "title": t} for i, t in SECTIONS], summary=summary, class_names=names,
        confusion=confusion, methods=methods, mask_kinds=mask_kinds, errors_method=errors_method,
        error_rows=error_rows, repro=repro,
    )
    return _atomic.write_text(out, html)


def find_audit_page(run: Any, places: Sequence[str | os.PathLike[str]] | None = None) -> Path | None:
    """The audit page of ``run``'s model, if one exists: the first of ``places`` (default ``RUN/audit`` and an
    ``audit`` folder beside the run directory, where the demo puts it) holding an ``audit.html`` and a store
    whose weights fingerprint is that of ``run.model``. None when there is none (or the audit extra is missing).

    Args:
        run: a :class:`saliencekit.run.Run` (its ``path`` and ``model`` are used).
        places: audit folders to look in.
    """
    from importlib.util import find_spec

    from saliencekit.audit._job import model_fingerprint
    from saliencekit.audit.store import AuditStore, store_path
    from saliencekit.errors import SaliencekitError

    if find_spec("zarr") is None:
        return None
    run_dir = Path(run.path)
    candidates = [Path(p) for p in places] if places is not None else [run_dir / "audit", run_dir.parent / "audit"]
    fingerprint: str | None = None
    for folder in candidates:
        page = folder / PAGE_NAME
        if not page.is_file() or not (store_path(folder) / "zarr.json").is_file():
            continue
        try:
            stored = AuditStore(folder).identity["model"]["fingerprint"]
        except (SaliencekitError, KeyError, OSError, ValueError):
            continue
        fingerprint = fingerprint or model_fingerprint(run.model)
        if stored == fingerprint:
            return page
    return None
