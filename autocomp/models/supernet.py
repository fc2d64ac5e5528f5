"""Weight-sharing (once-for-all) supernet of a search space, and subnet extraction.

One :class:`SuperNet` holds the weights of the *largest* architecture of a :class:`SearchSpace`;
every candidate architecture is a sub-network of it:

* **depth** (per stage): the first ``d`` blocks of the stage run, the rest are skipped;
* **width** (stem, per stage, head): the first ``w`` output channels of a layer are used
  (channels are importance-ordered: sandwich training uses the first channels in every step, and
  :func:`sort_channels` re-orders a block's hidden channels by importance, as OFA does);
* **expansion** (per block): the first ``cin * e`` hidden channels of the block are used;
  blocks whose stage allows ``expand=1`` hold a separate small depthwise/project pair for it
  (without an expand conv the depthwise conv sees the block input, not hidden features);
* **kernel** (per block): the centre crop of the largest depthwise kernel, passed through OFA's
  kernel transform matrices (a learned ``k*k x k*k`` matrix per size step, shared by channels,
  initialised to identity).

:func:`extract` turns (candidate, supernet weights) into the plain ``autocomp.models.mbv2.Net`` that
``mbv2.build(candidate, space)`` builds, with the inherited weights copied in and BatchNorm
statistics recalibrated on a few training batches. Nothing of the supernet is left inside it, so the
compression operators (prune / low-rank / quantize) work on it unchanged. The candidate's keep /
rank / precision genes are *not* applied here.

:func:`train_supernet` trains the supernet with the sandwich rule (largest + smallest + N random
subnets per step, gradients accumulated, one optimiser step) and in-place distillation (every
smaller subnet learns from the largest subnet's soft predictions, or from a teacher's).

Checkpoints (``supernets/<space>.pt``) are plain dicts loadable with ``torch.load(weights_only=True)``:
``schema_version``, ``space`` (name), ``space_config`` (the space as a dict), ``state_dict`` (fp16
tensors), ``meta`` (command, seed, steps, wall time, machine, accuracies).
"""

from __future__ import annotations

import functools
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from autocomp.errors import UserError
from autocomp.models import mbv2
from autocomp.resources import data_dir
from autocomp.space import Candidate, SearchSpace

SCHEMA_VERSION = 1
BN_EPS = 1e-5


# --------------------------------------------------------------------------- elastic layers


class ElasticBN(nn.BatchNorm2d):
    """BatchNorm over the first ``c`` channels (statistics of the slice, OFA style)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        return F.batch_norm(
            x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
            self.training, self.momentum if self.momentum is not None else 0.1, self.eps,
        )


class ElasticPointwise(nn.Module):
    """1x1 conv + BN (+ ReLU): the first ``cout`` outputs, input channels taken from ``x``."""

    def __init__(self, cin: int, cout: int, act: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = ElasticBN(cout)
        self.act = act

    def weight(self, cout: int, cin: int) -> torch.Tensor:
        return self.conv.weight[:cout, :cin]

    def forward(self, x: torch.Tensor, cout: int, stride: int = 1) -> torch.Tensor:
        y = self.bn(F.conv2d(x, self.weight(cout, x.shape[1]), None, stride))
        return F.relu(y) if self.act else y


class ElasticStem(nn.Module):
    """kxk dense conv + BN + ReLU with elastic output width."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False)
        self.bn = ElasticBN(cout)

    def weight(self, cout: int) -> torch.Tensor:
        return self.conv.weight[:cout]

    def forward(self, x: torch.Tensor, cout: int) -> torch.Tensor:
        return F.relu(self.bn(F.conv2d(x, self.weight(cout), None, 1, self.conv.padding)))


class ElasticDepthwise(nn.Module):
    """Depthwise kxk conv + BN + ReLU: elastic channels and kernel size (centre crop + transform)."""

    def __init__(self, channels: int, kernels: list[int]):
        super().__init__()
        self.kernels = sorted(kernels, reverse=True)
        kmax = self.kernels[0]
        self.conv = nn.Conv2d(channels, channels, kmax, 1, kmax // 2, groups=channels, bias=False)
        self.bn = ElasticBN(channels)
        # OFA kernel transform matrices: one per step down the kernel list (7->5, 5->3), identity init
        self.ktm = nn.ParameterDict({
            f"{a}to{b}": nn.Parameter(torch.eye(b * b)) for a, b in zip(self.kernels, self.kernels[1:])
        })

    def weight(self, channels: int, kernel: int) -> torch.Tensor:
        w = self.conv.weight[:channels]
        cur = self.kernels[0]
        for nxt in self.kernels[1:]:
            if cur == kernel:
                break
            s = (cur - nxt) // 2
            w = w[:, :, s : s + nxt, s : s + nxt]
            w = (w.reshape(channels, nxt * nxt) @ self.ktm[f"{cur}to{nxt}"]).reshape(channels, 1, nxt, nxt)
            cur = nxt
        if cur != kernel:
            raise ValueError(f"kernel {kernel} not in {self.kernels}")
        return w

    def forward(self, x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
        c = x.shape[1]
        return F.relu(self.bn(F.conv2d(x, self.weight(c, kernel), None, stride, kernel // 2, 1, c)))


class ElasticBlock(nn.Module):
    """Inverted residual block at its largest size (max input width x max expansion)."""

    def __init__(self, cin_max: int, cout_max: int, stride: int, kernels: list[int], expands: list[int]):
        super().__init__()
        self.stride = stride
        big = [e for e in expands if e != 1]
        self.hidden_max = cin_max * max(big) if big else 0
        if big:
            self.expand = ElasticPointwise(cin_max, self.hidden_max, act=True)
            self.dw = ElasticDepthwise(self.hidden_max, kernels)
            self.project = ElasticPointwise(self.hidden_max, cout_max, act=False)
        if 1 in expands:  # expand=1: depthwise on the block input directly
            self.dw1 = ElasticDepthwise(cin_max, kernels)
            self.project1 = ElasticPointwise(cin_max, cout_max, act=False)

    def forward(self, x: torch.Tensor, cout: int, kernel: int, expand: int) -> torch.Tensor:
        cin = x.shape[1]
        if expand == 1:
            y = self.project1(self.dw1(x, kernel, self.stride), cout)
        else:
            h = self.expand(x, cin * expand)
            y = self.project(self.dw(h, kernel, self.stride), cout)
        return x + y if self.stride == 1 and cin == cout else y


class SuperNet(nn.Module):
    """The elastic network of a search space. ``forward(x, candidate)`` runs that candidate's subnet."""

    def __init__(self, space: SearchSpace, num_classes: int | None = None):
        super().__init__()
        self.space = space
        self.num_classes = num_classes or space.num_classes
        stem_max = max(space.stem.width)
        self.stem = ElasticStem(space.input.channels, stem_max, 3)
        self.stages = nn.ModuleList()
        cin = stem_max
        for st in space.stages:
            blocks = nn.ModuleList()
            for i in range(max(st.depth)):
                blocks.append(ElasticBlock(cin, max(st.width), st.stride if i == 0 else 1, st.kernel, st.expand))
                cin = max(st.width)
            self.stages.append(blocks)
        self.head = ElasticPointwise(cin, max(space.head.width), act=True)
        self.classifier = nn.Linear(max(space.head.width), self.num_classes)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        # blocks after the first of a stage are always residual: start them as the identity, so a
        # deeper subnet starts from the function of a shallower one (elastic depth)
        for blocks in self.stages:
            for b in list(blocks)[1:]:
                for name in ("project", "project1"):
                    if hasattr(b, name):
                        nn.init.zeros_(getattr(b, name).bn.weight)

    def forward(self, x: torch.Tensor, cand: Candidate) -> torch.Tensor:
        x = self.stem(x, cand.stem_width)
        for blocks, st in zip(self.stages, cand.stages):
            for blk, b in zip(blocks, st.blocks):
                x = blk(x, st.width, b.kernel, b.expand)
        x = self.head(x, cand.head_width)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.linear(x, self.classifier.weight[:, : cand.head_width], self.classifier.bias)


# --------------------------------------------------------------------------- channel sorting (OFA)


@torch.no_grad()
def sort_channels(net: SuperNet, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Re-order every block's hidden channels by importance (L1 of the project conv's input
    weights), in place. The largest subnet's function is unchanged; the first-k channels that a
    narrower subnet inherits become the most important ones (OFA does this before each
    elastic-width phase). Optimizer state tensors (e.g. Adam moments) are permuted alike."""

    def perm(t: torch.Tensor, idx: torch.Tensor, dim: int) -> None:
        t.copy_(t.index_select(dim, idx))
        if optimizer is not None and isinstance(t, nn.Parameter):
            for v in optimizer.state.get(t, {}).values():
                if isinstance(v, torch.Tensor) and v.shape == t.shape:
                    v.copy_(v.index_select(dim, idx))

    for blocks in net.stages:
        for b in blocks:
            if b.hidden_max == 0:
                continue
            idx = torch.argsort(b.project.conv.weight.abs().sum((0, 2, 3)), descending=True)
            perm(b.expand.conv.weight, idx, 0)
            perm(b.dw.conv.weight, idx, 0)
            perm(b.project.conv.weight, idx, 1)
            for bn in (b.expand.bn, b.dw.bn):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    perm(getattr(bn, name), idx, 0)


# --------------------------------------------------------------------------- checkpoints


def supernet_path(space: SearchSpace, weights: str) -> Path | None:
    """The supernet checkpoint the settings ask for, or None for training from scratch."""
    if weights == "scratch":
        return None
    if weights in ("auto", "supernet"):
        ckpt = default_checkpoint(space.name)
        if ckpt is None and weights == "supernet":
            raise UserError("--weights", f"no supernet checkpoint for space {space.name!r}", "supernets/<space>.pt (autocomp supernet train) or --weights scratch")
        return ckpt
    p = Path(weights)
    if not p.is_file():
        raise UserError("--weights", f"no such checkpoint {weights!r}", "auto, supernet, scratch or a supernet .pt path")
    return p


def inherited_or_trained(family, candidate: Candidate, space: SearchSpace, data, settings, extract) -> nn.Module:
    """The weights of a candidate of a family with a supernet (mbv2, fbnet): ``extract(candidate,
    space, checkpoint, ...)`` from the checkpoint the settings name (BatchNorm is re-estimated once,
    after compression, unless ``settings.bn_after_extract``), or ``family.build`` trained from
    scratch when there is none."""
    ckpt = supernet_path(space, settings.weights)
    if ckpt is not None:
        if not getattr(settings, "bn_after_extract", False):
            return extract(candidate, space, ckpt)
        return extract(candidate, space, ckpt, data, bn_batches=max(1, settings.bn_images // settings.bn_batch_size),
                       bn_batch_size=settings.bn_batch_size, seed=settings.seed)
    from autocomp.training import train

    model = family.build(candidate, space, data.num_classes)
    return train(model, data, settings.train_steps, settings.batch_size, settings.lr, settings.seed,
                 getattr(settings, "train_device", "cpu"))


def default_checkpoint(space_name: str) -> Path | None:
    """``supernets/<space>.pt`` when it exists (checkout or installed package data), else the one
    `autocomp supernet train` wrote by default (``<user cache>/supernets/<space>.pt``), else None."""
    from autocomp.resources import cache_dir

    for p in (data_dir("supernets") / f"{space_name}.pt", cache_dir() / "supernets" / f"{space_name}.pt"):
        if p.is_file():
            return p
    return None


def make_checkpoint(space: SearchSpace, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    """The committed form: fp16 float tensors (half the size; recalibrated BN makes this harmless)."""
    sd = {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous()
          for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    return {"schema_version": SCHEMA_VERSION, "space": space.name, "space_config": space.model_dump(mode="json"),
            "state_dict": sd, "meta": json.loads(json.dumps(meta, default=str))}  # plain types only (weights_only)


def save_checkpoint(path: str | Path, space: SearchSpace, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(make_checkpoint(space, state_dict, meta), tmp)
    tmp.replace(path)  # atomic: never a half-written checkpoint
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load and validate a supernet checkpoint (``torch.load(weights_only=True)``)."""
    from autocomp.models import load_weights

    path = Path(path)
    ck = load_weights(path, "supernet", "a .pt checkpoint written by `autocomp supernet train`")
    if not isinstance(ck, dict) or "state_dict" not in ck:
        raise UserError("supernet", f"{str(path)!r} is not a supernet checkpoint", "a dict with schema_version, space, state_dict")
    if ck.get("schema_version") != SCHEMA_VERSION:
        raise UserError("supernet", f"{str(path)!r} has schema_version {ck.get('schema_version')!r}", f"schema_version {SCHEMA_VERSION}")
    return ck


@functools.lru_cache(maxsize=4)
def _cached_supernet(path: str, mtime: float, space_json: str) -> SuperNet:
    ck = load_checkpoint(path)
    space = SearchSpace.model_validate_json(space_json)
    if ck.get("space") != space.name:
        raise UserError("supernet", f"checkpoint {path!r} is for space {ck.get('space')!r}", f"a checkpoint of space {space.name!r}")
    return _supernet_from_state(space, ck["state_dict"])


def _supernet_from_state(space: SearchSpace, sd: dict[str, torch.Tensor], num_classes: int | None = None) -> SuperNet:
    if num_classes is None and "classifier.weight" in sd:
        num_classes = sd["classifier.weight"].shape[0]
    net = SuperNet(space, num_classes)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError("supernet", f"weights do not fit space {space.name!r} (missing {missing[:3]}, unexpected {unexpected[:3]})",
                        "a checkpoint trained for this search space")
    return net.eval()


def as_supernet(space: SearchSpace, weights: "SuperNet | dict | str | Path") -> SuperNet:
    """A SuperNet from a module, a checkpoint dict, a raw state_dict, or a checkpoint path (cached)."""
    if isinstance(weights, SuperNet):
        return weights
    if isinstance(weights, (str, Path)):
        p = Path(weights)
        if not p.is_file():
            raise UserError("supernet", f"no such checkpoint {str(p)!r}", "a .pt file written by `autocomp supernet train`")
        return _cached_supernet(str(p.resolve()), p.stat().st_mtime, space.model_dump_json())
    if isinstance(weights, dict) and "state_dict" in weights:
        if weights.get("space") not in (None, space.name):
            raise UserError("supernet", f"checkpoint is for space {weights.get('space')!r}", f"a checkpoint of space {space.name!r}")
        weights = weights["state_dict"]
    if isinstance(weights, dict):
        return _supernet_from_state(space, weights)
    raise UserError("supernet", f"unsupported weights of type {type(weights).__name__}", "a SuperNet, a state_dict or a checkpoint path")


# --------------------------------------------------------------------------- extraction


def _set_convbn(dst: nn.Sequential, w: torch.Tensor, bn: nn.BatchNorm2d, c: int) -> None:
    dst[0].weight.data.copy_(w)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst[1], name).data.copy_(getattr(bn, name).detach()[:c])
    dst[1].eps = bn.eps


@torch.no_grad()
def subnet_weights(net: mbv2.Net, sup: SuperNet, candidate: Candidate) -> mbv2.Net:
    """Copy ``candidate``'s inherited weights from ``sup`` into ``net`` (built by mbv2.build), in place."""
    _set_convbn(net.stem, sup.stem.weight(candidate.stem_width), sup.stem.bn, candidate.stem_width)
    k = 0
    cin = candidate.stem_width
    for blocks, st in zip(sup.stages, candidate.stages):
        for eb, b in zip(blocks, st.blocks):
            dst = net.blocks[k]
            if b.expand == 1:
                _set_convbn(dst.dw, eb.dw1.weight(cin, b.kernel), eb.dw1.bn, cin)
                _set_convbn(dst.project, eb.project1.weight(st.width, cin), eb.project1.bn, st.width)
            else:
                h = cin * b.expand
                _set_convbn(dst.expand, eb.expand.weight(h, cin), eb.expand.bn, h)
                _set_convbn(dst.dw, eb.dw.weight(h, b.kernel), eb.dw.bn, h)
                _set_convbn(dst.project, eb.project.weight(st.width, h), eb.project.bn, st.width)
            cin = st.width
            k += 1
    _set_convbn(net.head, sup.head.weight(candidate.head_width, cin), sup.head.bn, candidate.head_width)
    net.classifier.weight.data.copy_(sup.classifier.weight[:, : candidate.head_width])
    net.classifier.bias.data.copy_(sup.classifier.bias)
    return net


@torch.inference_mode()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Reset BatchNorm running statistics and re-estimate them (exact average of the per-batch
    statistics) on ``batches``, in inference mode. Small channels-last batches are the cheap way on
    a CPU (see :mod:`autocomp.evaluate`)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = the exact mean over the batches
    model.train()
    n = 0
    for x in batches:
        model(x)
        n += 1
    for m, mom in zip(bns, saved):
        m.momentum = mom
    if n == 0:
        raise ValueError("no batches for BatchNorm recalibration")
    return model.eval()


def bn_batches_of(data, n_batches: int, batch_size: int = 256, seed: int = 0) -> list[torch.Tensor]:
    """``n_batches`` normalised training batches (a fixed subset: same seed, same statistics)."""
    split = data.train.subset(n_batches * batch_size, seed=seed)
    return [x for x, _ in data.batches(split, batch_size)][:n_batches]


def extract(candidate: Candidate, space: SearchSpace, state_dict_or_path: "SuperNet | dict | str | Path",
            data=None, bn_batches: int = 4, bn_batch_size: int = 256, seed: int = 0) -> mbv2.Net:
    """The standalone ``mbv2.Net`` of ``candidate`` (exactly ``mbv2.build(candidate, space)``) with
    weights inherited from the supernet, BatchNorm recalibrated on ``bn_batches`` training batches of
    ``data`` (skipped when ``data`` is None or ``bn_batches`` is 0: the supernet's sliced running
    statistics are kept). Returned in eval mode. Compression genes (keep/rank/precision) are ignored.
    """
    space.validate_candidate(candidate)
    sup = as_supernet(space, state_dict_or_path)
    net = mbv2.build(candidate, space, sup.num_classes)
    subnet_weights(net, sup, candidate)
    if data is not None and bn_batches > 0:
        recalibrate_bn(net, bn_batches_of(data, bn_batches, bn_batch_size, seed))
    return net.eval()


# --------------------------------------------------------------------------- training


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def _kd(student: torch.Tensor, soft: torch.Tensor, T: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student / T, 1), soft, reduction="batchmean") * T * T


@torch.no_grad()
def correct(model: Callable[[torch.Tensor], torch.Tensor], data, split, batch_size: int = 100) -> torch.Tensor:
    """Per-image top-1 correctness (bool, in the split's order), channels-last (a module is converted
    in place: ~2x faster than NCHW on CPU; batches of 100 also beat 500)."""
    if isinstance(model, nn.Module):
        model.to(memory_format=torch.channels_last)
    hits = [model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y for x, y in data.batches(split, batch_size)]
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def accuracy(model: Callable[[torch.Tensor], torch.Tensor], data, split, batch_size: int = 100) -> float:
    """Top-1 accuracy on ``split`` (see :func:`correct`)."""
    return int(correct(model, data, split, batch_size).sum()) / max(1, len(split))


def train_supernet(space: SearchSpace, data, steps: int, seed: int, teacher: nn.Module | None = None, progress: bool = True,
                   batch_size: int = 96, lr: float = 4e-3, n_random: int = 1, kd_weight: float = 0.5, kd_temperature: float = 2.0,
                   warmup_frac: float = 0.1, sort_at_frac: float = 0.1, threads: int | None = 2,
                   callback: Callable[[int, dict], None] | None = None, callback_every: int = 0,
                   init_state: dict | None = None, largest_every: int = 1, time_budget_s: float | None = None,
                   stats: dict | None = None, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Train the supernet of ``space`` on ``data.train`` for ``steps`` optimiser steps; return its state_dict.

    Each step (sandwich rule): the largest subnet learns from the labels (and from ``teacher``'s
    soft predictions when given); the smallest and ``n_random`` random subnets learn from the
    labels and, by in-place distillation, from the largest subnet's (or the teacher's) soft
    predictions (weight ``kd_weight``, temperature ``kd_temperature``). Gradients of all subnets
    are summed, then one Adam step (linear warm-up, cosine decay). Channels-last tensors, ``threads``
    intra-op threads. Hidden channels are re-sorted by importance (:func:`sort_channels`) once,
    at ``sort_at_frac`` of the run. ``callback(step, state_dict)`` every ``callback_every`` steps
    (e.g. to write intermediate checkpoints).

    Cost control on slow CPUs: ``largest_every=k`` runs the largest subnet only every k-th step
    (the other steps distil from the teacher, if any, else learn from labels only);
    ``time_budget_s`` ends training after that wall time, the schedule then follows elapsed time
    (progress = max(step / steps, elapsed / budget)), so the learning rate still anneals to its end.

    ``device``: ``cpu``, ``cuda`` or ``auto`` (:mod:`autocomp.training`; mixed precision on CUDA); the
    returned state_dict is on the CPU.
    """
    from autocomp.training import Amp, resolve_device, to

    if steps < 1:
        raise UserError("--steps", f"{steps} is not positive", "a positive number of training steps")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    net = SuperNet(space, data.num_classes)
    if init_state is not None:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in init_state.items()}, strict=False)
    dev = resolve_device(device)
    amp = Amp(dev)
    net = net.to(dev, memory_format=torch.channels_last).train()
    if teacher is not None:
        teacher = teacher.to(dev).eval()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    largest, smallest = space.largest(), space.smallest()
    is_sorted = False

    bar = None
    if progress and sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        bar = Progress(TextColumn("supernet"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                       TextColumn("{task.fields[info]}"), transient=False)
        task = bar.add_task("train", total=steps, info="")
        bar.start()
    log_every = max(1, min(25, steps // 20))
    t0 = time.perf_counter()
    step, epoch = 0, 0
    run_loss = run_acc = acc_l = 0.0
    try:
        while step < steps:
            for x, y in data.batches(data.train, batch_size, shuffle=True, seed=seed * 1000 + epoch):
                if step >= steps:
                    break
                frac = step / steps
                if time_budget_s:
                    frac = max(frac, (time.perf_counter() - t0) / time_budget_s)
                    if frac >= 1.0:
                        steps = step  # out of time: stop here
                        break
                if not is_sorted and sort_at_frac > 0 and frac >= sort_at_frac:
                    sort_channels(net, opt)  # once, when the warm-up has shaped the channels
                    is_sorted = True
                for g in opt.param_groups:
                    g["lr"] = _lr_at(int(frac * 10000), 10000, lr, max(1, int(10000 * warmup_frac)))
                x, y = to(x, dev).contiguous(memory_format=torch.channels_last), to(y, dev)
                opt.zero_grad(set_to_none=True)
                soft_t = None
                if teacher is not None:
                    with torch.no_grad(), amp.autocast():
                        soft_t = F.softmax(teacher(x).float() / kd_temperature, 1)
                total, soft = 0.0, soft_t
                if step % largest_every == 0:
                    with amp.autocast():
                        out = net(x, largest).float()
                    loss = F.cross_entropy(out, y)
                    if soft_t is not None:
                        loss = (1 - kd_weight) * loss + kd_weight * _kd(out, soft_t, kd_temperature)
                    amp.backward(loss)
                    total = float(loss.detach())
                    acc_l = float((out.argmax(1) == y).float().mean())
                    if soft is None:
                        soft = F.softmax(out.detach() / kd_temperature, 1)
                cands = [smallest] + [space.sample(rng) for _ in range(n_random)]
                for i, cand in enumerate(cands):
                    with amp.autocast():
                        o = net(x, cand).float()
                    loss = F.cross_entropy(o, y)
                    if soft is not None:
                        loss = (1 - kd_weight) * loss + kd_weight * _kd(o, soft, kd_temperature)
                    amp.backward(loss)
                    total += float(loss.detach())
                amp.step(opt, clip=(list(net.parameters()), 5.0))
                step += 1
                run_loss = total if step == 1 else 0.9 * run_loss + 0.1 * total
                run_acc = acc_l if step == 1 else 0.9 * run_acc + 0.1 * acc_l
                el = time.perf_counter() - t0
                info = f"loss {run_loss:.3f} train-acc(largest) {run_acc:.3f} lr {opt.param_groups[0]['lr']:.2e} {el / step:.2f}s/step"
                if bar is not None:
                    bar.update(task, advance=1, info=info)
                elif progress and (step % log_every == 0 or step == steps or step <= 3):
                    _log(f"[supernet] step {step}/{steps} {info} elapsed {el / 60:.1f} min")
                if callback is not None and callback_every and step % callback_every == 0 and step < steps:
                    callback(step, {k: v.cpu() for k, v in net.state_dict().items()})
            epoch += 1
    finally:
        if bar is not None:
            bar.stop()
    if stats is not None:
        stats.update(steps=step, wall_s=round(time.perf_counter() - t0, 1))
    if progress:
        _log(f"[supernet] done: {step} steps in {(time.perf_counter() - t0) / 60:.1f} min")
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
