"""Whole-dataset audit on the CPU: throughput of the engines, cost of the store, memory against N (issue #13).

    python bench/audit_bench.py throughput --work /tmp/audit_bench      # local vs Ray (1 and 2 workers), images/s
    python bench/audit_bench.py overhead --work /tmp/audit_bench        # explaining with vs without writing the store
    python bench/audit_bench.py memory --work /tmp/audit_bench          # peak memory for N = 1,000 and 10,000
    python bench/audit_bench.py all --work /tmp/audit_bench

Every case uses the lesson CNN (``effusion_cnn``, untrained weights: the speed of a forward/backward pass does
not depend on them) on synthetic chest X-rays. Results go to ``bench/results/audit_bench.json`` (merged with what
is there), with the machine, the CPU count, the load average before each case and the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "audit_bench.json"
METHODS = {"gradcam": {"method": "gradcam"}, "smoothgrad": {"method": "smoothgrad", "samples": 8}}


def _run_dir(work: Path, image_size: int) -> Path:
    """A run directory holding the untrained lesson CNN for ``image_size`` inputs (no training needed)."""
    import torch

    from saliencekit import _atomic
    from saliencekit.data.preprocess import Preprocessing
    from saliencekit.models import create
    from saliencekit.models.io import save_checkpoint

    run = work / f"run_{image_size}"
    if (run / "checkpoint.pt").is_file():
        return run
    torch.manual_seed(0)
    model = create("effusion_cnn")
    save_checkpoint(run / "checkpoint.pt", model, "effusion_cnn", {"in_channels": 1, "num_classes": 2},
                    Preprocessing(size=(image_size, image_size)).to_dict(), ["normal", "effusion"])
    _atomic.write_json(run / "config.json", {"data_root": str(work), "note": "untrained, for benchmarks"})
    _atomic.write_json(run / "split.json", {"train": [], "val": [], "test": []})
    return run


def _data(work: Path, per_class: int, size: int) -> Path:
    from saliencekit.data.synthetic import generate

    data = work / f"data_{per_class}_{size}"
    if not (data / "dataset.json").is_file():
        generate(data, per_class=per_class, size=size, seed=0, progress=False, overwrite=True)
    return data


def _load() -> float:
    return os.getloadavg()[0]


def _commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True,
                           text=True).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def _save(key: str, value: Any) -> None:
    """``value`` becomes the case's latest result; every run of the case is also kept under ``runs``."""
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    runs = data.get(key, {}).get("runs", []) if isinstance(data.get(key), dict) else []
    earlier = {k: v for k, v in data.get(key, {}).items() if k != "runs"} if runs or key in data else None
    if earlier and not runs:
        runs = [_strip(earlier)]
    data[key] = {**value, "runs": [*runs, _strip(value)]}
    data["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                       "cpus": os.cpu_count(), "python": platform.python_version()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    """A result without its per-chunk timings (what the list of runs keeps)."""
    out = {k: v for k, v in result.items() if k not in ("seconds", "runs")}
    if isinstance(out.get("cases"), dict):
        out["cases"] = {k: {kk: vv for kk, vv in v.items() if kk != "seconds"} if isinstance(v, dict) else v
                        for k, v in out["cases"].items()}
    return out


# ------------------------------------------------------------------------------------------------ throughput


def throughput(work: Path, per_class: int = 64, image_size: int = 128, rounds: int = 2) -> dict[str, Any]:
    """Images/s of the local engine and of the Ray engine with 1 and 2 actors (one CPU and one thread each)."""
    import ray

    from saliencekit.audit import run_audit

    run, data = _run_dir(work, image_size), _data(work, per_class, image_size)
    kw = {"chunk_size": 16, "batch_size": 16, "device": "cpu", "progress": False}
    cases: dict[str, list[float]] = {"local (1 thread)": [], "local (2 threads)": [], "ray, 1 worker": [],
                                     "ray, 2 workers": []}
    loads: dict[str, list[float]] = {k: [] for k in cases}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for _ in range(rounds):
            for case in cases:
                out = work / "tp"
                shutil.rmtree(out, ignore_errors=True)
                loads[case].append(_load())
                if case.startswith("local"):
                    res = run_audit(run, data, out, METHODS, **kw, workers=1, num_threads=int(case[7]))
                else:
                    res = run_audit(run, data, out, METHODS, **kw, engine="ray", ray_workers=int(case[5]))
                cases[case].append(res.images_per_second)
                print(f"{case}: {res.images_per_second:.1f} images/s", flush=True)
    finally:
        ray.shutdown()
    best = {k: max(v) for k, v in cases.items()}
    return {"n_images": 2 * per_class, "image_size": image_size, "methods": METHODS, "chunk_size": 16,
            "images_per_s": cases, "best_images_per_s": best, "load_average_before": loads,
            "ratio_to_local_1_thread": {k: v / best["local (1 thread)"] for k, v in best.items()},
            "note": "Ray rates include starting the actors (each imports torch and loads the model)"}


# ------------------------------------------------------------------------------------------------ overhead


def overhead(work: Path, per_class: int = 64, image_size: int = 256, rounds: int = 2) -> dict[str, Any]:
    """Cost of the store against the passes an audit cannot avoid, measured chunk by chunk in one process.

    For every chunk, in alternating order: the chunk explained without the store (forward pass for the
    predictions, then the methods' passes: what any audit must do) and the chunk explained and written to
    the store. The store's cost is the time of ``ChunkWriter.write`` plus the float16 encoding (timed apart,
    on the same maps); it is reported as a share of the explaining time, per round, and also as the paired
    difference of the two timings of each chunk (noisier: it carries the load's fluctuations between them).
    Two method sets: the issue's (Grad-CAM + SmoothGrad with 8 samples) and the cheapest (one gradient pass),
    where the store's share is largest.
    """
    import numpy as np
    import torch

    from saliencekit.audit import make_job
    from saliencekit.audit._job import compute_chunk, encode_maps, load_context, load_images
    from saliencekit.audit.store import ChunkWriter, create_store, store_path

    run, data = _run_dir(work, image_size), _data(work, per_class, image_size)
    torch.set_num_threads(1)
    out: dict[str, Any] = {"n_images": 2 * per_class, "image_size": image_size, "threads": 1, "chunk_size": 16,
                           "rounds": rounds, "cases": {}}
    for name, methods in (("gradcam+smoothgrad8", METHODS), ("gradient", {"gradient": {"method": "gradient"}})):
        job = make_job(run, data, methods, chunk_size=16, batch_size=16, device="cpu")
        ctx = load_context(job)
        images = [load_images(ctx, c) for c in range(ctx.n_chunks)]
        compute_chunk(ctx, 0, images[0])  # warm-up (layout trial, allocator)
        plain: list[list[float]] = []
        stored: list[list[float]] = []
        store_cost: list[list[float]] = []
        for r in range(rounds):
            path = store_path(work / "ov")
            shutil.rmtree(path.parent, ignore_errors=True)
            create_store(path, ctx)
            writer = ChunkWriter(path)
            p_r, s_r, c_r = [], [], []
            for c in range(ctx.n_chunks):
                for kind in (("plain", "stored") if (c + r) % 2 == 0 else ("stored", "plain")):
                    t0 = time.perf_counter()
                    res = compute_chunk(ctx, c, images[c])
                    if kind == "plain":
                        p_r.append(time.perf_counter() - t0)
                        continue
                    t1 = time.perf_counter()
                    writer.write(res)
                    t2 = time.perf_counter()
                    s_r.append(t2 - t0)
                    # the float16 encoding inside compute_chunk, timed again on the same maps
                    raw = {k: v.astype(np.float32) * res.scales[k][:, None, None] for k, v in res.maps.items()}
                    t3 = time.perf_counter()
                    for v in raw.values():
                        encode_maps(v, "float16")
                    c_r.append((t2 - t1) + (time.perf_counter() - t3))
            plain.append(p_r)
            stored.append(s_r)
            store_cost.append(c_r)
            print(f"{name} round {r}: explain only {sum(p_r):.2f} s, explain + store {sum(s_r):.2f} s, "
                  f"store (write + encode) {sum(c_r):.2f} s", flush=True)
        share = [sum(c) / sum(p) for c, p in zip(store_cost, plain)]
        paired = [s / p - 1 for sr, pr in zip(stored, plain) for s, p in zip(sr, pr)]
        n = ctx.n_images
        out["cases"][name] = {
            "methods": methods,
            "explain_s_per_image_per_round": [sum(p) / n for p in plain],
            "store_s_per_image_per_round": [sum(c) / n for c in store_cost],
            "store_share_of_explain_per_round": share,
            "store_share_of_explain": float(np.median(share)),
            "paired_chunk_overhead_median": float(np.median(paired)),
            "paired_chunk_overhead_quartiles": [float(q) for q in np.percentile(paired, [25, 75])],
            "paired_chunk_overhead_min_max": [min(paired), max(paired)],
            "seconds": {"plain": plain, "stored": stored, "store": store_cost},
        }
    return out


# ------------------------------------------------------------------------------------------------ memory


def _tree_rss(pid: int) -> int:
    """Proportional resident memory (PSS, bytes) of a process and all its descendants: pages shared between the
    forked loader workers and the main process are counted once, split between them."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo += kids.get(p, [])
    return total


def memory(work: Path, sizes: tuple[int, ...] = (1000, 10000), image_size: int = 64) -> dict[str, Any]:
    """Peak memory (PSS) of ``saliencekit audit`` (the process and its two loader workers) against N."""
    out: dict[str, Any] = {"image_size": image_size, "methods": "gradient", "cases": {}}
    run = _run_dir(work, image_size)
    for n in sizes:
        data = _data(work, n // 2, 64)
        dest = work / f"mem_{n}"
        shutil.rmtree(dest, ignore_errors=True)
        cmd = [sys.executable, "-m", "saliencekit", "audit", str(run), str(data), "--out", str(dest), "--methods",
               "gradient", "--chunk-size", "64", "--device", "cpu", "--quiet", "--no-analysis", "--workers", "2",
               "--threads", "1"]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak = [0]
        stop = threading.Event()

        def sample(p: int = proc.pid, peak: list[int] = peak, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _tree_rss(p))
                time.sleep(0.05)

        t = threading.Thread(target=sample, daemon=True)
        t0 = time.perf_counter()
        t.start()
        text, _ = proc.communicate()
        stop.set()
        t.join()
        if proc.returncode:
            raise RuntimeError(text)
        out["cases"][str(n)] = {"peak_pss_mib": peak[0] / 2**20, "seconds": time.perf_counter() - t0,
                                "summary": text.strip().splitlines()[-1]}
        print(f"N={n}: peak {peak[0] / 2**20:.0f} MiB", flush=True)
    a, b = (out["cases"][str(s)]["peak_pss_mib"] for s in sizes[:2])
    out["ratio_10x_images"] = b / a
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", choices=("throughput", "overhead", "memory", "all"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/audit_bench"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for case in ("throughput", "overhead", "memory") if args.case == "all" else (args.case,):
        t0, load = time.perf_counter(), _load()
        result = {"throughput": throughput, "overhead": overhead, "memory": memory}[case](args.work)
        result.setdefault("load_average_before", load)
        result.update({"commit": _commit(), "device": "cpu (2 cores shared with other jobs)", "nice": os.nice(0),
                       "load_average_after": _load(), "wall_s": time.perf_counter() - t0})
        _save(case, result)
        print(json.dumps({k: v for k, v in result.items() if k not in ("rounds",)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
