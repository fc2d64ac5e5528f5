"""The ``fbnet`` family: FBNet's search space (Wu et al. 2019, "FBNet: Hardware-Aware Efficient
ConvNet Design via Differentiable Neural Architecture Search", Table 1), at ImageNet scale
(``search_spaces/fbnet-224.yaml``) or CIFAR size (``fbnet-32.yaml``, the stem and the first
downsampling stage at stride 1).

Macro-architecture (fixed): a 3x3 conv stem (16 channels), 22 searchable layers in 7 stages of
fixed depth, width and stride (the space's ``stages``: 1x16, 4x24, 4x32, 4x64, 4x112, 4x184, 1x352),
a 1x1 conv head (1504), average pooling and a linear classifier. Each searchable layer picks one of
9 blocks (the stage's ``ops``):

* ``k<K>_e<E>``: 1x1 conv (cin -> E * cin) + BN + ReLU, KxK depthwise conv (the layer's stride) +
  BN + ReLU, 1x1 conv (-> cout) + BN, and a residual add when the shapes match;
* ``k<K>_e1_g2``: the same with both 1x1 convs in 2 groups and a channel shuffle after the first;
* ``skip``: the identity, or a 1x1 conv + BN + ReLU (with the stride) where the shape changes.

A candidate is a :class:`~autocomp.space.Candidate` whose blocks carry the op as their
(kernel, expand) genes (:func:`autocomp.space.op_genes`); :func:`ops` and :func:`from_ops` write and
read an architecture as its 22 op names. Compression on top, per layer group (``blocks.<i>``):
``keep`` (share of the layer's hidden channels, physically removed; grouped layers keep whole
channel cells so that the shuffle still pairs the same groups), ``rank`` (SVD of its ungrouped 1x1
convs) and ``precision``; ``stem``, ``head`` and ``classifier`` are their own groups.

Weights come from the space's weight-sharing supernet (``supernets/<space>.pt``, single-path: every
layer holds the weights of all 9 ops, each training step runs random paths; :func:`train_supernet`,
on a GPU when there is one), else a candidate is trained from scratch.
"""

from __future__ import annotations

import functools
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from autocomp.errors import UserError
from autocomp.families import Family, Layer, LayerGroup, register, stem_blocks_head
from autocomp.models.mbv2 import ConvBNAct
from autocomp.space import GROUPED, Block, Candidate, SearchSpace, Stage, op_genes, op_name

OPS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")


def _op(block: Block) -> tuple[int, int, int]:
    """(kernel, expansion, groups) of a block's op; (0, 0, 0) for skip."""
    if block.kernel == 0:
        return 0, 0, 0
    g, e = divmod(block.expand, GROUPED)
    return block.kernel, e, max(g, 1)


# --------------------------------------------------------------------------- architecture as op names


def ops(candidate: Candidate) -> list[str]:
    """The architecture as its op names, one per searchable layer (22 in FBNet's space)."""
    return [b.op for s in candidate.stages for b in s.blocks]


def from_ops(names: Sequence[str], space: SearchSpace, keep: float = 1.0, rank: float = 1.0, precision: str = "fp32") -> Candidate:
    """The candidate of an architecture written as its op names (uncompressed unless ``keep``,
    ``rank``, ``precision`` say otherwise); checked against ``space``."""
    depths = [st.depth[0] for st in space.stages]
    if len(names) != sum(depths):
        raise UserError("ops", f"{len(names)} op names", f"{sum(depths)} (one per searchable layer of {space.name!r})")
    it = iter(names)
    stages = []
    for st, d in zip(space.stages, depths):
        blocks = []
        for _ in range(d):
            name = next(it)
            try:
                k, e = op_genes(name)
            except ValueError as err:
                raise UserError("ops", str(err), f"one of {st.ops}") from None
            blocks.append(Block(k, e, keep if e != 0 else 1.0, rank, precision))
        stages.append(Stage(st.width[0], tuple(blocks)))
    c = Candidate(space.name, space.stem.width[0], precision, tuple(stages), space.head.width[0], precision)
    space.validate_candidate(c)
    return c


# --------------------------------------------------------------------------- the network


class ChannelShuffle(nn.Module):
    quant_transparent = True  # a channel permutation: an int8 output may pass it (autocomp.compress.quantize, fused export)

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class FBBlock(nn.Module):
    """One searchable layer with a conv op: 1x1 (groups) [+ shuffle] -> KxK depthwise -> 1x1 (groups)."""

    def __init__(self, cin: int, cout: int, stride: int, kernel: int, hidden: int, groups: int = 1):
        super().__init__()
        self.groups = groups
        self.pw = ConvBNAct(cin, hidden, 1, groups=groups)
        self.shuffle = ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.dw = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBNAct(hidden, cout, 1, groups=groups, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.shuffle(self.pw(x))))
        return x + y if self.residual else y


class Skip(nn.Module):
    """The skip op: identity, or a strided 1x1 conv + BN + ReLU where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.proj = ConvBNAct(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.proj is None else self.proj(x)


def make_op(name: str, cin: int, cout: int, stride: int) -> nn.Module:
    k, code = op_genes(name)
    if k == 0:
        return Skip(cin, cout, stride)
    g, e = divmod(code, GROUPED)
    return FBBlock(cin, cout, stride, k, cin * e, max(g, 1))


class FBNet(nn.Module):
    """stem -> blocks (22) -> head -> pool -> classifier (the module names the layer groups use)."""

    def __init__(self, in_channels: int, num_classes: int, stem_width: int, stem_stride: int, blocks: list[nn.Module],
                 last_width: int, head_width: int):
        super().__init__()
        self.stem = ConvBNAct(in_channels, stem_width, 3, stem_stride)
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(last_width, head_width, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def layer_specs(space: SearchSpace) -> list[tuple[int, int, int]]:
    """(cin, cout, stride) of every searchable layer, in order (fixed by the space)."""
    out, cin = [], space.stem.width[0]
    for st in space.stages:
        for j in range(st.depth[0]):
            out.append((cin, st.width[0], st.stride if j == 0 else 1))
            cin = st.width[0]
    return out


def build(candidate: Candidate, space: SearchSpace, num_classes: int | None = None) -> FBNet:
    specs = layer_specs(space)
    blocks = [make_op(op, *spec) for op, spec in zip(ops(candidate), specs, strict=True)]
    return FBNet(space.input.channels, num_classes or space.num_classes, candidate.stem_width, space.stem.stride, blocks,
                 specs[-1][1], candidate.head_width)


# --------------------------------------------------------------------------- compression


def kept_hidden(hidden: int, keep: float, groups: int = 1) -> int:
    """Hidden channels a layer keeps: rounded (at least one); grouped layers keep whole cells
    (a multiple of groups**2: every (pw group, project group) pair keeps as many)."""
    if keep >= 1.0:
        return hidden
    m = groups * groups
    return max(m, m * round(hidden * keep / m))


@torch.no_grad()
def prune_layer(block: FBBlock, keep: float, importance: Any = "l1") -> None:
    """Keep the ``keep`` share of a layer's hidden channels, in place (physically removed).

    Hidden channel ``i = grp * m + k`` (``m = hidden / g``) comes out of pw group ``grp``; the
    shuffle moves it to ``k * g + grp``, which project group ``k // (m / g)`` reads. A grouped layer
    keeps the same number of channels (its best by importance) in each of these g*g cells, so that the
    smaller layer's shuffle pairs the same groups."""
    from autocomp.compress.prune import ChannelGroup, _slice_bn, get_importance

    hidden, g = block.dw[0].out_channels, block.groups
    n = kept_hidden(hidden, keep, g)
    if n >= hidden:
        return
    imp = get_importance(importance)
    if getattr(imp, "needs_grad", False) and block.pw[0].weight.grad is None:
        imp = get_importance("l1")  # no gradients here: magnitude instead of Taylor
    params = [(block.pw[0].weight, 0), (block.dw[0].weight, 0)]
    if g == 1:
        params.append((block.project[0].weight, 1))
    score = imp(ChannelGroup(params, [block.pw[1], block.dw[1]]))
    m, cell, s = hidden // g, hidden // (g * g), n // (g * g)
    idx = []  # kept pre-shuffle channels, in the smaller layer's order: grp-major, then project group
    for grp in range(g):
        for q in range(g):
            base = grp * m + q * cell
            top = torch.topk(score[base:base + cell], s).indices.sort().values
            idx.append(top + base)
    idx = torch.cat(idx)
    # the smaller layer's post-shuffle channel j' = k' * g + grp holds pre-shuffle channel idx[grp * (n/g) + k']
    jp = torch.arange(n)
    pre = idx[(jp % g) * (n // g) + jp // g]
    post = (pre % m) * g + pre // m  # its post-shuffle index in the full layer

    def conv(old: nn.Conv2d, w: torch.Tensor, cin: int, cout: int, groups: int) -> nn.Conv2d:
        new = nn.Conv2d(cin, cout, old.kernel_size, old.stride, old.padding, groups=groups, bias=False)
        new.weight.copy_(w)
        return new.train(old.training)

    cin, cout = block.pw[0].in_channels, block.project[0].out_channels
    block.pw[0] = conv(block.pw[0], block.pw[0].weight[idx], cin, n, g)
    block.pw[1] = _slice_bn(block.pw[1], idx)
    block.dw[0] = conv(block.dw[0], block.dw[0].weight[post], n, n, n)
    block.dw[1] = _slice_bn(block.dw[1], post)
    w = block.project[0].weight
    new_w = torch.empty(cout, n // g, 1, 1, dtype=w.dtype)
    for q in range(g):
        rows = slice(q * cout // g, (q + 1) * cout // g)
        new_w[rows] = w[rows][:, post[q * n // g:(q + 1) * n // g] - q * m]
    block.project[0] = conv(block.project[0], new_w, n, cout, g)
    if isinstance(block.shuffle, ChannelShuffle):
        block.shuffle = ChannelShuffle(g)


def factorize_layer(block: nn.Module, rank: float) -> None:
    """SVD of a layer's ungrouped 1x1 convs (where that makes them smaller), in place."""
    from autocomp.compress.lowrank import svd_conv1x1

    if rank >= 1.0:
        return
    if isinstance(block, Skip):
        if block.proj is not None:
            block.proj[0] = svd_conv1x1(block.proj[0], rank)
        return
    if block.groups == 1:
        block.pw[0] = svd_conv1x1(block.pw[0], rank)
        block.project[0] = svd_conv1x1(block.project[0], rank)


def _lowrank(cin: int, cout: int, ratio: float) -> int | None:
    """The rank of a factorised 1x1 conv, or None when it stays whole (as compress.lowrank decides)."""
    r = max(1, min(min(cout, cin), math.ceil(ratio * min(cout, cin) - 1e-9)))
    return r if ratio < 1.0 and r * (cin + cout) < cin * cout else None


def _pw(cin: int, cout: int, groups: int, rank: float, stride: int, in_hw: float, out_hw: float, prec: str, level: int,
        group: str) -> list[Layer]:
    """The rows of a 1x1 conv: one, or two when low-rank (the first carries the stride)."""
    r = _lowrank(cin, cout, rank) if groups == 1 else None
    if r is None:
        return [Layer("conv", "pw", cin, cout, 1, stride, groups, in_hw, out_hw, prec, level, group)]
    return [Layer("conv", "pw", cin, r, 1, stride, 1, in_hw, out_hw, prec, level, group),
            Layer("conv", "pw", r, cout, 1, 1, 1, out_hw, out_hw, prec, level, group)]


@functools.lru_cache(maxsize=1 << 16)
def _block_rows(i: int, cin: int, cout: int, stride: int, in_hw: float, out_hw: float, lin: int, level: int, k: int,
                e: int, groups: int, keep: float, rank: float, p: str) -> tuple[Layer, ...]:
    """The rows of searchable layer ``i`` (``k`` 0: skip). Layers are immutable and a batch of
    candidates repeats the same few thousand (layer, op, genes), so the rows are cached: the latency
    predictor analyses thousands of candidates a second from their layer tables."""
    g = f"blocks.{i}"
    if k == 0:  # skip
        return tuple(_pw(cin, cout, 1, rank, stride, in_hw, out_hw, p, level, g)) if stride != 1 or cin != cout else ()
    hid = kept_hidden(cin * e, keep, groups)
    rows = _pw(cin, hid, groups, rank, 1, in_hw, in_hw, p, lin, g)
    if groups > 1:  # the channel shuffle: reshape -> transpose -> reshape, one copy of the hidden activation
        rows.append(Layer("move", "pw", hid, hid, 1, 1, 1, in_hw, in_hw, p, lin, g))
    rows.append(Layer("conv", "dw", hid, hid, k, stride, hid, in_hw, out_hw, p, level, g))
    rows += _pw(hid, cout, groups, rank, 1, out_hw, out_hw, p, level, g)
    if stride == 1 and cin == cout:
        rows.append(Layer("add", "pw", cout, cout, 1, 1, 1, out_hw, out_hw, p, level, g, residual=True))
    return tuple(rows)


# --------------------------------------------------------------------------- the family


@register("fbnet")
class FBNetFamily(Family):
    def build(self, candidate: Candidate, space: SearchSpace, num_classes: int | None = None):
        return build(candidate, space, num_classes)

    def weights(self, candidate: Candidate, space: SearchSpace, data, settings):
        from autocomp.models.supernet import inherited_or_trained

        return inherited_or_trained(self, candidate, space, data, settings, extract)

    def groups(self, candidate: Candidate, space: SearchSpace | None = None) -> list[LayerGroup]:
        return stem_blocks_head(candidate)

    def prune(self, model, candidate: Candidate, space: SearchSpace, importance: Any = "l1", batches=None):
        for block, b in zip(model.blocks, (b for s in candidate.stages for b in s.blocks), strict=True):
            if isinstance(block, FBBlock) and b.keep < 1.0:
                prune_layer(block, b.keep, importance)
        return model

    def factorize(self, model, candidate: Candidate, space: SearchSpace):
        for block, b in zip(model.blocks, (b for s in candidate.stages for b in s.blocks), strict=True):
            factorize_layer(block, b.rank)
        return model

    def train_supernet(self, space: SearchSpace, data, steps: int, seed: int = 0, **kw) -> dict[str, torch.Tensor]:
        """The supernet's state_dict after ``steps`` steps (:func:`train_supernet`; ``autocomp supernet train``)."""
        return train_supernet(space, data, steps, seed, **kw)

    def extract(self, candidate: Candidate, space: SearchSpace, weights, data=None, bn_batches: int = 4) -> FBNet:
        return extract(candidate, space, weights, data, bn_batches)

    def teacher(self, space: SearchSpace, data=None, weights=None, bn_batches: int = 4):
        from autocomp.models.supernet import default_checkpoint

        ck = weights if weights is not None else default_checkpoint(space.name)
        if ck is None:
            raise UserError("--teacher", f"no trained supernet for space {space.name!r}",
                            f"supernets/{space.name}.pt (autocomp.families.fbnet.train_supernet) or --teacher module:factory")
        return extract(space.largest(), space, ck, data, bn_batches=bn_batches).eval()

    def layer_table(self, candidate: Candidate, space: SearchSpace) -> list[Layer]:
        """Every fused layer of the compressed candidate, in execution order (``level``: stride-2
        stages before it; the stem's own stride is level 0)."""
        s0 = space.stem.stride
        h0, w0 = space.input.height, space.input.width
        h, w = math.ceil(h0 / s0), math.ceil(w0 / s0)
        rows = [Layer("conv", "full", space.input.channels, candidate.stem_width, 3, s0, 1, h0 * w0, h * w,
                      candidate.stem_precision, 0, "stem", blocked=False)]
        level = 0
        blocks = [b for s in candidate.stages for b in s.blocks]
        for i, ((cin, cout, stride), b) in enumerate(zip(layer_specs(space), blocks, strict=True)):
            in_hw, lin = h * w, level
            if stride == 2:
                h, w, level = math.ceil(h / 2), math.ceil(w / 2), level + 1
            k, e, groups = _op(b)
            rows += _block_rows(i, cin, cout, stride, in_hw, h * w, lin, level, k, e, groups, b.keep, b.rank, b.precision)
        hp, last = candidate.head_precision, layer_specs(space)[-1][1]
        rows.append(Layer("conv", "pw", last, candidate.head_width, 1, 1, 1, h * w, h * w, hp, level, "head", blocked=False))
        rows.append(Layer("gemm", "fc", candidate.head_width, space.num_classes, 1, 1, 1, 1, 1, hp, level, "classifier", blocked=False))
        return rows


# --------------------------------------------------------------------------- the supernet


class SuperNet(nn.Module):
    """Single-path weight-sharing supernet (FBNet / SPOS style): the fixed stem, head and classifier,
    and per searchable layer one module per op (``blocks.<i>.<op>``), each with its own weights.
    ``forward(x, candidate)`` runs the candidate's path."""

    def __init__(self, space: SearchSpace, num_classes: int | None = None):
        super().__init__()
        self.space_name = space.name
        self.num_classes = num_classes or space.num_classes
        specs = layer_specs(space)
        self.stem = ConvBNAct(space.input.channels, space.stem.width[0], 3, space.stem.stride)
        self.blocks = nn.ModuleList(nn.ModuleDict({op: make_op(op, *spec) for op in st_ops})
                                    for spec, st_ops in zip(specs, (st.ops for st in space.stages for _ in range(st.depth[0]))))
        self.head = ConvBNAct(specs[-1][1], space.head.width[0], 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(space.head.width[0], self.num_classes)

    def forward(self, x: torch.Tensor, candidate: Candidate) -> torch.Tensor:
        x = self.stem(x)
        for layer, op in zip(self.blocks, ops(candidate), strict=True):
            x = layer[op](x)
        x = self.head(x)
        return self.classifier(torch.flatten(self.pool(x), 1))


def subnet_state(sup: SuperNet | dict[str, torch.Tensor], candidate: Candidate) -> dict[str, torch.Tensor]:
    """The state_dict of ``build(candidate)`` taken from a supernet (or its state_dict)."""
    sd = sup.state_dict() if isinstance(sup, nn.Module) else sup
    chosen = {f"blocks.{i}.{op}.": f"blocks.{i}." for i, op in enumerate(ops(candidate))}
    out = {}
    for key, v in sd.items():
        if not key.startswith("blocks."):
            out[key] = v
            continue
        i, op, rest = key.split(".", 3)[1:]
        new = chosen.get(f"blocks.{i}.{op}.")
        if new is not None:
            out[new + rest] = v
    return out


def extract(candidate: Candidate, space: SearchSpace, weights: "SuperNet | dict | str | Path", data=None,
            bn_batches: int = 4, bn_batch_size: int = 256, seed: int = 0) -> FBNet:
    """The standalone network of ``candidate`` (``build``) with the supernet's weights of its path,
    BatchNorm recalibrated on ``bn_batches`` training batches of ``data`` (when given). Eval mode;
    the compression genes are not applied here."""
    from autocomp.models.supernet import bn_batches_of, load_checkpoint, recalibrate_bn

    space.validate_candidate(candidate)
    if isinstance(weights, (str, Path)):
        ck = load_checkpoint(weights)
        if ck.get("space") != space.name:
            raise UserError("supernet", f"checkpoint {str(weights)!r} is for space {ck.get('space')!r}", f"a checkpoint of space {space.name!r}")
        weights = ck["state_dict"]
    elif isinstance(weights, dict) and "state_dict" in weights:
        weights = weights["state_dict"]
    sd = {k: v.float() if v.is_floating_point() else v for k, v in subnet_state(weights, candidate).items()}
    net = build(candidate, space, sd["classifier.weight"].shape[0])
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError("supernet", f"weights do not fit space {space.name!r} (missing {missing[:3]}, unexpected {unexpected[:3]})",
                        "a checkpoint trained for this search space")
    if data is not None and bn_batches > 0:
        recalibrate_bn(net, bn_batches_of(data, bn_batches, bn_batch_size, seed))
    return net.eval()


def arch_only(candidate: Candidate) -> Candidate:
    """The candidate's architecture, uncompressed (fp32, keep 1, rank 1): the path a supernet runs."""
    stages = tuple(Stage(s.width, tuple(Block(b.kernel, b.expand, 1.0, 1.0, "fp32") for b in s.blocks)) for s in candidate.stages)
    return Candidate(candidate.space, candidate.stem_width, "fp32", stages, candidate.head_width, "fp32")


def train_supernet(space: SearchSpace, data, steps: int, seed: int = 0, batch_size: int = 128, lr: float = 0.1,
                   paths: int = 2, device: str | None = None, progress: bool = True, weight_decay: float = 4e-5,
                   init_state: dict | None = None, batches: Iterable | None = None, threads: int | None = None) -> dict[str, torch.Tensor]:
    """Train the supernet of ``space`` for ``steps`` SGD steps (momentum 0.9, cosine schedule); return
    its state_dict (on the CPU). Each step runs ``paths`` uniformly sampled architectures on the
    batch and sums their gradients. ``device``: ``cuda`` when available unless given. ``batches``:
    an iterable of (x, y) to use instead of ``data``'s training split (cycled). ``threads``: torch
    intra-op threads (CPU)."""
    if threads:
        torch.set_num_threads(threads)
    if steps < 1:
        raise UserError("--steps", f"{steps} is not positive", "a positive number of training steps")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    rng = random.Random(seed)
    net = SuperNet(space, data.num_classes if data is not None else None)
    if init_state is not None:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in init_state.items()})
    net = net.to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def stream():
        epoch = 0
        while True:
            if batches is not None:
                yield from batches
            else:
                yield from data.batches(data.train, batch_size, shuffle=True, seed=seed * 1000 + epoch)
            epoch += 1

    t0, run_loss = time.perf_counter(), 0.0
    log_every = max(1, steps // 20)
    for step, (x, y) in enumerate(stream()):
        if step >= steps:
            break
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(paths):
            loss = nn.functional.cross_entropy(net(x, arch_only(space.sample(rng))), y) / paths
            loss.backward()
            total += float(loss.detach())
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        run_loss = total if step == 0 else 0.95 * run_loss + 0.05 * total
        if progress and ((step + 1) % log_every == 0 or step + 1 == steps):
            print(f"[fbnet supernet] step {step + 1}/{steps} loss {run_loss:.3f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{(time.perf_counter() - t0) / (step + 1):.2f}s/step on {dev.type}", file=sys.stderr, flush=True)
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


__all__ = ["OPS", "FBNet", "FBNetFamily", "SuperNet", "build", "extract", "from_ops", "layer_specs", "op_name", "ops",
           "prune_layer", "train_supernet"]
