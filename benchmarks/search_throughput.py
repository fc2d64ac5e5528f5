"""Evaluations per second of the search on Ray Tune with 1 and 2 concurrent trials (parallel efficiency).

Each evaluation is a real one (build, train a few steps, prune/low-rank/quantize, export ONNX,
accuracy on a validation subset, latency measured by the device-bound task) of a small space, so
the figure is dominated by per-trial work plus Tune/Ray overhead, as in a real search.

    python benchmarks/search_throughput.py [--evals 6] [--train-steps 5] [--space mnist-mbv2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from search_common import load_avg, save

SMALL_SPACE = """\
schema_version: 1
name: bench-small
input: {channels: 1, height: 28, width: 28}
num_classes: 10
stem: {width: [8, 16]}
stages:
  - {stride: 2, depth: [1, 2], width: [16, 24], kernel: [3, 5], expand: [1, 3]}
  - {stride: 2, depth: [1, 2], width: [24, 32], kernel: [3], expand: [3, 4]}
head: {width: [32, 64]}
compression: {keep_ratio: [1.0, 0.5], rank_ratio: [1.0, 0.5], precision: [fp32, int8]}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--evals", type=int, default=6)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--val-size", type=int, default=500)
    ap.add_argument("--space", default=None, help="space name or YAML (default: a small built-in space)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray

    from autocomp.data import load_dataset
    from autocomp.evaluate import EvalSettings
    from autocomp.measure import get_device
    from autocomp.cluster import init_ray
    from autocomp.runner import ControllerFactory, run_tune
    from autocomp.space import get_space, load_space

    tmp = Path(tempfile.mkdtemp(prefix="acbench"))
    if args.space:
        space = get_space(args.space)
    else:
        (tmp / "space.yaml").write_text(SMALL_SPACE)
        space = load_space(tmp / "space.yaml")
    device = get_device("cpu-ort")
    data = load_dataset("mnist")
    init_ray(None, device, num_cpus=2)
    settings = EvalSettings(train_steps=args.train_steps, val_size=args.val_size, weights="scratch") \
        if "weights" in EvalSettings.model_fields else EvalSettings(train_steps=args.train_steps, val_size=args.val_size)
    res = {}
    for workers in (1, 2):
        run = tmp / f"w{workers}"
        run.mkdir()
        t = time.perf_counter()
        rows, _ = run_tune(ControllerFactory("random", space, 0), space, data, device, settings, args.evals, run,
                           concurrency=workers)
        wall = time.perf_counter() - t
        ok = sum(r["status"] == "ok" for r in rows)
        score_s = sum(r["score_s"] or 0 for r in rows) / max(len(rows), 1)
        res[workers] = {"evals": len(rows), "ok": ok, "wall_s": wall, "evals_per_s": len(rows) / wall, "mean_score_s": score_s}
        print(f"{workers} worker(s): {len(rows)} evaluations ({ok} ok) in {wall:.1f} s = {len(rows) / wall:.3f} eval/s "
              f"(mean scoring time in a trial {score_s:.2f} s)")
    eff = res[2]["evals_per_s"] / (2 * res[1]["evals_per_s"])
    speedup = res[2]["evals_per_s"] / res[1]["evals_per_s"]
    la = load_avg()
    print(f"speed-up with 2 workers: {speedup:.2f}x, parallel efficiency {eff:.0%} (2 CPU cores; load average {la})")
    ray.shutdown()
    payload = {"space": space.name, "train_steps": args.train_steps, "val_size": args.val_size, "by_workers": res,
               "speedup_2": speedup, "parallel_efficiency_2": eff, "cpus": os.cpu_count(), "load_avg": la}
    path = save("search_throughput", payload)
    print(f"saved {path}")
    print(json.dumps({"benchmark": "search_throughput", "evals_per_s_1": res[1]["evals_per_s"],
                      "evals_per_s_2": res[2]["evals_per_s"], "parallel_efficiency_2": eff, "load_avg": la}))


if __name__ == "__main__":
    main()
