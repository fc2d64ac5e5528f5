"""How often the budget filter skips a candidate that fits, by the rule that sets its margin.

A search skips a candidate when its predicted latency exceeds ``budget * (1 + margin)``; the margin
follows the latency model's error on the run's own measurements. A candidate predicted at the limit
fits when the model over-predicted it by more than the margin. This replays that on a real target
table (no timing): the source predictor is calibrated on ``--k`` rows spread over the latency range
(as a search calibrates), ``--live`` other rows play the run's evaluations (the margin is computed
from their errors, by each rule), and the rest are the candidates the filter judges. Per rule: the
mean margin and the share of the judged rows over-predicted beyond it (the wrong-skip rate near the
limit), and the chance that an audit of 4 of them finds at least one that fits. Mean over
``--draws`` draws of the live rows.

    python benchmarks/skip_margin.py --source-fp ID --target PATH/measurements.parquet

Saves ``benchmarks/results/skip_margin.json`` (both fingerprints).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from predictor_crosshost import spread_rows  # noqa: E402

from autocomp.predictor import load_predictor  # noqa: E402
from autocomp.predictor.calibrate import MARGIN_SD, MAX_MARGIN, MIN_MARGIN  # noqa: E402
from autocomp.predictor.campaign import read_table  # noqa: E402
from autocomp.predictor.model import candidates_of, host_info  # noqa: E402
from autocomp.predictor.transfer import adapt  # noqa: E402

OUT = Path(__file__).parent / "results" / "skip_margin.json"
RULES = {  # name -> margin from the live log errors r = log(predicted / measured)
    "p90_abs": lambda r: np.percentile(np.abs(np.expm1(r)), 90),  # before session 14
    f"{MARGIN_SD:g}sd": lambda r: np.expm1(MARGIN_SD * np.sqrt(np.mean(r ** 2))),  # since session 14
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-device", default="cpu-ort")
    ap.add_argument("--source-fp", required=True)
    ap.add_argument("--target", type=Path, required=True)
    ap.add_argument("--method", default="ridge")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--live", type=int, default=16)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    source = load_predictor(args.source_device, args.source_fp)
    if source is None:
        sys.exit(f"no predictor {args.source_fp} for {args.source_device}")
    table = read_table(args.target)
    info = host_info(table)
    t0 = time.time()
    cal_idx = spread_rows(table, source, args.k)
    cal = table.iloc[cal_idx]
    model = adapt(source, candidates_of(cal), cal["median_ms"].to_numpy(float), args.method, fingerprint=info["fingerprint"])
    rest = table.drop(table.index[cal_idx])
    r_all = np.log(model.predict(candidates_of(rest)) / rest["median_ms"].to_numpy(float))
    rng = np.random.default_rng(args.seed)
    stats = {name: {"margin": [], "wrong_skip": [], "audit4_finds": []} for name in RULES}
    for _ in range(args.draws):
        live = rng.choice(len(r_all), args.live, replace=False)
        judged = np.delete(r_all - np.mean(r_all[live]), live)  # the online correction removes the live bias
        r_live = r_all[live]
        for name, rule in RULES.items():
            m = float(np.clip(rule(r_live), MIN_MARGIN, MAX_MARGIN))
            p = float(np.mean(judged > np.log1p(m)))
            stats[name]["margin"].append(m)
            stats[name]["wrong_skip"].append(p)
            stats[name]["audit4_finds"].append(1.0 - (1.0 - p) ** 4)
    out_rules = {name: {k: round(float(np.mean(v)), 4) for k, v in s.items()} for name, s in stats.items()}
    for name, s in out_rules.items():
        print(f"{name:8s} margin {s['margin']:.3f}  wrong skips near the limit {s['wrong_skip']:.3f}  "
              f"an audit of 4 finds one {s['audit4_finds']:.2f}")
    out = {"source": {"device": args.source_device, "fingerprint_id": source.fingerprint_id},
           "target": {"table": str(args.target), "fingerprint_id": info["fingerprint_id"], "rows": len(table)},
           "calibration": {"k": args.k, "method": args.method}, "live": args.live, "draws": args.draws,
           "rms_log_error": round(float(np.sqrt(np.mean(r_all ** 2))), 4), "rules": out_rules,
           "wall_s": round(time.time() - t0, 1), "command": " ".join(["python benchmarks/skip_margin.py", *sys.argv[1:]])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
