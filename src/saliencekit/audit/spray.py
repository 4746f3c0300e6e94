"""Spectral relevance analysis (SpRAy; Lapuschkin et al. 2019, "Unmasking Clever Hans predictors and
assessing what machines really learn") over an audit store, and the Clever-Hans flagging rule.

Everything here is defined in docs/spray.md (written before the analysis was run on a trained model):
per method and per explained class, the maps are taken in absolute value, area-downsampled to a 32 x 32
grid and normalised to unit mass; a symmetric k-nearest-neighbour graph is clustered spectrally into
the number of clusters with the largest eigengap of its normalised Laplacian; a cluster is *flagged*
when its extra relevance over the rest of its class sits on one small spot, consistently over its
images (:func:`flag_rule`). Masks are never used to cluster or flag; where the data has them they
describe the clusters afterwards (share of map mass on the lesion and on the planted marker).

>>> from saliencekit.audit import open_store
>>> from saliencekit.audit.spray import spray
>>> result = spray(open_store("audit"))  # doctest: +SKIP
>>> [c.size for c in result["smoothgrad"].groups["effusion"].clusters]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saliencekit.errors import InputError

GRID = 32
MIN_GROUP = 20
MAX_CLUSTERS = 10
TYPICAL = 8
#: The thresholds of the flagging rule (docs/spray.md).
RULE = {
    "min_size": 5, "min_fraction": 0.05, "max_fraction": 0.8, "specific": 2.0, "concentrated": 2.0,
    "compact": 0.5, "consistent": 0.7, "rest_quantile": 0.9, "window_fraction": 1 / 8, "halo": 3,
}
LESION, MARKER = "lesion", "shortcut"


def _sklearn() -> Any:
    try:
        import sklearn.cluster
        import sklearn.neighbors
    except ImportError:
        raise InputError("SpRAy needs scikit-learn: pip install saliencekit[audit]") from None
    return sklearn


# ------------------------------------------------------------------------------------------------ features


def grid_maps(maps: np.ndarray, grid: int = GRID) -> np.ndarray:
    """(n, H, W) maps -> (n, g, g) distributions of relevance mass: |map|, area-averaged onto a ``g x g`` grid
    (``g = min(grid, H, W)``), divided by their sum (an all-zero map stays zero).

    >>> m = np.zeros((1, 64, 64)); m[0, :8, :8] = -2.0
    >>> g = grid_maps(m, 8); float(g.sum()), float(g[0, 0, 0])
    (1.0, 1.0)
    """
    import torch

    maps = np.abs(np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0))
    g = min(grid, maps.shape[1], maps.shape[2])
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(maps)[:, None], (g, g))[:, 0].numpy()
    total = pooled.reshape(len(pooled), -1).sum(1)
    out = np.zeros_like(pooled, dtype=np.float64)
    nz = total > 0
    out[nz] = pooled[nz] / total[nz, None, None]
    return out


def _window_sums(m: np.ndarray, w: int) -> np.ndarray:
    """Sums of every ``w x w`` window of the last two axes (valid positions only), by an integral image."""
    c = np.cumsum(np.cumsum(m, axis=-2), axis=-1)
    c = np.pad(c, [(0, 0)] * (m.ndim - 2) + [(1, 0), (1, 0)])
    return c[..., w:, w:] - c[..., :-w, w:] - c[..., w:, :-w] + c[..., :-w, :-w]


# ------------------------------------------------------------------------------------------------ the rule


def flag_rule(cluster: np.ndarray, rest: np.ndarray, group_size: int, rule: dict[str, float] | None = None
              ) -> dict[str, Any]:
    """Evaluate the flagging rule of docs/spray.md for one cluster.

    Args:
        cluster: the cluster's grid maps (c, g, g), each summing to 1.
        rest: the grid maps of the rest of its group (r, g, g).
        group_size: ``|G|``.
        rule: thresholds (default :data:`RULE`).

    Returns:
        ``flagged`` and the measured numbers: the spot (``row``, ``col``, ``size`` in grid cells), the
        spot's mass in the cluster's and the rest's mean maps, its area share, the excess in the spot and
        in the halo, the share of the cluster's images above the rest's quantile, and which conditions hold.

    >>> rng = np.random.default_rng(0)
    >>> base = rng.random((60, 16, 16)); spot = base.copy(); spot[:20, 1:3, 12:14] += 40
    >>> maps = spot / spot.sum(axis=(1, 2), keepdims=True)
    >>> flag_rule(maps[:20], maps[20:], 60)["flagged"]
    True
    """
    r = {**RULE, **(rule or {})}
    n_c, g = cluster.shape[0], cluster.shape[-1]
    w = max(1, round(g * r["window_fraction"]))
    m_c = cluster.mean(0) if n_c else np.zeros((g, g))
    m_r = rest.mean(0) if len(rest) else np.zeros((g, g))
    diff = _window_sums(m_c - m_r, w)
    i, j = np.unravel_index(int(np.argmax(diff)), diff.shape)
    spot_c = float(_window_sums(m_c, w)[i, j])
    spot_r = float(_window_sums(m_r, w)[i, j])
    area = w * w / (g * g)
    pad = (int(r["halo"]) - 1) // 2 * w  # the halo: (halo * w) cells wide, centred on the spot, cut at the border
    top, left = max(0, i - pad), max(0, j - pad)
    bottom, right = min(g, i + w + pad), min(g, j + w + pad)
    halo_excess = float((m_c - m_r)[top:bottom, left:right].sum())
    excess = spot_c - spot_r
    own = cluster[:, i : i + w, j : j + w].sum(axis=(1, 2)) if n_c else np.zeros(0)
    others = rest[:, i : i + w, j : j + w].sum(axis=(1, 2)) if len(rest) else np.zeros(0)
    cut = float(np.quantile(others, r["rest_quantile"])) if len(others) else math.inf
    consistent = float((own > cut).mean()) if n_c else 0.0
    checks = {
        "sub_population": bool(n_c >= r["min_size"] and r["min_fraction"] * group_size <= n_c
                               <= r["max_fraction"] * group_size),
        "specific": bool(spot_c >= r["specific"] * spot_r),
        "concentrated": bool(spot_c >= r["concentrated"] * area),
        "compact": bool(excess >= r["compact"] * halo_excess),
        "consistent": bool(consistent >= r["consistent"]),
    }
    return {
        "flagged": all(checks.values()), "checks": checks, "row": int(i), "col": int(j), "size": int(w),
        "grid": int(g), "spot_mass": spot_c, "rest_spot_mass": spot_r, "area_share": area, "excess": excess,
        "halo_excess": halo_excess, "consistent_share": consistent, "rest_cut": cut,
    }


# ------------------------------------------------------------------------------------------------ clustering


def _neighbors(n: int) -> int:
    return int(min(n - 1, max(10, round(math.sqrt(n) / 2))))


def eigengap(affinity: Any, max_clusters: int = MAX_CLUSTERS) -> tuple[int, float, list[float]]:
    """Number of clusters ``c`` in 1..max_clusters with the largest gap ``l_(c+1) - l_c`` of the normalised
    Laplacian's smallest eigenvalues; returns ``c``, the gap and the eigenvalues."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import laplacian

    n = affinity.shape[0]
    m = min(max_clusters + 1, n)
    lap = laplacian(sp.csr_matrix(affinity, dtype=np.float64), normed=True)
    if n <= 3000:
        vals = np.linalg.eigvalsh(lap.toarray())[:m]
    else:  # the largest eigenvalues of 2I - L are the smallest of L; a fixed start vector keeps it deterministic
        from scipy.sparse.linalg import eigsh

        shifted = 2.0 * sp.identity(n, format="csr") - lap
        mu = eigsh(shifted, k=m, which="LA", v0=np.ones(n), return_eigenvectors=False, tol=1e-8)
        vals = np.sort(2.0 - mu)
    vals = np.clip(vals, 0.0, None)
    gaps = np.diff(vals)[: max(1, min(max_clusters, m - 1))]
    c = int(np.argmax(gaps)) + 1 if gaps.size else 1
    return c, float(gaps[c - 1]) if gaps.size else 0.0, [float(v) for v in vals]


def cluster_group(features: np.ndarray, seed: int = 0, max_clusters: int = MAX_CLUSTERS
                  ) -> tuple[np.ndarray, float, list[float]]:
    """SpRAy on one group: (labels per image, sorted by cluster size; eigengap; eigenvalues)."""
    skl = _sklearn()
    n = features.shape[0]
    graph = skl.neighbors.kneighbors_graph(features, n_neighbors=_neighbors(n), mode="connectivity",
                                           include_self=False)
    graph = graph.maximum(graph.T)
    c, gap, vals = eigengap(graph, max_clusters)
    if c == 1:
        return np.zeros(n, dtype=np.int64), gap, vals
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Graph is not fully connected": handled by the eigengap
        labels = skl.cluster.spectral_clustering(graph, n_clusters=c, random_state=seed, assign_labels="kmeans",
                                                 n_init=10)
    order = sorted(range(c), key=lambda k: (-int((labels == k).sum()), int(np.flatnonzero(labels == k)[0])))
    relabel = np.empty(c, dtype=np.int64)
    relabel[order] = np.arange(c)
    return relabel[labels], gap, vals


# ------------------------------------------------------------------------------------------------ results


@dataclass
class Cluster:
    """One cluster of a group.

    Attributes:
        id: its number in the group (0 = largest).
        members: store indices of its images.
        typical: the store indices of its most typical images (closest to its mean grid map).
        flagged: whether the rule of docs/spray.md flags it.
        rule: the rule's measured numbers (:func:`flag_rule`).
        errors: store indices of its images whose prediction differs from the folder's class.
        mean_grid: its mean grid map (g, g).
        mean_map: its mean map at full resolution (each image's |map| normalised to unit mass).
        mask_shares: mask kind -> mean share of map mass on that mask over its images that have one.
        mask_areas: mask kind -> mean area share of that mask over the same images.
        mask_images: mask kind -> number of its images with a non-empty mask of that kind.
    """

    id: int
    members: list[int]
    typical: list[int]
    flagged: bool
    rule: dict[str, Any]
    errors: list[int]
    mean_grid: np.ndarray
    mean_map: np.ndarray | None = None
    mask_shares: dict[str, float] = field(default_factory=dict)
    mask_areas: dict[str, float] = field(default_factory=dict)
    mask_images: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class Group:
    """The images of one explained class and their clusters (``skipped`` says why there are none)."""

    class_index: int
    class_name: str
    images: list[int]
    eigengap: float | None = None
    eigenvalues: list[float] = field(default_factory=list)
    clusters: list[Cluster] = field(default_factory=list)
    zero_maps: int = 0
    skipped: str | None = None

    @property
    def n(self) -> int:
        return len(self.images)


@dataclass
class MethodAnalysis:
    """SpRAy of one method's maps: one :class:`Group` per explained class."""

    method: str
    grid: int
    groups: dict[str, Group]

    @property
    def flagged(self) -> list[tuple[Group, Cluster]]:
        return [(g, c) for g in self.groups.values() for c in g.clusters if c.flagged]


def spray(
    store: Any,
    methods: Sequence[str] | None = None,
    *,
    grid: int = GRID,
    min_group: int = MIN_GROUP,
    max_clusters: int = MAX_CLUSTERS,
    seed: int = 0,
    data: str | Path | None = None,
    masks: bool = True,
    progress: bool = False,
) -> dict[str, MethodAnalysis]:
    """Run SpRAy on every (or the given) method of a complete store.

    Args:
        store: an :class:`~saliencekit.audit.AuditStore` or its path.
        methods: method labels (default: all of the store's).
        grid: side of the grid the maps are downsampled to.
        min_group: smallest group analysed.
        max_clusters: most clusters the eigengap may choose.
        seed: seed of the k-means step.
        data: the data folder, for the masks (default: the one the store was made from, when it exists).
        masks: describe the clusters with the data's masks where it has them.
        progress: show a progress bar over the store's chunks.

    Returns:
        label -> :class:`MethodAnalysis`.
    """
    from tqdm.auto import tqdm

    from saliencekit.audit.store import AuditStore, check_complete

    store = store if isinstance(store, AuditStore) else AuditStore(store)
    check_complete(store, "the analysis")
    labels_ = list(methods) if methods else store.methods
    unknown = [m for m in labels_ if m not in store.methods]
    if unknown:
        raise InputError(f"method(s) {unknown} are not in the store; it holds {', '.join(store.methods)}")
    targets = np.asarray(store.targets[:])
    truth = np.asarray(store.labels[:])
    preds = np.asarray(store.predictions[:])
    names = store.class_names
    mask_paths = _mask_paths(store, data) if masks else {}
    out: dict[str, MethodAnalysis] = {}
    for label in labels_:
        feats = np.zeros((store.n_images, min(grid, *store.image_shape) ** 2), dtype=np.float32)
        for c in tqdm(range(store.n_chunks), desc=f"SpRAy {label}: grid maps", disable=not progress, leave=False):
            a, b = store.chunk_bounds(c)
            feats[a:b] = grid_maps(store.maps[label][a:b], grid).reshape(b - a, -1)
        g = round(math.sqrt(feats.shape[1]))
        groups: dict[str, Group] = {}
        for k, name in enumerate(names):
            idx = np.flatnonzero(targets == k)
            nonzero = idx[feats[idx].sum(1) > 0]
            group = Group(class_index=k, class_name=name, images=[int(i) for i in nonzero],
                          zero_maps=int(len(idx) - len(nonzero)))
            groups[name] = group
            if len(nonzero) < min_group:
                group.skipped = f"only {len(nonzero)} images explained for {name}; at least {min_group} needed"
                continue
            x = feats[nonzero].astype(np.float64)
            assign, gap, vals = cluster_group(x, seed=seed, max_clusters=max_clusters)
            group.eigengap, group.eigenvalues = gap, vals
            grids = x.reshape(-1, g, g)
            for cid in range(int(assign.max()) + 1):
                inside = assign == cid
                members = nonzero[inside]
                mean = grids[inside].mean(0)
                dist = np.linalg.norm(x[inside] - mean.reshape(1, -1), axis=1)
                typical = members[np.argsort(dist, kind="stable")[:TYPICAL]]
                group.clusters.append(Cluster(
                    id=cid, members=[int(i) for i in members], typical=[int(i) for i in typical],
                    flagged=False, rule={}, errors=[int(i) for i in members if preds[i] != truth[i]], mean_grid=mean))
                rule = flag_rule(grids[inside], grids[~inside], len(nonzero))
                group.clusters[-1].rule, group.clusters[-1].flagged = rule, rule["flagged"]
        _full_resolution(store, label, groups, mask_paths, progress)
        out[label] = MethodAnalysis(method=label, grid=g, groups=groups)
    return out


def _mask_paths(store: Any, data: str | Path | None) -> dict[int, dict[str, Path]]:
    """Store index -> mask kind -> file, from the data folder (empty when it is not there)."""
    from saliencekit.data.folder import scan_folder
    from saliencekit.errors import DataError

    root = Path(data) if data is not None else Path(store.info.get("data_root", ""))
    if not root.is_dir():
        return {}
    try:
        index = scan_folder(root, min_classes=1)
    except DataError:
        return {}
    by_file = {s.relpath: s.masks for s in index.samples}
    files = [str(f) for f in store.files[:]]
    return {i: dict(by_file[f]) for i, f in enumerate(files) if by_file.get(f)}


def _full_resolution(store: Any, label: str, groups: dict[str, Group], mask_paths: dict[int, dict[str, Path]],
                     progress: bool) -> None:
    """Mean full-resolution maps and mask mass shares of every cluster, one pass over the store's chunks."""
    from tqdm.auto import tqdm

    where: dict[int, Cluster] = {i: c for g in groups.values() for c in g.clusters for i in c.members}
    if not where:
        return
    h, w = store.image_shape
    preprocessing = store.preprocessing  # masks are fitted to the maps exactly as the images were
    sums = {id(c): np.zeros((h, w)) for c in where.values()}
    shares: dict[int, dict[str, list[float]]] = {id(c): {} for c in where.values()}
    areas: dict[int, dict[str, list[float]]] = {id(c): {} for c in where.values()}
    for ch in tqdm(range(store.n_chunks), desc=f"SpRAy {label}: cluster maps", disable=not progress, leave=False):
        a, b = store.chunk_bounds(ch)
        if not any(i in where for i in range(a, b)):
            continue
        maps = np.abs(np.nan_to_num(store.maps[label][a:b].astype(np.float64)))
        for i in range(a, b):
            cl = where.get(i)
            if cl is None:
                continue
            m = maps[i - a]
            total = m.sum()
            if total <= 0:
                continue
            sums[id(cl)] += m / total
            for kind, path in mask_paths.get(i, {}).items():
                mask = preprocessing.load_mask(path).numpy() > 0
                if mask.any():
                    shares[id(cl)].setdefault(kind, []).append(float(m[mask].sum() / total))
                    areas[id(cl)].setdefault(kind, []).append(float(mask.mean()))
    for cl in {id(c): c for c in where.values()}.values():
        cl.mean_map = sums[id(cl)] / max(1, cl.size)
        cl.mask_shares = {k: float(np.mean(v)) for k, v in shares[id(cl)].items()}
        cl.mask_areas = {k: float(np.mean(v)) for k, v in areas[id(cl)].items()}
        cl.mask_images = {k: len(v) for k, v in shares[id(cl)].items()}


# ------------------------------------------------------------------------------------------------ JSON


def to_json(analysis: dict[str, MethodAnalysis]) -> dict[str, Any]:
    """The analysis as plain data (``spray.json``): no full-resolution maps, grid means rounded."""
    methods = {}
    for label, ma in analysis.items():
        groups = {}
        for name, g in ma.groups.items():
            clusters = []
            for c in g.clusters:
                d = asdict(c)
                d.pop("mean_map")
                d["mean_grid"] = np.round(c.mean_grid, 6).tolist()
                d["size"] = c.size
                clusters.append(d)
            groups[name] = {"class_index": g.class_index, "n": g.n, "images": g.images, "eigengap": g.eigengap,
                            "eigenvalues": g.eigenvalues, "zero_maps": g.zero_maps, "skipped": g.skipped,
                            "clusters": clusters}
        methods[label] = {"grid": ma.grid, "groups": groups}
    return {"format": "saliencekit-spray", "format_version": 1, "protocol": "docs/spray.md", "rule": dict(RULE),
            "methods": methods}
