"""Structured channel pruning of inverted-residual blocks: the block's hidden (expanded) channels
are ranked by an importance criterion and the weakest are physically removed from the expand
conv, its BatchNorm, the depthwise conv and its BatchNorm, and the project conv's input."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from autocomp.models.mbv2 import InvertedResidual
from autocomp.space import Candidate

Importance = Callable[[InvertedResidual], torch.Tensor]


def l1_importance(block: InvertedResidual) -> torch.Tensor:
    """L1 norm of each hidden channel's weights, summed over the convs that touch it."""
    score = block.dw[0].weight.detach().abs().flatten(1).sum(1)
    score = score + block.project[0].weight.detach().abs().sum((0, 2, 3))
    if isinstance(block.expand, nn.Sequential):
        score = score + block.expand[0].weight.detach().abs().flatten(1).sum(1)
    return score


def _slice_conv(conv: nn.Conv2d, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Conv2d:
    w = conv.weight.detach()
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None and conv.groups == 1:
        w = w[:, in_idx]
    groups = len(out_idx) if conv.groups > 1 and out_idx is not None else conv.groups
    new = nn.Conv2d(w.shape[1] * groups, w.shape[0], conv.kernel_size, conv.stride, conv.padding, groups=groups, bias=conv.bias is not None)
    new.weight.data.copy_(w)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach()[out_idx] if out_idx is not None else conv.bias.detach())
    return new


def _slice_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), eps=bn.eps, momentum=bn.momentum)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name).data.copy_(getattr(bn, name).detach()[idx])
    return new


def prune_block(block: InvertedResidual, keep: float, importance: Importance = l1_importance) -> None:
    """Keep the ``keep`` share (rounded, at least one) of the block's hidden channels, in place."""
    if keep >= 1.0 or not isinstance(block.expand, nn.Sequential):
        return
    hidden = block.dw[0].out_channels
    k = max(1, round(hidden * keep))
    idx = torch.sort(torch.topk(importance(block), k).indices).values
    block.expand[0] = _slice_conv(block.expand[0], idx, None)
    block.expand[1] = _slice_bn(block.expand[1], idx)
    block.dw[0] = _slice_conv(block.dw[0], idx, None)
    block.dw[1] = _slice_bn(block.dw[1], idx)
    block.project[0] = _slice_conv(block.project[0], None, idx)


def apply(model: nn.Module, candidate: Candidate, importance: Importance = l1_importance) -> nn.Module:
    keeps = [b.keep for s in candidate.stages for b in s.blocks]
    for block, keep in zip(model.blocks, keeps, strict=True):
        prune_block(block, keep, importance)
    return model
