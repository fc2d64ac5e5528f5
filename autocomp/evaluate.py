"""evaluate(candidate) -> Result: the unit of work a Ray trial runs.

weights (inherited from the space's trained supernet, or trained from scratch) -> prune -> low-rank
-> BatchNorm recalibration -> quantize (calibrated) -> export ONNX -> accuracy of the *exported*
model on a validation subset, run by ONNX Runtime. The latency of the same ONNX file is measured
separately (``measure_onnx``) so it can run on the node that holds the device.

Cost (one core, default space): the BatchNorm statistics are re-estimated **once**, after
compression (pruning ranks channels by weight magnitude and low-rank reads only weights, so
statistics estimated before them were overwritten unread), on ``bn_images`` training images in
small channels-last batches (a batch of 32 runs ~4x faster per image than one of 256: the
activations stay in cache). The accuracy is measured on ``val_size`` validation images and
carries its binomial standard error; :func:`confirm` re-scores the winners on the whole split.
``benchmarks/eval_cost.py`` measures the cost and the ranking against the settings used before
(:data:`BEFORE`).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from autocomp.compress import compress
from autocomp.data import Dataset
from autocomp.export import to_onnx
from autocomp.families import get_family
from autocomp.families.mbv2 import supernet_path  # noqa: F401  (where it used to live)
from autocomp.measure import get_device
from autocomp.measure.base import Int8Scheme
from autocomp.measure.onnxruntime import ACCURACY_BATCH
from autocomp.measure.onnxruntime import accuracies as ort_accuracies
from autocomp.measure.onnxruntime import accuracy as ort_accuracy
from autocomp.models.mbv2 import count_params
from autocomp.space import Candidate, SearchSpace
from autocomp.training import train  # noqa: F401 - also autocomp.evaluate.train, as before


class EvalSettings(BaseModel):
    """How a trial obtains weights and scores a candidate (an unknown setting is an error, not ignored)."""

    model_config = ConfigDict(extra="forbid")

    weights: str = "auto"  # auto (supernet if one exists for the space, else scratch) | supernet | scratch | PATH.pt
    bn_images: int = 512  # training images that re-estimate BatchNorm statistics after compression (0: keep them)
    bn_batch_size: int = 32
    bn_after_extract: bool = False  # also recalibrate right after extraction (the cost paid before issue 21)
    channels_last: bool = True  # channels-last tensors for the PyTorch passes (statistics, int8 calibration)
    train_steps: int = 200  # weights from scratch: optimiser steps before compression
    finetune_steps: int = 0  # recovery steps after pruning / low-rank, before quantization (--recovery-steps)
    batch_size: int = 128  # training batches (from scratch, recovery)
    lr: float = 3e-3
    val_size: int = 2000  # validation images used to score a candidate (standard error ~0.3 points at 98%)
    val_batch_size: int = ACCURACY_BATCH  # small batches run fastest in ONNX Runtime (measure/onnxruntime.py)
    calib_images: int = 256  # int8 activation calibration images (of the training split)
    calib_batch_size: int = 32
    seed: int = 0
    train_device: str = "auto"  # from-scratch and recovery training: auto | cpu | cuda (autocomp.training)


# the evaluation settings before issue 21 (two recalibrations of 8 x 256 images, NCHW, 5000 validation
# images in batches of 500, 4 x 128 calibration images): benchmarks/eval_cost.py compares against them
BEFORE = dict(bn_images=2048, bn_batch_size=256, bn_after_extract=True, channels_last=False, val_size=5000,
              val_batch_size=500, calib_images=512, calib_batch_size=128)


@dataclass
class Scored:
    """What scoring a candidate yields: the exported ONNX (bytes) and its figures."""

    onnx: bytes
    accuracy: float
    params: int
    onnx_bytes: int
    wall_s: float
    accuracy_se: float = 0.0  # binomial standard error of ``accuracy`` on ``val_images`` images
    val_images: int = 0
    int8_export: str = "dequant"  # the int8 export scheme (Int8Scheme.label) the model was exported with


def base_model(candidate: Candidate, space: SearchSpace, data: Dataset, settings: EvalSettings) -> nn.Module:
    """The uncompressed network of ``candidate`` with trained weights, from its family (supernet
    extraction, training from scratch, or the user's own weights)."""
    return get_family(space).weights(candidate, space, data, settings)


def _layout(x: torch.Tensor, settings: EvalSettings) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if settings.channels_last else x


def calibration_batches(data: Dataset, settings: EvalSettings) -> list[torch.Tensor]:
    calib_split = data.train.subset(settings.calib_images, seed=settings.seed)
    return [_layout(x, settings) for x, _ in data.batches(calib_split, settings.calib_batch_size)]


def bn_batches(data: Dataset, settings: EvalSettings) -> list[torch.Tensor]:
    """The training images that re-estimate BatchNorm statistics (a fixed subset: same seed, same statistics)."""
    split = data.train.subset(settings.bn_images, seed=settings.seed)
    return [_layout(x, settings) for x, _ in data.batches(split, settings.bn_batch_size)]


def _chain(candidate: Candidate, space: SearchSpace, data: Dataset, settings: EvalSettings, precision: str,
           int8: Int8Scheme | None = None) -> nn.Module:
    """weights -> the compress chain (prune -> low-rank -> BN recalibration -> recovery -> quantize);
    ``int8``: the target device's int8 export scheme (:meth:`autocomp.measure.Device.int8_scheme`;
    None: ``dequant``, full-range weights)."""
    fam = get_family(space)
    model = fam.weights(candidate, space, data, settings)
    bn = bn_batches(data, settings) if settings.bn_images > 0 else None
    recover = lambda m: fam.recover(m, space, data, settings)  # noqa: E731
    calib = calibration_batches(data, settings) if precision != "none" else None
    return compress(model, candidate, fam, space, calib, bn_batches=bn, recover=recover, precision=precision,
                    **(int8 or Int8Scheme()).compress_kwargs())


def pruned_model(candidate: Candidate, space: SearchSpace, data: Dataset, settings: EvalSettings) -> nn.Module:
    """weights -> prune -> low-rank -> BatchNorm recalibration -> (recovery fine-tune), in fp32."""
    return _chain(candidate, space, data, settings, "none")


def compressed_model(candidate: Candidate, space: SearchSpace, data: Dataset, settings: EvalSettings,
                     int8: Int8Scheme | None = None) -> nn.Module:
    """weights -> prune -> low-rank -> BN recalibration -> quantize: the model that is exported
    (``int8``: the device's int8 export scheme, see :func:`_chain`)."""
    return _chain(candidate, space, data, settings, "all", int8)


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` images."""
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / n) if n > 0 else float("nan")


def score(candidate: Candidate, space: SearchSpace, data: Dataset, settings: EvalSettings,
          int8: Int8Scheme | None = None) -> Scored:
    """Compress ``candidate`` as the device's int8 scheme says (``int8``: :func:`device_int8_scheme`
    of the run's device; None: ``dequant``), export it and score the exported model."""
    t0 = time.perf_counter()
    int8 = int8 or Int8Scheme()
    model = compressed_model(candidate, space, data, settings, int8)
    params = count_params(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = to_onnx(model.to(memory_format=torch.contiguous_format), Path(tmp) / "model.onnx", data.input_shape)
        val = data.val.subset(settings.val_size, seed=settings.seed)
        # as many ONNX Runtime threads as PyTorch uses here (a trial: the CPUs it holds)
        acc = ort_accuracies(path, {"val": data.batches(val, settings.val_batch_size)}, torch.get_num_threads())["val"]
        blob = path.read_bytes()
    return Scored(blob, acc, params, len(blob), time.perf_counter() - t0, standard_error(acc, len(val)), len(val), int8.label)


def confirm(onnx: bytes, data: Dataset, batch_size: int = ACCURACY_BATCH) -> tuple[float, float, int]:
    """(accuracy, standard error, images) of an exported model on the whole validation split: the
    winners of a search, scored on a subset, are confirmed with it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx)
        acc = ort_accuracy(path, data.batches(data.val, batch_size))
    return acc, standard_error(acc, len(data.val)), len(data.val)


def confirm_candidates(candidates: list[Candidate], space: SearchSpace, data: Dataset, settings: EvalSettings,
                       int8: Int8Scheme | None = None) -> list[Scored]:
    """``candidates`` scored again on the whole validation split (the winners of a search, chosen on a subset)."""
    full = settings.model_copy(update={"val_size": len(data.val)})
    return [score(c, space, data, full, int8) for c in candidates]


def device_int8_scheme(device) -> Int8Scheme:
    """The int8 export scheme of ``device`` (a Device), decided on the node that holds it when Ray
    runs (its CPU decides; :meth:`autocomp.measure.Device.int8_scheme`), else here."""
    from autocomp.cluster import measures_here, on_device

    if measures_here(device):  # this process measures it: the Device itself (it need not be registered)
        return device.int8_scheme()
    return Int8Scheme(**on_device(device, _int8_scheme_here, device.name))


def _int8_scheme_here(device_name: str) -> dict:
    s = get_device(device_name).int8_scheme()
    return {"export": s.export, "reduce_range": s.reduce_range}


def measure_onnx(onnx: bytes, device: str, precision: str) -> dict:
    """Latency of an exported model on ``device`` (run this where the device is)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx)
        return get_device(device).measure(path, precision).to_dict()

