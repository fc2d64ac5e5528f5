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

The int8 export scheme (``int8_export``, chosen per device: :meth:`autocomp.measure.Device.int8_scheme`):

* ``dequant`` (the scheme before issue 18): Q/DQ on the input and weight of every int8 layer only.
  Runtimes without integer fusion run DequantizeLinear + float conv, which agrees with PyTorch
  fake-quant to float rounding; on ONNX Runtime it was 7.5x *slower* than fp32 (weights and
  activations dequantized every run).
* ``fused``: the *output* of an int8 layer that feeds another int8 layer directly (through ReLU,
  Identity, flatten/reshape or a channel permutation only: stem -> first block conv, expand ->
  depthwise -> project, the two halves of a low-rank pair; found by tracing the model with
  ``torch.fx``) is quantized too, with the consumer's input scale, before the activation. For
  symmetric int8 (zero point 0) ReLU commutes with quantization, so this is lossless w.r.t.
  quantizing after the ReLU; it is the DQ -> Conv -> Q graph integer engines fuse into int8 convs
  with int8 outputs (ONNX Runtime's QLinearConv, OpenVINO's low-precision pipeline, TensorRT). The
  export stores the weights as int8 initializers (``autocomp.export`` folds their QuantizeLinear),
  as those runtimes expect them. A model that cannot be traced keeps its links unset (it is then
  exported as ``dequant`` would export it: correct, not faster).

``reduce_range`` (7-bit weights, [-63, 63]): x86 integer kernels without VNNI/AMX multiply u8
activations by s8 weights with ``vpmaddubsw``, whose int16 pair sums saturate with full-range
weights (2 * 255 * 127 > 32767; ONNX Runtime's accuracy fell ~16 points on an AVX2 host);
with 7-bit weights they cannot (2 * 255 * 64 <= 32767). It is chosen per device host from its CPU
flags (:func:`autocomp.measure.fingerprint.has_int8_dot`) for the ``fused`` scheme on CPU
runtimes; hosts with VNNI/AMX (or ARM's dot product) keep full-range weights.

PTQ is :func:`apply`; QAT is :func:`qat` (fine-tuning through the fake-quant ops with the
straight-through estimator; weight scales follow the weights, activation scales stay calibrated).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from autocomp.space import Candidate

CALIBRATION_METHODS = ("minmax", "percentile", "mse", "entropy")
INT8_EXPORTS = ("fused", "dequant")  # see the module docs
WEIGHT_QMAX = {False: 127, True: 63}  # the largest int8 weight magnitude, by reduce_range
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


def weight_scale(weight: torch.Tensor, qmax: int = 127) -> torch.Tensor:
    """Per-output-channel symmetric int8 scale of a Conv/Linear weight (``qmax``: 127, or 63 with
    ``reduce_range``)."""
    return (weight.detach().flatten(1).abs().amax(1) / float(qmax)).clamp_min(1e-8)


def _fq(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, scale, torch.zeros((), dtype=torch.int32), -128, 127)


class QuantLayer(nn.Module):
    """Fake-quantized Conv2d/Linear: int8 per-tensor symmetric input, int8 per-channel weight,
    optionally an int8 output (quantized with the consumer's input scale, see module docs)."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, int8_export: str = "dequant", reduce_range: bool = False):
        super().__init__()
        self.layer = layer
        self.int8_export = int8_export  # the export scheme this layer was made for (written into the ONNX metadata)
        self.qmax = WEIGHT_QMAX[bool(reduce_range)]
        self.register_buffer("act_scale", torch.tensor(1.0))
        self.register_buffer("w_scale", weight_scale(layer.weight, self.qmax))
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
                self.w_scale.copy_(weight_scale(self.layer.weight, self.qmax))
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

    def train(self, mode: bool = True) -> "QuantLayer":
        super().train(mode)
        if not mode:  # the last training step moved the weights after the scale was taken: exported weights stay in range
            with torch.no_grad():
                self.w_scale.copy_(weight_scale(self.layer.weight, self.qmax))
        return self


def fold_bn(module: nn.Module) -> None:
    """Fold every BatchNorm2d of an nn.Sequential into the conv that produces its input, in place
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``; the BatchNorm becomes an Identity). That conv is the
    previous child, or the last conv of a previous nn.Sequential child (a low-rank pair or Tucker
    triple replaces one conv by a Sequential of convs: left unfolded, an int8 group exported its
    BatchNorm and ran the second conv as a float conv on weights dequantized at every inference)."""
    for child in module.modules():
        if not isinstance(child, nn.Sequential):
            continue
        for i in range(len(child) - 1):
            bn = child[i + 1]
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            owner, idx = _producer(child, i)
            if owner is None:
                continue
            fused = fuse_conv_bn_eval(owner[idx].eval(), bn.eval())
            # a conv without bias gets a new one made from zeros, which the library leaves frozen:
            # it trains with the weights (QAT and distillation run through the folded conv)
            fused.bias.requires_grad_(fused.weight.requires_grad)
            owner[idx], child[i + 1] = fused, nn.Identity()


def _producer(seq: nn.Sequential, i: int) -> tuple[nn.Sequential | None, int]:
    """(Sequential, index) of the Conv2d whose output is ``seq[i]``'s output: ``seq[i]`` itself, or
    the last child of nested Sequentials ending in a conv; (None, -1) when there is none."""
    m = seq[i]
    while isinstance(m, nn.Sequential) and len(m):
        seq, i, m = m, len(m) - 1, m[-1]
    return (seq, i) if isinstance(m, nn.Conv2d) else (None, -1)


def _wrap_int8(module: nn.Module, **scheme) -> None:
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(module, name, QuantLayer(child, **scheme))
        elif not isinstance(child, QuantLayer):
            _wrap_int8(child, **scheme)


# what an int8 output may pass through on its way to the next int8 layer: ops that commute with
# symmetric per-tensor quantization (ReLU with zero point 0, identities, moves of elements)
_PASS_MODULES = (nn.Identity, nn.ReLU, nn.Dropout, nn.Flatten)
_PASS_FUNCTIONS = (torch.relu, torch.nn.functional.relu, torch.flatten, torch.reshape, torch.transpose, torch.permute)
_PASS_METHODS = ("relu", "reshape", "view", "flatten", "transpose", "permute", "contiguous")


class _Tracer(torch.fx.Tracer):
    """QuantLayers and autocomp's parameter-free modules that declare ``quant_transparent`` (e.g. a
    channel shuffle) stay single nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QuantLayer) or getattr(m, "quant_transparent", False) or super().is_leaf_module(m, qualname)


def _passes(node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, _PASS_MODULES) or bool(getattr(m, "quant_transparent", False))
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    return node.op == "call_method" and node.target in _PASS_METHODS


def _link_outputs(model: nn.Module) -> int:
    """Quantize the output of every int8 layer that feeds another int8 layer through ops that
    commute with quantization only (see module docs), with that layer's input scale; returns how
    many were linked (0 when the model cannot be traced with torch.fx). Other readers of the same
    value (a residual add) then read the quantized value too: PyTorch and the export agree."""
    try:
        graph = _Tracer().trace(model)
    except Exception:  # an untraceable network keeps the dequant placement (correct, not fused)
        return 0
    modules = dict(model.named_modules())

    def is_quant(n) -> bool:
        return n.op == "call_module" and isinstance(modules[n.target], QuantLayer)

    linked = 0
    for node in graph.nodes:
        if not is_quant(node):
            continue
        frontier, consumer = [node], None
        while frontier and consumer is None:
            cur = frontier.pop(0)
            for user in cur.users:
                if not user.args or user.args[0] is not cur:
                    continue
                if is_quant(user):
                    consumer = modules[user.target]
                    break
                if _passes(user, modules):
                    frontier.append(user)
        if consumer is not None:
            modules[node.target].quantize_output_as(consumer)
            linked += 1
    return linked


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
          percentile: float = 99.99, int8_export: str = "dequant", reduce_range: bool = False, groups=None) -> nn.Module:
    """Set each layer group's precision; int8 activation scales are calibrated on ``calib`` batches
    (tensors or (x, y) pairs) with ``method`` (one of :data:`CALIBRATION_METHODS`). ``groups``: the
    family's layer groups (default: those of an mbv2 Net, see :func:`_groups`). ``int8_export``
    (one of :data:`INT8_EXPORTS`) and ``reduce_range``: the export scheme (see module docs)."""
    check_scheme(int8_export)
    scheme = {"int8_export": int8_export, "reduce_range": reduce_range}
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
                setattr(parent, attr, QuantLayer(m, **scheme))
            else:
                _wrap_int8(m, **scheme)
            int8 = True
    if int8:
        if calib is None:
            raise ValueError("int8 layers need calibration batches")
        if int8_export == "fused":
            _link_outputs(model)
        calibrate(model, calib, method, percentile)
    _half(groups)
    return model


def check_scheme(int8_export: str) -> None:
    if int8_export not in INT8_EXPORTS:
        raise ValueError(f"unknown int8 export scheme {int8_export!r}; expected one of {INT8_EXPORTS}")


def scheme_label(int8_export: str, reduce_range: bool) -> str:
    """``fused``, ``fused-7bit`` (reduce_range) or ``dequant``: the scheme as tables and metadata record it."""
    return int8_export + ("-7bit" if reduce_range else "")


def int8_metadata(model: nn.Module) -> dict[str, str]:
    """What the ONNX export of ``model`` records of its int8 layers (``autocomp.int8_export``: the
    :func:`scheme_label`, ``autocomp.int8_weight_qmax``: the largest int8 weight magnitude); empty
    without int8 layers."""
    qs = [m for m in model.modules() if isinstance(m, QuantLayer)]
    if not qs:
        return {}
    labels = sorted({scheme_label(q.int8_export, q.qmax < 127) for q in qs})
    return {"autocomp.int8_export": "+".join(labels), "autocomp.int8_weight_qmax": str(max(q.qmax for q in qs))}


def _half(groups: list[tuple[nn.Module, str, str]]) -> None:
    for parent, attr, prec in groups:
        if prec == "fp16" and not isinstance(getattr(parent, attr), Half):
            setattr(parent, attr, Half(getattr(parent, attr)))


def apply_fp16(model: nn.Module, groups) -> nn.Module:
    """Wrap the modules of the fp16 layer groups in :class:`Half` (after int8 and distillation)."""
    _half(_groups(model, None, groups))  # type: ignore[arg-type]
    return model


def quantize_model(model: nn.Module, calib: Iterable[torch.Tensor], method: str = "minmax", percentile: float = 99.99,
                   skip: Iterable[nn.Module] = (), int8_export: str = "dequant", reduce_range: bool = False) -> nn.Module:
    """int8 PTQ of a generic model (every Conv2d/Linear except ``skip``), BatchNorm folded where it
    directly follows a conv in an ``nn.Sequential``; ``int8_export``/``reduce_range`` as :func:`apply`."""
    check_scheme(int8_export)
    model.eval()
    fold_bn(model)
    skip_ids = {id(m) for m in skip}

    def wrap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, (nn.Conv2d, nn.Linear)) and id(child) not in skip_ids:
                setattr(module, name, QuantLayer(child, int8_export, reduce_range))
            elif not isinstance(child, QuantLayer):
                wrap(child)

    wrap(model)
    if int8_export == "fused":
        _link_outputs(model)
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
                m.w_scale.copy_(weight_scale(m.layer.weight, m.qmax))
    return model
