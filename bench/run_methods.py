"""Benchmark saliencekit's methods against the floor and the peer libraries, in one run on one device.

    python bench/run_methods.py --case lesson_cpu --out bench/results/lesson_cpu.json
    python bench/run_methods.py --case resnet50_cpu_small
    python bench/run_methods.py --case resnet50_cuda          # skips cleanly without CUDA

Every entry (ours, the floor units, the peers) is warmed up once and then timed ``--repeats``
rounds, round-robin, so that a busy spell of a shared machine hits all entries alike; the table
shows the minimum (and the JSON keeps every time and the median). Ratios: ``x floor`` is our time
over the floor of the passes the entry cannot avoid, ``x peer`` our time over the fastest peer's
(below 1: we are faster). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import floor as fl  # noqa: E402
import peers as pr  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

FIVE_CAMS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]
SG_FAMILY = ["smoothgrad", "smoothgrad_sq", "vargrad"]
ATTENTION = ["attention_rollout", "transformer_attribution"]


# ------------------------------------------------------------------------------------------ models


def lesson_model() -> tuple[nn.Module, str]:
    from saliencekit.models import create

    return create("effusion_cnn"), 'saliencekit.models.create("effusion_cnn")'


@dataclass
class Case:
    name: str
    model: str
    batch: int
    size: int
    channels: int
    device: str
    multipass_batch: int  # images for the many-pass methods (0: skip them)
    layer: str  # CAM layer (module name)
    best_batch_max: int  # largest batch tried for the floor's best batch size
    repeats: int = 3
    note: str = ""


CASES = {
    "lesson_cpu": Case("lesson_cpu", "effusion_cnn", 32, 256, 1, "cpu", 2, "features.relu7", 128, repeats=2,
                       note="many-pass methods on the first 2 images of the batch (2 shared CPU cores)"),
    "resnet50_cuda": Case("resnet50_cuda", "resnet50", 32, 224, 3, "cuda", 32, "layer4", 512),
    "resnet50_cpu_small": Case("resnet50_cpu_small", "resnet50", 2, 224, 3, "cpu", 0, "layer4", 8, repeats=2,
                               note="single-pass methods only: one Score-CAM image is 2048 ResNet-50 forwards"),
    "vit_tiny_cpu": Case("vit_tiny_cpu", "timm:vit_tiny_patch16_224", 4, 224, 3, "cpu", 0, "blocks.11.norm1", 8,
                         repeats=3, note="the attention methods (and the gradient and Grad-CAM for scale) on a ViT"),
    "vit_base_cuda": Case("vit_base_cuda", "timm:vit_base_patch16_224", 32, 224, 3, "cuda", 0, "blocks.11.norm1",
                          256, note="the attention methods (and the gradient and Grad-CAM for scale) on a ViT"),
}


def is_vit(case: Case) -> bool:
    return case.model.startswith("timm:")


def build_model(case: Case) -> tuple[nn.Module, str]:
    if case.model == "effusion_cnn":
        return lesson_model()
    if is_vit(case):
        import timm

        name = case.model.removeprefix("timm:")
        return timm.create_model(name, pretrained=False), f'timm.create_model("{name}", pretrained=False)'
    import torchvision

    return torchvision.models.__dict__[case.model](weights=None), f"torchvision.models.{case.model}(weights=None)"


# ----------------------------------------------------------------------------------------- entries


@dataclass
class Entry:
    """One row of the table: our call, its floor and the peers racing it."""

    name: str
    methods: list[str]  # registered names (all must exist)
    options: dict[str, Any] = field(default_factory=dict)  # per-method options (after name guessing)
    multi: bool = False  # runs on the many-pass batch
    floor: str = "fb"  # fb, fbl, fwd (unit) ; the multiplier below
    passes: Callable[[Any], float] | None = None  # passes per image, given our explanation (many-pass)
    note: str = ""
    units: float = 1.0  # single-pass entries: floor units the entry cannot avoid (deeplift: images + baselines)


def _option(method: str, candidates: dict[str, Any]) -> dict[str, Any]:
    """The first candidate option name the method takes, with its value ({} when none)."""
    from saliencekit.methods import list_methods, method_options

    if method not in list_methods():
        return {}
    valid = method_options(method)
    for key, value in candidates.items():
        if key in valid:
            return {key: value}
    return {}


def _valid(method: str) -> dict[str, Any]:
    from saliencekit.methods import list_methods, method_options

    return method_options(method) if method in list_methods() else {}


def _opts(method: str, *groups: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for g in groups:
        out.update(_option(method, g))
    return out


SHAP_SAMPLES = 50  # expected_gradients / gradient_shap draws
SUPERPIXEL_SAMPLES = 500  # lime / kernel_shap coalitions (their defaults)
SUPERPIXEL_GRID = 8  # lime / kernel_shap grid (their default: 64 superpixels)


def build_entries(registered: set[str], layer_channels: int, bf16: bool, multi: bool, vit: bool = False,
                  references: torch.Tensor | None = None) -> tuple[list[Entry], list[str]]:
    entries: list[Entry] = []
    skipped: list[str] = []

    def want(e: Entry) -> None:
        missing = [m for m in e.methods if m not in registered]
        if missing:
            skipped.append(f"{e.name}: {', '.join(missing)} not registered in this checkout")
        elif e.multi and not multi:
            skipped.append(f"{e.name}: many-pass methods skipped in this case")
        else:
            entries.append(e)

    if vit:  # the attention methods, with the gradient and Grad-CAM of the same model for scale; no peer has them
        want(Entry("gradient", ["gradient"]))
        want(Entry("gradcam", ["gradcam"], floor="fbl"))
        want(Entry("attention_rollout", ["attention_rollout"], floor="fwd",
                   note="one forward pass, every attention computed explicitly (no library has it)"))
        want(Entry("transformer_attribution", ["transformer_attribution"],
                   note="one forward + one backward pass to the attention (no library has it)"))
        want(Entry("attention2", list(ATTENTION), note="both attention methods together: one shared pass"))
        return entries, skipped
    skipped.append(f"{', '.join(ATTENTION)}: need a vision transformer (the vit_* cases)")

    for name in ("gradient", "gradient_x_input", "guided_backprop", "deconvnet"):
        want(Entry(name, [name]))
    for name in FIVE_CAMS:
        want(Entry(name, [name], floor="fbl"))
    want(Entry("cams5", list(FIVE_CAMS), floor="fbl", note="the five gradient CAMs requested together"))
    want(Entry("guided_gradcam", ["guided_gradcam"]))
    sc = "scorecam"

    def score_passes(out: Any) -> float:
        # saliencekit skips constant channels (weight 0 by definition): count the masked forwards it needs
        cs = out[sc].extras.get("channel_scores") if out else None
        used = float((~torch.isnan(cs)).sum(1).float().mean()) if cs is not None else layer_channels
        return used + 1

    sc_note = f"{layer_channels} channels; floor counts the non-constant ones + 1 clean forward per image"
    want(Entry(sc, [sc], {sc: _opts(sc, {"precision": "fp32"})}, multi=True, floor="fwd", passes=score_passes,
               note=sc_note))
    if bf16 and "precision" in _valid(sc):
        want(Entry("scorecam_bf16", [sc], {sc: _opts(sc, {"precision": "bf16"}, {"channels_last": True})},
                   multi=True, floor="fwd", passes=score_passes, note=sc_note + "; bf16 autocast, channels-last"))
    ig = "integrated_gradients"
    ig_opts = _opts(ig, {"steps": 50, "n_steps": 50})
    want(Entry(ig, [ig], {ig: ig_opts}, multi=True, passes=lambda e: 50,
               note="50 steps, default rule and baseline (Gauss-Legendre, black = image minimum)"))
    if bf16 and "precision" in _valid(ig):
        want(Entry("integrated_gradients_bf16", [ig], {ig: {**ig_opts, "precision": "bf16"}},
                   multi=True, passes=lambda e: 50, note="50 steps, bf16 autocast"))
    sg_groups = ({"samples": 25, "n_samples": 25}, {"seed": 0})
    want(Entry("smoothgrad", ["smoothgrad"], {"smoothgrad": _opts("smoothgrad", *sg_groups)}, multi=True,
               passes=lambda e: 25, note="25 samples, noise 0.15"))
    if bf16 and "base_options" in _valid("smoothgrad"):
        want(Entry("smoothgrad_bf16", ["smoothgrad"],
                   {"smoothgrad": {**_opts("smoothgrad", *sg_groups), "base_options": {"precision": "bf16"}}},
                   multi=True, passes=lambda e: 25, note="25 samples, gradient in bf16 autocast"))
    for composite in ("epsilon_plus", "epsilon_gamma_box"):
        name = "lrp" if composite == "epsilon_plus" else f"lrp_{composite}"
        want(Entry(name, ["lrp"], {"lrp": {"composite": composite}},
                   note=f"composite {composite}; the floor is one forward + one backward"))
    want(Entry("deeplift", ["deeplift"], units=2,
               note="default baseline (black = image minimum); the images and their baselines: 2 forward+backward "
                    "units"))
    want(Entry("deeplift_shap", ["deeplift_shap"], multi=True, passes=lambda e: 16,
               note="8 reference images (uniform noise in the batch's range, given to captum too): 2 x 8 "
                    "forward+backward per image"))
    want(Entry("smoothgrad_family", list(SG_FAMILY),
               {m: _opts(m, *sg_groups) for m in SG_FAMILY if m in registered}, multi=True, passes=lambda e: 25,
               note="smoothgrad + smoothgrad_sq + vargrad together (one set of 25 noisy samples)"))
    # Gradient-free and ablation CAMs (issue 14): Eigen-CAM and FullGrad cost one pass; Ablation-CAM one forward
    # per channel that is not zero everywhere (+ the clean pass), like Score-CAM.
    want(Entry("eigencam", ["eigencam"], floor="fwd", note="one forward pass under inference mode + an SVD per image"))
    want(Entry("fullgrad", ["fullgrad"], note="one forward + backward to the input and every biased layer"))
    ab = "ablationcam"

    def ablation_passes(out: Any) -> float:
        cs = out[ab].extras.get("channel_scores") if out else None
        used = float((~torch.isnan(cs)).sum(1).float().mean()) if cs is not None else layer_channels
        return used + 1

    want(Entry(ab, [ab], multi=True, floor="fwd", passes=ablation_passes,
               note=f"{layer_channels} channels; floor counts the channels not zero everywhere + 1 clean forward"))
    # The SHAP family (issue 14): expected gradients / GradientSHAP over fixed reference images (the same tensor for
    # captum), LIME / KernelSHAP on the default 8 x 8 grid.
    for name, opts, note in (
        ("expected_gradients", {}, "50 draws over 16 reference images"),
        ("gradient_shap", {"noise": 0.1}, "50 draws over 16 reference images, noise 0.1 of the range"),
    ):
        if references is not None:
            want(Entry(name, [name], {name: {"baselines": references, "samples": SHAP_SAMPLES, **opts}}, multi=True,
                       passes=lambda e: SHAP_SAMPLES, note=f"{note}; floor: 50 x fb (the baselines' 50 forwards not "
                                                         "counted)"))
    for name, extra in (("lime", 0), ("kernel_shap", 1)):
        want(Entry(name, [name], {name: {"samples": SUPERPIXEL_SAMPLES, "grid": SUPERPIXEL_GRID}}, multi=True,
                   floor="fwd", passes=lambda e, extra=extra: SUPERPIXEL_SAMPLES + extra,
                   note=f"{SUPERPIXEL_SAMPLES} coalitions of an {SUPERPIXEL_GRID} x {SUPERPIXEL_GRID} grid"))
    return entries, skipped


def run_ours(model: nn.Module, x: torch.Tensor, target: Any, entry: Entry, layer: str) -> Callable[[], Any]:
    import saliencekit.methods as skm

    if len(entry.methods) == 1:
        name = entry.methods[0]
        opts = dict(entry.options.get(name, {}))
        if skm.method_class(name).needs_layer:
            opts.setdefault("layer", layer)
        method = skm.create_method(name, model, **opts)
        return lambda: {name: method.attribute(x, target)}
    spec = {m: dict(entry.options.get(m, {})) for m in entry.methods}
    return lambda: skm.explain(model, x, spec, target=target, layer=layer)


# ------------------------------------------------------------------------------------------- main


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model} ({os.cpu_count()} logical cores visible)"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return sha + ("+dirty(src)" if dirty else "")
    except OSError:
        return "unknown"


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or v != v else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=sorted(CASES), default="lesson_cpu", help="benchmark case")
    p.add_argument("--methods", nargs="*", default=None,
                   help="only these entries (e.g. gradient cams5 scorecam); default: all that exist")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds after the warm-up (default: the case's)")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default: bench/results/CASE.json)")
    p.add_argument("--device", default=None, help="override the case's device (cpu, cuda, cuda:1)")
    p.add_argument("--batch", type=int, default=None, help="override the batch size")
    p.add_argument("--multipass-batch", type=int, default=None,
                   help="images for Score-CAM / IG / SmoothGrad (default: the case's; 0 skips them)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="bf16 entries: auto = on CUDA and on CPUs with bf16 instructions")
    p.add_argument("--no-peers", action="store_true", help="time ours and the floor only")
    p.add_argument("--no-explain-one", action="store_true", help="skip the one-image explain() timing")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and images")
    p.add_argument("--markdown", type=Path, default=None, metavar="JSON",
                   help="print the results in JSON as a Markdown table and exit (runs nothing)")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0

    case = CASES[args.case]
    device = torch.device(args.device or case.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"case {case.name}: CUDA is not available on this machine; skipped.")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or case.batch
    mbatch = case.multipass_batch if args.multipass_batch is None else args.multipass_batch
    repeats = args.repeats or case.repeats
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and (device.type == "cuda" or cpu_has_bf16()))
    out_path = args.out or HERE / "results" / f"{case.name}.json"

    def log(msg: str) -> None:
        print(msg, flush=True)

    import saliencekit.methods as skm
    from saliencekit.methods._capture import resolve_layer

    torch.manual_seed(args.seed)
    model, model_source = build_model(case)
    model = model.to(device).eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    x = torch.randn(batch, case.channels, case.size, case.size, device=device)
    with torch.inference_mode():
        logits = model(x)
    single_logit = logits.shape[1] == 1
    if single_logit:
        classes = [1] * batch  # class 1 = the logit z (for the peers: logit 1 of [-z, z])
    else:
        classes = logits.argmax(1).tolist()  # the predicted class of each image, fixed for everyone
    target = list(classes)
    layer_module = resolve_layer(model, case.layer, x)
    with torch.inference_mode():
        acts: list[torch.Tensor] = []
        h = layer_module.register_forward_hook(lambda _m, _i, o: acts.append(o))
        model(x[:1])
        h.remove()
    channels = int(acts[0].shape[1])
    xm = x[:mbatch] if mbatch else x[:1]
    classes_m = classes[: xm.shape[0]]

    registered = set(skm.list_methods())
    references = torch.randn(16, case.channels, case.size, case.size, generator=torch.Generator().manual_seed(1)
                             ).to(device)
    entries, skipped = build_entries(registered, channels, bf16, multi=mbatch > 0, vit=is_vit(case),
                                     references=references)
    if args.methods:
        entries = [e for e in entries if e.name in args.methods]
    t0 = time.perf_counter()
    meta = {
        "case": case.name, "model": model_source, "batch": batch, "image_size": case.size, "channels": case.channels,
        "multipass_batch": mbatch, "cam_layer": case.layer, "cam_layer_channels": channels,
        "single_logit_model": single_logit, "device": str(device), "device_name": device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "git_commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "peers": pr.versions(),
        "repeats": repeats, "bf16": bf16, "load_average_start": os.getloadavg(), "python": platform.python_version(),
        "note": case.note, "skipped": skipped,
    }
    log(f"case {case.name} on {meta['device_name']}, torch {torch.__version__}, {meta['threads']} threads; "
        f"load average {meta['load_average_start']}")
    for s in skipped:
        log(f"  skipped {s}")

    def score(out: torch.Tensor, cls: list[int]) -> torch.Tensor:
        c = torch.tensor(cls, device=out.device)
        c = c.repeat(out.shape[0] // len(c))
        if out.shape[1] == 1:
            return torch.where(c == 1, out[:, 0], -out[:, 0])
        return out.gather(1, c[:, None])[:, 0]

    # ---- floors at the user's batch -------------------------------------------------------------
    log("timing the floor units, our entries and the peers (round-robin)")
    timer = fl.Interleaved(device, log)
    timer.add("floor:fwd", fl.forward_unit(model, x))
    timer.add("floor:fb", fl.forward_backward_unit(model, x, lambda o: score(o, classes)))
    timer.add("floor:fbl", fl.forward_backward_layer_unit(model, x, layer_module, lambda o: score(o, classes)))

    single = [e for e in entries if not e.multi]
    multi = [e for e in entries if e.multi]
    for e in single:
        timer.add(e.name, run_ours(model, x, target, e, case.layer))
    peer_list: list[pr.Peer] = []
    if not args.no_peers:
        tokens = None
        if is_vit(case):  # timm: the prefix tokens and the patch grid
            tokens = (int(model.num_prefix_tokens), *map(int, model.patch_embed.grid_size))
        peer_list = pr.build_peers(model, x, classes, layer_module, single_logit=single_logit,
                                   races={e.name for e in single}, tokens=tokens)
        for pe in peer_list:
            if not pe.parts:
                timer.add(f"peer:{pe.key}", pe.run)
    timings = timer.run(repeats)
    outputs = dict(timer.outputs)

    # ---- many-pass entries and their floors at the best batch size ----------------------------
    best: dict[str, fl.BestBatch] = {}
    if multi:
        sizes = fl.batch_candidates(1 if device.type == "cpu" else mbatch, case.best_batch_max)
        log(f"best batch size for the floor units, sizes {sizes}")
        best["fwd"] = fl.best_batch("fwd", lambda b: fl.forward_unit(model, b), x, sizes, max(2, repeats - 1), device,
                                    log)
        best["fb"] = fl.best_batch("fb", lambda b: fl.forward_backward_unit(
            model, b, lambda o: score(o, [classes[0]] * b.shape[0])), x, sizes, max(2, repeats - 1), device, log)
        log(f"  per-image fwd {best['fwd'].per_image_s}, fb {best['fb'].per_image_s}")
        # deeplift_shap and captum's DeepLiftShap get the same reference images (seeded uniform noise in the
        # batch's range), so that the maps can be compared
        dls_refs = None
        for e in multi:
            if e.name == "deeplift_shap":
                g = torch.Generator(device="cpu").manual_seed(args.seed)
                lo, hi = float(xm.min()), float(xm.max())
                dls_refs = (lo + (hi - lo) * torch.rand((8, *xm.shape[1:]), generator=g)).to(xm)
                e.options = {"deeplift_shap": {"baselines": dls_refs}}
        # warm-up our entries first to learn their options (IG rule, baseline) for the peers
        mtimer = fl.Interleaved(device, log)
        for e in multi:
            mtimer.add(e.name, run_ours(model, xm, classes_m, e, case.layer))
        ig_kw = sg_kw = None
        races = {e.name for e in multi}
        if "integrated_gradients" in races:
            black = xm.flatten(1).amin(1).view(-1, 1, 1, 1).expand_as(xm).contiguous()
            ig_kw = {"n_steps": 50, "method": "gausslegendre", "baselines": black}
        if races & {"smoothgrad", "smoothgrad_family"}:
            sigma = 0.15 * float((xm.flatten(1).amax(1) - xm.flatten(1).amin(1)).mean())
            sg_kw = {"nt_samples": 25, "stdevs": sigma}
        shap_kw = {"references": references, "samples": SHAP_SAMPLES,
                   "stdevs": 0.1 * float((xm.flatten(1).amax(1) - xm.flatten(1).amin(1)).mean()),
                   "coalitions": SUPERPIXEL_SAMPLES, "grid": SUPERPIXEL_GRID}
        if not args.no_peers:
            mpeers = pr.build_peers(model, x, classes, layer_module, single_logit=single_logit, races=races, ig=ig_kw,
                                    sg=sg_kw, score_batch=128 if device.type == "cpu" else 256, x_multi=xm,
                                    classes_multi=classes_m, deeplift_shap_baselines=dls_refs, shap=shap_kw)
            for pe in mpeers:
                if not pe.parts:
                    mtimer.add(f"peer:{pe.key}", pe.run)
            peer_list += mpeers
        timings.update(mtimer.run(repeats))
        outputs.update(mtimer.outputs)
    for pe in peer_list:  # composite peers: the per-round sum of their parts
        if pe.parts:
            parts = [timings[f"peer:{k}"] for k in pe.parts]
            total = fl.Timing(f"peer:{pe.key}")
            if all(t.times for t in parts):
                total.times = [sum(ts) for ts in zip(*(t.times for t in parts))]
            else:
                total.error = "a part failed: " + ", ".join(t.name for t in parts if not t.times)
            timings[total.name] = total

    # ---- the table -------------------------------------------------------------------------------
    fwd_s = timings["floor:fwd"].min
    fb_s = timings["floor:fb"].min
    fbl_s = timings["floor:fbl"].min
    rows = []
    for e in entries:
        t = timings[e.name]
        if e.multi:
            unit = best["fwd"] if e.floor == "fwd" else best["fb"]
            expl = outputs.get(e.name)
            passes = e.passes(expl) if e.passes else 1
            floor_s = fl.multipass_floor(unit, passes, xm.shape[0])
            floor_desc = f"{passes} x {e.floor} per image at batch {unit.best_size}, {xm.shape[0]} images"
        else:
            floor_s = {"fb": fb_s, "fbl": fbl_s, "fwd": fwd_s}[e.floor] * e.units
            floor_desc = {"fb": "forward+backward to the input", "fbl": "forward+backward to the layer",
                          "fwd": "forward"}[e.floor]
            floor_desc = f"{e.units:g} {floor_desc}"
        ps = [pe for pe in peer_list if pe.races == e.name]
        peer_rows = {}
        for pe in ps:
            pt = timings[f"peer:{pe.key}"]
            entry: dict[str, Any] = {"library": pe.library, "note": pe.note, **pt.to_dict()}
            if pe.parts or f"peer:{pe.key}" not in outputs or e.name not in outputs:
                entry["agreement"] = None
            else:
                ours_out = outputs[e.name][e.methods[0]]
                try:
                    entry["agreement"] = pr.agreement(ours_out, outputs[f"peer:{pe.key}"], pe.output)
                except Exception as exc:
                    entry["agreement"] = {"error": f"{type(exc).__name__}: {exc}"}
            peer_rows[pe.key] = entry
        vs_fp32 = None
        base_name = e.name.removesuffix("_bf16")
        if base_name != e.name and e.name in outputs and base_name in outputs:
            mine = outputs[e.name][e.methods[0]].maps.detach().float().cpu()
            ref = outputs[base_name][e.methods[0]].maps.detach().float().cpu()
            r = pr._pearson_rows(mine, ref)
            vs_fp32 = {"pearson_min": float(r.min()), "pearson_mean": float(r.mean()), "target": "> 0.99"}
        ok = {k: v for k, v in peer_rows.items() if v["times_s"]}
        fastest = min(ok, key=lambda k: ok[k]["min_s"]) if ok else None
        rows.append({
            "entry": e.name, "methods": e.methods, "note": e.note, "multi": e.multi,
            "options": {m: {k: f"tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else v for k, v in o.items()}
                        for m, o in e.options.items()},
            "images": xm.shape[0] if e.multi else batch, **t.to_dict(), "floor_s": floor_s, "floor": floor_desc,
            "x_floor": t.min / floor_s if t.times else None,
            "x_forward_backward": t.min / fb_s if (t.times and not e.multi) else None,
            "fastest_peer": fastest, "fastest_peer_s": ok[fastest]["min_s"] if fastest else None,
            "x_fastest_peer": t.min / ok[fastest]["min_s"] if (fastest and t.times) else None,
            "peers": peer_rows, "maps_vs_fp32": vs_fp32,
        })

    # ---- explain() of one image -------------------------------------------------------------------
    explain_one = None
    if not args.no_explain_one and case.model == "effusion_cnn":
        names = [n for n in [*FIVE_CAMS, "gradient", "integrated_gradients", "smoothgrad"] if n in registered]
        spec = {n: {} for n in names}
        if "integrated_gradients" in spec:
            spec["integrated_gradients"] = _opts("integrated_gradients", {"steps": 50, "n_steps": 50})
        if "smoothgrad" in spec:
            spec["smoothgrad"] = _opts("smoothgrad", {"samples": 25, "n_samples": 25})
        one = x[:1]
        etimer = fl.Interleaved(device, log)
        etimer.add("explain_one", lambda: skm.explain(model, one, spec, target=[classes[0]], layer=case.layer))
        et = etimer.run(repeats)["explain_one"]
        passes = 1 + ("integrated_gradients" in spec) * 50 + ("smoothgrad" in spec) * 25
        if best:
            floor_one = best["fb"].best_per_image_s * passes
        else:
            floor_one = fb_s / batch * passes
        explain_one = {"methods": names, **et.to_dict(), "floor_s": floor_one,
                       "floor": f"{passes} forward+backward passes of one image at the best per-image rate",
                       "target_s": 2.0, "met": bool(et.min < 2.0), "missing": [n for n in
                       [*FIVE_CAMS, "gradient", "integrated_gradients", "smoothgrad"] if n not in registered]}

    meta["load_average_end"] = os.getloadavg()
    meta["wall_s"] = time.perf_counter() - t0
    result = {
        "meta": meta,
        "floor_units": {k.split(":")[1]: timings[k].to_dict() for k in ("floor:fwd", "floor:fb", "floor:fbl")},
        "best_batch": {k: v.to_dict() for k, v in best.items()},
        "rows": rows,
        "explain_one_image": explain_one,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(out_path)

    print()
    print(f"{case.name}: {meta['device_name']}, torch {torch.__version__}, {meta['threads']} threads, "
          f"commit {meta['git_commit'][:12]}, batch {batch} ({mbatch} for many-pass)")
    print(f"floor units (min of {repeats}): forward {fwd_s:.4f} s, forward+backward {fb_s:.4f} s, "
          f"forward+backward to layer {fbl_s:.4f} s")
    print(table(rows))
    if explain_one:
        print(f"explain() of one image with {', '.join(explain_one['methods'])}: {explain_one['min_s']:.3f} s "
              f"(median {explain_one['median_s']:.3f}; floor {explain_one['floor_s']:.3f} s; target < 2 s: "
              f"{'met' if explain_one['met'] else 'NOT met'})")
    print(f"wrote {out_path} in {meta['wall_s']:.0f} s; load average {meta['load_average_end']}")
    return 0


def _agreement(row: dict[str, Any], short: bool) -> list[str]:
    """The agreement cells of one row: each peer's minimum Pearson r (``=``: allclose), failures, bf16 vs fp32.

    ``short``: the console table's abbreviated peer names; else the full names of the Markdown table.
    """
    cells = []
    for peer, v in row["peers"].items():
        a = v.get("agreement")
        name = f"{peer.split('.')[0][:8]} r=" if short else f"{peer}: "
        if a and "pearson_min" in a:
            cells.append(f"{name}{a['pearson_min']:.3f}{' =' if a['allclose'] else ''}")
        elif v.get("error"):
            cells.append(f"{peer} failed" if short else f"{peer}: failed")
    if row.get("maps_vs_fp32"):
        r = row["maps_vs_fp32"]["pearson_min"]
        cells.append(f"vs fp32 r={r:.4f}" if short else f"maps vs fp32: {r:.4f}")
    return cells


def markdown(result: dict[str, Any]) -> str:
    """The results of one run as a Markdown table (for bench/README.md)."""
    m = result["meta"]
    fu = result["floor_units"]
    lines = [
        f"**{m['case']}** — {m['device_name']}, torch {m['torch']}, {m['threads']} threads, commit "
        f"`{m['git_commit'][:12]}`, {m['date']}; batch {m['batch']} ({m['multipass_batch']} images for the many-pass "
        f"methods), {m['repeats']} timed rounds after a warm-up, minimum shown; load average at start/end "
        f"{m['load_average_start'][0]:.1f} / {m['load_average_end'][0]:.1f}.",
        "",
        f"Floor units: forward {fu['fwd']['min_s']:.3f} s, forward+backward to the input {fu['fb']['min_s']:.3f} s, "
        f"forward+backward to the CAM layer {fu['fbl']['min_s']:.3f} s.",
        "",
        "| entry | ours (s) | floor (s) | x floor | x fwd+bwd | fastest peer | peer (s) | x fastest peer | agreement "
        "(min Pearson r; = allclose) |",
        "|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in result["rows"]:
        agree = _agreement(r, short=False)
        lines.append(f"| {r['entry']} | {fmt(r['min_s'])} | {fmt(r['floor_s'])} | {fmt(r['x_floor'], '.2f')} | "
                     f"{fmt(r['x_forward_backward'], '.2f')} | {r['fastest_peer'] or '-'} | {fmt(r['fastest_peer_s'])} "
                     f"| {fmt(r['x_fastest_peer'], '.2f')} | {'; '.join(agree)} |")
    e = result.get("explain_one_image")
    if e:
        lines += ["", f"`explain` of one image ({', '.join(e['methods'])}): {e['min_s']:.2f} s (median "
                      f"{e['median_s']:.2f} s), floor {e['floor_s']:.2f} s ({e['floor']}); target < 2 s: "
                      f"{'met' if e['met'] else 'not met'}."]
    bb = result.get("best_batch") or {}
    if bb:
        parts = [f"{k}: " + ", ".join(f"{n}: {v * 1000:.1f}" for n, v in d["per_image_s"].items()) +
                 f" (best {d['best_batch_size']})" for k, d in bb.items()]
        lines += ["", "Per-image ms of the floor units by batch size: " + "; ".join(parts) + "."]
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'entry':<28}{'ours s':>9}{'floor s':>9}{'x floor':>8}{'x f+b':>7}  {'fastest peer':<34}{'peer s':>9}" \
           f"{'x peer':>8}  agreement (min r per peer)"
    lines = [head, "-" * len(head)]
    for r in rows:
        agree = _agreement(r, short=True)
        lines.append(f"{r['entry']:<28}{fmt(r['min_s']):>9}{fmt(r['floor_s']):>9}{fmt(r['x_floor'], '.2f'):>8}"
                     f"{fmt(r['x_forward_backward'], '.2f'):>7}  {(r['fastest_peer'] or '-'):<34}"
                     f"{fmt(r['fastest_peer_s']):>9}{fmt(r['x_fastest_peer'], '.2f'):>8}  {'; '.join(agree)}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
