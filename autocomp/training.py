"""Where and how networks train: the device (``--train-device auto|cpu|cuda``), mixed precision on
CUDA, and the plain supervised loop.

Supernet training (:func:`autocomp.models.supernet.train_supernet`), recovery fine-tuning and
from-scratch trials (:func:`train`, called by :mod:`autocomp.evaluate`) and distillation
(:func:`autocomp.distill.distill`) all take their device from :func:`resolve_device`:

* ``auto``: CUDA when this process sees a GPU (in a Ray trial: when the trial was given one), else
  the CPU;
* ``cpu``: the CPU (the figures of a CPU run do not change with this module: same ops, same order);
* ``cuda`` / ``cuda:N``: that GPU; where there is none, a one-line error (checked before Ray starts).

On CUDA the forward passes run under autocast (bfloat16 where the GPU supports it, else float16 with
a gradient scaler); the weights stay fp32 and a trained model comes back to the CPU (export,
calibration and measurement run there).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from autocomp.errors import UserError

TRAIN_DEVICES = ("auto", "cpu", "cuda")


def check_train_device(spec: str, field: str = "--train-device") -> str:
    """``spec`` if this machine can train there; UserError (one line) otherwise."""
    s = str(spec).strip().lower()
    if s in ("auto", "cpu"):
        return s
    if s == "cuda" or s.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(field, f"{spec!r} but this machine has no CUDA GPU (torch {torch.__version__}, "
                            f"CUDA build {torch.version.cuda or 'none'})", "auto or cpu here, or a machine with a GPU")
        idx = s.partition(":")[2]
        if idx and (not idx.isdigit() or int(idx) >= torch.cuda.device_count()):
            raise UserError(field, f"no GPU {spec!r} (this machine has {torch.cuda.device_count()})", "cuda or cuda:N with N a visible GPU")
        return s
    raise UserError(field, f"unknown training device {str(spec)[:40]!r}", "auto, cpu, cuda or cuda:N")


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device ``spec`` names on this process (see the module doc)."""
    s = check_train_device(spec)
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(s)


class Amp:
    """Mixed precision on CUDA (autocast + a gradient scaler for float16); nothing on the CPU."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.device = device
        self.enabled = enabled and device.type == "cuda"
        self.dtype = torch.bfloat16 if self.enabled and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.enabled and self.dtype == torch.float16 else None

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, opt: torch.optim.Optimizer, clip: tuple[list, float] | None = None) -> None:
        """One optimiser step (unscaling first when a scaler is used); ``clip``: (params, max norm)."""
        if self.scaler is not None:
            if clip is not None:
                self.scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(clip[0], clip[1])
            self.scaler.step(opt)
            self.scaler.update()
            return
        if clip is not None:
            nn.utils.clip_grad_norm_(clip[0], clip[1])
        opt.step()


def to(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device`` (asynchronous from pinned memory); the CPU keeps it as is."""
    return batch if device.type == "cpu" else batch.to(device, non_blocking=True)


def train(model: nn.Module, data, steps: int, batch_size: int, lr: float, seed: int, device: str = "cpu") -> nn.Module:
    """Plain supervised training (Adam, one-cycle schedule) for ``steps`` steps on ``data.train``, on
    ``device`` (``auto``/``cpu``/``cuda``); the model comes back on the CPU in eval mode."""
    if steps <= 0:
        return model
    dev = resolve_device(device)
    amp = Amp(dev)
    torch.manual_seed(seed)
    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    step, epoch = 0, 0
    while step < steps:
        for x, y in data.batches(data.train, batch_size, shuffle=True, seed=seed + epoch):
            x, y = to(x, dev), to(y, dev)
            with amp.autocast():
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            amp.backward(loss)
            amp.step(opt)
            sched.step()
            step += 1
            if step >= steps:
                break
        epoch += 1
    return model.cpu().eval()


def gpus_per_trial(cluster_gpus: float, concurrency: int, train_device: str) -> float:
    """GPUs each Tune trial asks for: none when training stays on the CPU or the cluster has no GPU,
    else the cluster's GPUs shared by the trials in flight (at most one each)."""
    if train_device == "cpu" or cluster_gpus <= 0:
        return 0.0
    return round(min(1.0, cluster_gpus / max(1, concurrency)), 4)
