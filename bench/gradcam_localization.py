"""Why does Grad-CAM miss the effusion on the demo model? Localisation of CAMs by layer, with diagnostics.

For the test images of a run directory that carry a lesion mask, computes the pointing game and relevance mass
(docs/checks.md) of gradient, occlusion and of Grad-CAM / LayerCAM / HiResCAM at each ReLU stage of the lesson CNN,
plus the diagnostics of issue #12:

- *layer resolution*: the same measures at every stage (4x4 ... 64x64 at 256 px);
- *upsampling alignment*: relevance mass of the raw CAM cells against the lesion's share of each cell, so no
  interpolation is involved, and with ``align_corners=True`` upsampling;
- *sign of the explained score*: the predicted class, and the maps for class 1 (``S = z``) and class 0 (``S = -z``);
- *where the model looks*: occlusion (a model-agnostic map) and the logit drop when the lesion is blurred away.

Usage::

    PYTHONPATH=src nice -n 10 python bench/gradcam_localization.py RUN_DIR [--out FIG.png] [--images N]

Prints a JSON report and writes a figure (rows: images; columns: the image with its mask outline and the maps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _cam_raw(model: torch.nn.Module, x: torch.Tensor, layer: str, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM at the layer's own resolution (N, h, w), ReLU applied, no upsampling."""
    module = model.get_submodule(layer)
    store: dict[str, torch.Tensor] = {}

    def hook(_m: Any, _i: Any, out: torch.Tensor) -> None:
        store["a"] = out

    h = module.register_forward_hook(hook)
    try:
        xx = x.clone().requires_grad_(False)
        z = model(xx)[:, 0]
        s = torch.where(target == 1, z, -z)
        g = torch.autograd.grad(s.sum(), store["a"])[0]
    finally:
        h.remove()
    a = store["a"].detach()
    w = g.mean(dim=(2, 3), keepdim=True)
    return F.relu((w * a).sum(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", default="gradcam_localization.png")
    ap.add_argument("--images", type=int, default=12, help="effusion test images analysed (default 12)")
    ap.add_argument("--show", type=int, default=6, help="images drawn in the figure")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from saliencekit import explain
    from saliencekit.methods.cam import upsample
    from saliencekit.run import load_run
    from saliencekit.trust import pointing_game, relevance_mass

    run = load_run(args.run_dir)
    model = run.model.eval()
    test = run.dataset("test")
    idx = [i for i in range(len(test)) if bool(test.mask(i, "lesion").any())][: args.images]
    x = torch.stack([test.image(i) for i in idx])
    masks = torch.stack([test.mask(i, "lesion") for i in idx]) > 0.5
    h, w = x.shape[-2:]
    tol = 15 * min(h, w) / 256
    with torch.no_grad():
        z = model(x)[:, 0]
    pred = (z > 0).long()
    report: dict[str, Any] = {"run": str(args.run_dir), "images": [test.sample(i).relpath for i in idx],
                              "logit": z.tolist(), "predicted_class": pred.tolist(),
                              "lesion_area_share": masks.flatten(1).double().mean(1).tolist()}

    stages = [n for n, m in model.named_modules() if n.startswith("features.relu")]
    with torch.no_grad():
        sizes = {}
        hooks = [model.get_submodule(n).register_forward_hook(
            lambda _m, _i, o, n=n: sizes.__setitem__(n, tuple(o.shape[-2:]))) for n in stages]
        model(x[:1])
        for hk in hooks:
            hk.remove()
    report["stage_sizes"] = {n: sizes[n] for n in stages}

    def score(maps: torch.Tensor) -> dict[str, float]:
        return {"pointing_game": float(np.nanmean(pointing_game(maps, masks, tolerance=tol).numpy())),
                "relevance_mass": float(np.nanmean(relevance_mass(maps, masks).numpy()))}

    one = torch.ones_like(pred)
    results: dict[str, Any] = {}
    figure_maps: dict[str, torch.Tensor] = {}
    occlusion = {"method": "occlusion", "patch": max(8, h // 16), "stride": max(4, h // 32)}
    base = explain(model, x, {"gradient": {"method": "gradient"}, "occlusion": occlusion}, target=pred)
    for label in ("gradient", "occlusion"):
        m = base[label].maps.detach()
        results[label] = score(m.abs() if label == "gradient" else m)
        figure_maps[label] = m.abs() if label == "gradient" else m
    for layer in stages:
        if min(sizes[layer]) < 2:
            continue
        res = explain(model, x, {"gradcam": {"method": "gradcam", "layer": layer},
                                 "layercam": {"method": "layercam", "layer": layer},
                                 "hirescam": {"method": "hirescam", "layer": layer}}, target=pred)
        for label in ("gradcam", "layercam", "hirescam"):
            results[f"{label}@{layer} {sizes[layer][0]}x{sizes[layer][1]}"] = score(res[label].maps.detach())
            if label != "hirescam":
                short = layer.rsplit(".", 1)[-1]
                figure_maps[f"{label}\n{short} ({sizes[layer][0]}x{sizes[layer][1]})"] = res[label].maps.detach()
    report["localisation"] = results

    # diagnostics at the default (last) stage
    last = [n for n in stages if min(sizes[n]) >= 2][-1]
    raw = _cam_raw(model, x, last, pred)  # (N, h, w)
    cell = F.adaptive_avg_pool2d(masks[:, None].double(), raw.shape[-2:])[:, 0]  # lesion share of each cell
    raw_mass = (raw.double() * cell).flatten(1).sum(1) / raw.double().flatten(1).sum(1).clamp_min(1e-300)
    argmax_cell = raw.flatten(1).argmax(1)
    report["diagnostics"] = {
        "layer": last,
        "cam_cells_mass_on_lesion_cells (no upsampling)": raw_mass.tolist(),
        "lesion_share_of_cam_argmax_cell": cell.flatten(1).gather(1, argmax_cell[:, None])[:, 0].tolist(),
        "lesion_cell_rank_of_cam (0 = CAM's largest cell)": [
            int((raw[i].flatten() > raw[i].flatten()[cell[i].flatten().argmax()]).sum()) for i in range(len(idx))],
        "cam_constant_zero": [bool(raw[i].max() == 0) for i in range(len(idx))],
        "align_corners_true": score(F.interpolate(raw[:, None], size=(h, w), mode="bilinear",
                                                  align_corners=True)[:, 0]),
        "align_corners_false": score(upsample(raw, (h, w))),
        "class1_S=z": score(upsample(_cam_raw(model, x, last, one), (h, w))),
        "class0_S=-z": score(upsample(_cam_raw(model, x, last, 1 - one), (h, w))),
    }
    # the lesion blurred away (a strong blur inside the mask only): how much of the logit depended on it
    from saliencekit._filters import gaussian_blur

    blurred = torch.where(masks[:, None], gaussian_blur(x, 12.0), x)
    with torch.no_grad():
        z_blur = model(blurred)[:, 0]
    report["diagnostics"]["logit_with_lesion_blurred"] = z_blur.tolist()
    print(json.dumps(report, indent=1))
    _figure(x, masks, figure_maps, args.show, Path(args.out))


def _figure(x: torch.Tensor, masks: torch.Tensor, maps: dict[str, torch.Tensor], k: int, out: Path) -> None:
    from matplotlib.figure import Figure

    def coarse(label: str) -> bool:  # the stages of at most 32x32 cells (the fine ones look like the gradient)
        size = label.rsplit("(", 1)[-1].rstrip(")")
        return "x" not in size or int(size.split("x")[0]) <= 32

    keep = [m for m in maps if coarse(m)]
    k = min(k, x.shape[0])
    fig = Figure(figsize=(1.5 * (len(keep) + 1), 1.55 * k + 0.5), layout="constrained")
    axes = fig.subplots(k, len(keep) + 1, squeeze=False)
    for r in range(k):
        ax = axes[r, 0]
        ax.imshow(x[r, 0].numpy(), cmap="gray")
        ax.contour(masks[r].numpy(), levels=[0.5], colors="red", linewidths=0.8)
        for c, label in enumerate(keep, start=1):
            m = maps[label][r].numpy()
            axes[r, c].imshow(x[r, 0].numpy(), cmap="gray")
            axes[r, c].imshow(m / (np.abs(m).max() or 1), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            axes[r, c].contour(masks[r].numpy(), levels=[0.5], colors="cyan", linewidths=0.6)
            yx = np.unravel_index(np.argmax(m), m.shape)
            axes[r, c].plot(yx[1], yx[0], "c+", ms=8)
            if r == 0:
                axes[r, c].set_title(label, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(out, dpi=60)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
