"""Training on the GPU: supernet steps and plain training on cuda (mixed precision) vs cpu, and a
correctness check of the CUDA path. For a machine with a GPU; needs no network (synthetic data).

* supernet training steps/s (sandwich rule, :func:`autocomp.models.supernet.train_supernet`) of the
  shipped ``mnist-mbv2`` space (1x28x28, batch 96) and of a 3x224x224 space (batch 64), on
  ``cuda`` and on ``cpu`` (fewer steps there);
* :func:`autocomp.training.train` on a learnable synthetic problem on cuda: the loss falls, the
  model comes back on the CPU, and its accuracy is far above chance.

    python benchmarks/gpu_check.py                 # ~2-4 min on a GPU machine
    python benchmarks/gpu_check.py --cuda-steps 50 --cpu-steps 5

JSON: benchmarks/results/gpu_check.json (exit 1 if the correctness check fails, 2 without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPACE_224 = """schema_version: 1
name: gpu-224
input: {channels: 3, height: 224, width: 224}
num_classes: 100
stem: {width: [16, 24]}
stages:
  - {stride: 2, depth: [1, 2], width: [16, 24], kernel: [3, 5], expand: [1, 3]}
  - {stride: 2, depth: [2, 3], width: [24, 32], kernel: [3, 5], expand: [3, 6]}
  - {stride: 2, depth: [2, 3], width: [40, 48], kernel: [3, 5], expand: [3, 6]}
  - {stride: 2, depth: [2, 3], width: [80, 96], kernel: [3, 5], expand: [3, 6]}
head: {width: [640]}
compression: {keep_ratio: [1.0, 0.5], rank_ratio: [1.0], precision: [fp32, int8]}
"""


class Synthetic:
    """A torch Dataset of random images whose class shifts the mean of one channel (learnable)."""

    def __init__(self, n: int, shape: tuple[int, int, int], classes: int, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.targets = (torch.randperm(n, generator=g) % classes).tolist()  # balanced classes
        self.shape, self.classes, self.seed = shape, classes, seed

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        import torch

        y = self.targets[i]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        x = torch.randn(self.shape, generator=g) * 0.5
        x[y % self.shape[0], :, :] += (y / self.classes) * 4 - 2
        return x, y


def time_supernet(space, data, device: str, steps: int, batch_size: int) -> dict:
    import torch

    from autocomp.models.supernet import train_supernet

    stats: dict = {}
    train_supernet(space, data, 2, seed=0, progress=False, batch_size=batch_size, device=device, threads=None, sort_at_frac=0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train_supernet(space, data, steps, seed=0, progress=False, batch_size=batch_size, device=device, threads=None,
                   sort_at_frac=0, stats=stats)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    out = {"device": device, "steps": steps, "batch_size": batch_size, "wall_s": round(wall, 2), "steps_per_s": round(steps / wall, 3)}
    if device.startswith("cuda"):
        out["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuda-steps", type=int, default=40)
    ap.add_argument("--cpu-steps", type=int, default=4)
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers (AUTOCOMP_DATA_WORKERS)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_check.json")
    args = ap.parse_args()
    import torch

    from autocomp.data import from_torch
    from autocomp.space import get_space, load_space
    from autocomp.training import Amp, resolve_device, train

    if not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing to check", file=sys.stderr)
        sys.exit(2)
    os.environ["AUTOCOMP_DATA_WORKERS"] = str(args.workers)
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    result: dict = {
        "benchmark": "gpu_check", "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
        "amp_dtype": str(Amp(resolve_device("cuda")).dtype), "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "host": platform.node(), "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]), "supernet": [],
    }
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "autocomp-gpu-check"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "gpu-224.yaml").write_text(SPACE_224)
    cases = [("mnist-mbv2", get_space("mnist-mbv2"), (1, 28, 28), 10, 96),
             ("gpu-224", load_space(tmp / "gpu-224.yaml"), (3, 224, 224), 100, 64)]
    for name, space, shape, classes, bs in cases:
        data = from_torch(Synthetic(4000, shape, classes), name=f"synthetic-{name}")
        row = {"space": name, "input": list(shape)}
        row["cuda"] = time_supernet(space, data, "cuda", args.cuda_steps, bs)
        row["cpu"] = time_supernet(space, data, "cpu", args.cpu_steps, bs)
        row["speedup"] = round(row["cuda"]["steps_per_s"] / row["cpu"]["steps_per_s"], 2)
        result["supernet"].append(row)
        print(f"{name}: cuda {row['cuda']['steps_per_s']:.2f} steps/s, cpu {row['cpu']['steps_per_s']:.3f} steps/s, "
              f"x{row['speedup']}", flush=True)
    # correctness: plain training on cuda learns, and hands the model back on the CPU
    from autocomp.models.mbv2 import build

    space = get_space("mnist-mbv2")
    data = from_torch(Synthetic(3000, (1, 28, 28), 10, seed=1), name="synthetic-check")
    model = build(space.largest(), space, 10)
    t0 = time.perf_counter()
    model = train(model, data, 150, 128, 3e-3, 0, device="cuda")
    wall = time.perf_counter() - t0
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.batches(data.test, 256))
    acc = hits / len(data.test)
    result["train_check"] = {"steps": 150, "wall_s": round(wall, 2), "accuracy": round(acc, 4), "model_on_cpu": on_cpu,
                             "ok": bool(on_cpu and acc > 0.5)}
    print(f"train() on cuda: 150 steps in {wall:.1f} s, accuracy {acc:.3f} (chance 0.1), model back on cpu: {on_cpu}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")
    sys.exit(0 if result["train_check"]["ok"] else 1)


if __name__ == "__main__":
    main()
