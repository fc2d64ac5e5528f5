"""Search quality with real accuracies: regret, share of the budget used and hypervolume per controller,
and joint vs sequential vs random search at an equal number of evaluations.

Accuracy is the search's own evaluator (``autocomp.evaluate.score``, default settings: supernet weights,
compression, BatchNorm recalibration, int8 calibration, the exported ONNX model's accuracy on 2000
validation images). Latency is this host's calibrated latency model (the one the search filters
with), not a measurement: every controller sees the same latency landscape, and an evaluation costs
a score only. Scores are cached in benchmarks/results/search_pool.json (the reference pool, see
search_pool.py): a candidate not in it is scored now and added, so the table gets cheaper each run.
The best-known accuracy under the budget is the best of everything scored (pool and runs).

    python benchmarks/search_quality.py                                      # the full table (hours on 2 cores)
    python benchmarks/search_quality.py --controllers random budget --trials 16 --seeds 0 --no-sequential   # reduced
    python benchmarks/search_quality.py --combine benchmarks/results/search_quality_t*_part*.json   # parts -> one table
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from search_common import latency_model, load_avg, save
from search_pool import PoolEvaluator

OPTIONS = {"evolution": {"population": 8, "generation": 4}, "nsga2": {"population": 4}, "apq": {"min_train": 8}}


def run_controller(name: str, space, seed: int, ev: PoolEvaluator, budget: float, n: int, log) -> list[dict]:
    from autocomp.search import get_controller

    ctrl = get_controller(name, space, seed, budget_ms=budget, predictor=ev.predictor, **OPTIONS.get(name, {}))
    rows = []
    for t in range(n):
        cand = ctrl.ask()
        r = ev(cand)
        row = {"trial": t, "id": cand.id, "status": "ok", "accuracy": r["accuracy"], "latency_ms": r["predicted_ms"],
               "predicted_latency_ms": r["predicted_ms"]}
        ctrl.tell(cand, row, trial=t)
        rows.append(row)
        log(f"{name} seed {seed} #{t} acc {r['accuracy']:.4f} {r['predicted_ms']:.2f} ms")
    return rows


def sequential(space, seed: int, ev: PoolEvaluator, budget: float, n: int, log) -> list[dict]:
    """Architecture (budget search over uncompressed fp32 networks), then pruning + low-rank of the best
    under the budget, then precision: a third of the evaluations each."""
    from autocomp.space import Stage

    rng = random.Random(seed)
    comp = space.compression
    arch_space = space.model_copy(update={"compression": comp.model_copy(update={"keep_ratio": [1.0], "rank_ratio": [1.0], "precision": ["fp32"]})})
    n_arch = n // 3
    rows = run_controller("budget", arch_space, seed, ev, budget, n_arch, log)
    by_id = {}

    def best() -> object:
        fit = [r for r in rows if r["latency_ms"] <= budget] or rows
        top = max(fit, key=lambda r: r["accuracy"])
        return by_id.get(top["id"]) or ev.candidate(top["id"])

    def prune(c):
        return replace(c, stages=tuple(Stage(s.width, tuple(replace(b, keep=1.0 if b.expand == 1 else rng.choice(comp.keep_ratio),
                                                                     rank=rng.choice(comp.rank_ratio)) for b in s.blocks)) for s in c.stages))

    def quantize(c):
        return replace(c, stages=tuple(Stage(s.width, tuple(replace(b, precision=rng.choice(comp.precision)) for b in s.blocks)) for s in c.stages),
                       stem_precision=rng.choice(comp.precision), head_precision=rng.choice(comp.precision))

    for change, count in ((prune, (n - n_arch) // 2), (quantize, n - n_arch - (n - n_arch) // 2)):
        parent, done, tries = best(), 0, 0
        seen = {r["id"] for r in rows}
        while done < count and tries < 2000:
            tries += 1
            child = change(parent)
            if child.id in seen or float(ev.predictor.predict([child])[0]) > budget:
                continue
            seen.add(child.id)
            by_id[child.id] = child
            r = ev(child)
            rows.append({"trial": len(rows), "id": child.id, "status": "ok", "accuracy": r["accuracy"], "latency_ms": r["predicted_ms"]})
            log(f"sequential seed {seed} #{len(rows) - 1} acc {r['accuracy']:.4f} {r['predicted_ms']:.2f} ms")
            done += 1
    return rows


def metrics(rows: list[dict], budget: float, best_known: float) -> dict:
    from autocomp.search.pareto import hypervolume

    fit = [r for r in rows if r["latency_ms"] <= budget]
    win = max(fit, key=lambda r: (r["accuracy"], -r["latency_ms"])) if fit else None
    return {"best_accuracy": win["accuracy"] if win else None,
            "regret_points": round((best_known - win["accuracy"]) * 100, 3) if win else None,
            "budget_share": round(win["latency_ms"] / budget, 3) if win else None,
            "hypervolume": round(hypervolume(fit, budget), 5), "n": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--controllers", nargs="*", default=["random", "evolution", "nsga2", "apq", "budget"],
                    help="none: only the sequential search (unless --no-sequential)")
    ap.add_argument("--trials", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=float, default=2.0, help="ms; binds on this host (largest member ~4.7 ms)")
    ap.add_argument("--no-sequential", action="store_true")
    ap.add_argument("--tag", default="", help="suffix of the saved JSON (parts run side by side share the pool)")
    ap.add_argument("--combine", nargs="+", type=Path, metavar="PART.json",
                    help="no search: one table (search_quality.json) from saved parts, against the pool as it is now")
    args = ap.parse_args()
    if args.combine:
        return combine(args.combine)

    from autocomp.space import Candidate, get_space

    space = get_space()
    pred, what = latency_model("cpu-ort", space.name)
    if pred is None:
        raise SystemExit(what)
    ev = PoolEvaluator(space, pred)
    ev.candidate = lambda i: Candidate.from_json(ev.pool[i]["policy"])
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    runs: dict[str, dict[int, dict[int, list[dict]]]] = {}
    for n in args.trials:
        for name in args.controllers + ([] if args.no_sequential else ["sequential"]):
            for seed in args.seeds:
                rows = sequential(space, seed, ev, args.budget, n, log) if name == "sequential" else \
                    run_controller(name, space, seed, ev, args.budget, n, log)
                runs.setdefault(name, {}).setdefault(n, {})[seed] = rows
    ev.save()
    table, best_known, under = tabulate(runs, ev, args.budget)
    payload = {"budget_ms": args.budget, "latency": what, "accuracy": "autocomp.evaluate.score (default settings)",
               "best_known_under_budget": best_known, "pool_size": len(ev.pool), "pool_under_budget": under,
               "scored_now": ev.added, "controllers": args.controllers, "trials": args.trials, "seeds": args.seeds,
               "sequential": not args.no_sequential, "table": table, "wall_s": round(time.time() - t0, 1), "load_avg": load_avg(),
               "runs": ids_of(runs)}
    full = set(args.controllers) == {"random", "evolution", "nsga2", "apq", "budget"} and args.trials == [16, 64] and len(args.seeds) == 3
    path = save(("search_quality" if full else f"search_quality_t{'-'.join(map(str, args.trials))}_s{len(args.seeds)}") + args.tag, payload)
    print(f"saved {path}")


def ids_of(runs: dict) -> dict:
    """The candidate ids of every run (controller -> trials -> seed), as a part's JSON keeps them."""
    return {k: {n: {s: [r["id"] for r in rows] for s, rows in v.items()} for n, v in by_n.items()} for k, by_n in runs.items()}


def tabulate(runs: dict, ev: PoolEvaluator, budget: float) -> tuple[dict, float, int]:
    """(table, best-known accuracy under ``budget``, pool candidates under it): regret, budget share
    and hypervolume per controller and trial count, averaged over seeds, against the pool as it is now."""
    fit_all = [r["accuracy"] for r in ev.pool.values() if r["predicted_ms"] <= budget]
    best_known = max(fit_all)
    table = {}
    for name, by_n in runs.items():
        for n, by_seed in sorted(by_n.items(), key=lambda kv: int(kv[0])):
            ms = [metrics(rows, budget, best_known) for rows in by_seed.values()]
            agg = {k: statistics.mean(m[k] for m in ms if m[k] is not None) for k in ("regret_points", "budget_share", "hypervolume")}
            table.setdefault(name, {})[n] = {"mean": agg, "per_seed": dict(zip(by_seed, ms))}
            print(f"{name:<12} {n:>3} trials  regret {agg['regret_points']:6.2f} pts  share {agg['budget_share']:.0%}  "
                  f"hypervolume {agg['hypervolume']:.4f}  ({len(ms)} seeds)")
    return table, best_known, len(fit_all)


def combine(paths: list[Path]) -> None:
    """One table from parts run separately (``--tag``), every run scored against the pool as it is now
    (a part saved earlier took its best-known accuracy from a smaller pool)."""
    from autocomp.space import get_space

    parts = [json.loads(p.read_text()) for p in paths]
    budgets = {p["budget_ms"] for p in parts}
    if len(budgets) != 1:
        raise SystemExit(f"parts with different budgets: {sorted(budgets)}")
    budget = budgets.pop()
    space = get_space()
    pred, what = latency_model("cpu-ort", space.name)
    if pred is None:
        raise SystemExit(what)
    ev = PoolEvaluator(space, pred)
    runs: dict = {}
    for part in parts:
        for name, by_n in part["runs"].items():
            for n, by_seed in by_n.items():
                for seed, ids in by_seed.items():
                    runs.setdefault(name, {}).setdefault(int(n), {})[int(seed)] = [
                        {"id": i, "accuracy": ev.pool[i]["accuracy"], "latency_ms": ev.pool[i]["predicted_ms"]} for i in ids]
    table, best_known, under = tabulate(runs, ev, budget)
    payload = {"budget_ms": budget, "latency": what, "accuracy": "autocomp.evaluate.score (default settings)",
               "best_known_under_budget": best_known, "pool_size": len(ev.pool), "pool_under_budget": under,
               "combined_from": [p.name for p in paths], "table": table, "load_avg": load_avg(),
               "runs": ids_of(runs)}
    print(f"saved {save('search_quality', payload)}")


if __name__ == "__main__":
    main()
