"""Per-layer precision: fp32 (unchanged), fp16 (the layer group runs in half precision, with casts
at its borders), int8 (weights per-channel symmetric, activations per-tensor symmetric with a scale
calibrated on real batches; BatchNorm folded first).

int8 is expressed with PyTorch fake-quant ops, which the ONNX exporter writes as
QuantizeLinear/DequantizeLinear pairs: on the input activation and on the weight of every int8
Conv/Gemm (TensorRT's explicit-quantization placement). fp32 layers get none.

Activation calibration (``method``): ``minmax`` (max |x|), ``percentile`` (the ``percentile``-th
percentile of |x|), ``mse`` (the clipping threshold minimising the quantization MSE) and
``entropy`` (TensorRT's KL-divergence threshold). The last three read a 2048-bin histogram of |x|
taken in a second pass over the calibration batches.

``quantize_outputs`` (default off): when an int8 conv feeds another int8 conv of the same network
(stem -> first block conv, expand -> depthwise -> project), its *output* is also quantized, with the
consumer's input scale, before the activation. For symmetric int8 (zero point 0) ReLU commutes
with quantization, so this is lossless w.r.t. quantizing after the ReLU; it is the graph integer
engines fuse into int8 convs with int8 outputs (TensorRT; ONNX Runtime's QLinearConv). It is off by
default: on the 2-core AVX2 machine without VNNI used here (ONNX Runtime 1.32, 1 thread) the
integer kernels were ~2x slower than fp32 for these small convs, and their u8s8 int16 accumulation
saturates with full-range weights (ORT accuracy fell ~16 points). autocomp's ONNX Runtime sessions
therefore switch that fusion off on hosts without VNNI/AMX (``autocomp.measure.onnxruntime.qdq_fusion``): ORT runs
DequantizeLinear + float ops, which agrees with PyTorch fake-quant to float rounding; TensorRT
fuses the same explicit Q/DQ graph into int8 kernels on its own.

PTQ is :func:`apply`; QAT is :func:`qat` (fine-tuning through the fake-quant ops with the
straight-through estimator; weight scales follow the weights, activation scales stay calibrated).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from autocomp.space import Candidate

CALIBRATION_METHODS = ("minmax", "percentile", "mse", "entropy")
HIST_BINS = 2048


class Half(nn.Module):
    """Runs the wrapped module in fp16; inputs and outputs stay fp32 at its borders."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()


# --------------------------------------------------------------------------- calibration


def amax_from_histogram(hist: np.ndarray, edges: np.ndarray, method: str, percentile: float = 99.99) -> float:
    """The clipping threshold of a histogram of |x| (``edges`` from 0 to max |x|) for ``method``."""
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    top = float(edges[-1])
    if total <= 0 or top <= 0:
        return max(top, 1e-8)
    if method == "minmax":
        return top
    if method == "percentile":
        cdf = np.cumsum(hist) / total
        i = int(np.searchsorted(cdf, percentile / 100.0))
        return float(edges[min(i + 1, len(edges) - 1)])
    centers = (edges[:-1] + edges[1:]) / 2
    if method == "mse":
        cands = np.linspace(0.05, 1.0, 128) * top
        s = cands[:, None] / 127.0
        q = np.clip(np.round(centers[None] / s), -127, 127) * s
        err = ((q - centers[None]) ** 2 * hist[None]).sum(1)
        return float(cands[int(np.argmin(err))])
    if method == "entropy":
        return float(_kl_threshold(hist, edges))
    raise ValueError(f"unknown calibration method {method!r}; expected one of {CALIBRATION_METHODS}")


def _kl_threshold(hist: np.ndarray, edges: np.ndarray, levels: int = 128, stride: int = 16) -> float:
    """TensorRT's entropy calibration: the threshold whose 128-level quantized distribution is
    closest (KL divergence) to the clipped reference distribution."""
    n = len(hist)
    best_i, best_kl = n, np.inf
    for i in range(levels, n + 1, stride):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nz = hist[:i] > 0
        # quantize the first i bins into `levels` buckets, expand back over the non-empty bins
        idx = (np.arange(i) * levels) // i
        sums = np.bincount(idx, weights=hist[:i], minlength=levels)
        counts = np.bincount(idx, weights=nz.astype(np.float64), minlength=levels)
        q = np.where(nz, sums[idx] / np.maximum(counts[idx], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if ps <= 0 or qs <= 0:
            continue
        p, q = p / ps, q / qs
        m = p > 0
        kl = float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


class Observer:
    """Collects max |x| (first pass) and a histogram of |x| up to that max (second pass)."""

    def __init__(self) -> None:
        self.amax = 0.0
        self.hist = np.zeros(HIST_BINS)

    def observe_max(self, x: torch.Tensor) -> None:
        self.amax = max(self.amax, float(x.detach().abs().amax()))

    def observe_hist(self, x: torch.Tensor) -> None:
        top = max(self.amax, 1e-8)
        h = torch.histc(x.detach().float().abs().clamp_max(top), HIST_BINS, 0.0, top)
        self.hist += h.numpy()

    def scale(self, method: str, percentile: float) -> float:
        edges = np.linspace(0.0, max(self.amax, 1e-8), HIST_BINS + 1)
        amax = self.amax if method == "minmax" else amax_from_histogram(self.hist, edges, method, percentile)
        return max(amax, 1e-8) / 127.0


# --------------------------------------------------------------------------- int8 layer


def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 scale of a Conv/Linear weight."""
    return (weight.detach().flatten(1).abs().amax(1) / 127.0).clamp_min(1e-8)


def _fq(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, scale, torch.zeros((), dtype=torch.int32), -128, 127)


class QuantLayer(nn.Module):
    """Fake-quantized Conv2d/Linear: int8 per-tensor symmetric input, int8 per-channel weight,
    optionally an int8 output (quantized with the consumer's input scale, see module docs)."""

    def __init__(self, layer: nn.Conv2d | nn.Linear):
        super().__init__()
        self.layer = layer
        self.register_buffer("act_scale", torch.tensor(1.0))
        self.register_buffer("w_scale", weight_scale(layer.weight))
        self.phase: str | None = None  # "max" | "hist" while calibrating
        self.observer: Observer | None = None
        self._consumer: list[QuantLayer] = []  # a plain list: the consumer is not a submodule

    @property
    def consumer(self) -> "QuantLayer | None":
        return self._consumer[0] if self._consumer else None

    def quantize_output_as(self, consumer: "QuantLayer | None") -> None:
        self._consumer = [consumer] if consumer is not None else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.phase is not None:
            assert self.observer is not None
            (self.observer.observe_max if self.phase == "max" else self.observer.observe_hist)(x)
            return self.layer(x)
        if self.training:  # QAT: the weight scales follow the weights
            with torch.no_grad():
                self.w_scale.copy_(weight_scale(self.layer.weight))
        zp = torch.zeros(len(self.w_scale), dtype=torch.int32)
        w = torch.fake_quantize_per_channel_affine(self.layer.weight, self.w_scale, zp, 0, -128, 127)  # symmetric scale never reaches -128
        x = _fq(x, self.act_scale)
        if isinstance(self.layer, nn.Linear):
            y = nn.functional.linear(x, w, self.layer.bias)
        else:
            c = self.layer
            y = nn.functional.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)
        if self._consumer:
            y = _fq(y, self._consumer[0].act_scale)
        return y


def fold_bn(module: nn.Module) -> None:
    """Fold every Conv2d -> BatchNorm2d pair of nn.Sequential children into the conv, in place
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``; the BatchNorm becomes an Identity)."""
    for child in module.modules():
        if not isinstance(child, nn.Sequential):
            continue
        for i in range(len(child) - 1):
            conv, bn = child[i], child[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                fused = fuse_conv_bn_eval(conv.eval(), bn.eval())
                # a conv without bias gets a new one made from zeros, which the library leaves frozen:
                # it trains with the weights (QAT and distillation run through the folded conv)
                fused.bias.requires_grad_(fused.weight.requires_grad)
                child[i], child[i + 1] = fused, nn.Identity()


def _wrap_int8(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(module, name, QuantLayer(child))
        elif not isinstance(child, QuantLayer):
            _wrap_int8(child)


def _first_quant(m: nn.Module | None) -> QuantLayer | None:
    """The QuantLayer that reads ``m``'s input first (a low-rank pair: its first half)."""
    if isinstance(m, QuantLayer):
        return m
    if isinstance(m, nn.Sequential) and len(m) > 0:
        return _first_quant(m[0])
    return None


def _last_quant(m: nn.Module | None) -> QuantLayer | None:
    if isinstance(m, QuantLayer):
        return m
    if isinstance(m, nn.Sequential) and len(m) > 0:
        return _last_quant(m[-1]) if isinstance(m[-1], (QuantLayer, nn.Sequential)) else None
    return None


def _link_outputs(model: nn.Module) -> None:
    """Quantize the outputs of int8 convs whose consumer is an int8 conv (see module docs)."""
    def conv_of(m: nn.Module) -> nn.Module | None:
        return m[0] if isinstance(m, nn.Sequential) and len(m) > 0 else None

    def link(prod: nn.Module | None, cons: nn.Module | None) -> None:
        p, c = _last_quant(prod), _first_quant(cons)
        if p is not None and c is not None:
            p.quantize_output_as(c)
        # inside a factorised pair (Sequential of two QuantLayers) the middle is int8 too
        for m in (prod, cons):
            if isinstance(m, nn.Sequential) and all(isinstance(x, QuantLayer) for x in m):
                for a, b in zip(m, list(m)[1:]):
                    a.quantize_output_as(b)

    blocks = list(getattr(model, "blocks", []))
    if blocks and hasattr(model, "stem"):
        b0 = blocks[0]
        first = conv_of(b0.expand) if isinstance(b0.expand, nn.Sequential) else conv_of(b0.dw)
        link(conv_of(model.stem), first)
    for b in blocks:
        if isinstance(b.expand, nn.Sequential):
            link(conv_of(b.expand), conv_of(b.dw))
        link(conv_of(b.dw), conv_of(b.project))


def _groups(model: nn.Module, candidate: Candidate, groups=None) -> list[tuple[nn.Module, str, str]]:
    """(parent, attribute, precision) of every module of every layer group, in group order.

    ``groups``: the family's layer groups (:class:`autocomp.families.LayerGroup`: module paths and
    precision); None: those of an ``autocomp.models.mbv2.Net`` (stem, blocks, head, classifier)."""
    if groups is None:
        out = [(model, "stem", candidate.stem_precision)]
        precs = [b.precision for s in candidate.stages for b in s.blocks]
        out += [(model.blocks, str(i), p) for i, p in enumerate(precs)]
        out += [(model, "head", candidate.head_precision), (model, "classifier", candidate.head_precision)]
        return out
    out = []
    for g in groups:
        for path in g.modules:
            parent, _, attr = path.rpartition(".")
            out.append((model.get_submodule(parent) if parent else model, attr, g.precision))
    return out


@torch.no_grad()
def calibrate(model: nn.Module, calib: Iterable[torch.Tensor], method: str = "minmax", percentile: float = 99.99) -> nn.Module:
    """Set the activation scale of every QuantLayer of ``model`` from ``calib`` batches."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {CALIBRATION_METHODS}")
    qs = [m for m in model.modules() if isinstance(m, QuantLayer)]
    if not qs:
        return model
    batches = [x[0] if isinstance(x, (tuple, list)) else x for x in calib]
    if not batches:
        raise ValueError("int8 layers need at least one calibration batch")
    was_training = model.training
    model.eval()
    for q in qs:
        q.observer, q.phase = Observer(), "max"
    for x in batches:
        model(x)
    if method != "minmax":
        for q in qs:
            q.phase = "hist"
        for x in batches:
            model(x)
    for q in qs:
        q.act_scale.fill_(q.observer.scale(method, percentile))  # type: ignore[union-attr]
        q.observer, q.phase = None, None
    model.train(was_training)
    return model


@torch.no_grad()
def apply(model: nn.Module, candidate: Candidate, calib: Iterable[torch.Tensor] | None = None, method: str = "minmax",
          percentile: float = 99.99, quantize_outputs: bool = False, groups=None) -> nn.Module:
    """Set each layer group's precision; int8 activation scales are calibrated on ``calib`` batches
    (tensors or (x, y) pairs) with ``method`` (one of :data:`CALIBRATION_METHODS`). ``groups``: the
    family's layer groups (default: those of an mbv2 Net, see :func:`_groups`)."""
    model.eval()
    mbv2 = groups is None
    groups = _groups(model, candidate, groups)
    if mbv2 and len(model.blocks) != len(groups) - 3:
        raise ValueError(f"model has {len(model.blocks)} blocks but the candidate has {len(groups) - 3}")
    int8 = False
    for parent, attr, prec in groups:
        if prec not in ("fp32", "fp16", "int8"):
            raise ValueError(f"unknown precision {prec!r}; expected fp32, fp16 or int8")
        if prec == "int8":
            m = getattr(parent, attr)
            fold_bn(m)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                setattr(parent, attr, QuantLayer(m))
            else:
                _wrap_int8(m)
            int8 = True
    if int8:
        if calib is None:
            raise ValueError("int8 layers need calibration batches")
        if quantize_outputs:
            _link_outputs(model)
        calibrate(model, calib, method, percentile)
    _half(groups)
    return model


def _half(groups: list[tuple[nn.Module, str, str]]) -> None:
    for parent, attr, prec in groups:
        if prec == "fp16" and not isinstance(getattr(parent, attr), Half):
            setattr(parent, attr, Half(getattr(parent, attr)))


def apply_fp16(model: nn.Module, groups) -> nn.Module:
    """Wrap the modules of the fp16 layer groups in :class:`Half` (after int8 and distillation)."""
    _half(_groups(model, None, groups))  # type: ignore[arg-type]
    return model


def quantize_model(model: nn.Module, calib: Iterable[torch.Tensor], method: str = "minmax", percentile: float = 99.99,
                   skip: Iterable[nn.Module] = ()) -> nn.Module:
    """int8 PTQ of a generic model (every Conv2d/Linear except ``skip``), BatchNorm folded where it
    directly follows a conv in an ``nn.Sequential``. Output quantization is not linked (generic
    graphs have no known producer/consumer chain)."""
    model.eval()
    fold_bn(model)
    skip_ids = {id(m) for m in skip}

    def wrap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, (nn.Conv2d, nn.Linear)) and id(child) not in skip_ids:
                setattr(module, name, QuantLayer(child))
            elif not isinstance(child, QuantLayer):
                wrap(child)

    wrap(model)
    return calibrate(model, calib, method, percentile)


# --------------------------------------------------------------------------- QAT


def qat(model: nn.Module, data, steps: int, lr: float = 1e-4, batch_size: int = 128, seed: int = 0) -> nn.Module:
    """Quantization-aware fine-tuning of a model produced by :func:`apply`: ``steps`` Adam steps
    through the fake-quant ops (straight-through estimator). ``data`` is an
    :class:`autocomp.data.Dataset` (its training split is used) or an iterable of (x, y) batches
    (cycled). BatchNorm statistics stay frozen; weight scales are refreshed every step."""
    if steps <= 0:
        return model.eval()
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()

    def stream():
        epoch = 0
        while True:
            if hasattr(data, "batches"):
                yield from data.batches(data.train, batch_size, shuffle=True, seed=seed + epoch)
            else:
                yield from data
            epoch += 1

    for step, (x, y) in enumerate(stream()):
        if step >= steps:
            break
        out = model(x).float()
        loss = nn.functional.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QuantLayer):
                m.w_scale.copy_(weight_scale(m.layer.weight))
    return model
