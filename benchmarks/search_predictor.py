"""Predictor scoring throughput: candidates scored per second, batched (target >= 100k/s), and the
rate at which a budget-constrained controller produces feasible candidates.

Two batched entry points are timed: ``predict(candidates)`` (Python Candidate objects; reading the
objects is part of the cost) and ``predict_arrays(block_arrays(...))`` (the predictor on the gene
arrays alone: what scoring costs once a population is held as arrays).

    python benchmarks/search_predictor.py [--n 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from search_common import latency_model, load_avg, save


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--device", default="cpu-ort")
    args = ap.parse_args()

    from autocomp.search import get_controller
    from autocomp.space import get_space

    space = get_space("mnist-mbv2")
    pred, what = latency_model(args.device, space.name)
    if pred is None:
        print(f"SKIPPED: no latency predictor for {args.device}: {what}")
        print(json.dumps({"benchmark": "search_predictor", "skipped": True, "reason": what}))
        return
    print(f"latency model: {what}")
    rng = random.Random(0)
    t = time.perf_counter()
    cands = [space.sample(rng) for _ in range(args.n)]
    sample_s = time.perf_counter() - t
    pred.predict(cands[:1000])  # warm-up
    out = {}
    for batch in (1, 100, 10_000, args.n):
        n = min(args.n, max(batch * 20, 2000)) if batch < 10_000 else args.n
        t = time.perf_counter()
        for i in range(0, n, batch):
            pred.predict(cands[i : i + batch])
        dt = time.perf_counter() - t
        out[str(batch)] = n / dt
        print(f"batch {batch:>7}: {n / dt:>12,.0f} candidates/s")
    from autocomp.predictor.features import block_arrays

    t = time.perf_counter()
    arrays = block_arrays(cands, space)
    to_arrays_s = time.perf_counter() - t
    t = time.perf_counter()
    pred.predict_arrays(arrays)
    arrays_per_s = args.n / (time.perf_counter() - t)
    print(f"predict_arrays on {args.n:,} candidates: {arrays_per_s:>12,.0f} candidates/s "
          f"(objects -> arrays alone: {args.n / to_arrays_s:,.0f}/s)")
    ms = pred.predict(cands)
    budget = float(np.percentile(ms, 50))
    ctrl = get_controller("nsga2", space, 0, budget_ms=budget, predictor=pred)
    t = time.perf_counter()
    k = 0
    while k < 8:  # one NSGA-II generation of feasible candidates under a median budget
        ctrl.ask()
        k += 1
    ask_s = (time.perf_counter() - t) / k
    best_objects = max(out.values())
    best = max(best_objects, arrays_per_s)
    print(f"sampling the space: {args.n / sample_s:,.0f} candidates/s (Python)")
    print(f"controller ask under a {budget:.2f} ms budget (50% of the space infeasible): {ask_s * 1e3:.2f} ms per feasible "
          f"candidate, {ctrl.skipped} skipped")
    print(f"target >= 100k candidates/s batched: {'MET' if best >= 1e5 else 'NOT MET'} ({best:,.0f}/s)")
    payload = {"latency_model": what, "n": args.n, "candidates_per_s_by_batch": out, "best_candidates_per_s": best,
               "objects_best_candidates_per_s": best_objects, "arrays_candidates_per_s": arrays_per_s,
               "objects_to_arrays_per_s": args.n / to_arrays_s,
               "target_met": best >= 1e5, "sample_candidates_per_s": args.n / sample_s,
               "ask_ms_per_feasible": ask_s * 1e3, "load_avg": load_avg()}
    path = save("search_predictor", payload)
    print(f"saved {path}")
    print(json.dumps({"benchmark": "search_predictor", **{k: v for k, v in payload.items() if k != "candidates_per_s_by_batch"}}, default=float))


if __name__ == "__main__":
    main()
