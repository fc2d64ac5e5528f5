"""Low-rank factorisation: a 1x1 convolution W (out x in) becomes two 1x1 convolutions through
rank r = ceil(rank_ratio * min(out, in)) via truncated SVD, W ~ (U sqrt(S)) (sqrt(S) V^T)."""

from __future__ import annotations

import math

import torch
from torch import nn

from autocomp.space import Candidate


def svd_conv1x1(conv: nn.Conv2d, ratio: float) -> nn.Module:
    """Factorise a 1x1 conv; returns the conv unchanged when the factorised form is not smaller."""
    cout, cin = conv.out_channels, conv.in_channels
    r = max(1, math.ceil(ratio * min(cout, cin)))
    if ratio >= 1.0 or r * (cout + cin) >= cout * cin:
        return conv
    w = conv.weight.detach().flatten(1)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:r].sqrt()
    first = nn.Conv2d(cin, r, 1, conv.stride, bias=False)
    second = nn.Conv2d(r, cout, 1, bias=conv.bias is not None)
    first.weight.data.copy_((root[:, None] * vh[:r])[:, :, None, None])
    second.weight.data.copy_((u[:, :r] * root[None])[:, :, None, None])
    if conv.bias is not None:
        second.bias.data.copy_(conv.bias.detach())
    return nn.Sequential(first, second)


def apply(model: nn.Module, candidate: Candidate) -> nn.Module:
    ranks = [b.rank for s in candidate.stages for b in s.blocks]
    for block, rank in zip(model.blocks, ranks, strict=True):
        if rank >= 1.0:
            continue
        block.project[0] = svd_conv1x1(block.project[0], rank)
        if isinstance(block.expand, nn.Sequential):
            block.expand[0] = svd_conv1x1(block.expand[0], rank)
    return model
