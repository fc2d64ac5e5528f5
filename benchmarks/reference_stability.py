"""How repeatable a latency measurement is on this host, with the small reference and with the large
(matched) one of :mod:`autocomp.measure.reference`.

``--n`` candidates of a space's seeded campaign are exported once; then, in ``--passes`` passes one
after the other, each is measured with the device's protocol twice in a row: framed by the large
reference at its own input size (the protocol since session 13: every block rescaled,
``median_ref_ratio``) and by the small 1x28x28 reference (the protocol before it: normal-phase
blocks, ``median_fastest_blocks``); ``--protocols`` picks among those and ``small-ratio`` (the
small reference, every block rescaled by it: ``reference: ratio``). For inputs under 64x64 the
``large`` protocol is the small reference's (``name_for``). Between two passes the same candidate is compared:
share within ±10 % / ±5 %, median shift and the standard deviation of log(pass b / pass a). Both
protocols run interleaved, so they meet the same host.

Run it alone on the machine (nothing on the other core). Prints a table and saves
``benchmarks/results/reference_stability.json`` with the device fingerprint.

    python benchmarks/reference_stability.py --space fbnet-224 --n 30
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "reference_stability.json"


@contextlib.contextmanager
def small_reference():
    """Every candidate framed by the small reference, as before the large one existed."""
    from autocomp.measure import reference

    area = reference.LARGE_AREA
    reference.LARGE_AREA = 10 ** 12
    try:
        yield
    finally:
        reference.LARGE_AREA = area


PROTOCOLS = {  # name -> (context, measurement overrides)
    "large": (contextlib.nullcontext, {}),
    "small": (small_reference, {}),
    "small-ratio": (small_reference, {"reference": "ratio"}),
}


def compare(a: list[float], b: list[float]) -> dict:
    r = np.asarray(b) / np.asarray(a)
    return {"within_10pct": round(float(np.mean(np.abs(r - 1) <= 0.10)), 4), "within_5pct": round(float(np.mean(np.abs(r - 1) <= 0.05)), 4),
            "median_shift": round(float(np.median(r) - 1), 4), "sd_log_ratio": round(float(np.std(np.log(r))), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="fbnet-224")
    ap.add_argument("--device", default="cpu-ort")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--protocols", default="large,small", help=f"comma-separated, of {sorted(PROTOCOLS)}")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from rich.progress import track

    from autocomp.measure.base import get_device
    from autocomp.predictor.campaign import campaign_candidates, export_candidate
    from autocomp.space import get_space

    load_before = os.getloadavg()
    dev = get_device(args.device)
    space = get_space(args.space).restrict_precisions(list(dev.precisions))
    cands = campaign_candidates(space, args.n, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="autocomp-refstab-"))
    paths = [export_candidate(c, space, tmp / f"{c.id}.onnx", int8=dev.int8_scheme())[0] for c in track(cands, "export")]
    protocols = args.protocols.split(",")
    if set(protocols) - set(PROTOCOLS):
        ap.error(f"--protocols: {sorted(set(protocols) - set(PROTOCOLS))}; expected some of {sorted(PROTOCOLS)}")
    rows: dict[str, list[list[float]]] = {key: [] for key in protocols}
    for p in range(args.passes):
        for key in rows:
            rows[key].append([])
        for c, path in track(list(zip(cands, paths)), f"pass {p + 1}/{args.passes}"):
            for key in protocols:
                context, overrides = PROTOCOLS[key]
                with context():
                    rows[key][-1].append(dev.measure(path, c.precision, **overrides).median_ms)
    out = {"command": f"python benchmarks/reference_stability.py --space {args.space} --device {args.device} --n {args.n} "
                      f"--seed {args.seed} --passes {args.passes} --protocols {args.protocols}",
           "space": space.name, "device": dev.name, "fingerprint_id": _fp_id(dev),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ids": [c.id for c in cands], "ms": rows,
           "pass_to_pass": {key: compare(v[0], v[-1]) for key, v in rows.items()}}
    for key, m in out["pass_to_pass"].items():
        print(f"{key:11s}: pass 1 vs pass {args.passes}: {m['within_10pct']:.0%} within ±10 %, {m['within_5pct']:.0%} within ±5 %, "
              f"median shift {m['median_shift']:+.1%}, sd log {m['sd_log_ratio']:.3f}")
    out["load_before_after"] = [load_before, os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = results if "runs" in results else {"runs": {}}  # one entry per (space, device)
    results["runs"][f"{space.name}/{dev.name}"] = out
    args.out.write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")


def _fp_id(dev) -> str:
    from autocomp.measure.fingerprint import fingerprint_id

    return fingerprint_id(dev.fingerprint())


if __name__ == "__main__":
    main()
