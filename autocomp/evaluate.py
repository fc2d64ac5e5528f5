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

from autocomp.compress import lowrank, prune, quantize
from autocomp.data import Dataset
from autocomp.errors import UserError
from autocomp.export import to_onnx
from autocomp.measure import get_device
from autocomp.measure.onnxruntime import accuracy as ort_accuracy
from autocomp.models.mbv2 import build, count_params
from autocomp.space import Candidate, SearchSpace
from autocomp.training import train  # noqa: F401 - also autocomp.evaluate.train, as before


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
    train_device: str = "auto"  # from-scratch and recovery training: auto | cpu | cuda (autocomp.training)


@dataclass
class Scored:
    """What scoring a candidate yields: the exported ONNX (bytes) and its figures."""

    onnx: bytes
    accuracy: float
    params: int
    onnx_bytes: int
    wall_s: float


def supernet_path(space: SearchSpace, weights: str) -> Path | None:
    """The supernet checkpoint the settings ask for, or None for training from scratch."""
    from autocomp.models.supernet import default_checkpoint

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


def base_model(candidate: Candidate, space: SearchSpace, data: Dataset, settings: EvalSettings) -> nn.Module:
    """The uncompressed network of ``candidate`` with trained weights (inherited or from scratch)."""
    ckpt = supernet_path(space, settings.weights)
    if ckpt is not None:
        from autocomp.models.supernet import extract

        return extract(candidate, space, ckpt, data, bn_batches=settings.bn_batches, seed=settings.seed)
    model = build(candidate, space, data.num_classes)
    return train(model, data, settings.train_steps, settings.batch_size, settings.lr, settings.seed, settings.train_device)


def calibration_batches(data: Dataset, settings: EvalSettings) -> list[torch.Tensor]:
    calib_split = data.train.subset(settings.batch_size * settings.calib_batches, seed=settings.seed)
    return [x for x, _ in data.batches(calib_split, settings.batch_size)]


def pruned_model(candidate: Candidate, space: SearchSpace, data: Dataset, settings: EvalSettings) -> nn.Module:
    """weights -> prune -> low-rank -> BatchNorm recalibration -> (recovery fine-tune), in fp32."""
    from autocomp.models.supernet import bn_batches_of, recalibrate_bn

    model = base_model(candidate, space, data, settings)
    model = lowrank.apply(prune.apply(model, candidate), candidate)
    if settings.bn_batches > 0:  # removed channels and factorised convs shift the statistics BN expects
        recalibrate_bn(model, bn_batches_of(data, settings.bn_batches, seed=settings.seed))
    return train(model, data, settings.finetune_steps, settings.batch_size, settings.lr / 3, settings.seed + 1,
                 settings.train_device)


def compressed_model(candidate: Candidate, space: SearchSpace, data: Dataset, settings: EvalSettings) -> nn.Module:
    """weights -> prune -> low-rank -> BN recalibration -> quantize: the model that is exported."""
    model = pruned_model(candidate, space, data, settings)
    return quantize.apply(model, candidate, calibration_batches(data, settings))


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

