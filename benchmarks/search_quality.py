"""Search quality: hypervolume of the accuracy-latency front under a budget, at the same number of
evaluations, for joint search (NSGA-II over architecture + pruning + low-rank + quantization) vs
sequential search (architecture, then pruning/low-rank, then quantization) vs random search.

Evaluations are CHEAP STAND-INS, not trained networks (real evaluation on this 2-core machine costs
minutes per candidate): latency comes from the device's latency predictor (saved, or fit in memory on
the device's real measurement table; an analytic MAC model only when neither exists) and accuracy
from an analytic proxy (capacity in MACs of the architecture, minus a cost for the MACs removed by
compression and for each quantized layer). The proxy encodes assumptions; the ranking it yields is
evidence about the search strategies on that landscape, not about real accuracy.

    python benchmarks/search_quality.py [--evals 60] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics

import numpy as np

from search_common import latency_model, load_avg, save


# --------------------------------------------------------------------------- cheap evaluation


def macs(cand, space) -> tuple[float, float]:
    """(MACs of the uncompressed architecture, MACs after pruning and low-rank), analytic."""
    from autocomp.models.mbv2 import block_specs

    h = w = space.input.height
    arch = eff = h * w * space.input.channels * cand.stem_width * 9
    blocks = [b for s in cand.stages for b in s.blocks]
    for (cin, cout, stride, k, e), b in zip(block_specs(cand, space), blocks):
        hidden = cin * e
        hid_eff = max(1, round(hidden * b.keep))
        ho, wo = h // stride, w // stride

        def one_by_one(a: int, c: int, hw: int) -> float:
            r = max(1, round(b.rank * min(a, c)))
            return hw * min(a * c, a * r + r * c) if b.rank < 1.0 else hw * a * c

        if e != 1:
            arch += h * w * cin * hidden
            eff += one_by_one(cin, hid_eff, h * w)
        arch += ho * wo * hidden * k * k + ho * wo * hidden * cout
        eff += ho * wo * hid_eff * k * k + one_by_one(hid_eff, cout, ho * wo)
        h, w = ho, wo
    last = cand.stages[-1].width
    arch += h * w * last * cand.head_width + cand.head_width * 10
    eff += h * w * last * cand.head_width + cand.head_width * 10
    return float(arch), float(eff)


class Landscape:
    def __init__(self, space, predictor):
        self.space, self.predictor = space, predictor
        self.lo = math.log(macs(space.smallest(), space)[0])
        self.hi = math.log(macs(space.largest(), space)[0])

    def latency(self, cands) -> np.ndarray:
        if self.predictor is not None:
            return np.asarray(self.predictor.predict(cands), dtype=float)
        out = []
        for c in cands:
            _, eff = macs(c, self.space)
            precs = c.layer_precisions()
            speed = 1.0 - 0.4 * precs.count("int8") / len(precs)
            out.append(0.02 + eff * speed / 1.5e6)
        return np.asarray(out)

    predict = latency  # the controllers' predictor interface

    def accuracy(self, cand) -> float:
        arch, eff = macs(cand, self.space)
        a = 0.94 + 0.05 * (math.log(arch) - self.lo) / (self.hi - self.lo)
        a -= 0.02 * math.log10(arch / eff)  # 10x fewer MACs by compression costs 2 points
        precs = cand.layer_precisions()
        a -= 0.001 * precs.count("int8") + 0.0002 * precs.count("fp16")
        return float(min(max(a, 0.1), 0.999))


class Evaluator:
    """Counts evaluations; infeasible candidates (predicted over budget) are never evaluated."""

    def __init__(self, land: Landscape, budget: float):
        self.land, self.budget, self.rows, self.skipped = land, budget, [], 0

    def evaluate(self, cand) -> dict:
        lat = float(self.land.latency([cand])[0])
        row = {"id": cand.id, "accuracy": self.land.accuracy(cand), "latency_ms": lat, "predicted_latency_ms": lat,
               "status": "ok", "trial": len(self.rows)}
        self.rows.append(row)
        return row


# --------------------------------------------------------------------------- strategies


def run_controller(name, space, seed, ev: Evaluator, n: int, **opts) -> None:
    from autocomp.search import get_controller

    ctrl = get_controller(name, space, seed, budget_ms=ev.budget, predictor=ev.land, **opts)
    for _ in range(n):
        cand = ctrl.ask()
        if cand is None:
            raise RuntimeError("generation-synchronous controller asked out of order")
        ctrl.tell(cand, ev.evaluate(cand), trial=ctrl.asked - 1)
    ev.skipped += ctrl.skipped


def sequential(space, seed, ev: Evaluator, n: int) -> None:
    """Architecture search (uncompressed, fp32), then pruning + low-rank of the front, then quantization."""
    from dataclasses import replace

    from autocomp.search.pareto import pareto_front
    from autocomp.space import Stage

    rng = random.Random(seed)
    c = space.compression
    arch_space = space.model_copy(update={"compression": c.model_copy(update={"keep_ratio": [1.0], "rank_ratio": [1.0], "precision": ["fp32"]})})
    n_arch = n // 3
    by_id = {}

    def stage(n_stage: int, change) -> None:
        front_ids = {r["id"] for r in pareto_front([r for r in ev.rows if r["latency_ms"] <= ev.budget])}
        parents = [by_id[i] for i in sorted(front_ids) if i in by_id]
        seen = {r["id"] for r in ev.rows}
        done = 0
        tries = 0
        while done < n_stage and tries < 50 * n_stage:
            tries += 1
            child = change(rng.choice(parents))
            if child.id in seen:
                continue
            seen.add(child.id)
            if float(ev.land.latency([child])[0]) > ev.budget:
                ev.skipped += 1
                continue
            by_id[child.id] = child
            ev.evaluate(child)
            done += 1

    orig = ev.evaluate

    def keep_cand(cand):  # remember evaluated candidates: the next stages start from the front
        by_id[cand.id] = cand
        return orig(cand)

    ev.evaluate = keep_cand
    run_controller("nsga2", arch_space, seed, ev, n_arch, population=max(4, n_arch // 4))

    def prune(cand):
        stages = tuple(Stage(s.width, tuple(replace(b, keep=1.0 if b.expand == 1 else rng.choice(c.keep_ratio),
                                                     rank=rng.choice(c.rank_ratio)) for b in s.blocks)) for s in cand.stages)
        return replace(cand, stages=stages)

    def quantize(cand):
        stages = tuple(Stage(s.width, tuple(replace(b, precision=rng.choice(c.precision)) for b in s.blocks)) for s in cand.stages)
        return replace(cand, stages=stages, stem_precision=rng.choice(c.precision), head_precision=rng.choice(c.precision))

    stage((n - n_arch) // 2, prune)
    stage(n - len(ev.rows), quantize)
    for r in ev.rows:
        space.validate_candidate(by_id[r["id"]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--evals", type=int, default=60)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="cpu-ort")
    args = ap.parse_args()

    from autocomp.search.pareto import hypervolume
    from autocomp.space import get_space

    space = get_space("mnist-mbv2")
    pred, what = latency_model(args.device, space.name)
    if pred is None:
        what = f"ANALYTIC MAC latency model (no predictor: {what})"
    land = Landscape(space, pred)
    rng = random.Random(1234)
    sample_lat = land.latency([space.sample(rng) for _ in range(500)])
    budget = float(np.percentile(sample_lat, 40))  # binding: 60% of the space is over it
    print(f"latency: {what}")
    print("accuracy: ANALYTIC PROXY (log-MACs capacity, compression and quantization costs) - not trained networks")
    print(f"budget {budget:.3f} ms (40th percentile of the space), {args.evals} evaluations per run, seeds {args.seeds}")

    table: dict[str, list[float]] = {"joint (nsga2)": [], "joint (evolution)": [], "sequential": [], "random": []}
    skipped: dict[str, list[int]] = {k: [] for k in table}
    for seed in args.seeds:
        for name in table:
            ev = Evaluator(land, budget)
            if name == "joint (nsga2)":
                run_controller("nsga2", space, seed, ev, args.evals, population=max(4, args.evals // 6))
            elif name == "joint (evolution)":
                run_controller("evolution", space, seed, ev, args.evals, population=max(4, args.evals // 4), generation=4)
            elif name == "random":
                run_controller("random", space, seed, ev, args.evals)
            else:
                sequential(space, seed, ev, args.evals)
            assert len(ev.rows) == args.evals, (name, len(ev.rows))
            hv = hypervolume([r for r in ev.rows if r["latency_ms"] <= budget], budget)
            table[name].append(hv)
            skipped[name].append(ev.skipped)

    print(f"\n{'strategy':<20} " + " ".join(f"{'seed ' + str(s):>10}" for s in args.seeds) + f" {'mean':>10} {'sd':>8} {'skipped':>8}")
    summary = {}
    for name, hvs in table.items():
        m, sd = statistics.mean(hvs), (statistics.stdev(hvs) if len(hvs) > 1 else 0.0)
        summary[name] = {"hypervolume": hvs, "mean": m, "sd": sd, "skipped_infeasible": skipped[name]}
        print(f"{name:<20} " + " ".join(f"{h:>10.4f}" for h in hvs) + f" {m:>10.4f} {sd:>8.4f} {sum(skipped[name]):>8}")
    best = max(summary, key=lambda k: summary[k]["mean"])
    joint_best = max(summary["joint (nsga2)"]["mean"], summary["joint (evolution)"]["mean"])
    verdict = ("joint search has the largest mean hypervolume" if best.startswith("joint") else
               f"joint search does NOT win here: {best} has the largest mean hypervolume "
               f"({summary[best]['mean']:.4f} vs joint {joint_best:.4f})")
    print(f"\n{verdict}")
    print("hypervolume: area dominated by the front in (latency 0..budget) x (accuracy 0..proxy), larger is better")
    payload = {"latency_model": what, "accuracy_model": "analytic proxy (not trained networks)", "budget_ms": budget,
               "evals": args.evals, "seeds": args.seeds, "results": summary, "verdict": verdict, "load_avg": load_avg()}
    path = save("search_quality" if args.evals == 60 else f"search_quality_e{args.evals}", payload)
    print(f"saved {path}")
    print(json.dumps({"benchmark": "search_quality", "budget_ms": budget, "evals": args.evals,
                      "mean_hypervolume": {k: v["mean"] for k, v in summary.items()}, "winner": best,
                      "latency_model": what.split(" (")[0], "accuracy_model": "analytic proxy"}))


if __name__ == "__main__":
    main()
