"""Structured channel pruning: channels are physically removed (never masked), so the pruned
model is smaller and its measured latency drops.

Importance criteria are small callables, Torch-Pruning style: ``importance(group) -> scores``,
one score per prunable channel, higher = keep. A :class:`ChannelGroup` lists every parameter that
a channel touches (as (tensor, dim) pairs) and the BatchNorms on it. Built in: ``l1``, ``l2``,
``bn`` (|BatchNorm gamma|) and ``taylor`` (first-order Taylor |w * dL/dw|; needs gradients: pass
``batches`` to :func:`apply` / :func:`prune_model`, or call :func:`accumulate_gradients` first).
Look one up by name with :func:`get_importance`.

* :func:`apply` — our ``autocomp.models.mbv2.Net``: each inverted-residual block keeps its
  candidate's ``keep`` share of hidden (expanded) channels (expand conv out, its BN, depthwise conv
  and BN, project conv in). Exact counts, no dependency tracing needed.
* :func:`prune_model` — any torchvision-style CNN (MobileNetV2, ResNet-18, ...): Torch-Pruning's
  dependency graph finds coupled layers (residual adds, depthwise convs, BN) and ranks the channels
  with Torch-Pruning's own importance where it matches ours (``bn``), else with our criterion
  wrapped as a Torch-Pruning importance (see :func:`_tp_importance` for why). One global keep
  ratio or per-layer ratios; the classifier is never pruned on its output.
* :func:`magnitude_sparsity` — unstructured magnitude pruning (zeroes weights). It does not make a
  model faster on dense kernels, so it is reported as sparsity and compressed storage only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from autocomp.models.mbv2 import InvertedResidual
from autocomp.space import Candidate

# --------------------------------------------------------------------------- importance criteria


@dataclass
class ChannelGroup:
    """The parameters one set of channels touches: ``params`` as (tensor, channel dim), ``bns``."""

    params: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    bns: list[nn.modules.batchnorm._BatchNorm] = field(default_factory=list)

    @property
    def size(self) -> int:
        if self.params:
            t, d = self.params[0]
            return t.shape[d]
        return self.bns[0].num_features


def _per_channel(t: torch.Tensor, dim: int) -> torch.Tensor:
    t = t.detach()
    return t.reshape(-1, 1) if t.dim() == 1 else t.transpose(0, dim).flatten(1)


class Importance:
    """Base criterion. ``needs_grad``: the model's ``.grad`` must hold accumulated gradients."""

    name = "base"
    needs_grad = False

    def __call__(self, group: ChannelGroup) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MagnitudeImportance(Importance):
    """Lp norm of each channel's weights, summed over the layers of the group (BN affine included)."""

    def __init__(self, p: int = 1):
        self.p = p
        self.name = f"l{p}"

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        score = torch.zeros(group.size)
        for t, d in group.params:
            score += _per_channel(t, d).abs().pow(self.p).sum(1)
        for bn in group.bns:
            if bn.affine:
                score += bn.weight.detach().abs().pow(self.p)
        return score.pow(1.0 / self.p) if self.p != 1 else score


class BNScaleImportance(Importance):
    """|gamma| of the BatchNorms on the channels (Network Slimming); falls back to L1 without BN."""

    name = "bn"

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        bns = [bn for bn in group.bns if bn.affine]
        if not bns:
            return MagnitudeImportance(1)(group)
        return sum(bn.weight.detach().abs() for bn in bns)


class TaylorImportance(Importance):
    """First-order Taylor expansion of the loss change: sum over the channel of |w * dL/dw|."""

    name = "taylor"
    needs_grad = True

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        score = torch.zeros(group.size)
        tensors = list(group.params) + [(bn.weight, 0) for bn in group.bns if bn.affine] + [(bn.bias, 0) for bn in group.bns if bn.affine]
        found = False
        for t, d in tensors:
            if t.grad is None:
                continue
            found = True
            score += _per_channel(t * t.grad, d).abs().sum(1)
        if not found:
            raise ValueError("Taylor importance needs gradients: pass batches= or call accumulate_gradients() first")
        return score


IMPORTANCES: dict[str, Callable[[], Importance]] = {
    "l1": lambda: MagnitudeImportance(1),
    "l2": lambda: MagnitudeImportance(2),
    "bn": BNScaleImportance,
    "taylor": TaylorImportance,
}


def get_importance(name_or_obj: str | Importance) -> Importance:
    if isinstance(name_or_obj, Importance) or callable(name_or_obj) and not isinstance(name_or_obj, str):
        return name_or_obj  # type: ignore[return-value]
    try:
        return IMPORTANCES[name_or_obj]()
    except KeyError:
        raise ValueError(f"unknown importance {name_or_obj!r}; expected one of {sorted(IMPORTANCES)}") from None


l1_importance = MagnitudeImportance(1)


def accumulate_gradients(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         loss_fn: Callable = nn.functional.cross_entropy) -> nn.Module:
    """Sum the loss gradients of a few (x, y) batches into ``.grad`` (BN in eval mode)."""
    was = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        loss_fn(model(x), y).backward()
    model.train(was)
    return model


# --------------------------------------------------------------------------- our Net


def block_group(block: InvertedResidual) -> ChannelGroup:
    """The hidden channels of an inverted-residual block."""
    g = ChannelGroup()
    if isinstance(block.expand, nn.Sequential):
        g.params.append((block.expand[0].weight, 0))
        g.bns.append(block.expand[1])
    g.params += [(block.dw[0].weight, 0), (block.project[0].weight, 1)]
    g.bns.append(block.dw[1])
    return g


def _slice_conv(conv: nn.Conv2d, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Conv2d:
    w = conv.weight.detach()
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None and conv.groups == 1:
        w = w[:, in_idx]
    groups = len(out_idx) if conv.groups > 1 and out_idx is not None else conv.groups
    new = nn.Conv2d(w.shape[1] * groups, w.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=groups, bias=conv.bias is not None)
    new.weight.data.copy_(w)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach()[out_idx] if out_idx is not None else conv.bias.detach())
    return new.train(conv.training)


def _slice_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), eps=bn.eps, momentum=bn.momentum)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name).data.copy_(getattr(bn, name).detach()[idx])
    new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def kept_channels(hidden: int, keep: float) -> int:
    """How many of ``hidden`` channels a keep ratio leaves (rounded, at least one)."""
    return hidden if keep >= 1.0 else max(1, round(hidden * keep))


def prune_block(block: InvertedResidual, keep: float, importance: Importance | Callable = l1_importance) -> None:
    """Keep the ``keep`` share (rounded, at least one) of the block's hidden channels, in place."""
    if keep >= 1.0 or not isinstance(block.expand, nn.Sequential):
        return
    hidden = block.dw[0].out_channels
    k = kept_channels(hidden, keep)
    idx = torch.sort(torch.topk(importance(block_group(block)), k).indices).values
    block.expand[0] = _slice_conv(block.expand[0], idx, None)
    block.expand[1] = _slice_bn(block.expand[1], idx)
    block.dw[0] = _slice_conv(block.dw[0], idx, None)
    block.dw[1] = _slice_bn(block.dw[1], idx)
    block.project[0] = _slice_conv(block.project[0], None, idx)


def prune_blocks(model: nn.Module, keeps: list[float], importance: str | Importance = "l1",
                 batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None) -> nn.Module:
    """Per-block keep ratios for a Net (one per block, in order)."""
    imp = get_importance(importance)
    if len(keeps) != len(model.blocks):
        raise ValueError(f"model has {len(model.blocks)} blocks but {len(keeps)} keep ratios were given")
    if getattr(imp, "needs_grad", False) and any(k < 1.0 for k in keeps):
        if batches is None:
            raise ValueError("Taylor importance needs batches=[(x, y), ...] to compute gradients")
        accumulate_gradients(model, batches)
    for block, keep in zip(model.blocks, keeps):
        prune_block(block, keep, imp)
    model.zero_grad(set_to_none=True)
    return model


def apply(model: nn.Module, candidate: Candidate, importance: str | Importance = "l1",
          batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None) -> nn.Module:
    """Prune a Net to its candidate's per-block keep ratios (``Block.keep``)."""
    keeps = [b.keep for s in candidate.stages for b in s.blocks]
    return prune_blocks(model, keeps, importance, batches)


# --------------------------------------------------------------------------- generic models (Torch-Pruning)


class _TPImportance:
    """Adapts one of our criteria to Torch-Pruning's groups: every coupled layer's slice of the
    group's channels is scattered into the root's channel order and handed to the criterion as one
    :class:`ChannelGroup` (gradients travel along for Taylor)."""

    def __init__(self, imp: Importance):
        self.imp = imp

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        import torch_pruning as tp

        f = tp.pruner.function
        out_fns = {f.prune_conv_out_channels, f.prune_linear_out_channels, getattr(f, "prune_depthwise_conv_out_channels", None)}
        in_fns = {f.prune_conv_in_channels, f.prune_linear_in_channels}
        n = len(group[0].root_idxs)
        cg = ChannelGroup()

        def scatter(t: torch.Tensor, root_idxs) -> torch.Tensor:
            full = torch.zeros(n, *t.shape[1:], dtype=torch.float32)
            full[torch.as_tensor(root_idxs)] = t.float()
            return full

        for i, (dep, idxs) in enumerate(group):
            layer, fn, root_idxs = dep.layer, dep.pruning_fn, group[i].root_idxs
            idx = torch.as_tensor(idxs)
            if isinstance(layer, (nn.Conv2d, nn.Linear)) and (fn in out_fns or fn in in_fns):
                if fn in in_fns and isinstance(layer, nn.Conv2d) and layer.groups > 1:
                    continue  # a depthwise conv's channels are already counted on its output side
                dim = 0 if fn in out_fns else 1
                w = layer.weight
                t = scatter(w.detach().index_select(dim, idx).transpose(0, dim).flatten(1), root_idxs)
                if w.grad is not None:
                    t.grad = scatter(w.grad.index_select(dim, idx).transpose(0, dim).flatten(1), root_idxs)
                cg.params.append((t, 0))
            elif isinstance(layer, nn.modules.batchnorm._BatchNorm) and fn == f.prune_batchnorm_out_channels and layer.affine:
                bn = nn.BatchNorm1d(n)
                bn.weight.data.copy_(scatter(layer.weight.detach()[idx], root_idxs))
                bn.bias.data.copy_(scatter(layer.bias.detach()[idx], root_idxs))
                if layer.weight.grad is not None:
                    bn.weight.grad = scatter(layer.weight.grad[idx], root_idxs)
                    bn.bias.grad = scatter(layer.bias.grad[idx], root_idxs)
                cg.bns.append(bn)
        if not cg.params and not cg.bns:
            return torch.ones(n)
        return self.imp(cg)


class _TPBNScale:
    """``bn`` on Torch-Pruning groups: the library's BNScaleImportance (sum of |gamma| over the
    group's BatchNorms); a group without an affine BatchNorm, which the library leaves unscored (and
    so unpruned), is ranked by L1 as our :class:`BNScaleImportance` does."""

    def __init__(self):
        import torch_pruning as tp

        self.bn = tp.importance.BNScaleImportance(group_reduction="sum", normalizer=None)
        self.l1 = _TPImportance(MagnitudeImportance(1))

    def __call__(self, group) -> torch.Tensor:
        score = self.bn(group)
        return self.l1(group) if score is None else score


def _tp_importance(imp: Importance | Callable):
    """The Torch-Pruning importance for one of our criteria.

    ``bn``: the library's (:class:`_TPBNScale`). Ours stay for the others, where Torch-Pruning
    1.6 ranks worse: its MagnitudeImportance (``l1``, ``l2``) leaves depthwise convs out (it tests
    the pruning function against ``prune_conv_out_channels``, and a depthwise conv's is another),
    so in a MobileNet group the 3x3 filter of a channel would not count (on ResNet-18 both give the
    same pruned weights); its TaylorImportance never scores BatchNorm (the BN branch tests
    ``prune_groupnorm_out_channels``) and fails on a layer without ``.grad``.
    """
    if isinstance(imp, BNScaleImportance):
        return _TPBNScale()
    return _TPImportance(imp)


def _classifier_layers(model: nn.Module, num_outputs: int | None) -> list[nn.Module]:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if num_outputs is not None:
        layers = [m for m in layers if m.out_features == num_outputs] or layers
    return layers[-1:] if layers else []


def prune_model(model: nn.Module, example_input: torch.Tensor, keep_ratio: float = 1.0,
                per_layer: dict[nn.Module, float] | None = None, importance: str | Importance = "l1",
                batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                ignored_layers: list[nn.Module] | None = None, round_to: int | None = None) -> nn.Module:
    """Structured pruning of a generic CNN with Torch-Pruning's dependency graph, in place.

    ``keep_ratio``: share of channels kept in every prunable layer group; ``per_layer`` maps a
    layer (the group's root conv/linear) to its own keep ratio. The last Linear (the classifier)
    is never pruned on its output. Returns the pruned model (physically smaller).
    """
    import torch_pruning as tp

    imp = get_importance(importance)
    if getattr(imp, "needs_grad", False):
        if batches is None:
            raise ValueError("Taylor importance needs batches=[(x, y), ...] to compute gradients")
        accumulate_gradients(model, batches)
    ignored = list(ignored_layers or []) + _classifier_layers(model, None)
    ratio_dict = {m: 1.0 - k for m, k in (per_layer or {}).items()}
    pruner = tp.pruner.MetaPruner(
        model, example_input, importance=_tp_importance(imp), pruning_ratio=1.0 - keep_ratio,
        pruning_ratio_dict=ratio_dict or None, ignored_layers=ignored, round_to=round_to,
    )
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


# --------------------------------------------------------------------------- unstructured (storage only)


@dataclass(frozen=True)
class SparsityReport:
    """Unstructured sparsity: reported as storage, never as speed."""

    sparsity: float  # share of zero weights among the pruned tensors
    params: int
    nonzero: int
    dense_bytes: int  # fp32 dense storage of the pruned tensors
    compressed_bytes: int  # fp32 non-zeros + a 1-bit-per-weight presence bitmap

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def storage_report(model: nn.Module) -> SparsityReport:
    """Sparsity and compressed storage of the Conv/Linear weights of ``model``."""
    total = nz = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            total += m.weight.numel()
            nz += int((m.weight.detach() != 0).sum())
    return SparsityReport(1.0 - nz / max(total, 1), total, nz, 4 * total, 4 * nz + (total + 7) // 8)


@torch.no_grad()
def magnitude_sparsity(model: nn.Module, sparsity: float, scope: str = "global") -> SparsityReport:
    """Unstructured magnitude pruning of Conv/Linear weights, in place (zeros, same shapes).

    ``scope``: ``global`` (one threshold over all layers) or ``layer`` (each layer to ``sparsity``).
    Returns the sparsity and compressed storage; latency on dense kernels is unchanged.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if sparsity > 0:
        if scope == "global":
            allw = torch.cat([w.abs().flatten() for w in ws])
            k = int(sparsity * allw.numel())
            thr = torch.kthvalue(allw, k).values if k > 0 else torch.tensor(-1.0)
            for w in ws:
                w.mul_((w.abs() > thr).to(w.dtype))
        elif scope == "layer":
            for w in ws:
                k = int(sparsity * w.numel())
                if k > 0:
                    thr = torch.kthvalue(w.abs().flatten(), k).values
                    w.mul_((w.abs() > thr).to(w.dtype))
        else:
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    return storage_report(model)
