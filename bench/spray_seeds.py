"""The SpRAy flagging rule of docs/spray.md, measured over seeds (issue #13).

For each seed: synthetic chest X-rays with a marker on half of the effusion images (``--shortcut 0.5``)
and without one, the lesson CNN trained on each (15 epochs), the audit with Grad-CAM and SmoothGrad,
then the score of the flagged clusters against the ground truth of ``dataset.json`` (never seen by the
analysis). Every step goes through the command line exactly as a user would type it, and a step whose
output exists is skipped, so the script can be stopped and started again.

    python bench/spray_seeds.py --work /tmp/spray_seeds --seeds 0 1 2
    python bench/spray_seeds.py --work /tmp/spray_seeds --prepare-only     # data and models only

Writes ``bench/results/spray_seeds.json`` (``--out``) with, per seed, data kind and method: the groups,
their clusters (size, purity, recall, flagged, the rule's five numbers), the precision and recall of all flagged
images against the marker-carrying ones, and the verdict.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"shortcut": 0.5, "clean": 0.0}


def _sk(*args: str, log: Path) -> None:
    cmd = [sys.executable, "-m", "saliencekit", *args, "--quiet"] if args[0] != "data" else [
        sys.executable, "-m", "saliencekit", *args]
    print("$ saliencekit " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
    print(f"  {time.perf_counter() - t0:.0f} s", flush=True)


def prepare(work: Path, seed: int, kind: str) -> tuple[Path, Path]:
    data, run = work / f"data_{kind}_{seed}", work / f"run_{kind}_{seed}"
    log = work / "log.txt"
    if not (data / "dataset.json").is_file():
        _sk("data", "synth", str(data), "--per-class", "350", "--seed", str(seed), "--shortcut", str(KINDS[kind]),
            "--quiet", "--overwrite", log=log)
    if not (run / "metrics.json").is_file():
        _sk("train", str(data), "--out", str(run), "--epochs", "15", "--seed", str(seed), log=log)
    return data, run


def score(audit: Path, data: Path) -> dict[str, Any]:
    """Purity and recall of every cluster against the marker ground truth; the verdict per method."""
    from saliencekit.audit import open_store

    spray = json.loads((audit / "spray.json").read_text())
    meta = json.loads((data / "dataset.json").read_text())
    names = [str(f) for f in open_store(audit).files[:]]
    marked_files = {m["file"] for m in meta["images"] if m["shortcut"]}
    marked = {i for i, f in enumerate(names) if f in marked_files}  # store indices of marker-carrying images
    out: dict[str, Any] = {}
    for label, method in spray["methods"].items():
        groups = {}
        any_flag = False
        best: dict[str, Any] | None = None
        flagged_idx: set[int] = set()
        for gname, group in method["groups"].items():
            files = group["images"]
            n_marked = sum(f in marked for f in files)
            clusters = []
            for cl in group.get("clusters", []):
                cf = cl["members"]
                hits = sum(f in marked for f in cf)
                row = {"size": len(cf), "marked": hits, "purity": hits / len(cf) if cf else 0.0,
                       "recall": hits / n_marked if n_marked else None, "flagged": cl["flagged"],
                       "rule": cl["rule"]}
                clusters.append(row)
                any_flag |= bool(cl["flagged"])
                if cl["flagged"]:
                    flagged_idx.update(cf)
                if gname == "effusion" and n_marked and row["purity"] >= 0.9 and row["recall"] >= 0.8:
                    if best is None or (row["flagged"] and not best["flagged"]):
                        best = row
            groups[gname] = {"n": len(files), "marked": n_marked, "eigengap": group.get("eigengap"),
                             "n_clusters": len(clusters), "clusters": clusters}
        hits = len(flagged_idx & marked)
        out[label] = {"groups": groups, "any_flagged": any_flag,
                      # the images of all flagged clusters (every group) against the marker-carrying images
                      "flagged_images": len(flagged_idx), "flagged_marked": hits, "marked_images": len(marked),
                      "precision": hits / len(flagged_idx) if flagged_idx else None,
                      "recall": hits / len(marked) if marked else None,
                      "pure_cluster_exists": best is not None,
                      "pure_cluster_flagged": bool(best and best["flagged"])}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/spray_seeds"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--prepare-only", action="store_true", help="make the data and train the models, then stop")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "spray_seeds.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for seed in args.seeds:
        for kind in KINDS:
            data, run = prepare(args.work, seed, kind)
            if args.prepare_only:
                continue
            audit = args.work / f"audit_{kind}_{seed}"
            if not (audit / "spray.json").is_file():
                _sk("audit", str(run), str(data), "--methods", "gradcam,smoothgrad", "--out", str(audit),
                    log=args.work / "log.txt")
            metrics = json.loads((run / "metrics.json").read_text())
            results[f"{kind}_{seed}"] = {"seed": seed, "kind": kind, "shortcut": KINDS[kind],
                                         "test_accuracy": metrics.get("accuracy"), "methods": score(audit, data)}
    if args.prepare_only:
        return 0
    verdict = {}
    for label in ("smoothgrad", "gradcam"):
        shortcut_ok = [results[f"shortcut_{s}"]["methods"][label]["pure_cluster_flagged"] for s in args.seeds]
        clean_ok = [not results[f"clean_{s}"]["methods"][label]["any_flagged"] for s in args.seeds]
        sc = [results[f"shortcut_{s}"]["methods"][label] for s in args.seeds]
        verdict[label] = {"shortcut_found_and_flagged": shortcut_ok, "clean_not_flagged": clean_ok,
                          "passes": all(shortcut_ok) and all(clean_ok),
                          "pure_cluster_exists": [m["pure_cluster_exists"] for m in sc],
                          "flagged_precision": [m["precision"] for m in sc],
                          "flagged_recall": [m["recall"] for m in sc],
                          "flagged_images_shortcut": [m["flagged_images"] for m in sc],
                          "flagged_images_clean": [results[f"clean_{s}"]["methods"][label]["flagged_images"]
                                                   for s in args.seeds]}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    report = {"protocol": "docs/spray.md", "commit": commit, "machine": platform.platform(),
              "processor": platform.processor() or platform.machine(), "seeds": args.seeds, "verdict": verdict,
              "runs": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(verdict, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
