"""Compression operators. Each is ``apply(model, candidate, ...) -> model`` and acts physically:
``prune`` removes channels, ``lowrank`` factorises convolutions, ``quantize`` sets per-layer
precision (fp16 casts, int8 QuantizeLinear/DequantizeLinear that survive ONNX export).

:func:`compress` is the one chain of the flow, used by evaluation, measurement campaigns and
deployment alike: prune (and skip blocks) -> low-rank -> BatchNorm recalibration -> recovery
(fine-tuning or distillation, the caller's) -> quantize (calibrated). The model family says which
channels, convolutions and layer groups each step acts on (:mod:`autocomp.families`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from autocomp.compress import lowrank, prune, quantize
from autocomp.space import Candidate


def _family(family: Any, space: Any):
    if family is not None and not isinstance(family, str):
        return family
    from autocomp.families import get_family

    return get_family(family or (space if space is not None else "mbv2"))


def compress(model: nn.Module, candidate: Candidate, family: Any = None, space: Any = None,
             calib: Iterable[torch.Tensor] | None = None, *, bn_batches: Iterable[torch.Tensor] | None = None,
             recover: Callable[[nn.Module], nn.Module] | None = None, importance: str = "l1",
             precision: str = "all", method: str = "minmax", int8_export: str = "dequant",
             reduce_range: bool = False) -> nn.Module:
    """The compressed ``model`` of ``candidate`` (in place where the operators allow).

    ``family``: a Family, its name, or None (the space's; mbv2 without a space). ``bn_batches``:
    input batches that re-estimate BatchNorm statistics after pruning and factorisation (None:
    none). ``recover``: a function run on the fp32 pruned model before quantization (recovery
    fine-tuning or distillation). ``calib``: int8 calibration batches. ``precision``: ``all``
    (the candidate's precisions), ``no-fp16`` (int8 only; fp16 casts come later, see
    :func:`apply_fp16`) or ``none`` (stop before quantization, fp32). ``int8_export`` (``fused`` | ``dequant``) and
    ``reduce_range``: the int8 export scheme of the device that will run the model
    (:meth:`autocomp.measure.Device.int8_scheme`; see :mod:`autocomp.compress.quantize`): the
    search, the latency campaigns and deployment pass the same one, so what is measured, predicted
    and deployed is one model."""
    quantize.check_scheme(int8_export)
    fam = _family(family, space)
    model = fam.prune(model, candidate, space, importance)
    model = fam.factorize(model, candidate, space)
    if bn_batches is not None:
        from autocomp.models.supernet import recalibrate_bn

        batches = list(bn_batches)
        if batches:  # removed channels and factorised convs shift the statistics BN expects
            if batches[0].dim() == 4 and batches[0].is_contiguous(memory_format=torch.channels_last):
                model = model.to(memory_format=torch.channels_last)  # the layout of the batches (faster on CPU)
            recalibrate_bn(model, batches)
    if recover is not None:
        model = recover(model)
    if precision == "none":
        return model
    groups = fam.groups(candidate, space)
    if precision == "no-fp16":
        groups = [g if g.precision != "fp16" else _as(g, "fp32") for g in groups]
    return quantize.apply(model, candidate, calib, method=method, groups=groups, int8_export=int8_export,
                          reduce_range=reduce_range)


def _as(group, precision: str):
    from dataclasses import replace

    return replace(group, precision=precision)


def apply_fp16(model: nn.Module, candidate: Candidate, family: Any = None, space: Any = None) -> nn.Module:
    """The fp16 casts of the candidate's fp16 layer groups (after ``compress(precision="no-fp16")``)."""
    fam = _family(family, space)
    return quantize.apply_fp16(model, fam.groups(candidate, space))


from autocomp._callable import make_callable as _make_callable

_make_callable(__name__)  # autocomp.compress(...) is autocomp.api.compress(...)
