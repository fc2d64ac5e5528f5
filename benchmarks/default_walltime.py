"""The whole default command, timed from start to exit: ``autocomp search --budget 2ms`` (the budget
controller, 16 trials, confirmation, export of the winner, report), each run alone on the machine.
Adds one entry to benchmarks/results/default_search_walltime.json, whose ``old_default`` entry (the
default before issue 21, measured on this host in session 10) is the baseline of the speed-up.

    python benchmarks/default_walltime.py --key new_default_s12 --runs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from search_common import RESULTS  # noqa: E402

from autocomp.rundir import read_results  # noqa: E402

OUT = RESULTS / "default_search_walltime.json"


def one_run(run_dir: Path, budget_ms: float) -> dict:
    cmd = ["autocomp", "search", "--budget", f"{budget_ms:g}ms", "--out", str(run_dir)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_results(run_dir / "results.csv")
    win = summary["best_under_budget"]
    exported = json.loads((run_dir / "models" / "winners.json").read_text())["winners"]
    return {"command": " ".join(cmd[:4]), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_start": round(load, 2),
            "wall_s": round(wall, 1), "summary_wall_s": summary.get("wall_s"),
            "score_s_mean": round(statistics.mean(r["score_s"] for r in rows if r.get("score_s")), 1),
            "winner": {"id": win["id"], "accuracy": win["accuracy"], "latency_ms": round(win["latency_ms"], 3),
                       "accuracy_test": exported[0]["accuracy_test"] if exported else None,
                       "measured_latency_ms_export": round(exported[0]["measured_latency_ms"], 3) if exported else None},
            "budget_share": summary["budget_share"], "confirmed": summary.get("confirmed"),
            "live_error": summary["latency_model"].get("live_error"),
            "measure_pids": sorted({r["measure_pid"] for r in rows if r.get("measure_pid")})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", required=True, help="the entry's name in default_search_walltime.json")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--budget", type=float, default=2.0)
    ap.add_argument("--keep", type=Path, default=None, help="keep the last run directory here (e.g. for reports/example)")
    args = ap.parse_args()
    payload = json.loads(OUT.read_text())
    runs = []
    for k in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = args.keep if args.keep and k == args.runs - 1 else Path(tmp) / "run"
            r = one_run(run_dir, args.budget)
        runs.append(r)
        print(f"run {k + 1}: {r['wall_s']} s, winner {r['winner']['accuracy']:.4f} (test {r['winner']['accuracy_test']}) "
              f"at {r['winner']['latency_ms']} ms = {r['budget_share']:.0%} of the budget, load {r['load_start']}", flush=True)
    old = payload["runs"]["old_default"]["wall_s"]
    mean = statistics.mean(r["wall_s"] for r in runs)
    payload["runs"][args.key] = {"runs": runs, "wall_s_mean": round(mean, 1), "speedup_vs_old_default": round(old / mean, 2)}
    OUT.write_text(json.dumps(payload, indent=1))
    print(f"{args.key}: mean {mean:.1f} s over {len(runs)} runs, {old / mean:.2f}x faster than the old default ({old} s); saved {OUT}")


if __name__ == "__main__":
    main()
