"""SpRAy and the flagging rule of docs/spray.md: unit cases of the rule, the eigengap on graphs of known
structure, the planted-shortcut store (found without masks, purity and recall), a clean store (nothing
flagged), and the page (sections, flagged first, escaping)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zarr", reason="the audit store needs zarr v3 (pip install saliencekit[audit])")
pytest.importorskip("sklearn", reason="SpRAy needs scikit-learn (pip install saliencekit[audit])")

from audit_toys import planted_store
from saliencekit.audit import open_store
from saliencekit.audit.runner import analyze
from saliencekit.audit.spray import eigengap, flag_rule, grid_maps, spray


def _unit(m: np.ndarray) -> np.ndarray:
    return m / m.sum(axis=(1, 2), keepdims=True)


def test_flag_rule_cases() -> None:
    rng = np.random.default_rng(0)
    base = rng.random((100, 32, 32)) + 0.5
    # a third of the images carry a small spot (2x2 cells) near the top-right corner
    spot = base.copy()
    spot[:30, 2:4, 27:29] += 60
    maps = _unit(spot)
    r = flag_rule(maps[:30], maps[30:], 100)
    assert r["flagged"] and (r["row"], r["col"]) in {(i, j) for i in range(0, 3) for j in range(25, 28)}
    assert r["size"] == 4 and r["spot_mass"] > 5 * r["rest_spot_mass"]
    # the same cluster's extra relevance spread over a broad region (a lesion-sized blob): not compact
    broad = base.copy()
    broad[:30, 14:26, 4:16] += 2.0
    b = flag_rule(_unit(broad)[:30], _unit(broad)[30:], 100)
    assert not b["flagged"] and not b["checks"]["compact"]
    # the whole group is not a sub-population
    assert not flag_rule(maps, maps[:0], 100)["checks"]["sub_population"]
    # when the rest has the spot too, it is not specific to the cluster
    both = base.copy()
    both[:, 2:4, 27:29] += 60
    assert not flag_rule(_unit(both)[:30], _unit(both)[30:], 100)["checks"]["specific"]
    # a few outliers carrying the spot do not make a consistent cluster
    few = base.copy()
    few[:5, 2:4, 27:29] += 400
    f = flag_rule(_unit(few)[:30], _unit(few)[30:], 100)
    assert f["checks"]["specific"] and not f["checks"]["consistent"] and not f["flagged"]


def test_grid_maps_are_mass_distributions() -> None:
    m = np.zeros((2, 64, 48), dtype=np.float32)
    m[0, :2, :2] = -4.0  # sign does not matter
    g = grid_maps(m, 16)
    assert g.shape == (2, 16, 16) and np.isclose(g[0].sum(), 1.0) and g[1].sum() == 0
    assert g[0, 0, 0] == pytest.approx(1.0)


def test_eigengap_counts_separated_groups() -> None:
    import scipy.sparse as sp

    blocks = [np.ones((n, n)) - np.eye(n) for n in (12, 9, 7)]
    c, gap, vals = eigengap(sp.block_diag(blocks).toarray(), 10)
    assert c == 3 and vals[:3] == pytest.approx([0, 0, 0], abs=1e-9) and gap > 0.5
    one, _, _ = eigengap(np.ones((20, 20)) - np.eye(20), 10)
    assert one == 1


def _score(analysis: dict, marked: list[int]) -> tuple[list, list]:
    group = analysis["planted"].groups["effusion"]
    marked_in = set(marked) & set(group.images)
    rows = []
    for c in group.clusters:
        hits = len(set(c.members) & marked_in)
        rows.append((c.flagged, hits / c.size, hits / len(marked_in) if marked_in else None))
    others = [c.flagged for g in analysis["planted"].groups.values() if g.class_name != "effusion" for c in g.clusters]
    return rows, others


def test_planted_shortcut_is_found_without_masks(tmp_path: Path) -> None:
    out, marked = planted_store(tmp_path / "sc", shortcut=True, with_images=False)
    analysis = spray(open_store(out), masks=False)  # no data folder at all: nothing but the maps
    rows, others = _score(analysis, marked)
    flagged = [(p, r) for f, p, r in rows if f]
    assert len(flagged) == 1 and flagged[0][0] >= 0.9 and flagged[0][1] >= 0.8, rows
    assert not any(others)


def test_no_shortcut_nothing_flagged(tmp_path: Path) -> None:
    out, marked = planted_store(tmp_path / "clean", shortcut=False, with_images=False)
    analysis = spray(open_store(out))
    assert marked == []
    groups = analysis["planted"].groups
    assert len(groups["effusion"].clusters) >= 2  # left and right effusions are told apart ...
    assert not any(c.flagged for g in groups.values() for c in g.clusters)  # ... and neither is a spot


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.imgs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        if d.get("id"):
            self.ids.append(str(d["id"]))
        if tag == "img":
            self.imgs.append(str(d.get("src")))
        if tag == "script":
            self.scripts += 1


def test_page_and_json(tmp_path: Path) -> None:
    import zarr

    out, marked = planted_store(tmp_path / "sc", shortcut=True)
    g = zarr.open_group(str(out / "maps.zarr"), mode="r+")
    files = g["files"][:]
    files[1] = "normal/<script>alert(1)</script>.png"  # a hostile file name reaches the page escaped
    g["files"][:] = files
    _, page = analyze(out, progress=False, command="saliencekit audit run data --out audit")
    html = page.read_text()
    p = _Page()
    p.feed(html)
    assert p.scripts == 0 and "<script>alert" not in html and "&lt;script&gt;alert(1)" in html
    for sid in ("flagged", "dataset", "clusters", "errors", "reproducibility"):
        assert sid in p.ids
    assert p.ids.index("flagged") < p.ids.index("dataset")  # flagged clusters on top
    assert "What was measured" in html and "How to confirm" in html and "planted marker mask" in html
    assert all(src.startswith("data:image/png;base64,") for src in p.imgs) and len(p.imgs) >= 4
    data = json.loads((out / "spray.json").read_text())
    group = data["methods"]["planted"]["groups"]["effusion"]
    flagged = [c for c in group["clusters"] if c["flagged"]]
    assert len(flagged) == 1 and set(flagged[0]["members"]) <= set(marked)
    assert flagged[0]["mask_shares"]["shortcut"] > 0.2  # where masks exist, clusters carry their mask shares
    assert data["rule"]["consistent"] == 0.7
