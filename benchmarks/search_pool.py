"""The reference pool of search_quality.py: candidates of the default space scored by the search's own
evaluator (``autocomp.evaluate.score``, default settings, one thread), with the latency predicted by
this host's calibrated latency model. Kept in benchmarks/results/search_pool.json (id -> figures),
built once and extended by whatever the controllers propose that is not in it yet.

    python benchmarks/search_pool.py --uniform 100 --band 200 --budget 2.0    # build (or extend) the pool
    python benchmarks/search_pool.py --size 300                               # extend it up to 300 candidates
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from search_common import RESULTS, latency_model  # noqa: E402

POOL = RESULTS / "search_pool.json"


class PoolEvaluator:
    """Accuracy of a candidate from the pool, else scored now (and added); latency from the predictor."""

    def __init__(self, space, predictor, path: Path = POOL, save_every: int = 1):
        self.space, self.predictor, self.path, self.save_every = space, predictor, path, save_every
        self.pool: dict[str, dict] = json.loads(path.read_text())["candidates"] if path.exists() else {}
        self.added = 0
        if self.pool:  # every latency from the one model the controllers filter with, not the one of its day
            from autocomp.space import Candidate

            ids = list(self.pool)
            for i, ms in zip(ids, self.latency(Candidate.from_json(self.pool[i]["policy"]) for i in ids)):
                self.pool[i]["predicted_ms"] = ms
        self._data = self._settings = None

    def latency(self, cands) -> list[float]:
        cands = list(cands)
        return [float(v) for v in self.predictor.predict(cands)] if cands else []

    def __call__(self, cand) -> dict:
        r = self.pool.get(cand.id)
        if r is None:
            r = self.score(cand)
        return r

    def score(self, cand) -> dict:
        import torch

        from autocomp.data import load_dataset
        from autocomp.evaluate import EvalSettings, score

        if self._data is None:
            torch.set_num_threads(1)
            self._data, self._settings = load_dataset("mnist"), EvalSettings(weights="supernet")
        s = score(cand, self.space, self._data, self._settings)
        r = {"policy": cand.to_json(), "accuracy": s.accuracy, "accuracy_se": round(s.accuracy_se, 5),
             "predicted_ms": self.latency([cand])[0], "score_s": round(s.wall_s, 2), "load": round(os.getloadavg()[0], 2)}
        self.pool[cand.id] = r
        self.added += 1
        if self.added % self.save_every == 0:
            self.save()
        return r

    def save(self) -> None:
        """Write the pool, merged with what other processes (another benchmark on the other core)
        saved since this one read it, under an exclusive lock."""
        import fcntl

        RESULTS.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists():
                from autocomp.space import Candidate

                theirs = {i: r for i, r in json.loads(self.path.read_text())["candidates"].items() if i not in self.pool}
                for (i, r), ms in zip(theirs.items(), self.latency(Candidate.from_json(r["policy"]) for r in theirs.values())):
                    self.pool[i] = {**r, "predicted_ms": ms}
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        loads = sorted(r["load"] for r in self.pool.values() if r.get("load") is not None)
        load_avg = {"min": loads[0], "median": loads[len(loads) // 2], "max": loads[-1],
                    "note": "1-minute load average when each candidate was scored (2-core machine shared with other jobs)"} if loads else None
        tmp.write_text(json.dumps({"benchmark": "search_pool", "settings": "autocomp.evaluate.EvalSettings(weights='supernet'), 1 thread",
                                   "latency": "predicted by this host's calibrated latency model", "host": platform.node(),
                                   "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "size": len(self.pool), "load_avg": load_avg,
                                   "candidates": self.pool}))
        tmp.replace(self.path)


def band_sample(space, predictor, rng, n: int, lo_ms: float, hi_ms: float, tries: int = 200000):
    """``n`` uniform samples of the space whose predicted latency lies in [lo_ms, hi_ms]."""
    out = []
    while len(out) < n and tries > 0:
        chunk = [space.sample(rng) for _ in range(2000)]
        tries -= len(chunk)
        lat = predictor.predict(chunk)
        out += [c for c, ms in zip(chunk, lat) if lo_ms <= ms <= hi_ms]
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uniform", type=int, default=100)
    ap.add_argument("--band", type=int, default=200)
    ap.add_argument("--budget", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", type=int, default=None, help="stop once the pool holds this many candidates")
    args = ap.parse_args()
    from autocomp.space import get_space

    space = get_space()
    pred, what = latency_model("cpu-ort", space.name)
    if pred is None:
        raise SystemExit(what)
    rng = random.Random(args.seed)
    cands = [space.sample(rng) for _ in range(args.uniform)]
    cands += band_sample(space, pred, rng, args.band, 0.5 * args.budget, args.budget)
    # interleave: a pool cut short by time is still half uniform, half near the budget
    order = [c for pair in zip(cands[: args.uniform], cands[args.uniform:]) for c in pair] + cands[2 * min(args.uniform, args.band):]
    ev = PoolEvaluator(space, pred)
    t0 = time.time()
    for i, c in enumerate(order):
        if args.size is not None and len(ev.pool) >= args.size:
            break
        if c.id in ev.pool:
            continue
        r = ev(c)
        print(f"[{i + 1}/{len(order)}] {c.id} acc {r['accuracy']:.4f} {r['predicted_ms']:.2f} ms (pred) {r['score_s']:.1f} s "
              f"elapsed {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    ev.save()
    print(f"pool: {len(ev.pool)} candidates ({what})")


if __name__ == "__main__":
    main()
