"""Does the supernet rank candidates like training does?

Samples ``--n`` uncompressed fp32 subnets of the space (seeded), scores each twice on a held-out
split (all 10k MNIST test images by default): (1) with weights inherited from the supernet (extract
+ BN recalibration, no training) and (2) after a short fine-tune of those weights
(``--finetune-steps`` Adam steps on the training split, then the same BN recalibration), once per
fine-tune seed (``--finetune-seeds``, default 3), the fine-tuned accuracy being their mean. Reports
both accuracies per subnet, the Spearman rank correlation between them (target >= 0.8), a bootstrap
95% interval over subnets, and the correlations between fine-tunes of the same subnets with
different seeds (every pair): how well one fine-tune ranks like another, the ceiling the first figure can reach
with one seed. Random subnets of the default space lie within ~1 point of
each other, so the images counted matter: with ``--split val`` the correlation on the 2000-image
validation slice that runs before 2026-12-02 used is reported too.
Writes benchmarks/results/supernet_ranking.json; the last stdout line is one JSON object.

    python benchmarks/supernet_ranking.py                      # 30 subnets, 300 fine-tune steps
    python benchmarks/supernet_ranking.py --n 8 --finetune-steps 100 --eval-size 1000   # quick
    python benchmarks/supernet_ranking.py --finetune-steps 30 --batch-size 32 --lr 3e-4 --threads 1 --workers 2   # 2 cores, ~70 min
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from autocomp.data import load_dataset
from autocomp.evaluate import train
from autocomp.models import supernet as S
from autocomp.models.mbv2 import count_params
from autocomp.space import Block, Stage, get_space

RESULTS = Path(__file__).resolve().parent / "results" / "supernet_ranking.json"


def uncompressed(cand):
    """The candidate's architecture with compression genes at identity (keep 1, rank 1, fp32)."""
    stages = tuple(Stage(s.width, tuple(Block(b.kernel, b.expand, 1.0, 1.0, "fp32") for b in s.blocks)) for s in cand.stages)
    return replace(cand, stages=stages, stem_precision="fp32", head_precision="fp32")


BN_BATCHES = 4  # BatchNorm recalibration batches (of 256 training images), before both scores
_W: dict = {}  # per-process state: space, checkpoint, data, held-out images, settings


def _init(args: argparse.Namespace, ck: str) -> None:
    torch.set_num_threads(args.threads)
    space = get_space(args.space)
    data = load_dataset("mnist", (space.input.channels, space.input.height, space.input.width))
    split = getattr(data, args.split)
    _W.update(space=space, ck=ck, data=data, held_out=split.subset(args.eval_size, seed=args.seed), args=args)


def _slice_2000(n_val: int, seed: int) -> np.ndarray | None:
    """Indices (into the full validation split) of the 2000-image slice the runs before 2026-12-02 used."""
    return np.random.default_rng(seed).choice(n_val, 2000, replace=False) if n_val > 2000 else None


def _score(i: int, c) -> dict:
    """Inherited and fine-tuned accuracy of subnet ``i`` (``c``)."""
    space, ck, data, held_out, args = (_W[k] for k in ("space", "ck", "data", "held_out", "args"))
    t = time.perf_counter()
    # channels-last: depthwise backward ~9x faster than NCHW on CPU (S.correct scores channels-last too)
    net = S.extract(c, space, ck, data, bn_batches=BN_BATCHES).to(memory_format=torch.channels_last)
    inherited = S.correct(net, data, held_out).numpy()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    tuned = []
    for k in range(args.finetune_seeds):  # seed k of subnet i: args.seed + i + 1000 k (k = 0: the single-seed runs' seed)
        net.load_state_dict(start)
        net = train(net, data, args.finetune_steps, args.batch_size, args.lr, args.seed + i + 1000 * k)
        S.recalibrate_bn(net, S.bn_batches_of(data, BN_BATCHES))  # as for the inherited score, not the fine-tune's small-batch running stats
        tuned.append(S.correct(net, data, held_out).numpy())
    seeds = [round(float(t.mean()), 4) for t in tuned]
    row = {"id": c.id, "arch": c.summary().split(" keep")[0], "params": count_params(net),
           "acc_inherited": round(float(inherited.mean()), 4), "acc_finetuned": round(float(np.mean(seeds)), 5),
           "acc_finetuned_seeds": seeds}
    idx = _slice_2000(len(held_out), args.seed) if args.split == "val" and len(held_out) == len(data.val) else None
    if idx is not None:
        row.update(acc_inherited_2000=round(float(inherited[idx].mean()), 4),
                   acc_finetuned_2000=round(float(np.mean([t[idx].mean() for t in tuned])), 5))
    return {**row, "wall_s": round(time.perf_counter() - t, 1)}


def _spearman(a, b) -> float:
    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def _between_seeds(per_seed: list[list[float]]) -> list[float]:
    """Spearman between the fine-tunes of every pair of seeds: how well one fine-tune ranks like another."""
    return [round(_spearman(per_seed[j], per_seed[k]), 4) for j in range(len(per_seed)) for k in range(j + 1, len(per_seed))]


def _bootstrap_ci(a, b, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile interval of the Spearman correlation, resampling subnets."""
    a, b, rng = np.asarray(a), np.asarray(b), np.random.default_rng(seed)
    rhos = [_spearman(a[i], b[i]) for i in (rng.integers(0, len(a), len(a)) for _ in range(n_boot))]
    rhos = [r for r in rhos if r == r]  # a resample of ties only has no correlation
    return [round(float(q), 3) for q in np.percentile(rhos, [2.5, 97.5])] if rhos else [float("nan")] * 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="mnist-mbv2")
    ap.add_argument("--checkpoint", default=None, help="supernet .pt (default supernets/<space>.pt)")
    ap.add_argument("--n", type=int, default=30, help="subnets sampled")
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--finetune-seeds", type=int, default=3, help="fine-tunes per subnet (seeds); the fine-tuned accuracy is their mean")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--split", choices=["test", "val"], default="test", help="held-out split both accuracies are measured on")
    ap.add_argument("--eval-size", type=int, default=10000, help="images of that split (default: all; MNIST test 10k, val 5k)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    ap.add_argument("--workers", type=int, default=1, help="subnets scored in parallel (processes)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    space = get_space(args.space)
    ck = args.checkpoint or S.default_checkpoint(space.name)
    if ck is None:
        sys.exit(f"no supernet checkpoint for {space.name}; train one with `autocomp supernet train`")
    rng = random.Random(args.seed)
    cands = [uncompressed(space.sample(rng)) for _ in range(args.n)]
    rows, t0 = [None] * len(cands), time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn"), initializer=_init, initargs=(args, str(ck))) as pool:
        futures = {pool.submit(_score, i, c): i for i, c in enumerate(cands)}
        for done, fut in enumerate(as_completed(futures)):
            i, r = futures[fut], fut.result()
            rows[i] = r
            print(f"[{done + 1}/{len(cands)}] #{i} {r['arch']:<34} params {r['params']:>8}  inherited {r['acc_inherited']:.4f}  "
                  f"fine-tuned {r['acc_finetuned']:.4f} {r['acc_finetuned_seeds']}  ({r['wall_s']}s)", file=sys.stderr, flush=True)
    inh, tun = [r["acc_inherited"] for r in rows], [r["acc_finetuned"] for r in rows]
    rho = _spearman(inh, tun)
    per_seed = [[r["acc_finetuned_seeds"][k] for r in rows] for k in range(args.finetune_seeds)]
    res = {"schema_version": 3, "space": space.name, "checkpoint": str(ck), "n": len(rows), "finetune_steps": args.finetune_steps,
           "finetune_seeds": args.finetune_seeds,
           "batch_size": args.batch_size, "lr": args.lr, "split": args.split, "eval_size": args.eval_size, "seed": args.seed,
           "spearman": round(rho, 4), "spearman_ci95": _bootstrap_ci(inh, tun, seed=args.seed), "target_spearman": 0.8,
           "spearman_per_seed": [round(_spearman(inh, t), 4) for t in per_seed],
           "spearman_between_seeds": _between_seeds(per_seed),
           "spearman_val2000": (round(_spearman([r["acc_inherited_2000"] for r in rows], [r["acc_finetuned_2000"] for r in rows]), 4)
                                if rows and "acc_inherited_2000" in rows[0] else None),
           "mean_acc_inherited": round(sum(r["acc_inherited"] for r in rows) / max(1, len(rows)), 4),
           "mean_acc_finetuned": round(sum(r["acc_finetuned"] for r in rows) / max(1, len(rows)), 4),
           "wall_s": round(time.perf_counter() - t0, 1), "threads": args.threads, "workers": args.workers, "subnets": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"Spearman(inherited, fine-tuned) = {rho:.3f} (95% CI {res['spearman_ci95']}; per seed {res['spearman_per_seed']}; "
          f"seed vs seed {res['spearman_between_seeds']}; 2000-image slice {res['spearman_val2000']}) "
          f"over {len(rows)} subnets (target >= 0.8); "
          f"mean accuracy inherited {res['mean_acc_inherited']:.4f}, fine-tuned {res['mean_acc_finetuned']:.4f}; wrote {args.out}")
    print(json.dumps({k: v for k, v in res.items() if k != "subnets"}))


if __name__ == "__main__":
    main()
