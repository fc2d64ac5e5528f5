"""``autocomp supernet``: train the weight-sharing supernet of a search space (mounted by autocomp.cli)."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from autocomp.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Weight-sharing supernet: train it once, then every candidate inherits its weights.")


def _machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} CPU cores, torch threads set by --threads ({platform.platform()})"


@app.callback()
def _group() -> None:
    """Weight-sharing supernet: train it once, then every candidate inherits its weights."""


@app.command()
def train(
    space: str = typer.Option("mnist-mbv2", help="Search space name (search_spaces/) or YAML path."),
    steps: int = typer.Option(2000, help="Optimiser steps (each: largest + smallest + --random subnets)."),
    seed: int = typer.Option(0, help="Seed (init, batch order, sampled subnets)."),
    out: Optional[Path] = typer.Option(None, help="Checkpoint path (default <user cache>/supernets/<space>.pt; the shipped supernets/ only when --out names it)."),
    data: str = typer.Option("mnist", help="'mnist', 'imagefolder:PATH[?norm=imagenet]' or 'module:factory' (torch Datasets)."),
    teacher: Optional[str] = typer.Option(None, help="Distil from a teacher: 'module:factory' or 'torchvision:NAME' (default: in-place distillation from the largest subnet)."),
    teacher_weights: Optional[Path] = typer.Option(None, help="Weights for a torchvision teacher (torch.load(weights_only=True))."),
    batch_size: int = typer.Option(96, help="Batch size."),
    lr: float = typer.Option(4e-3, help="Peak Adam learning rate (linear warm-up, cosine decay)."),
    random_subnets: int = typer.Option(1, "--random", help="Random subnets per step besides largest and smallest."),
    largest_every: int = typer.Option(1, help="Run the largest subnet every k-th step (1 = sandwich rule on every step)."),
    time_budget: Optional[float] = typer.Option(None, help="Stop after this many minutes (the LR schedule follows elapsed time)."),
    threads: int = typer.Option(2, help="torch intra-op threads."),
    checkpoint_every: int = typer.Option(25, help="Write the checkpoint every N steps too (0: only at the end)."),
    eval_size: int = typer.Option(10000, help="Test images for the final accuracy of largest / smallest (0: skip)."),
    init: Optional[Path] = typer.Option(None, help="Continue from this checkpoint's weights (warm restart of the schedule)."),
    progress: bool = typer.Option(True, help="Show progress."),
    train_device: str = typer.Option("auto", help="Train on: auto (CUDA if there is a GPU, else CPU), cpu, cuda (mixed precision)."),
) -> None:
    """Train the supernet of a space and write its checkpoint (sandwich rule, in-place distillation)."""
    from autocomp.data import load_dataset
    from autocomp.models import supernet as S
    from autocomp.space import get_space

    for name, v, lo in (("--steps", steps, 1), ("--batch-size", batch_size, 2), ("--threads", threads, 1), ("--largest-every", largest_every, 1)):
        if v < lo:
            raise UserError(name, f"{v} is too small", f"an integer >= {lo}")
    if random_subnets < 0:
        raise UserError("--random", f"{random_subnets} is negative", "an integer >= 0")
    if not (lr > 0):
        raise UserError("--lr", f"{lr} is not positive", "a positive learning rate")
    if time_budget is not None and time_budget <= 0:
        raise UserError("--time-budget", f"{time_budget} is not positive", "minutes > 0")
    from autocomp.training import check_train_device

    train_device = check_train_device(train_device)
    sp = get_space(space)
    from autocomp.families import get_family

    fam = get_family(sp)
    if fam.name != "mbv2" and not hasattr(fam, "train_supernet"):
        raise UserError("--space", f"family {fam.name!r} of space {sp.name!r} has no supernet", "a space of a family with one (mbv2, fbnet)")
    ds = load_dataset(data, (sp.input.channels, sp.input.height, sp.input.width))
    if out is None:  # never the shipped supernets/ by default: the user's cache
        from autocomp.resources import cache_dir
        from autocomp.space import safe_name

        out = cache_dir() / "supernets" / f"{safe_name(sp.name, 'space name')}.pt"
    if out.suffix != ".pt":
        raise UserError("--out", f"{str(out)!r} does not end in .pt", "a .pt checkpoint path")
    if out.is_dir():
        raise UserError("--out", f"{str(out)!r} is a directory", "a .pt checkpoint path")
    if fam.name != "mbv2":  # the family's own supernet (fbnet: single-path, SGD, on the GPU when there is one)
        t0 = time.perf_counter()
        sd = fam.train_supernet(sp, ds, steps, seed, batch_size=batch_size, progress=progress, threads=threads)
        m = {"command": " ".join(sys.argv), "seed": seed, "steps": steps, "batch_size": batch_size, "data": data,
             "family": fam.name, "wall_time_s": round(time.perf_counter() - t0, 1), "machine": _machine(), "finished": True}
        S.save_checkpoint(out, sp, sd, m)
        print(json.dumps({"out": str(out), **{k: v for k, v in m.items() if k != "machine"}}))
        return
    tmod = None
    if teacher is not None:
        from autocomp.models.teacher import check_teacher, load_teacher

        tmod = load_teacher(teacher, teacher_weights, sp, ds)
        check_teacher(tmod, ds)
    command = "autocomp supernet train " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("train") + 1:]) if "train" in sys.argv else " ".join(sys.argv)
    t0 = time.perf_counter()

    def meta(step: int, done: bool) -> dict:
        return {"command": command, "seed": seed, "steps": step, "steps_requested": steps, "batch_size": batch_size, "lr": lr,
                "random_subnets": random_subnets, "largest_every": largest_every, "teacher": teacher, "data": data,
                "wall_time_s": round(time.perf_counter() - t0, 1), "machine": _machine(), "threads": threads, "train_device": train_device,
                "finished": done, "init": str(init) if init else None, "torch": str(__import__("torch").__version__)}

    def ckpt(step: int, sd: dict) -> None:
        S.save_checkpoint(out, sp, sd, meta(step, False))
        print(f"[supernet] checkpoint at step {step} -> {out}", file=sys.stderr, flush=True)

    n_steps = [0]

    def counting(step: int, sd: dict) -> None:
        n_steps[0] = step
        ckpt(step, sd)

    init_state = None
    if init is not None:
        init_state = {k: v.float() if v.is_floating_point() else v for k, v in S.load_checkpoint(init)["state_dict"].items()}
    stats: dict = {}
    sd = S.train_supernet(sp, ds, steps, seed, teacher=tmod, progress=progress, batch_size=batch_size, lr=lr,
                          n_random=random_subnets, largest_every=largest_every, threads=threads, device=train_device,
                          time_budget_s=time_budget * 60 if time_budget else None,
                          callback=counting if checkpoint_every else None, callback_every=checkpoint_every, stats=stats,
                          init_state=init_state)
    m = meta(steps, True)
    m["steps"] = stats.get("steps", steps)
    m["train_wall_time_s"] = stats.get("wall_s")
    if eval_size:
        test = ds.test.subset(eval_size, seed=0)
        for name, cand in (("largest", sp.largest()), ("smallest", sp.smallest())):
            net = S.extract(cand, sp, sd, ds)
            m[f"test_acc_{name}"] = round(S.accuracy(net, ds, test), 4)
        m["eval_size"] = len(test)
        print(f"[supernet] test accuracy ({len(test)} images): largest {m['test_acc_largest']:.4f} smallest {m['test_acc_smallest']:.4f}", file=sys.stderr)
    S.save_checkpoint(out, sp, sd, m)
    print(json.dumps({"out": str(out), **{k: v for k, v in m.items() if k != "machine"}}))


if __name__ == "__main__":  # python -m autocomp.models.cli: the same as `autocomp supernet`
    from autocomp.cliutil import run_app

    run_app(app)
