"""Time ``run_checks`` per check on a run directory with the demo's methods and check settings.

Usage::

    PYTHONPATH=src python bench/check_timing.py RUN_DIR [--images N] [--threads T] [--quick]

Prints the seconds of the shared maps and of every check (the ``seconds`` of each check in ``checks.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--images", type=int, default=None, help="images checked (default: the demo's check_images)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="the --quick demo's methods and settings")
    ap.add_argument("--checks", default=None, help="comma-separated subset of checks")
    ap.add_argument("--plain", action="store_true", help="the demo's settings before the cost cuts (for before/after)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from saliencekit.pipeline import DemoSettings
    from saliencekit.trust import CheckSettings, run_checks

    s = DemoSettings.quick() if args.quick else DemoSettings()
    if args.plain:  # the demo's methods and checks before the cost cuts (the same with older code)
        before = {"random_label_epochs": 30, "smoothgrad_samples": 16, "ig_steps": 16, "scorecam_top_n": None}
        s = dataclasses.replace(s, **{k: v for k, v in before.items() if hasattr(s, k)})
        settings = CheckSettings(random_label_epochs=s.random_label_epochs)
    else:
        settings = s.check_settings()
    n = args.images or s.check_images
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = run_checks(args.run_dir, methods=s.methods(), out_dir=tmp, n_images=n, seed=s.seed, device="cpu",
                         settings=settings, progress=False,
                         checks=args.checks.split(",") if args.checks else None)
    total = time.perf_counter() - t0
    per = {k: v.get("seconds") for k, v in res["checks"].items()}
    print(json.dumps({"images": n, "threads": args.threads, "total_s": round(total, 1),
                      "other_s (load, maps, figures outside checks)": round(total - sum(per.values()), 1),
                      "checks_s": per}, indent=1))


if __name__ == "__main__":
    main()
