"""ONNX export. int8 layers carry QuantizeLinear/DequantizeLinear, fp16 layers are fp16 in the graph."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

OPSET = 17


def to_onnx(model: nn.Module, path: Path, input_shape: tuple[int, int, int], dynamic_batch: bool = True) -> Path:
    """Export ``model`` (eval mode) to ``path`` with input ``input`` and output ``logits``."""
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
        )
    return path
