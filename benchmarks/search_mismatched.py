"""A default search on a host the shipped predictor does not match: does it calibrate before
filtering, how far is its latency model off on the run's own evaluations, and what does the skip
audit find?

    python benchmarks/search_mismatched.py --runs 2                      # autocomp search --budget 10ms, twice
    python benchmarks/search_mismatched.py --runs 1 --budget 1ms         # a binding budget: the skip audit has work
    python benchmarks/search_mismatched.py --collect /tmp/run1 /tmp/run2 # summarise runs made this way by hand

Each run: this host's shipped predictor of the device (``predictors/<device>/<this fingerprint>/``)
is moved aside (and back afterwards, whatever happens), the user cache is a fresh folder, and
``autocomp search --budget B --out DIR`` runs as a user would run it; the whole command is timed.
So the search finds only other hosts' predictors and must calibrate first. From each run's
summary.json: how the latency model was made (method, k, source fingerprint, leave-one-out
error), its live error (every evaluation predicted before it was measured), the skip audit, the
winner. Run it alone on the machine. Prints a line per run and saves
``benchmarks/results/search_mismatched.json`` (with the host's fingerprint; ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = Path(__file__).parent / "results" / "search_mismatched.json"


def summarise(run: Path, wall_s: float | None, command: str) -> dict:
    s = json.loads((run / "summary.json").read_text())
    lm = s.get("latency_model") or {}
    cal = lm.get("calibration") or {}
    best = s.get("best_under_budget") or {}
    return {"run": str(run), "command": command, "wall_s": wall_s, "search_wall_s": s.get("wall_s"), "budget_ms": s.get("budget_ms"),
            "how": lm.get("how"), "fingerprint_id": lm.get("fingerprint_id"),
            "calibration": {k: cal.get(k) for k in ("k", "method", "source_fingerprint_id", "measure_s", "profile_s", "loo", "at")},
            "live_error": lm.get("live_error"), "skip_audit": {k: (s.get("skip_audit") or {}).get(k) for k in ("skipped", "audited", "fit_budget")},
            "winner": {k: best.get(k) for k in ("id", "accuracy", "latency_ms", "predicted_latency_ms")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--budget", default="10ms")
    ap.add_argument("--device", default="cpu-ort")
    ap.add_argument("--collect", nargs="*", type=Path, default=[], help="run directories made this way already")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from autocomp.measure import get_device
    from autocomp.measure.fingerprint import fingerprint_id
    from autocomp.resources import predictors_dir

    fp = get_device(args.device).fingerprint()
    fid = fingerprint_id(fp)
    runs = [summarise(d, None, "(collected: autocomp search run with this host's predictor moved aside, fresh cache)")
            for d in args.collect]
    shipped = predictors_dir() / args.device / fid
    work = Path(tempfile.mkdtemp(prefix="autocomp-mismatched-")) if args.runs else Path()
    for i in range(args.runs):
        aside = work / "aside"
        moved = shipped.is_dir()
        if moved:
            shutil.move(str(shipped), str(aside))
        try:
            out = work / f"run{i}"
            cmd = ["autocomp", "search", "--budget", args.budget, "--device", args.device, "--out", str(out)]
            t0 = time.time()
            subprocess.run(cmd, check=True, env={**os.environ, "AUTOCOMP_CACHE": str(work / f"cache{i}")})
            runs.append(summarise(out, round(time.time() - t0, 1), " ".join(cmd)))
        finally:
            if moved:
                shutil.move(str(aside), str(shipped))
    for r in runs:
        live, audit = r["live_error"] or {}, r["skip_audit"]
        print(f"{r['run']}: {r['how']} ({r['calibration']['method']}, k={r['calibration']['k']}) live error n={live.get('n')} "
              f"within ±10 % {live.get('within_10pct')} median {live.get('median_abs_error')} Spearman {live.get('spearman')}; "
              f"skip audit {audit['audited']} of {audit['skipped']}, {audit['fit_budget']} fit; wall {r['wall_s']} s "
              f"(search {r['search_wall_s']} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "search_mismatched", "device": args.device, "fingerprint_id": fid,
                                    "fingerprint": fp, "runs": runs}, indent=1, default=str))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
