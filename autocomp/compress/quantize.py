"""Per-layer precision: fp32 (unchanged), fp16 (the layer group runs in half precision, with casts
at its borders), int8 (weights per-channel symmetric, activations per-tensor symmetric with a scale
calibrated on real batches; BatchNorm folded first). int8 is expressed with PyTorch fake-quant ops,
which the ONNX exporter writes as QuantizeLinear/DequantizeLinear pairs around exactly those layers:
TensorRT's explicit-quantization form."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from autocomp.space import Candidate


class Half(nn.Module):
    """Runs the wrapped module in fp16; inputs and outputs stay fp32 at its borders."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()


class QuantLayer(nn.Module):
    """Fake-quantized Conv2d/Linear: int8 per-tensor input, int8 per-channel weight."""

    def __init__(self, layer: nn.Conv2d | nn.Linear):
        super().__init__()
        self.layer = layer
        self.register_buffer("act_scale", torch.tensor(1.0))
        self.calibrating = False
        w = layer.weight.detach().flatten(1)
        self.register_buffer("w_scale", (w.abs().amax(1) / 127.0).clamp_min(1e-8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.act_scale = torch.maximum(self.act_scale, x.detach().abs().amax() / 127.0)
            return self.layer(x)
        zp = torch.zeros(len(self.w_scale), dtype=torch.int32)
        w = torch.fake_quantize_per_channel_affine(self.layer.weight, self.w_scale, zp, 0, -128, 127)  # ONNX range; symmetric scale never reaches -128
        x = torch.fake_quantize_per_tensor_affine(x, self.act_scale, 0, -128, 127)
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, w, self.layer.bias)
        c = self.layer
        return nn.functional.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)


def fold_bn(module: nn.Module) -> None:
    """Fold every Conv2d -> BatchNorm2d pair of nn.Sequential children into the conv, in place."""
    for child in module.modules():
        if not isinstance(child, nn.Sequential):
            continue
        for i in range(len(child) - 1):
            conv, bn = child[i], child[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                std = (bn.running_var + bn.eps).sqrt()
                gain = bn.weight.detach() / std
                fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, bias=True)
                fused.weight.data.copy_(conv.weight.detach() * gain[:, None, None, None])
                bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
                fused.bias.data.copy_(bn.bias.detach() + (bias - bn.running_mean) * gain)
                child[i], child[i + 1] = fused, nn.Identity()


def _wrap_int8(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(module, name, QuantLayer(child))
        else:
            _wrap_int8(child)


def _groups(model: nn.Module, candidate: Candidate) -> list[tuple[nn.Module, str, str]]:
    """(parent, attribute, precision) of every layer group in candidate order."""
    out = [(model, "stem", candidate.stem_precision)]
    precs = [b.precision for s in candidate.stages for b in s.blocks]
    out += [(model.blocks, str(i), p) for i, p in enumerate(precs)]
    out += [(model, "head", candidate.head_precision), (model, "classifier", candidate.head_precision)]
    return out


@torch.no_grad()
def apply(model: nn.Module, candidate: Candidate, calib: Iterable[torch.Tensor] | None = None) -> nn.Module:
    """Set each layer group's precision; int8 scales are calibrated on ``calib`` batches."""
    model.eval()
    groups = _groups(model, candidate)
    if len(model.blocks) != len(groups) - 3:
        raise ValueError(f"model has {len(model.blocks)} blocks but the candidate has {len(groups) - 3}")
    int8 = False
    for parent, attr, prec in groups:
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
        qs = [m for m in model.modules() if isinstance(m, QuantLayer)]
        for q in qs:
            q.calibrating, q.act_scale = True, torch.tensor(1e-8)
        for x in calib:
            model(x)
        for q in qs:
            q.calibrating = False
    for parent, attr, prec in groups:
        if prec == "fp16":
            setattr(parent, attr, Half(getattr(parent, attr)))
    return model
