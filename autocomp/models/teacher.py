"""Teacher loading: the network whose soft predictions the winners (and optionally the supernet) distil.

``load_teacher(spec, weights, space, data)``:

* ``spec=None`` (default): the family's teacher: for ``mbv2`` the largest subnet of ``space``,
  extracted from its trained supernet (``supernets/<space>.pt``, or ``weights`` when given: a
  supernet checkpoint path); for ``network`` the user's unmodified network;
* ``"module:factory"`` (e.g. ``mypkg.models:make_teacher``): the module is imported and
  ``factory()`` is called; it must return an ``nn.Module`` with its weights already loaded.
  With ``weights``, a state_dict (``torch.load(weights_only=True)``) is loaded into it on top;
* ``"torchvision:NAME"`` (e.g. ``torchvision:resnet18``) plus ``weights``: the torchvision
  architecture built with ``num_classes`` of the dataset and the state_dict at ``weights`` loaded
  with ``torch.load(weights_only=True)`` (pickled whole models are refused).

Input normalisation: a teacher sees exactly the student's input, ``(x / 255 - mean) / std`` per
pixel with the dataset's mean and std (MNIST: 0.1307, 0.3081; ImageFolder: the training split's),
at the space's input shape (MNIST: 1x28x28, one channel). A teacher trained on other inputs (e.g.
ImageNet RGB statistics) must be wrapped by its factory to accept these. :func:`check_teacher`
runs one batch and refuses a teacher whose output does not have one logit per class.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from autocomp.errors import UserError
from autocomp.models import load_weights

SPEC_HELP = "None (the supernet's largest subnet), 'module:factory' or 'torchvision:NAME' with --teacher-weights"


def _load_state(weights: str | Path) -> dict:
    p = Path(weights)
    sd = load_weights(p, "--teacher-weights", "a state_dict of tensors saved with torch.save (not a pickled model)")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError("--teacher-weights", f"{str(p)!r} is not a state_dict", "a dict of parameter name -> tensor")
    return sd


def _load_into(model: nn.Module, weights: str | Path, spec: str) -> nn.Module:
    try:
        model.load_state_dict(_load_state(weights))
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError("--teacher-weights", f"weights do not fit {spec} ({first[1].strip() if len(first) > 1 else first[0][:160]})",
                        f"a state_dict of {spec}") from None
    return model


def _from_factory(spec: str) -> nn.Module:
    mod_name, _, fn_name = spec.partition(":")
    if not mod_name or not fn_name:
        raise UserError("--teacher", f"{spec!r} is not 'module:factory'", SPEC_HELP)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise UserError("--teacher", f"cannot import module {mod_name!r} ({e})", "an importable module:factory") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise UserError("--teacher", f"module {mod_name!r} has no callable {fn_name!r}", "module:factory naming a function that returns an nn.Module")
    try:
        model = fn()
    except Exception as e:  # noqa: BLE001 - the user's factory: whatever it raises is one line
        raise UserError("--teacher", f"{spec}() raised {type(e).__name__}: {str(e)[:160]}", "module:factory naming a function that returns an nn.Module") from None
    if not isinstance(model, nn.Module):
        raise UserError("--teacher", f"{spec}() returned {type(model).__name__}", "an nn.Module with its weights loaded")
    return model


def _from_torchvision(name: str, weights, num_classes: int) -> nn.Module:
    import torchvision

    if weights is None:
        raise UserError("--teacher-weights", f"torchvision:{name} needs weights", "a state_dict path (torch.load(weights_only=True))")
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise UserError("--teacher", f"unknown torchvision model {name!r}", "a name from torchvision.models.list_models()")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return _load_into(model, weights, f"torchvision:{name}")


def load_teacher(spec: str | None = None, weights: str | Path | None = None, space=None, data=None, bn_batches: int = 4) -> nn.Module:
    """The teacher network in eval mode (see module doc for ``spec``); ``bn_batches``: BatchNorm
    recalibration batches of the default (supernet) teacher."""
    if spec is None or spec in ("", "supernet"):
        from autocomp.families import get_family

        if space is None:
            raise UserError("--teacher", "the default teacher needs a search space", "a SearchSpace")
        return get_family(space).teacher(space, data, weights, bn_batches).eval()
    if spec.startswith("torchvision:"):
        num_classes = data.num_classes if data is not None else (space.num_classes if space is not None else 1000)
        return _from_torchvision(spec.split(":", 1)[1], weights, num_classes).eval()
    model = _from_factory(spec)
    if weights is not None:
        _load_into(model, weights, spec)
    return model.eval()


@torch.no_grad()
def check_teacher(model: nn.Module, data, batch_size: int = 8) -> None:
    """Run one batch of ``data`` through ``model``; UserError when input or class count do not fit."""
    x, _ = next(data.batches(data.val if len(data.val) else data.train, batch_size))
    shape = "x".join(map(str, x.shape[1:]))
    model.eval()
    try:
        out = model(x)
    except Exception as e:  # noqa: BLE001 - a shape mismatch surfaces as any of several errors
        raise UserError("--teacher", f"fails on the dataset's input of shape {shape} ({type(e).__name__}: {str(e)[:160]})",
                        f"a model taking N x {shape} inputs normalised as {data.norm_text()}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError("--teacher", f"output is {got}", f"logits of shape (N, {data.num_classes})")
    if out.shape[1] != data.num_classes:
        raise UserError("--teacher", f"outputs {out.shape[1]} classes but dataset {data.name!r} has {data.num_classes}",
                        f"a classifier with {data.num_classes} outputs")
