"""Compression operators. Each is ``apply(model, candidate, ...) -> model`` and acts physically:
``prune`` removes channels, ``lowrank`` factorises convolutions, ``quantize`` sets per-layer
precision (fp16 casts, int8 QuantizeLinear/DequantizeLinear that survive ONNX export).

``compress`` runs them in the order of the flow: prune -> low-rank -> quantize.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from autocomp.compress import lowrank, prune, quantize
from autocomp.space import Candidate


def compress(model: nn.Module, candidate: Candidate, calib: Iterable[torch.Tensor] | None = None) -> nn.Module:
    model = prune.apply(model, candidate)
    model = lowrank.apply(model, candidate)
    return quantize.apply(model, candidate, calib)

from autocomp._callable import make_callable as _make_callable

_make_callable(__name__)  # autocomp.compress(...) is autocomp.api.compress(...)
