"""Low-rank factorisation.

* Linear and 1x1 conv (out x in): truncated SVD, W ~ (U sqrt(S)) (sqrt(S) V^T) -> two layers
  through rank r = ceil(ratio * min(out, in)).
* k x k conv (groups=1): Tucker-2 by HOSVD of the kernel's two channel modes,
  W ~ core x_0 U_out x_1 U_in -> 1x1 conv (in -> r_in, U_in^T), k x k conv (r_in -> r_out, the
  core, original stride/padding/dilation), 1x1 conv (r_out -> out, U_out, original bias), with
  r_in = ceil(ratio * in) and r_out = ceil(ratio * out).
  Depthwise / grouped convs are left alone (they are already rank-one per channel).

A factorisation is applied only where it makes the layer smaller (``force=True`` applies it
anyway, e.g. to check that full rank reproduces the layer). On our Net the per-block
``Block.rank`` gene sets the ratio of the block's expand and project 1x1 convs; for generic models
use :func:`factorize_model` with one ratio or per-layer ratios.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from autocomp.space import Candidate


def _rank(ratio: float, n: int) -> int:
    return max(1, min(n, math.ceil(ratio * n)))


@torch.no_grad()
def svd_linear(layer: nn.Linear, ratio: float, force: bool = False) -> nn.Module:
    """Factorise a Linear into Linear(in -> r) -> Linear(r -> out)."""
    out_f, in_f = layer.out_features, layer.in_features
    r = _rank(ratio, min(out_f, in_f))
    if not force and (ratio >= 1.0 or r * (out_f + in_f) >= out_f * in_f):
        return layer
    u, s, vh = torch.linalg.svd(layer.weight.detach().double(), full_matrices=False)
    root = s[:r].sqrt()
    first = nn.Linear(in_f, r, bias=False)
    second = nn.Linear(r, out_f, bias=layer.bias is not None)
    first.weight.copy_(root[:, None] * vh[:r])
    second.weight.copy_(u[:, :r] * root[None])
    if layer.bias is not None:
        second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


@torch.no_grad()
def svd_conv1x1(conv: nn.Conv2d, ratio: float, force: bool = False) -> nn.Module:
    """Factorise a 1x1 conv into 1x1 (in -> r, carries the stride) -> 1x1 (r -> out)."""
    cout, cin = conv.out_channels, conv.in_channels
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        raise ValueError("svd_conv1x1 needs a 1x1 conv with groups=1")
    r = _rank(ratio, min(cout, cin))
    if not force and (ratio >= 1.0 or r * (cout + cin) >= cout * cin):
        return conv
    w = conv.weight.detach().flatten(1).double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:r].sqrt()
    first = nn.Conv2d(cin, r, 1, conv.stride, bias=False)
    second = nn.Conv2d(r, cout, 1, bias=conv.bias is not None)
    first.weight.copy_((root[:, None] * vh[:r])[:, :, None, None])
    second.weight.copy_((u[:, :r] * root[None])[:, :, None, None])
    if conv.bias is not None:
        second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def tucker2_params(cin: int, cout: int, k: int, r_in: int, r_out: int) -> int:
    return cin * r_in + r_in * r_out * k + r_out * cout


def _leading(m: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r`` leading left singular vectors of a wide matrix ``m`` (rows x cols), as the top
    eigenvectors of its Gram matrix ``m m^T`` (rows x rows): the same subspace as an SVD's, ~50x
    faster for a 512 x 4608 unfolding (in double precision the squared conditioning is harmless)."""
    vals, vecs = torch.linalg.eigh(m @ m.T)
    return vecs[:, torch.argsort(vals, descending=True)[:r]]


@torch.no_grad()
def tucker2_conv(conv: nn.Conv2d, ratio: float | tuple[float, float], force: bool = False) -> nn.Module:
    """Tucker-2 (HOSVD) of a k x k conv; ``ratio`` is one ratio or (in_ratio, out_ratio)."""
    if conv.groups != 1:
        raise ValueError("Tucker-2 needs a conv with groups=1 (depthwise convs are not factorised)")
    cout, cin, kh, kw = conv.weight.shape
    rin_ratio, rout_ratio = ratio if isinstance(ratio, tuple) else (ratio, ratio)
    r_in, r_out = _rank(rin_ratio, cin), _rank(rout_ratio, cout)
    if not force and (min(rin_ratio, rout_ratio) >= 1.0 or tucker2_params(cin, cout, kh * kw, r_in, r_out) >= cout * cin * kh * kw):
        return conv
    w = conv.weight.detach().double()
    u_out = _leading(w.flatten(1), r_out)  # mode-0 unfolding
    u_in = _leading(w.transpose(0, 1).flatten(1), r_in)  # mode-1
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)  # (r_out, r_in, kh, kw)
    first = nn.Conv2d(cin, r_in, 1, bias=False)
    mid = nn.Conv2d(r_in, r_out, (kh, kw), conv.stride, conv.padding, conv.dilation, bias=False, padding_mode=conv.padding_mode)
    last = nn.Conv2d(r_out, cout, 1, bias=conv.bias is not None)
    first.weight.copy_(u_in.t()[:, :, None, None])
    mid.weight.copy_(core)
    last.weight.copy_(u_out[:, :, None, None])
    if conv.bias is not None:
        last.bias.copy_(conv.bias)
    return nn.Sequential(first, mid, last)


def factorize(layer: nn.Module, ratio: float, force: bool = False) -> nn.Module:
    """SVD for Linear and 1x1 convs, Tucker-2 for k x k convs; anything else unchanged."""
    if isinstance(layer, nn.Linear):
        return svd_linear(layer, ratio, force)
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        if layer.kernel_size == (1, 1):
            return svd_conv1x1(layer, ratio, force)
        return tucker2_conv(layer, ratio, force)
    return layer


def factorize_model(model: nn.Module, ratio: float = 1.0, per_layer: dict[str, float] | None = None,
                    skip: tuple[str, ...] = (), force: bool = False) -> nn.Module:
    """Factorise every Linear / Conv2d (groups=1) of a generic model in place.

    ``ratio`` applies to every layer unless ``per_layer`` (qualified module name -> ratio) names
    it; layers named in ``skip`` (e.g. the first conv) are left alone.
    """
    per_layer = per_layer or {}
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n not in skip]
    for name, m in targets:
        r = per_layer.get(name, ratio)
        if r >= 1.0 and not force:
            continue
        new = factorize(m, r, force)
        if new is m:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
    return model


def apply(model: nn.Module, candidate: Candidate) -> nn.Module:
    """The Net's per-block rank genes: SVD of each block's expand and project 1x1 convs."""
    ranks = [b.rank for s in candidate.stages for b in s.blocks]
    for block, rank in zip(model.blocks, ranks, strict=True):
        if rank >= 1.0:
            continue
        block.project[0] = svd_conv1x1(block.project[0], rank)
        if isinstance(block.expand, nn.Sequential):
            block.expand[0] = svd_conv1x1(block.expand[0], rank)
    return model
