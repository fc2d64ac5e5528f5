"""evaluate(candidate) -> Result: the unit of work a Ray trial runs.

weights (inherited from the space's trained supernet, or trained from scratch) -> prune -> low-rank -> quantize (calibrated) -> export ONNX -> accuracy of the
*exported* model on the validation split, run by ONNX Runtime. The latency of the same ONNX file is
measured separately (``measure_onnx``) so it can run on the node that holds the device.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel
from torch import nn

from autocomp.compress import compress
from autocomp.data import Dataset
from autocomp.export import to_onnx
from autocomp.families import get_family
from autocomp.families.mbv2 import supernet_path  # noqa: F401  (where it used to live)
from autocomp.measure import get_device
from autocomp.measure.onnxruntime import accuracy as ort_accuracy
from autocomp.models.mbv2 import count_params
from autocomp.models.train import train  # noqa: F401  (where it used to live)
from autocomp.space import Candidate, SearchSpace


class EvalSettings(BaseModel):
    """How a trial obtains weights and scores a candidate."""

    weights: str = "auto"  # auto (supernet if one exists for the space, else scratch) | supernet | scratch | PATH.pt
    bn_batches: int = 8  # BatchNorm recalibration batches after inheriting supernet weights
    train_steps: int = 200  # weights from scratch: optimiser steps before compression
    finetune_steps: int = 0  # recovery steps after pruning / low-rank, before quantization
    batch_size: int = 128
    lr: float = 3e-3
    val_size: int = 5000  # validation images used to score a candidate
    calib_batches: int = 4  # int8 activation calibration batches (of the training split)
    seed: int = 0


@dataclass
class Scored:
    """What scoring a candidate yields: the exported ONNX (bytes) and its figures."""

    onnx: bytes
    accuracy: float
    params: int
    onnx_bytes: int
    wall_s: float


def base_model(candidate: Candidate, space: SearchSpace, data: Dataset, settings: EvalSettings) -> nn.Module:
    """The uncompressed network of ``candidate`` with trained weights, from its family (supernet
    extraction, training from scratch, or the user's own weights)."""
    return get_family(space).weights(candidate, space, data, settings)


def calibration_batches(data: Dataset, settings: EvalSettings) -> list[torch.Tensor]:
    calib_split = data.train.subset(settings.batch_size * settings.calib_batches, seed=settings.seed)
    return [x for x, _ in data.batches(calib_split, settings.batch_size)]


def _chain(candidate: Candidate, space: SearchSpace, data: Dataset, settings: EvalSettings, precision: str) -> nn.Module:
    """weights -> the compress chain (prune -> low-rank -> BN recalibration -> recovery -> quantize)."""
    from autocomp.models.supernet import bn_batches_of

    fam = get_family(space)
    model = fam.weights(candidate, space, data, settings)
    bn = bn_batches_of(data, settings.bn_batches, seed=settings.seed) if settings.bn_batches > 0 else None
    recover = lambda m: fam.recover(m, space, data, settings)  # noqa: E731
    calib = calibration_batches(data, settings) if precision != "none" else None
    return compress(model, candidate, fam, space, calib, bn_batches=bn, recover=recover, precision=precision)


def pruned_model(candidate: Candidate, space: SearchSpace, data: Dataset, settings: EvalSettings) -> nn.Module:
    """weights -> prune -> low-rank -> BatchNorm recalibration -> (recovery fine-tune), in fp32."""
    return _chain(candidate, space, data, settings, "none")


def compressed_model(candidate: Candidate, space: SearchSpace, data: Dataset, settings: EvalSettings) -> nn.Module:
    """weights -> prune -> low-rank -> BN recalibration -> quantize: the model that is exported."""
    return _chain(candidate, space, data, settings, "all")


def score(candidate: Candidate, space: SearchSpace, data: Dataset, settings: EvalSettings) -> Scored:
    t0 = time.perf_counter()
    model = compressed_model(candidate, space, data, settings)
    params = count_params(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = to_onnx(model, Path(tmp) / "model.onnx", data.input_shape)
        val = data.val.subset(settings.val_size, seed=settings.seed)
        acc = ort_accuracy(path, data.batches(val, 500))
        blob = path.read_bytes()
    return Scored(blob, acc, params, len(blob), time.perf_counter() - t0)


def measure_onnx(onnx: bytes, device: str, precision: str) -> dict:
    """Latency of an exported model on ``device`` (run this where the device is)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx)
        return get_device(device).measure(path, precision).to_dict()

