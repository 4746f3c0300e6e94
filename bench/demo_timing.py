"""Benchmark: the default `saliencekit demo` pipeline, timed step by step.

Records wall time per step, the test metrics, the device, CPU count and the git commit in
bench/results/demo_timing.json. The targets: generation + training + evaluation under 5 minutes
on 2 CPU cores with a test accuracy of at least 0.85 (issue 2); the whole demo, explanations,
trust checks and report included, under 10 minutes (issue 5).

    python bench/demo_timing.py                 # the full default demo in a temporary folder
    python bench/demo_timing.py --threads 2     # limit torch to 2 threads
    python bench/demo_timing.py --quick         # smoke run of this script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (checks the script, not the target)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo_timing.json"),
                        help="result file (default: bench/results/demo_timing.json)")
    parser.add_argument("--keep", default=None, help="keep the demo folder here instead of a temporary folder")
    args = parser.parse_args()

    import torch

    from saliencekit import _atomic
    from saliencekit.pipeline import run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "demo"
        t0 = time.perf_counter()
        ctx = run_demo(out, quick=args.quick, progress=False, device="auto", log=None)
        wall = time.perf_counter() - t0
    m = ctx.metrics or {}
    result = {
        "benchmark": "demo_timing",
        "quick": args.quick,
        "wall_s": round(wall, 2),
        "steps_s": ctx.timings,
        "pipeline_s": round(sum(ctx.timings.get(k, 0.0) for k in ("generate", "train", "evaluate")), 2),
        "target_pipeline_s": 300,
        "target_wall_s": 600,
        "test_accuracy": m.get("accuracy"),
        "test_roc_auc": m.get("roc_auc"),
        "sensitivity": m.get("sensitivity"),
        "specificity": m.get("specificity"),
        "n_test": m.get("n"),
        "best_epoch": (ctx.run.history or {}).get("best_epoch") if ctx.run else None,
        "device": str(ctx.run.device) if ctx.run else None,
        "torch_threads": torch.get_num_threads(),
        "cpus_available": cpus,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpu": platform.processor() or platform.machine(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    _atomic.write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
