"""Plain supervised training (the weights of a candidate trained from scratch, and recovery fine-tuning)."""

from __future__ import annotations

import torch
from torch import nn


def train(model: nn.Module, data, steps: int, batch_size: int, lr: float, seed: int) -> nn.Module:
    """Plain supervised training (Adam, one-cycle schedule) for ``steps`` steps on the training split."""
    if steps <= 0:
        return model
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    step, epoch = 0, 0
    while step < steps:
        for x, y in data.batches(data.train, batch_size, shuffle=True, seed=seed + epoch):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= steps:
                break
        epoch += 1
    return model.eval()
