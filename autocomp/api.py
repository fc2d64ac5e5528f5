"""autocomp as a library: ``search``, ``compress``, ``measure`` (the command line is a thin layer over
the same pipeline).

::

    import autocomp

    run = autocomp.search("mnist-mbv2", "mnist", budget="2ms", trials=8)
    run.best                 # the most accurate candidate under the budget (dict), or None
    run.front                # the Pareto front (accuracy vs measured latency)
    run.results              # every evaluation: a pandas DataFrame (results.csv)
    run.report()             # report.html + summary.md in the run directory
    run.export(run.best["id"])   # ONNX + policy.json + metrics, verified on the device

    run = autocomp.search(my_cnn, (train_ds, test_ds), budget="1ms")   # your nn.Module object, your torch Datasets

    model = autocomp.compress(net, policy, data)           # prune -> low-rank -> quantize
    autocomp.measure("model.onnx", "cpu-ort")              # median / p90 ms with its protocol

The network is a space name or YAML path, a SearchSpace, a spec of the command line
(``'torchvision:NAME'`` with ``weights=`` and ``input=``, ``'package.module:factory'``), or an
``nn.Module`` object (its weights loaded): the ``network`` family derives its space from the object
(:func:`autocomp.families.network.live_space`; ``input`` defaults to the data's item size), Ray ships
it to the trial workers through its object store, and the object itself is never changed.
config.json records it as ``python:ClassName`` with the SHA-256 of its state_dict
(``model_sha256``): such a run resumes from Python only, with an object of the same state_dict.

Data are the dataset spec of the command line (``"mnist"``, ``"imagefolder:PATH"``,
``"module:factory"``), an :class:`autocomp.data.Dataset`, or the user's torch Datasets: one
Dataset (split per class 80/10/10), ``(train, test)`` or ``{"train": ..., "test": ..., "val": ...}``
(see :func:`autocomp.data.from_torch`). Progress goes to ``callbacks``: each is called as
``callback(event, payload)`` with ``("row", row)`` for every evaluation recorded and
``("summary", summary)`` at the end; ``verbose=False`` silences the console output.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autocomp.errors import UserError

Callback = Callable[[str, dict], Any]


# --------------------------------------------------------------------------- search


@dataclass
class Run:
    """A search run: its directory (the one source of truth) and, while in this process, the space
    and data it was given."""

    dir: Path
    summary: dict
    _space: Any = field(default=None, repr=False)
    _data: Any = field(default=None, repr=False)

    @classmethod
    def open(cls, run_dir: str | Path) -> "Run":
        """A finished run directory (written by ``autocomp search`` or :func:`search`)."""
        from autocomp.rundir import read_json

        d = Path(run_dir)
        if not (d / "summary.json").is_file():
            raise UserError("run", f"{d} has no summary.json", "a finished run directory")
        return cls(d, read_json(d / "summary.json", "run summary"))

    @property
    def front(self) -> list[dict]:
        """The Pareto front (accuracy vs measured latency), fastest first."""
        return list(self.summary.get("pareto_front") or [])

    @property
    def best(self) -> dict | None:
        """The most accurate candidate whose measured latency fits the budget (None: none fits)."""
        return self.summary.get("best_under_budget")

    @property
    def results(self):
        """Every evaluation of the run (results.csv) as a pandas DataFrame, by trial."""
        from autocomp.rundir import results_frame

        return results_frame(self.dir / "results.csv")

    def report(self) -> Path:
        """Write report.html, summary.md and results.parquet into the run directory; the HTML's path."""
        from autocomp.report import write_report

        return write_report(self.dir)

    def export(self, cand_id: str, distill_steps: int = 0, out: str | Path | None = None, verbose: bool = True) -> dict:
        """Export candidate ``cand_id`` (optionally distilled from the default teacher for
        ``distill_steps``) into ``<run>/models/<id>/`` (or ``out``): ONNX, policy.json, metrics
        measured on the run's device. Returns the metrics."""
        from rich.console import Console

        from autocomp.deploy import export_winner
        from autocomp.distill import KDConfig
        from autocomp.models.teacher import load_teacher
        from autocomp.rundir import load_context, positive_ms
        from autocomp.space import Candidate

        if self._space is not None and self._data is not None:
            ctx = _context_with(self.dir, self._space, self._data)
        else:
            ctx = load_context(self.dir)
        rows = {r["id"]: r for r in ctx.rows}
        if cand_id not in rows:
            raise UserError("id", f"no candidate {str(cand_id)[:40]!r} in {self.dir}/results.csv", f"one of {sorted(rows)[:5]}")
        row = rows[cand_id]
        cand = Candidate.from_json(row["policy"])
        kd = KDConfig(steps=distill_steps, seed=ctx.settings.seed, device=ctx.settings.train_device) if distill_steps else None
        teacher = load_teacher(None, None, space=ctx.space, data=ctx.data) if kd else None
        return export_winner(cand, ctx.space, ctx.data, ctx.device, teacher, Path(out) if out else self.dir / "models" / cand_id,
                             ctx.settings, kd, predicted_latency_ms=positive_ms(row.get("predicted_latency_ms")),
                             budget_ms=ctx.budget_ms, console=Console(quiet=not verbose))


def _context_with(run_dir: Path, space, data):
    """The run's context with the space and data this process gave the search."""
    from autocomp.evaluate import EvalSettings
    from autocomp.measure import get_device
    from autocomp.rundir import RunContext, read_json, read_results, run_budget

    cfg = read_json(run_dir / "config.json", "run configuration")
    device = get_device(cfg["device"])
    settings = EvalSettings(**{k: v for k, v in cfg.get("eval", {}).items() if k in EvalSettings.model_fields})
    ctx = RunContext(run_dir, cfg, read_results(run_dir / "results.csv"), run_budget(run_dir, cfg), device,
                     space.restrict_precisions(list(device.precisions)), settings)
    ctx.data = data  # the dataset object of this process (a torch Dataset has no spec to reload)
    return ctx


def _is_network_spec(text: str) -> bool:
    """'torchvision:NAME' or 'package.module:factory' (a user's network), not a space name or YAML path."""
    return text.startswith("torchvision:") or (":" in text and not Path(text).exists() and not text.endswith((".yaml", ".yml")))


def _is_module(obj) -> bool:
    try:
        from torch import nn
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, nn.Module)


def _space_of(model_or_space, weights: str = "auto", input: str | None = None):
    """(space name for config.json, SearchSpace or None for the pipeline to look up, network spec or None)."""
    from autocomp.space import SearchSpace

    if isinstance(model_or_space, (str, Path)):
        text = str(model_or_space)
        if isinstance(model_or_space, str) and _is_network_spec(text):  # the network family derives its space
            from autocomp.families.network import space_for

            space = space_for(text, text, weights, input)
            return space.name, space, text
        return text, None, None
    if isinstance(model_or_space, SearchSpace):
        return model_or_space.name, model_or_space, None
    if _is_module(model_or_space):  # the object itself: Ray ships it to the workers
        from autocomp.families.network import live_space, parse_input

        if weights != "auto":
            raise UserError("weights", f"{weights!r} given with an nn.Module object", "the weights loaded into the object (no weights=)")
        if input is None:
            raise UserError("input", "not given and not inferred from the data", "input='CxHxW', the size the network takes")
        space = live_space(model_or_space, parse_input(input))
        return space.name, space, space.network.model
    raise UserError("model_or_space", f"a {type(model_or_space).__name__}",
                    "a search space name, a YAML path, a SearchSpace, an nn.Module, or 'torchvision:NAME' / 'module:factory'")


def as_dataset(data, input_shape: tuple[int, int, int] | None = None):
    """``data`` as what the pipeline takes: (spec string, Dataset or None to load from the spec)."""
    from autocomp.data import Dataset, from_torch

    if isinstance(data, str):
        return data, None
    if isinstance(data, Dataset):
        return data.name, data
    name = "python:" + type(data).__name__
    if isinstance(data, dict):
        unknown = set(data) - {"train", "val", "test"}
        if "train" not in data or unknown:
            raise UserError("data", f"a dict with keys {sorted(map(str, data))[:5]}", "keys train and test (and optionally val)")
        name = "python:" + type(data["train"]).__name__
        return name, from_torch(data["train"], data.get("test"), data.get("val"), name=name, input_shape=input_shape)
    if isinstance(data, tuple) and len(data) in (2, 3):
        name = "python:" + type(data[0]).__name__
        return name, from_torch(data[0], data[1], data[2] if len(data) == 3 else None, name=name, input_shape=input_shape)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return name, from_torch(data, name=name, input_shape=input_shape)
    raise UserError("data", f"a {type(data).__name__}", "'mnist', 'imagefolder:PATH', 'module:factory', an autocomp Dataset or torch Dataset(s)")


def search(model_or_space="mnist-mbv2", data="mnist", budget: str | float = "10ms", device: str = "cpu-ort", *,
           trials: int = 16, seed: int = 0, out: str | Path | None = None, controller: str = "budget",
           controller_options: dict | None = None, address: str | None = None, concurrency: int | None = None,
           weights: str = "auto", train_steps: int = 100, train_device: str = "auto", val_size: int | None = None,
           calibrate: int = 20, top_k: int = 0, distill_steps: int = 0, resume: bool = False,
           callbacks: Iterable[Callback] = (), verbose: bool = True, input: str | None = None,
           recovery_steps: int = 0) -> Run:
    """Search ``model_or_space`` (a space name or YAML path, a SearchSpace, or the user's own network:
    an nn.Module object, or ``'torchvision:NAME'`` / ``'package.module:factory'`` with ``weights='w.pt'``;
    ``input='3x32x32'``, for an object by default the data's item size: the ``network`` family derives
    its space) for the most accurate candidates under ``budget`` (``"10ms"`` or a number
    of milliseconds) on ``device``. The options are those of ``autocomp search`` (``calibrate=0``:
    no latency model, nothing filtered; ``recovery_steps``: recovery of each candidate before it is
    quantized, by distillation from the unmodified network for a user's network, 0: none). Returns
    the :class:`Run`; its directory is ``out`` (default ``reports/<timestamp>``). Bad input raises :class:`autocomp.errors.UserError` before anything runs."""
    from rich.console import Console

    from autocomp.config import SearchConfig, default_run_dir, parse_budget
    from autocomp.pipeline import run_search

    callbacks = list(callbacks)
    for cb in callbacks:
        if not callable(cb):
            raise UserError("callbacks", f"a {type(cb).__name__}", "callables taking (event, payload)")
    from autocomp.config import check_steps

    check_steps(recovery_steps, "recovery_steps")
    budget_ms = parse_budget(budget) if isinstance(budget, str) else float(budget)
    if not (budget_ms > 0 and budget_ms != float("inf")):
        raise UserError("budget", f"{budget!r}", "a positive finite number of milliseconds or a string like '10ms'")
    if resume and out is None:
        raise UserError("resume", "needs the run directory to continue", "out= the directory of the interrupted run")
    dataset = None
    if input is None and _is_module(model_or_space):  # the network's input size: the data's
        data_name, dataset = as_dataset(data)
        input = "x".join(map(str, dataset.input_shape)) if dataset is not None else "1x28x28" if data == "mnist" else None
    space_name, space, network = _space_of(model_or_space, weights, input)
    if space is None and not isinstance(data, str):
        from autocomp.space import get_space

        space = get_space(space_name)
    shape = (space.input.channels, space.input.height, space.input.width) if space is not None else None
    if dataset is None:
        data_name, dataset = as_dataset(data, shape)
    cfg = SearchConfig(budget_ms=budget_ms, trials=trials, seed=seed, space=space_name, device=device, data=data_name,
                       out=Path(out) if out is not None else default_run_dir(), controller=controller, address=address,
                       concurrency=concurrency, weights=weights, model=network, input=input if network else None)

    def on_row(row: dict) -> None:
        for cb in callbacks:
            cb("row", row)

    summary = run_search(cfg, train_steps=train_steps, console=Console(quiet=not verbose, stderr=True), resume=resume,
                         val_size=val_size, controller_options=controller_options, top_k=top_k, distill_steps=distill_steps,
                         calibrate=calibrate, train_device=train_device, data=dataset, space=space, row_callback=on_row,
                         recovery_steps=recovery_steps)
    for cb in callbacks:
        cb("summary", summary)
    return Run(cfg.out, summary, space, dataset)


# --------------------------------------------------------------------------- compress


def _candidate(policy):
    from autocomp.space import Candidate

    if isinstance(policy, Candidate):
        return policy
    if isinstance(policy, dict):
        return Candidate.from_dict(policy.get("candidate", policy))
    if isinstance(policy, (str, Path)):
        text = str(policy)
        if text.lstrip().startswith("{"):
            return _candidate(json.loads(text))
        from autocomp.deploy import load_policy

        return load_policy(Path(text))
    raise UserError("policy", f"a {type(policy).__name__}", "a Candidate, a policy dict, policy JSON text or a policy.json path")


def compress(model, policy, data=None, calib_batches: int = 4, batch_size: int = 128, device: str = "cpu-ort"):
    """``model`` compressed by ``policy`` (a Candidate, a policy dict or JSON, or a policy.json
    path): pruned (channels physically removed), factorised, then quantized (int8 layers calibrated
    on ``calib_batches`` training batches of ``data``: a dataset as :func:`search` takes, or an
    iterable of input tensors) and exported the way ``device`` runs int8
    (:meth:`autocomp.measure.Device.int8_scheme`). Returns the new nn.Module (eval mode); ``model``
    is left as it was."""
    import copy

    from torch import nn

    from autocomp.compress import compress as chain

    from autocomp.measure import get_device

    if not isinstance(model, nn.Module):
        raise UserError("model", f"a {type(model).__name__}", "a torch nn.Module")
    int8 = get_device(device).int8_scheme()  # an unknown device: one line, before any work
    cand = _candidate(policy)
    calib = None
    if data is not None:
        if isinstance(data, (list, tuple)) and data and all(hasattr(x, "shape") for x in data):
            calib = list(data)
        else:
            _, ds = as_dataset(data)
            if ds is None:
                from autocomp.data import load_dataset
                from autocomp.space import get_space

                sp = get_space(cand.space)
                ds = load_dataset(data, (sp.input.channels, sp.input.height, sp.input.width))
            split = ds.train.subset(calib_batches * batch_size, seed=0)
            calib = [x for x, _ in ds.batches(split, batch_size)]
    if "int8" in cand.layer_precisions() and calib is None:
        raise UserError("data", "the policy has int8 layers but no calibration data was given", "data= (a dataset or input batches)")
    try:  # the family of the policy's space (mbv2 when the space is not known here)
        from autocomp.space import get_space

        space = get_space(cand.space)
    except UserError:
        space = None
    return chain(copy.deepcopy(model).eval(), cand, None, space, calib, **int8.compress_kwargs()).eval()


# --------------------------------------------------------------------------- measure


def measure(model_or_onnx, device: str = "cpu-ort", precision: str = "fp32", input_shape: tuple[int, int, int] | None = None,
            **overrides) -> dict:
    """Latency of an ONNX file (path) or an nn.Module (exported at ``input_shape``, C x H x W) on
    ``device``, with its protocol and the fingerprint of the machine that measured (a dict: median_ms,
    p90_ms, cv, repeats, ...). ``overrides``: protocol settings (e.g. repeats=50)."""
    from autocomp.measure import get_device

    dev = get_device(device)
    if isinstance(model_or_onnx, (str, Path)):
        path = Path(model_or_onnx)
        if not path.is_file():
            raise UserError("model_or_onnx", f"no such file {str(path)!r}", "an .onnx file or an nn.Module")
        return dev.measure(path, precision, **overrides).to_dict()
    from torch import nn

    if not isinstance(model_or_onnx, nn.Module):
        raise UserError("model_or_onnx", f"a {type(model_or_onnx).__name__}", "an .onnx path or an nn.Module")
    if input_shape is None or len(tuple(input_shape)) != 3:
        raise UserError("input_shape", f"{input_shape!r}", "(C, H, W) to export the nn.Module at")
    from autocomp.export import to_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = to_onnx(model_or_onnx.eval(), Path(tmp) / "model.onnx", tuple(input_shape))
        return dev.measure(path, precision, **overrides).to_dict()
