"""LRP against zennit and DeepLIFT against captum: the maps, number for number (issue 14).

    python bench/propagation_peers.py                       # writes bench/results/propagation_peers.json
    python bench/propagation_peers.py --markdown bench/results/propagation_peers.json

LRP: every composite zennit has (epsilon_plus, epsilon_plus_flat, epsilon_gamma_box, epsilon_alpha2_beta1) on a
VGG-style network (torchvision's VGG-11-BN feature extractor with a small classifier; its own 25088 x 4096 one
would only make the run slow), torchvision ResNet-18 (basic blocks) and ResNet-50 (bottlenecks), random weights
and random batch-norm statistics, float64, 2 images of 3 x 64 x 64, with zennit's canonizers (VGG: sequential
batch-norm merge; ResNet: ResNetCanonizer) and z^B bounds = each image's minimum and maximum. Each network runs
twice: with the batch norms' own eps (1e-5), and with eps = 0. zennit's canonised batch norm keeps dividing by
``sqrt(1 + eps)`` (the "identity" it leaves behind still has its eps), so with eps > 0 zennit explains a network
whose every batch norm is scaled by ``(1 + eps)^-1/2``; with eps = 0 both explain the same network.

DeepLIFT (rescale) and DeepLIFT-SHAP: captum 0.9 on networks where captum's module hooks apply (every
non-linearity a module used once, no two non-linearity modules in a row) and on VGG-11 / the lesson CNN (a ReLU
module right before each max-pooling module), where captum's own convergence delta shows that its attributions
do not sum to ``S(x) - S(x')`` (captum issue #1104); ours are compared there with the literal reference of
``tests/reference/ref_deeplift.py`` instead (through the float64 test suite).

Relative difference = max |ours - theirs| / max |theirs| over the batch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

D = torch.float64
COMPOSITES = ("epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")


def vgg_style() -> nn.Module:
    from torchvision.models.vgg import cfgs, make_layers

    return nn.Sequential(make_layers(cfgs["A"], batch_norm=True), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(2048, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 10))


def torchvision_model(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.__dict__[name](weights=None, num_classes=10)

    return build


LRP_NETWORKS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "vgg11_bn features + small head": (vgg_style, "sequential"),
    "resnet18": (torchvision_model("resnet18"), "resnet"),
    "resnet50": (torchvision_model("resnet50"), "resnet"),
}


def randomise_batch_norm(model: nn.Module, eps: float | None) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            if eps is not None:
                m.eps = eps
    return model


def zennit_relevance(model: nn.Module, x: torch.Tensor, classes: list[int], composite: str, kind: str
                     ) -> torch.Tensor:
    import zennit.composites as zc
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    canonizers = [ResNetCanonizer()] if kind == "resnet" else [SequentialMergeBatchNorm()]
    flat = x.flatten(1)
    low = flat.amin(1).view(-1, 1, 1, 1).expand_as(x)
    high = flat.amax(1).view(-1, 1, 1, 1).expand_as(x)
    comp = {"epsilon_plus": lambda: zc.EpsilonPlus(canonizers=canonizers),
            "epsilon_plus_flat": lambda: zc.EpsilonPlusFlat(canonizers=canonizers),
            "epsilon_gamma_box": lambda: zc.EpsilonGammaBox(low=low, high=high, canonizers=canonizers),
            "epsilon_alpha2_beta1": lambda: zc.EpsilonAlpha2Beta1(canonizers=canonizers)}[composite]()
    with Gradient(model=model, composite=comp) as attributor:
        _, relevance = attributor(x, lambda out: torch.eye(out.shape[1], dtype=out.dtype)[classes] * out)
    return relevance.detach()


def rel_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-300))


def lrp_rows(seed: int, size: int) -> list[dict[str, Any]]:
    import saliencekit as sk

    rows = []
    for name, (build, kind) in LRP_NETWORKS.items():
        for eps in (None, 0.0):
            torch.manual_seed(seed)
            model = randomise_batch_norm(build(), eps).to(D).eval()
            x = torch.randn(2, 3, size, size, dtype=D)
            classes = [1, 7]
            for composite in COMPOSITES:
                theirs = zennit_relevance(model, x, classes, composite, kind)
                ours = sk.create_method("lrp", model, composite=composite).attribute(x, target=classes)
                rows.append({"network": name, "bn_eps": "as built (1e-5)" if eps is None else "0",
                             "composite": composite, "max_rel_diff": rel_diff(ours.attributions, theirs),
                             "within_1e-5": rel_diff(ours.attributions, theirs) <= 1e-5})
                print(f"lrp  {name:32s} bn eps {rows[-1]['bn_eps']:16s} {composite:22s} "
                      f"{rows[-1]['max_rel_diff']:.2e}", flush=True)
    return rows


def captum_valid_cnn() -> nn.Module:
    """Each non-linearity a module used once, none directly after another (where captum's hooks are right)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.Sigmoid(), nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 16 * 16, 32), nn.Tanh(), nn.Linear(32, 10))


def deeplift_rows(seed: int, size: int) -> list[dict[str, Any]]:
    import captum.attr as ca

    import saliencekit as sk
    from saliencekit.models import create

    nets: dict[str, tuple[Callable[[], nn.Module], int]] = {
        "captum-valid CNN (conv-relu-conv-maxpool-conv-sigmoid-conv-maxpool-fc-tanh-fc)": (captum_valid_cnn, 3),
        "vgg11 (ReLU module right before MaxPool)": (torchvision_model("vgg11"), 3),
        "lesson CNN effusion_cnn (ReLU module right before MaxPool)": (
            lambda: create("effusion_cnn", in_channels=3, num_classes=10), 3),
    }
    rows = []
    for name, (build, c) in nets.items():
        torch.manual_seed(seed)
        model = build().to(D).eval()
        x = torch.randn(2, c, size, size, dtype=D)
        base = torch.randn(2, c, size, size, dtype=D) * 0.3
        refs = torch.randn(4, c, size, size, dtype=D) * 0.3
        classes = [1, 7]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs, delta = ca.DeepLift(model).attribute(x, base, target=classes, return_convergence_delta=True)
            theirs_shap, delta_shap = ca.DeepLiftShap(model).attribute(x, refs, target=classes,
                                                                       return_convergence_delta=True)
        ours = sk.create_method("deeplift", model, baseline=base).attribute(x, target=classes)
        ours_shap = sk.create_method("deeplift_shap", model, baselines=refs).attribute(x, target=classes)
        for method, o, t, d in (("deeplift", ours, theirs, delta), ("deeplift_shap", ours_shap, theirs_shap,
                                                                     delta_shap)):
            scale = float((o.scores - o.extras["baseline_scores"]).abs().max())
            rows.append({"network": name, "method": method, "max_rel_diff": rel_diff(o.attributions, t.detach()),
                         "captum_delta_rel": float(d.detach().abs().max()) / scale,
                         "ours_gap_rel": float(o.extras["completeness_gap"].abs().max()) / scale})
            print(f"{method:14s} {name:80s} {rows[-1]['max_rel_diff']:.2e}  captum delta "
                  f"{rows[-1]['captum_delta_rel']:.1e}  ours {rows[-1]['ours_gap_rel']:.1e}", flush=True)
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = ["LRP: max |ours - zennit| / max |zennit|", "",
             f"zennit {result['versions']['zennit']}, captum {result['versions']['captum']}, torch "
             f"{result['versions']['torch']}, float64, {result['images']} images of 3 x {result['size']} x "
             f"{result['size']}, {result['date']}", "",
             "| network | batch-norm eps | " + " | ".join(COMPOSITES) + " |",
             "|---|---|" + "---:|" * len(COMPOSITES)]
    groups: dict[tuple[str, str], dict[str, float]] = {}
    for r in result["lrp"]:
        groups.setdefault((r["network"], r["bn_eps"]), {})[r["composite"]] = r["max_rel_diff"]
    for (net, eps), vals in groups.items():
        lines.append(f"| {net} | {eps} | " + " | ".join(f"{vals[c]:.1e}" for c in COMPOSITES) + " |")
    lines += ["", "| network | method | max rel. diff. to captum | captum's own delta / abs(S(x) - S(x')) | "
              "our gap / abs(S(x) - S(x')) |", "|---|---|---:|---:|---:|"]
    for r in result["deeplift"]:
        lines.append(f"| {r['network']} | {r['method']} | {r['max_rel_diff']:.1e} | {r['captum_delta_rel']:.1e} | "
                     f"{r['ours_gap_rel']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE / "results" / "propagation_peers.json")
    p.add_argument("--size", type=int, default=64, help="image size (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", type=Path, default=None, metavar="JSON", help="print a results file as Markdown")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    from importlib import metadata

    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "size": args.size,
              "images": 2, "seed": args.seed,
              "versions": {k: metadata.version(k) for k in ("zennit", "captum", "torch")},
              "lrp": lrp_rows(args.seed, args.size), "deeplift": deeplift_rows(args.seed, args.size)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
