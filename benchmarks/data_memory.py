"""Peak memory of the data path of a search on a generated ImageFolder of 224x224 images, as the
folder grows (default 2,000 vs 8,000 images): it must stay bounded (images are streamed, not
stacked into RAM; before this loader the folder was held as uint8, N x 3 x 224 x 224 bytes).

For each size, a fresh process loads ``imagefolder:DIR`` at 3x224x224 (per-channel mean/std
computed, augmentation on) and scores ``--candidates`` candidates of a small 224x224 space exactly
as a search trial does (``autocomp.evaluate.score``: weights trained from scratch for
``--train-steps`` steps on augmented, streamed batches -> prune -> low-rank -> BN recalibration ->
int8 calibration -> ONNX -> accuracy on the validation split). It records the peak RSS of the
process and of its DataLoader workers (getrusage), the bytes the dataset takes when pickled (what a
Ray trial receives) and the wall time.

    python benchmarks/data_memory.py                      # 2000 and 8000 images, into /tmp
    python benchmarks/data_memory.py --sizes 500 2000 --root /tmp/x

JSON: benchmarks/results/data_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

SPACE = """schema_version: 1
name: bench-224
input: {channels: 3, height: 224, width: 224}
num_classes: 10
stem: {width: [8, 16]}
stages:
  - {stride: 2, depth: [1], width: [8, 16], kernel: [3], expand: [1]}
  - {stride: 2, depth: [1, 2], width: [16, 24], kernel: [3], expand: [1, 3]}
  - {stride: 2, depth: [1], width: [24, 32], kernel: [3], expand: [2, 3]}
  - {stride: 2, depth: [1], width: [32], kernel: [3], expand: [2]}
head: {width: [32]}
compression: {keep_ratio: [1.0, 0.5], rank_ratio: [1.0], precision: [fp32, int8]}
"""


def generate(folder: Path, n: int, classes: int = 10, seed: int = 0) -> None:
    """``n`` 224x224 JPEGs in ``classes`` class folders (smooth random colour fields, class-tinted)."""
    import numpy as np
    from PIL import Image

    if (folder / ".complete").exists():
        return
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % classes
        d = folder / f"class{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 200, (14, 14, 3), dtype=np.uint8)
        small[..., c % 3] = np.clip(small[..., c % 3].astype(int) + 40 + 5 * c, 0, 255)
        Image.fromarray(small).resize((224, 224), Image.BILINEAR).save(d / f"{i:06d}.jpg", quality=85)
    (folder / ".complete").write_text(str(n))


def child(folder: str, space_path: str, candidates: int, train_steps: int, batch_size: int, val_size: int) -> dict:
    import pickle
    import random

    import torch

    from autocomp.data import load_dataset
    from autocomp.evaluate import EvalSettings, score
    from autocomp.space import load_space

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    space = load_space(Path(space_path))
    data = load_dataset(f"imagefolder:{folder}", (3, 224, 224))
    load_s = time.perf_counter() - t0
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    settings = EvalSettings(weights="scratch", train_steps=train_steps, batch_size=batch_size, val_size=val_size,
                            bn_images=64, calib_images=64, train_device="cpu")
    rng = random.Random(0)
    scores = []
    for _ in range(candidates):
        s = score(space.sample(rng), space, data, settings)
        scores.append({"accuracy": round(s.accuracy, 4), "params": s.params, "wall_s": round(s.wall_s, 1)})
    return {
        "images": len(data.train) + len(data.val) + len(data.test),
        "splits": [len(data.train), len(data.val), len(data.test)],
        "mean": data.mean, "std": data.std,
        "dataset_pickled_bytes": len(pickle.dumps(data)),
        "load_s": round(load_s, 1),
        "peak_rss_after_load_mb": round(rss_after_load, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_workers_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "scores": scores,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--root", type=Path, default=Path("/tmp/autocomp-data-memory"))
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--val-size", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data_memory.json")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        f, sp, c, t, b, v = args.child
        print(json.dumps(child(f, sp, int(c), int(t), int(b), int(v))))
        return
    args.root.mkdir(parents=True, exist_ok=True)
    space = args.root / "bench-224.yaml"
    space.write_text(SPACE)
    rows = []
    for n in args.sizes:
        folder = args.root / f"imagefolder-{n}"
        t0 = time.perf_counter()
        generate(folder, n)
        gen_s = time.perf_counter() - t0
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        cmd = [sys.executable, __file__, "--child", str(folder), str(space), str(args.candidates), str(args.train_steps),
               str(args.batch_size), str(args.val_size)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(generate_s=round(gen_s, 1), folder_mb=round(sum(p.stat().st_size for p in folder.rglob("*.jpg")) / 2**20, 1),
                   stacked_uint8_mb=round(n * 3 * 224 * 224 / 2**20, 1))
        rows.append(row)
        print(f"{n:6d} images: peak RSS {row['peak_rss_mb']:.0f} MB (workers {row['peak_rss_workers_mb']:.0f} MB), "
              f"after load {row['peak_rss_after_load_mb']:.0f} MB, dataset pickled {row['dataset_pickled_bytes'] / 1024:.0f} KiB; "
              f"stacking them as uint8 would take {row['stacked_uint8_mb']:.0f} MB; {row['wall_s']:.0f} s", flush=True)
    growth = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"] if len(rows) > 1 else 0.0
    out = {
        "benchmark": "data_memory", "sizes": args.sizes, "candidates": args.candidates, "train_steps": args.train_steps,
        "batch_size": args.batch_size, "val_size": args.val_size, "rows": rows,
        "peak_rss_growth_mb": round(growth, 1),
        "stacked_growth_mb": round((args.sizes[-1] - args.sizes[0]) * 3 * 224 * 224 / 2**20, 1),
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                 "python": platform.python_version()},
        "command": "python benchmarks/data_memory.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"peak RSS grew {growth:+.0f} MB from {args.sizes[0]} to {args.sizes[-1]} images "
          f"(stacked uint8 would grow {out['stacked_growth_mb']:.0f} MB) -> {args.out}")


if __name__ == "__main__":
    main()
