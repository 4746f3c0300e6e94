"""A tiny trained CNN for the trust-check tests: 32x32 images with a bright blob left (class 0) or right (class 1).

The model is trained once per test session (a few seconds on one CPU thread) and cached; tests that use it
must not modify it (the checks never do: that is one of the things tested).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZE = 32


def blob_data(n: int = 64, size: int = SIZE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised images (n, 1, size, size), labels (n,) and blob masks (n, size, size) (radius ~ 2 sigma)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    x = torch.randn(n, 1, size, size, generator=g) * 0.3
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        cx = (size * 0.25 if y[i] == 0 else size * 0.75) + float(torch.randn(1, generator=g)) * size / 16
        cy = size / 2 + float(torch.randn(1, generator=g)) * size / 8
        r2 = (xx - cx) ** 2 + (yy - cy) ** 2
        s = size / 10
        x[i, 0] += 2.0 * torch.exp(-r2 / (2 * s**2))
        masks[i] = r2 <= (2 * s) ** 2
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True)
    return x, y, masks


def small_cnn() -> nn.Module:
    """conv-relu-pool x2, conv-relu, flatten, linear-relu, linear (one logit)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * (SIZE // 4) ** 2, 32), nn.ReLU(), nn.Linear(32, 1))


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 10, seed: int = 0) -> float:
    """Adam + BCE on the logit; returns the training accuracy (eval mode at the end)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for b in range(0, len(x), 32):
            idx = perm[b : b + 32]
            loss = nn.functional.binary_cross_entropy_with_logits(model(x[idx])[:, 0], y[idx].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float(((model(x)[:, 0] > 0).long() == y).float().mean())


@functools.lru_cache(maxsize=1)
def _trained() -> tuple[dict[str, torch.Tensor], float]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            x, y, _ = blob_data(48)
            model = small_cnn()
            acc = fit(model, x, y, epochs=8)
    finally:
        torch.set_num_threads(old)
    model.zero_grad(set_to_none=True)
    return {k: v.clone() for k, v in model.state_dict().items()}, acc


def trained_cnn() -> tuple[nn.Module, float]:
    """A fresh copy of the session's trained blob CNN (eval mode) and its training accuracy."""
    state, acc = _trained()
    model = small_cnn()
    model.load_state_dict(state)
    model.eval()
    return model, acc


def write_blob_folder(root: Path, n_per_class: int = 16, size: int = SIZE, seed: int = 0) -> Path:
    """A data folder ROOT/left, ROOT/right with lesion masks under ROOT/masks/<class>/ (8-bit PNGs)."""
    from PIL import Image

    x, y, masks = blob_data(2 * n_per_class, size, seed)
    for i in range(len(y)):
        cls = "left" if int(y[i]) == 0 else "right"
        img = x[i, 0].numpy()
        img = ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / "masks" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / cls / f"{i:03d}.png")
        Image.fromarray((masks[i].numpy() * 255).astype(np.uint8)).save(root / "masks" / cls / f"{i:03d}.png")
    return root


def assert_verdict(entry: dict, controls_ok: bool) -> None:
    """A randomisation verdict in checks.json: a level (None only without a verdict), ``passed`` and a reason."""
    assert entry["level"] in ("passes", "partly", "fails", None)
    assert entry["passed"] is (None if entry["level"] is None else entry["level"] == "passes")
    assert isinstance(entry["reason"], str) and entry["reason"]
    if not controls_ok:
        assert entry["level"] is None and "controls" in entry["reason"]
    assert set(entry["readings"]) == {"spearman", "spearman_abs"}


def assert_controls(check: dict) -> None:
    """Both controls are reported with their expected level, and ``controls_ok`` agrees with them."""
    ctl = check["controls"]
    assert set(ctl) == {"control_edges", "control_random"}
    assert ctl["control_edges"]["expected"] == "fails" and ctl["control_random"]["expected"] == "passes"
    for entry in ctl.values():
        assert entry["as_expected"] is (entry["level"] == entry["expected"])
    assert check["controls_ok"] is all(e["as_expected"] for e in ctl.values())
    assert check["controls_reason"]


def snapshot(model: nn.Module) -> dict[str, object]:
    """Everything a check must leave unchanged: weights (bitwise), buffers, modes, flags, grads and hooks."""
    hooks = {}
    for name, m in model.named_modules():
        hooks[name] = tuple(len(getattr(m, attr)) for attr in (
            "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
            "_load_state_dict_pre_hooks"))
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "hooks": hooks,
        "param_ids": [id(p) for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, before: dict[str, object]) -> None:
    """Fail unless ``model`` matches its :func:`snapshot` exactly."""
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    assert after["param_ids"] == before["param_ids"]
    for k, v in before["state"].items():  # type: ignore[union-attr]
        assert torch.equal(after["state"][k], v), k  # type: ignore[index]
    for k, g in before["grad"].items():  # type: ignore[union-attr]
        g2 = after["grad"][k]  # type: ignore[index]
        assert (g is None and g2 is None) or (g is not None and g2 is not None and torch.equal(g, g2)), k


SUMMARY_KEYS = {"mean", "ci_low", "ci_high", "n", "values"}


def assert_summary(s: object, n: int | None = None) -> None:
    """A checks.json *summary*: mean inside its CI, n = number of non-null values."""
    assert isinstance(s, dict) and SUMMARY_KEYS <= set(s), s
    vals = [v for v in s["values"] if v is not None]
    assert s["n"] == len(vals)
    if n is not None:
        assert len(s["values"]) == n
    if vals:
        assert abs(s["mean"] - sum(vals) / len(vals)) < 1e-9
        assert s["ci_low"] - 1e-12 <= s["mean"] <= s["ci_high"] + 1e-12


def validate_checks_json(d: dict, out_dir: Path | None = None, figures_drawn: bool = True) -> None:
    """Check a checks.json dict against docs/checks_json.md (and that listed figures exist under out_dir)."""
    for key in ("saliencekit_version", "created", "command", "run_dir", "settings", "methods", "images", "checks",
                "summary"):
        assert key in d, key
    n = d["settings"].get("rows", d["settings"]["images"])  # multi-label: one row per (image, explained label)
    assert len(d["images"]) == n
    for row in d["images"]:
        assert {"file", "label", "label_name", "prediction", "probability"} <= set(row)
        assert 0.0 <= row["probability"] <= 1.0
    labels = list(d["methods"])
    for spec in d["methods"].values():
        assert set(spec) == {"method", "options"}
    assert set(d["checks"]) == set(d["settings"]["checks"])
    assert not set(d["checks"]) & set(d["settings"]["skipped"])
    figures: list[str] = []

    def method_figs(entry: dict) -> None:
        assert isinstance(entry["figures"], list)
        figures.extend(entry["figures"])

    c = d["checks"]
    if "model_randomization" in c:
        mr = c["model_randomization"]
        casc = mr["cascading"]
        assert casc["steps"][0] == "original"
        assert set(casc["null"]) >= set(mr["metrics"])
        for s in casc["null"].values():
            assert_summary(s)
        for lb in labels:
            e = casc["methods"][lb]
            assert_verdict(e, casc["controls_ok"])
            for m in mr["metrics"]:
                assert len(e["curves"][m]) == len(casc["steps"]) == len(e["curves_ci"][m])
            method_figs(e)
            assert bool(e["figures"]) == figures_drawn
        assert_controls(casc)
        modes = d["settings"].get("randomization_modes", ["cascading", "independent"])
        assert ("independent" in mr) == ("independent" in modes)
        if "independent" in mr:
            ind = mr["independent"]
            assert ind["steps"] == casc["steps"][1:]
            for lb in labels:
                assert len(ind["methods"][lb]["curves"][mr["metrics"][0]]) == len(ind["steps"])
        figures.extend(mr["figures"])
    def n_of(check: str) -> int:  # images a check used (the costly_images cap)
        return c[check].get("images", n)

    if "data_randomization" in c:
        dr = c["data_randomization"]
        assert 0.0 <= dr["random_model_train_accuracy"] <= 1.0 and dr["epochs"] >= 1
        assert_controls(dr)
        for lb in labels:
            e = dr["methods"][lb]
            assert_verdict(e, dr["controls_ok"])
            for s in e["similarity"].values():
                assert_summary(s, n_of("data_randomization"))
            method_figs(e)
        figures.extend(dr["figures"])
    if "input_invariance" in c:
        ii = c["input_invariance"]
        assert isinstance(ii["shift"], float)
        assert ii["compensated"]["output_max_abs_change"] < 1e-6
        for lb in labels:
            e = ii["compensated"]["methods"][lb]
            assert isinstance(e["invariant"], bool)
            assert_summary(e["max_abs_change"], n_of("input_invariance"))
            for s in e["similarity"].values():
                assert_summary(s, n_of("input_invariance"))
            method_figs(e)
            method_figs(ii["uncompensated"]["methods"][lb])
        assert 0.0 <= ii["uncompensated"]["prediction_changed_fraction"] <= 1.0
        figures.extend(ii["figures"])
    if "agreement" in c:
        ag = c["agreement"]
        assert ag["methods"] == labels
        for m in ag["metrics"]:
            mat = ag["matrices"][m]
            assert len(mat) == len(labels) and all(len(r) == len(labels) for r in mat)
            assert all(abs(mat[i][i] - 1) < 1e-9 for i in range(len(labels)))
        figures.extend(ag["figures"])
    if "faithfulness" in c:
        fa = c["faithfulness"]
        assert sorted(fa["ranking"]) == sorted(labels)
        for lb in labels:
            e = fa["methods"][lb]
            for k in ("deletion_auc", "insertion_auc", "road_morf_auc", "road_lerf_auc"):
                assert_summary(e[k], n_of("faithfulness"))
            method_figs(e)
        figures.extend(fa["figures"])
    if "localization" in c:
        lo = c["localization"]
        assert isinstance(lo["mask"], str)
        for lb in labels:
            e = lo["methods"][lb]
            for k in ("pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank"):
                assert_summary(e[k], n_of("localization"))
            assert e["shortcut_share"] is None or SUMMARY_KEYS <= set(e["shortcut_share"])
            method_figs(e)
        figures.extend(lo["figures"])
    if "complexity" in c:
        for lb in labels:
            e = c["complexity"]["methods"][lb]
            for k in ("sparseness", "complexity", "max_sensitivity"):
                assert_summary(e[k], n_of("complexity"))
    s = d["summary"]
    assert set(s["methods"]) == set(labels)
    assert set(s["recommended"]) <= set(labels) and set(s["reasons"]) == set(s["recommended"])
    assert {"present_in_data", "detected", "marker_share", "lesion_share", "evidence"} <= set(s["shortcut"])
    if out_dir is not None:
        for f in figures:
            assert not Path(f).is_absolute()
            assert (out_dir / f).is_file(), f
