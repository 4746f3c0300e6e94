"""``saliencekit methods`` and ``saliencekit explain``: list the saliency methods, explain image files."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

from saliencekit.cli._model import (
    add_model_arguments,
    class_names_from_args,
    load_model_from_args,
    preprocessing_from_args,
    reject_model_flags_without_model_file,
)
from saliencekit.cli._types import positive_int

_TORCHSCRIPT_NOTE = (
    "TorchScript models (--model-file with a torch.jit.save file) support the methods that need no hooks: "
    "gradient, gradient_x_input, integrated_gradients, smoothgrad, smoothgrad_sq, vargrad, occlusion, rise. "
    "Layer methods (the CAMs, Score-CAM, guided Grad-CAM) and ReLU-rule methods (guided_backprop, deconvnet) "
    "need an nn.Module: a run directory, a whole module saved with torch.save(model), a .pt2, or weights with --arch."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``methods`` and ``explain`` to ``subparsers``."""
    p = subparsers.add_parser(
        "methods",
        description="Without NAME: one line per registered method with its description. With NAME: the method's "
                    "documentation, its options with their defaults, and its capabilities.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="a method name, e.g. integrated_gradients")
    p.set_defaults(func=_methods)

    p = subparsers.add_parser(
        "explain",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Explain image files with saliency methods. Writes, per image, OUT/<image>/<method>.png (the image in "
            "grey with a jet heat map and a colour bar), OUT/<image>/comparison.png (the image and all methods in a "
            "grid at most 5 panels wide, one block of rows per explained class, the prediction in the title), "
            "OUT/<image>/maps.npz (the raw float maps), and OUT/summary.json.\n\n"
            "  saliencekit explain runs/cxr data/effusion/img1.png --methods gradcam++,scorecam --out maps\n"
            "  saliencekit explain --model-file model.pt --image-size 256 --classes normal,effusion "
            "images/ --methods gradient,integrated_gradients --out maps\n"
            "  saliencekit explain --model-file weights.safetensors --arch resnet18 --color images/ --out maps\n"
            "  saliencekit explain --model-file best_model.hdf5 images/ --methods gradcam --layer conv2d_3 --out maps"
            "\n\n" + _TORCHSCRIPT_NOTE
        ),
    )
    p.add_argument("inputs", nargs="*", metavar="RUN_DIR IMAGE_OR_FOLDER",
                   help="a run directory written by `saliencekit train`, then image files and/or folders (searched "
                        "recursively; mask folders skipped). With --model-file, give only images and folders.")
    p.add_argument("--methods", default="gradient",
                   help="comma-separated method names (see `saliencekit methods`), or a JSON object "
                        "label -> options, e.g. '{\"ig\": {\"method\": \"integrated_gradients\", \"steps\": 32}}'. "
                        "Default: gradient.")
    p.add_argument("--out", default=None, help="output folder (created if needed); required unless --list-classes")
    p.add_argument("--target", default=None, metavar="CLASS[,CLASS...]",
                   help="class(es) or label(s) to explain, by name or index, comma-separated (default: the predicted "
                        "class; for a multi-label model every positive label, or the most probable one when none is "
                        "positive). For a single-logit binary model, class 1 explains the logit z and class 0 "
                        "explains -z. Not with --top-k.")
    p.add_argument("--layer", default=None,
                   help="layer for CAM methods, a module name such as 'features.7' (default: the last convolutional "
                        "stage, found automatically)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="explain the K most probable classes of each image, one row each (by sigmoid per label for a "
                        "multi-label model); 1 to 20 and at most the number of classes. Not with --target.")
    p.add_argument("--output", default=None, metavar="KIND",
                   help="what the model returns: auto (default: a final Sigmoid/Softmax module is detected and "
                        "bypassed, so that its logit is explained), logits, probabilities, multilabel (independent "
                        "labels: sigmoid per label) or multilabel_probabilities; see docs/outputs.md")
    p.add_argument("--threshold", type=float, default=None, metavar="P",
                   help="multi-label models: a label is positive when its probability is >= P (default 0.5)")
    p.add_argument("--list-classes", action="store_true",
                   help="print the model's class (or label) names, one per line, and stop (with --model-file and no "
                        "--classes, give an image: the model's outputs are counted on it)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--batch-size", default=None,
                   help="images per forward/backward pass of the multi-pass methods, or 'auto' (sized to the device, "
                        "halved on out-of-memory). Default auto.")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                   help="fp32 (default) or mixed precision for the many-pass methods (fp16 needs CUDA)")
    p.add_argument("--normalization", default="auto", choices=("auto", "minmax", "abs", "percentile", "signed"),
                   help="how the pictures scale each map (maps.npz always keeps the raw values): auto (default: "
                        "percentile for the gradient and backprop families, i.e. |map| clipped at its 99th "
                        "percentile, minmax for CAMs and perturbation methods), minmax, abs, percentile, signed")
    add_model_arguments(p)
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: all)")
    p.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_explain)


def _methods(args: argparse.Namespace) -> int:
    from saliencekit.methods.registry import list_methods, method_class, method_options

    if args.name is None:
        names = list_methods()
        width = max(len(n) for n in names)
        for n in names:
            print(f"{n:<{width}}  {method_class(n).description}")
        return 0
    cls = method_class(args.name)
    print(f"{args.name} ({cls.family} family)\n")
    print(inspect.getdoc(cls) or cls.description)
    print("\noptions (defaults):")
    for k, v in method_options(args.name).items():
        shown = "(required)" if v is inspect.Parameter.empty else repr(v)
        print(f"  {k} = {shown}")
    print("  output = 'auto', threshold = 0.5  (every method: how the model's outputs are read; docs/outputs.md)")
    flags = [f for f in ("uses_gradients", "multiplies_by_inputs", "needs_layer", "satisfies_completeness",
                         "works_on_torchscript", "needs_attention") if getattr(cls, f)]
    print(f"\ncapabilities: {', '.join(flags) or '(none)'}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from saliencekit.device import resolve_device
    from saliencekit.errors import InputError
    from saliencekit.methods.references import reference_scope, training_references
    from saliencekit.methods.specs import parse_methods_text
    from saliencekit.viz.explain_files import explain_files, list_classes

    device = str(resolve_device(args.device))  # 'auto': CUDA when available; an absent device is one line
    if args.model_file:
        loaded = load_model_from_args(args, device)
        images = args.inputs
    else:
        reject_model_flags_without_model_file(args)
        if not args.inputs or (len(args.inputs) < 2 and not args.list_classes):
            raise InputError("give a run directory and at least one image or folder (or use --model-file)")
        loaded = _load_run(args.inputs[0], device)
        images = args.inputs[1:]
    model = loaded.model
    preprocessing = preprocessing_from_args(args, loaded)
    class_names = class_names_from_args(args, loaded)
    # what the outputs are: as given, else as the file declares (a multi-label run: per-label sigmoids)
    output = args.output if args.output is not None else loaded.output
    threshold = args.threshold if args.threshold is not None else loaded.threshold
    # the SHAP family's baselines: a run directory's training images (read only if a method draws from them)
    run = getattr(loaded, "run", None)
    references = training_references(run) if run is not None else None
    if args.list_classes:
        for name in list_classes(model, preprocessing, images, class_names, device=device, output=output,
                                 threshold=threshold):
            print(name)
        return 0
    if not images:
        raise InputError("give at least one image or folder to explain")
    if args.out is None:
        raise InputError("give the output folder with --out")
    methods = parse_methods_text(args.methods)
    batch_size = int(args.batch_size) if str(args.batch_size).isdigit() else args.batch_size
    with reference_scope(references):
        results = explain_files(model, preprocessing, images, methods, args.out, class_names=class_names,
                                target=args.target, layer=args.layer, top_k=args.top_k, batch_size=batch_size,
                                precision=args.precision, device=device, progress=not args.no_progress,
                                normalization=args.normalization, num_threads=args.threads, output=output,
                                threshold=threshold)
    print(f"explained {len(results)} image(s) with {len(methods)} method(s); wrote {Path(args.out)}/")
    for r in results:
        print(f"  {r.path} -> {r.folder}/ (predicted {r.predicted})")
        if r.note:
            print(f"    note: {r.note}")
    return 0


def _load_run(path: str, device: str) -> Any:  # a saliencekit.models.LoadedModel
    from saliencekit.errors import RunDirError
    from saliencekit.models.io import load_model

    if not Path(path).is_dir():
        raise RunDirError(f"{path} is not a run directory (a folder written by `saliencekit train`); to explain with "
                          "a model file use --model-file PATH and give only images")
    return load_model(path, device=device)
