"""Run configuration and budget parsing."""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from autocomp.errors import UserError

_UNITS = {"s": 1e3, "ms": 1.0, "us": 1e-3, "µs": 1e-3}
_BUDGET = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity))\s*([a-zµ]+)\s*$", re.I)


def parse_budget(text: str) -> float:
    """A latency budget in milliseconds from '10ms', '10 ms', '0.5ms', '2e-3s' or '1500us'."""
    m = _BUDGET.match(str(text))
    expected = "a positive finite number with a unit s, ms or us, e.g. 10ms, 0.5 ms, 2e-3s, 1500us"
    if not m:
        raise UserError("--budget", f"cannot read {text!r}", expected)
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit not in _UNITS:
        raise UserError("--budget", f"unknown unit {m.group(2)!r} in {text!r}", expected)
    if not math.isfinite(value) or value <= 0:
        raise UserError("--budget", f"{text!r} is not a positive finite duration", expected)
    return value * _UNITS[unit]


class SearchConfig(BaseModel):
    """Everything a search run needs; written to <run>/config.json."""

    budget_ms: float = Field(gt=0)
    trials: int = Field(default=16, ge=1)
    seed: int = 0
    space: str = "mnist-mbv2"
    device: str = "cpu-ort"
    data: str = "mnist"
    out: Path
    controller: str = "random"
    address: str | None = None
    concurrency: int | None = None
    weights: str = "auto"  # auto | supernet | scratch | PATH.pt (see families.mbv2.supernet_path); with model: its state_dict
    model: str | None = None  # the user's network (family network): torchvision:NAME or module:factory
    input: str | None = None  # its input size CxHxW


def default_run_dir() -> Path:
    return Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")
