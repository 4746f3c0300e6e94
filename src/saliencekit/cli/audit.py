"""``saliencekit audit``: explain every image of a dataset into a resumable store, then look for Clever Hans."""

from __future__ import annotations

import argparse
from typing import Any

from saliencekit.cli._types import positive_int, seed


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``audit`` to ``subparsers``."""
    p = subparsers.add_parser(
        "audit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Explain every image of DATA with the model of RUN and write OUT/maps.zarr: a zarr v3 store with one "
            "(N, H, W) array per method, the file names, labels, predictions, probabilities and explained targets, "
            "and the model's identity and the methods' parameters as attributes. Resumable: after an interruption "
            "(even kill -9) the same command finishes the job, and the store is bit for bit that of an "
            "uninterrupted run; other settings on an existing store are refused (or --overwrite). Then, unless "
            "--no-analysis, spectral relevance analysis (SpRAy) clusters each class's maps and flags clusters whose "
            "relevance sits on a small spot that the rest of the class ignores (OUT/spray.json), and OUT/audit.html "
            "shows the dataset, the clusters, the flagged ones first, and the prediction errors by cluster.\n\n"
            "  saliencekit audit runs/cxr data/cxr --methods gradcam,smoothgrad --out audit\n"
            "  saliencekit audit runs/cxr data/cxr --out audit --engine ray --address auto   # an existing cluster"
        ),
    )
    p.add_argument("model", metavar="RUN_OR_MODEL", help="a run directory written by `saliencekit train`")
    p.add_argument("data", metavar="DATA", help="a folder with one sub-folder of images per class (model classes)")
    p.add_argument("--out", required=True, metavar="DIR", help="audit folder: OUT/maps.zarr, OUT/spray.json, "
                   "OUT/audit.html (created)")
    p.add_argument("--methods", default="gradcam,smoothgrad",
                   help="comma-separated method names (see `saliencekit methods`) or a JSON object label -> options, "
                        "e.g. '{\"sg\": {\"method\": \"smoothgrad\", \"samples\": 16}}' (default: gradcam,smoothgrad)")
    p.add_argument("--method-options", action="append", default=[], metavar="LABEL=METHOD[:key=value,...]",
                   help="add a method under its own label with options, e.g. sg16=smoothgrad:samples=16 (repeatable)")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"),
                   help="map storage: float16 (default; exact per-image power-of-two scale) or float32")
    p.add_argument("--chunk-size", type=positive_int, default=32, metavar="N",
                   help="images per store chunk, the unit of work and of resumption (default 32)")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="images (or noisy copies, steps) per forward/backward pass of the many-pass methods; fixed "
                        "so that the maps do not depend on timing (default 32)")
    p.add_argument("--target", default="predicted",
                   help="class to explain: 'predicted' (default), 'label' (the folder's class), or a class name or "
                        "index")
    p.add_argument("--seed", type=seed, default=0, help="base seed of the methods that take one (default 0)")
    p.add_argument("--layer", default=None, metavar="NAME", help="layer of the CAM methods (default: automatic)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument("--workers", type=_nonnegative_int, default=None, metavar="N",
                   help="local engine: processes reading images ahead (default 2; 0 reads in the main process)")
    p.add_argument("--threads", type=positive_int, default=None, help="local engine: CPU threads for torch")
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local (this process, default) or ray (one model-holding actor per GPU or CPU group; "
                        "pip install saliencekit[ray])")
    p.add_argument("--address", default=None,
                   help="ray: the cluster to join, e.g. auto or ray://head:10001 (default: start a local one)")
    p.add_argument("--ray-workers", type=positive_int, default=None, metavar="N",
                   help="ray: number of actors (default: one per GPU with a CUDA device, else one per "
                        "--cpus-per-worker CPUs)")
    p.add_argument("--cpus-per-worker", type=_positive_float, default=1.0, metavar="N",
                   help="ray: CPUs (and torch threads) per actor (default 1)")
    p.add_argument("--gpus-per-worker", type=_positive_float, default=None, metavar="N",
                   help="ray: GPUs per actor (default 1 with a CUDA device, else 0)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing store in OUT and start again")
    p.add_argument("--no-analysis", action="store_true", help="only write the store (no SpRAy, no page)")
    p.add_argument("--analysis-method", default=None, metavar="LABEL",
                   help="the method whose maps SpRAy clusters (default: every method of the store)")
    p.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def _methods(args: argparse.Namespace) -> Any:
    from saliencekit.methods.specs import command_line_methods

    return command_line_methods(args.methods, args.method_options)


def _target(text: str) -> str | int:
    if text in ("predicted", "label"):
        return text
    if text.lstrip("-").isdigit():
        return int(text)
    return text  # a class name, resolved by run_audit


def main(args: argparse.Namespace) -> int:
    """Run ``saliencekit audit`` with parsed arguments."""
    import shlex
    import sys

    from saliencekit.audit import run_audit
    from saliencekit.audit.runner import analyze

    result = run_audit(
        args.model, args.data, args.out, _methods(args), engine=args.engine, dtype=args.dtype,
        chunk_size=args.chunk_size, batch_size=args.batch_size, target=_target(args.target), seed=args.seed,
        layer=args.layer, device=args.device, workers=args.workers, overwrite=args.overwrite,
        progress=not args.no_progress, num_threads=args.threads, address=args.address, ray_workers=args.ray_workers,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
    )
    print(result.summary())
    if args.no_analysis:
        return 0
    command = shlex.join(["saliencekit", *sys.argv[1:]]) if sys.argv[1:2] == ["audit"] else ""
    analysis, page = analyze(args.out, args.analysis_method, progress=not args.no_progress, command=command)
    for label, ma in analysis.items():
        for g in ma.groups.values():
            if g.skipped:
                print(f"  {label} / {g.class_name}: not analysed ({g.skipped})")
                continue
            flags = [c for c in g.clusters if c.flagged]
            note = f", FLAGGED: cluster {', '.join(str(c.id) for c in flags)}" if flags else ""
            print(f"  {label} / {g.class_name}: {g.n} images, {len(g.clusters)} cluster(s) (eigengap "
                  f"{g.eigengap:.3f}){note}")
    n_flags = sum(len(ma.flagged) for ma in analysis.values())
    print(f"SpRAy: {n_flags} flagged cluster(s); wrote {page.parent / 'spray.json'} and {page}")
    return 0
