"""Is the latency predictor family-neutral? Fit on one model family, scored on another.

    python benchmarks/predictor_families.py                 # resnet18 and mobilenet_v3_small at 3x32x32, 40 each
    python benchmarks/predictor_families.py --n 60 --input 3x64x64

Tables (all on ``cpu-ort``, this host's fingerprint, the device's own protocol):
- ``mbv2``: the shipped measurement table of this fingerprint (predictors/cpu-ort/<fp>/), if there is one;
- each ``torchvision:NAME`` network (random weights: latency does not depend on them): a seeded
  campaign of its derived space (family ``network``), measured now into the user cache
  (``$AUTOCOMP_CACHE/bench-families/``; resumable).

Scores (held-out split of :func:`autocomp.predictor.model.split_table`, share within ±10 %, Spearman):
- ``own``: a predictor fit on the family's own table (kind chosen by cross-validation);
- ``cross``: the additive ``sum`` predictor (per-layer-group features from the layer table, the
  family-neutral part) fit on family A, scored on every row of family B, raw and after a one-factor
  rescale from 5 rows of B (what a short calibration does).

The host is shared: ``os.getloadavg()`` is recorded before and after; figures from a loaded host
are noisy. Prints a table and saves ``benchmarks/results/predictor_families.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autocomp.families.network import derive_space, parse_input  # noqa: E402
from autocomp.measure import get_device  # noqa: E402
from autocomp.measure.fingerprint import fingerprint_id  # noqa: E402
from autocomp.predictor.campaign import read_table, run_campaign, table_path  # noqa: E402
from autocomp.predictor.model import candidates_of, fit, metrics, split_table  # noqa: E402
from autocomp.resources import cache_dir, predictors_dir  # noqa: E402
from autocomp.space import get_space  # noqa: E402

OUT = Path(__file__).parent / "results" / "predictor_families.json"


def _short(m: dict) -> dict:
    return {k: round(float(m[k]), 4) for k in ("within_10pct", "spearman", "mape") if k in m} | {"n": m.get("n_test")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v3_small")
    ap.add_argument("--input", default="3x32x32")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--device", default="cpu-ort")
    args = ap.parse_args()
    import torch
    import torchvision

    load_before = os.getloadavg()
    t0 = time.time()
    dev = get_device(args.device)
    fp = dev.fingerprint()
    fid = fingerprint_id(fp)
    shape = parse_input(args.input)
    out_dir = cache_dir() / "bench-families"
    families: dict[str, tuple] = {}  # label -> (space, table)
    shipped = table_path(dev.name, fid, predictors_dir())
    if shipped.exists():
        families["mbv2"] = (get_space("mnist-mbv2"), read_table(shipped))
    for name in args.models.split(","):
        w = out_dir / f"{name}-random.pt"
        if not w.exists():
            w.parent.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            torch.save(torchvision.models.get_model(name, num_classes=10).state_dict(), w)
        sp = derive_space(f"torchvision:{name}", str(w), shape)
        table = run_campaign(sp, dev, args.n, out_dir, seed=0, label=f"{name} on {dev.name}", fingerprint=fp)
        families[name] = (sp, table[table["space"] == sp.name].reset_index(drop=True))

    results: dict = {"own": {}, "cross": {}}
    sums = {}
    for label, (sp, table) in families.items():
        pred, rep = fit(table, sp)
        results["own"][label] = {"kind": rep["kind"], "n_train": rep["n_train"], **_short(rep.get("test", {}))}
        sums[label], _ = fit(table, sp, kinds=("sum",))
    for a, (sp_a, _) in families.items():
        for b, (sp_b, table_b) in families.items():
            if a == b:
                continue
            y = table_b["median_ms"].to_numpy(float)
            p = sums[a]
            p_b = type(p)("sum", sp_b, p.meta, p.coef, None)  # the same coefficients on B's layer-table features
            pred = p_b.predict(candidates_of(table_b))
            raw = metrics(pred, y)
            k = np.median(y[:5] / pred[:5])
            scaled = metrics(pred[5:] * k, y[5:])
            results["cross"][f"{a}->{b}"] = {"raw": _short(raw), "rescaled_5": _short(scaled)}
    load_after = os.getloadavg()
    out = {
        "command": " ".join(["python", *sys.argv]), "device": dev.name, "fingerprint_id": fid, "input": args.input,
        "n_per_network": args.n, "tables": {k: int(len(t)) for k, (_, t) in families.items()},
        "held_out": {k: int(len(split_table(t)[1])) for k, (_, t) in families.items()},
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "note": "host shared with other jobs during the run (see loadavg): measurements are noisy",
        "wall_s": round(time.time() - t0, 1), **results,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2))
    print(f"fingerprint {fid}; loadavg {load_before} -> {load_after}")
    print(f"{'fit on':<38}{'scored on':<22}{'within 10%':>11}{'spearman':>10}{'n':>5}")
    for label, r in results["own"].items():
        print(f"{label + ' (own, ' + r['kind'] + ')':<38}{label:<22}{r.get('within_10pct', float('nan')):>11.2f}{r.get('spearman', float('nan')):>10.3f}{r.get('n') or 0:>5}")
    for key, r in results["cross"].items():
        a, b = key.split("->")
        for how in ("raw", "rescaled_5"):
            m = r[how]
            print(f"{a + ' (sum, ' + how + ')':<38}{b:<22}{m['within_10pct']:>11.2f}{m['spearman']:>10.3f}{m['n'] or 0:>5}")
    print(f"saved {OUT}")


if __name__ == "__main__":
    main()
