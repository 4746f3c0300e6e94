"""The sanity checks of Adebayo et al. (2018) on real images, through the command line, at several training seeds.

Writes scikit-learn's handwritten digits as a class-folder dataset (``saliencekit data digits``), trains the
lesson CNN on them at every seed (``saliencekit train``) and runs the model- and data-randomisation checks
(``saliencekit check``), then prints the verdict table of docs/checks.md ("Real images") in Markdown.

Usage::

    PYTHONPATH=src nice -n 10 python bench/digits_sanity.py WORK_DIR [--seeds 1,2,3] [--epochs 15] [--images 16]

Every command is printed before it runs and the work directory keeps the run directories and checks.json files.
The settings were fixed before the first run (docs/checks.md): the lesson CNN (``effusion_cnn``, 10 classes) at
64x64 input, where its last two convolutions are 2x2 and 1x1, so the CAM methods use ``features.relu5`` (the fifth
convolution's output after its ReLU, 4x4: the same grid as the demo's 256 px CAMs; the ReLU output is what a Keras
``Conv2D(activation="relu")`` layer gives, the usual Grad-CAM layer); 16 test images (balanced over the digits),
check seed 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METHODS = ("gradient", "smoothgrad", "gradcam", "guided_backprop", "guided_gradcam", "gradient_x_input",
           "integrated_gradients")
EXPECTED = {"gradient": "passes", "smoothgrad": "passes", "gradcam": "passes", "guided_backprop": "fails",
            "guided_gradcam": "fails", "gradient_x_input": "in between", "integrated_gradients": "in between"}
CAM_LAYER = "features.relu5"


def cli(*args: str) -> None:
    """Run ``saliencekit ARGS`` in a subprocess with this interpreter; raise when it fails."""
    cmd = [sys.executable, "-m", "saliencekit", *args]
    print("$ saliencekit " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def run_seed(work: Path, data: Path, seed: int, epochs: int, images: int, threads: int,
             extra_check_args: Sequence[str] = ()) -> dict[str, Any]:
    """Train at ``seed`` and check; returns checks.json (``timing`` added)."""
    run = work / f"run_seed{seed}"
    t0 = time.perf_counter()
    if not (run / "metrics.json").is_file():
        cli("train", str(data), "--out", str(run), "--image-size", "64", "--epochs", str(epochs), "--seed", str(seed),
            "--threads", str(threads), "--quiet")
    t1 = time.perf_counter()
    out = run / "checks"
    cli("check", str(run), "--out", str(out), "--checks", "model_randomization,data_randomization",
        "--methods", ",".join(METHODS), "--layer", CAM_LAYER, "--images", str(images), "--seed", "0",
        "--threads", str(threads), "--no-figures", "--quiet", *extra_check_args)
    result = json.loads((out / "checks.json").read_text())
    result["timing"] = {"train_s": round(t1 - t0, 1), "check_s": round(time.perf_counter() - t1, 1)}
    result["test_accuracy"] = json.loads((run / "metrics.json").read_text()).get("accuracy")
    return result


def _cell(entry: dict[str, Any]) -> str:
    level = entry.get("level") or "no verdict"
    r = entry.get("readings") or {}
    kept = "/".join(f"{(r.get(k) or {}).get('retained', {}).get('mean', float('nan')):.2f}"
                    for k in ("spearman", "spearman_abs"))
    return f"{level} ({kept})"


def table(results: dict[int, dict[str, Any]]) -> str:
    """Markdown: one row per method, one column per seed and check (level, retained signed / |map|)."""
    seeds = sorted(results)
    head = ["method", "published"]
    for s in seeds:
        head += [f"model rand. seed {s}", f"data rand. seed {s}"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for m in METHODS:
        cells = [f"`{m}`", EXPECTED[m]]
        for s in seeds:
            c = results[s]["checks"]
            cells.append(_cell(c["model_randomization"]["cascading"]["methods"][m]))
            cells.append(_cell(c["data_randomization"]["methods"][m]))
        rows.append("| " + " | ".join(cells) + " |")
    for ctl in ("control_edges", "control_random"):
        cells = [f"*{ctl}*", "fails" if ctl == "control_edges" else "passes"]
        for s in seeds:
            c = results[s]["checks"]
            cells.append(_cell(c["model_randomization"]["cascading"]["controls"][ctl]))
            cells.append(_cell(c["data_randomization"]["controls"][ctl]))
        rows.append("| " + " | ".join(cells) + " |")
    facts = []
    for s in seeds:
        r = results[s]
        dr = r["checks"]["data_randomization"]
        facts.append(f"seed {s}: test accuracy {r['test_accuracy']:.3f}; random-label model fits "
                     f"{dr['random_model_train_accuracy']:.0%} of its permuted labels after {dr['epochs']} epochs; "
                     f"train {r['timing']['train_s']:.0f} s, check {r['timing']['check_s']:.0f} s")
    return "\n".join(rows) + "\n\n" + "\n".join(f"- {f}" for f in facts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path, help="work folder (data, run directories, checks)")
    ap.add_argument("--seeds", default="1,2,3", help="training seeds, comma-separated (default 1,2,3)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--images", type=int, default=16, help="checked test images (default 16)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--check-args", default="", help="extra arguments for `saliencekit check`, space-separated")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "digits"
    if not (data / "dataset.json").is_file():
        cli("data", "digits", str(data))
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        results[seed] = run_seed(args.work, data, seed, args.epochs, args.images, args.threads,
                                 args.check_args.split())
        (args.work / "table.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
