"""Run configuration, budget parsing, and reading the user's YAML/JSON files safely.

A search's configuration is :class:`SearchConfig` plus the evaluation settings and controller
options; ``<run>/config.json`` holds it all, and ``autocomp search --config FILE`` takes the same
fields (:data:`RUN_FILE_KEYS`) from a YAML or JSON file (:func:`read_run_file`).
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from autocomp.errors import UserError, clip

_UNITS = {"s": 1e3, "ms": 1.0, "us": 1e-3, "\u00b5s": 1e-3, "\u03bcs": 1e-3}  # micro sign and Greek mu
# ASCII digits only (re.ASCII: \d is [0-9], not every script's digits)
_BUDGET = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity))\s*([a-z\u00b5\u03bc]+)\s*$",
                     re.I | re.ASCII)
MIN_BUDGET_MS, MAX_BUDGET_MS = 1e-6, 86_400_000.0  # 1 ns .. 1 day: anything outside is not a latency budget
MAX_FILE_BYTES = 1_000_000  # a configuration, space or device file larger than this is not one


def parse_budget(text: str) -> float:
    """A latency budget in milliseconds from '10ms', '10 ms', '0.5ms', '2e-3s', '1500us' or '1500µs'."""
    expected = "a positive number (ASCII digits) with a unit s, ms or us, e.g. 10ms, 0.5 ms, 2e-3s, 1500us"
    text = str(text)
    m = _BUDGET.match(text[:100])
    if not m or len(text) > 100:
        raise UserError("--budget", f"cannot read {clip(text, 60)!r}", expected)
    value, unit = float(m.group(1)), m.group(2)
    if unit.lower() not in _UNITS and unit not in _UNITS:
        raise UserError("--budget", f"unknown unit {unit!r} in {text!r}", expected)
    ms = value * _UNITS.get(unit, _UNITS.get(unit.lower(), 1.0))
    if not math.isfinite(ms) or ms <= 0:
        raise UserError("--budget", f"{text!r} is not a positive finite duration", expected)
    if not MIN_BUDGET_MS <= ms <= MAX_BUDGET_MS:
        raise UserError("--budget", f"{text!r} is outside {MIN_BUDGET_MS:g} ms .. {MAX_BUDGET_MS / 1000:g} s", expected)
    return ms


class SearchConfig(BaseModel):
    """Everything a search run needs; written to <run>/config.json."""

    model_config = {"extra": "forbid"}

    budget_ms: float = Field(gt=0, allow_inf_nan=False)
    trials: int = Field(default=16, ge=1, le=1_000_000)
    seed: int = Field(default=0, ge=0, lt=2**63)
    space: str = "mnist-mbv2"
    device: str = "cpu-ort"
    data: str = "mnist"
    out: Path
    controller: str = "budget"
    address: str | None = None
    concurrency: int | None = Field(default=None, ge=1)
    weights: str = "auto"  # auto | supernet | scratch | PATH.pt (see families.mbv2.supernet_path); with model: its state_dict
    model: str | None = None  # the user's network (family network): torchvision:NAME or module:factory
    input: str | None = None  # its input size CxHxW


MAX_STEPS = 1_000_000


def check_steps(value: Any, field: str, what: str = "recovery steps") -> int:
    """``value`` as a number of training steps (a whole number, 0 .. :data:`MAX_STEPS`); one-line
    UserError naming ``field`` otherwise (a bool, a fraction, text or a negative number)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= MAX_STEPS:
        raise UserError(field, f"got {clip(repr(value), 40)}", f"a whole number of {what}, 0 .. {MAX_STEPS:,} (0: none)")
    return int(value)


def default_run_dir() -> Path:
    return Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")


# --------------------------------------------------------------------------- the user's files


def _read_text(path: Path, field: str, what: str) -> str:
    path = Path(path)
    try:
        if not path.is_file():
            raise UserError(field, f"{str(path)!r} is not a file", what)
        if path.stat().st_size > MAX_FILE_BYTES:
            raise UserError(field, f"{str(path)!r} is {path.stat().st_size:,} bytes", f"{what} under {MAX_FILE_BYTES:,} bytes")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(field, f"{str(path)!r} is not UTF-8 text (byte {e.start})", what) from None
    except OSError as e:
        raise UserError(field, f"{str(path)!r} cannot be read ({e.strerror or type(e).__name__})", what) from None


def read_yaml(path: Path, field: str, what: str = "a YAML file") -> Any:
    """The YAML document in ``path``, loaded safely: at most :data:`MAX_FILE_BYTES`, UTF-8, plain
    data only (yaml's SafeLoader), no aliases (an alias bomb expands exponentially) and no deep
    nesting. Anything else is a one-line UserError naming ``field``."""
    import yaml
    from yaml.composer import Composer
    from yaml.events import AliasEvent

    text = _read_text(path, field, what)

    class _NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(AliasEvent):
                mark = self.peek_event().start_mark
                raise UserError(field, f"{str(path)!r} uses a YAML alias (*) at line {mark.line + 1}",
                                f"{what} without anchors and aliases")
            return Composer.compose_node(self, parent, index)

    try:
        return yaml.load(text, Loader=_NoAliases)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(field, f"{str(path)!r} is invalid YAML{where}", what) from None
    except RecursionError:
        raise UserError(field, f"{str(path)!r} is nested too deeply", what) from None


def read_json_file(path: Path, field: str, what: str = "a JSON object") -> Any:
    """The JSON document in ``path`` (size-limited, UTF-8, not nested too deeply); one-line UserError otherwise."""
    text = _read_text(path, field, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(field, f"{str(path)!r} is not valid JSON (line {e.lineno}: {e.msg})", what) from None
    except RecursionError:
        raise UserError(field, f"{str(path)!r} is nested too deeply", what) from None


# --------------------------------------------------------------------------- --config FILE


RUN_FILE_KEYS = (*SearchConfig.model_fields, "eval", "controller_options", "schema_version", "device_protocol", "model_sha256")
_RUN_FILE_WHAT = "a run configuration (the fields of a run's config.json) in YAML or JSON"


def read_run_file(path: Path, field: str = "--config") -> dict:
    """A run configuration from a YAML or JSON file (a run's config.json is one): a mapping of
    :data:`RUN_FILE_KEYS`; ``budget`` may be given as text ('10ms') instead of ``budget_ms``.
    schema_version, device_protocol and model_sha256 (written by a search, for the record) are dropped. Values are
    checked by :class:`SearchConfig` when the search builds it."""
    raw = read_yaml(path, field, _RUN_FILE_WHAT)
    if not isinstance(raw, dict):
        raise UserError(field, f"{str(path)!r} holds a {type(raw).__name__}", _RUN_FILE_WHAT)
    raw = dict(raw)
    if "budget" in raw:
        if "budget_ms" in raw:
            raise UserError(f"{path}: budget", "given together with budget_ms", "one of budget ('10ms') or budget_ms (10)")
        raw["budget_ms"] = parse_budget(str(raw.pop("budget")))
    unknown = [str(k) for k in raw if k not in RUN_FILE_KEYS]
    if unknown:
        raise UserError(f"{path}: {clip(unknown[0], 60)}", "unknown field", f"one of {', '.join(RUN_FILE_KEYS)}")
    for key in ("eval", "controller_options"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise UserError(f"{path}: {key}", f"is a {type(raw[key]).__name__}", "a mapping")
    raw.pop("schema_version", None)
    raw.pop("device_protocol", None)
    raw.pop("model_sha256", None)
    return raw


def search_config(fields: dict, where: str = "search") -> SearchConfig:
    """A :class:`SearchConfig` from ``fields``; a bad value is one line naming the field."""
    try:
        return SearchConfig(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        got = err.get("input")
        got_s = "" if err["type"] == "missing" else f" (got {clip(repr(got), 80)})"
        raise UserError(f"{where}: {loc}", err["msg"] + got_s) from None
