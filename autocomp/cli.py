"""The ``autocomp`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from autocomp.cliutil import print_json, run_app
from autocomp.errors import UserError
from autocomp.search import list_controllers

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Hardware-aware compression search: architecture, pruning, low-rank and quantization under a latency budget.",
)
console = Console()
err_console = Console(stderr=True)


# search's options that a run's configuration holds: option -> (config.json key, where in it)
_RUN_OPTIONS = {
    "budget": ("budget_ms", None), "trials": ("trials", None), "seed": ("seed", None), "out": ("out", None),
    "space": ("space", None), "device": ("device", None), "data": ("data", None), "controller": ("controller", None),
    "address": ("address", None), "concurrency": ("concurrency", None), "weights": ("weights", None),
    "model": ("model", None), "input": ("input", None),
    "train_steps": ("train_steps", "eval"), "val_size": ("val_size", "eval"), "recovery_steps": ("finetune_steps", "eval"),
}


@app.command()
def search(
    ctx: typer.Context,
    budget: Optional[str] = typer.Option(None, help="Latency budget on the device, e.g. 10ms, 0.5 ms, 2e-3s, 1500us (required unless --config or --resume gives it)."),
    trials: int = typer.Option(16, min=1, help="Number of candidates evaluated."),
    seed: int = typer.Option(0, min=0, help="Seed: same seed, same candidates."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default reports/<timestamp>)."),
    space: str = typer.Option("mnist-mbv2", help="Search space name (search_spaces/) or YAML path."),
    device: str = typer.Option("cpu-ort", help="Target device (see `autocomp devices`)."),
    data: str = typer.Option("mnist", help="'mnist', 'imagefolder:PATH[?norm=imagenet|computed&augment=0]' or 'module:factory' (torch Datasets)."),
    controller: str = typer.Option("budget", help=f"Search strategy: {', '.join(list_controllers())} (autocomp.search registry)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster: 'auto', HOST:PORT or 'ray://host:port' (default: a private local Ray on loopback)."),
    concurrency: Optional[int] = typer.Option(None, min=1, help="Evaluations in flight (default: the cluster's CPUs)."),
    weights: str = typer.Option("auto", help="Candidate weights: auto (the space's supernet if trained, else scratch), supernet, scratch, or a supernet .pt."),
    train_steps: int = typer.Option(100, min=0, help="Training steps per candidate when weights come from scratch."),
    top_k: int = typer.Option(1, min=0, help="Winners under budget to export and verify on the device at the end (0: none)."),
    distill_steps: int = typer.Option(0, min=0, help="Distillation steps per exported winner (0: export as searched; see `autocomp distill`)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Take the run's configuration from this YAML or JSON file (the fields of a run's config.json); a flag that contradicts it is refused."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR", help="Continue the interrupted run in RUN_DIR with its stored configuration: finished evaluations are kept, not repeated."),
    val_size: Optional[int] = typer.Option(None, min=1, help="Validation images that score a candidate (default 2000; the winners are confirmed on the whole split)."),
    calibrate: int = typer.Option(20, min=1, help="Measurements that calibrate the latency model when the device's fingerprint has no predictor (cached per fingerprint; ONNX Runtime devices also profile them per conv)."),
    no_calibrate: bool = typer.Option(False, "--no-calibrate", help="Never calibrate and measure nothing first: without a predictor of this fingerprint, candidates are not filtered by the budget; with one, it is not re-anchored to the host's drift."),
    model: Optional[str] = typer.Option(None, help="Your own network instead of --space: 'torchvision:NAME' (with --weights w.pt) or 'package.module:factory'."),
    input: Optional[str] = typer.Option(None, "--input", help="Input size CxHxW of --model (default 3x224x224)."),
    train_device: str = typer.Option("auto", help="Where candidates train (from scratch, recovery): auto (CUDA if there is a GPU), cpu, cuda."),
    recovery_steps: int = typer.Option(0, min=0, help="Recovery steps per scored candidate after pruning, block skipping and low-rank, before quantization: with --model a distillation from your unmodified network (the teacher), in a built-in space fine-tuning on the labels. Default 0: none (config.json: eval.finetune_steps)."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's summary as JSON on stdout (progress goes to stderr)."),
) -> None:
    """Search the space for the most accurate candidates under the latency budget."""
    from autocomp.config import default_run_dir, parse_budget, read_run_file, search_config
    from autocomp.pipeline import run_search

    given = {name for name in _RUN_OPTIONS if _given(ctx, name)}
    flags = {"budget": budget, "trials": trials, "seed": seed, "out": out, "space": space, "device": device, "data": data,
             "controller": controller, "address": address, "concurrency": concurrency, "weights": weights,
             "model": model, "input": input, "train_steps": train_steps, "val_size": val_size,
             "recovery_steps": recovery_steps}
    if config is not None and resume is not None:
        raise UserError("--config", "given with --resume", "one of them: --resume RUN_DIR continues with the run's stored configuration")
    stored, source = {}, None
    if resume is not None:
        from autocomp.rundir import read_json

        if not (resume / "config.json").is_file():
            raise UserError("--resume", f"{str(resume)!r} holds no run to resume (no config.json)", "the directory of an interrupted run")
        stored, source = read_json(resume / "config.json", "run configuration"), f"the run in {resume}"
        stored["out"] = str(resume)
    elif config is not None:
        stored, source = read_run_file(config), str(config)
    if source is not None:
        for name in sorted(given):
            key, section = _RUN_OPTIONS[name]
            have = (stored.get(section) or {}) if section else stored
            if key not in have:
                continue
            mine = parse_budget(flags[name]) if name == "budget" else str(flags[name]) if name == "out" else flags[name]
            theirs = str(have[key]) if name == "out" else have[key]
            if mine != theirs and name not in _overridable(resume):
                raise UserError(f"--{name.replace('_', '-')}", f"{str(flags[name]) if name == 'out' else flags[name]!r} contradicts {theirs!r} in {source}",
                                f"no --{name.replace('_', '-')} (the stored value applies) or the same value")
    fields = {key: stored[key] for _, (key, section) in _RUN_OPTIONS.items() if section is None and key in stored}
    for name in given:  # flags the user typed fill what the file leaves open (or --out of a new run)
        key, section = _RUN_OPTIONS[name]
        if section is None and (key not in stored or name in _overridable(resume)):
            fields[key] = parse_budget(flags[name]) if name == "budget" else flags[name]
    for name, (key, section) in _RUN_OPTIONS.items():  # the defaults for the rest
        if section is None and key not in fields and name != "budget":
            fields[key] = flags[name]
    if "budget_ms" not in fields:
        if budget is None:
            raise UserError("--budget", "missing", "a latency budget such as 10ms (or --config FILE / --resume RUN_DIR)")
        fields["budget_ms"] = parse_budget(budget)
    fields["out"] = fields.get("out") or default_run_dir()
    ev = stored.get("eval") or {}
    steps = ev.get("train_steps", train_steps) if not _given(ctx, "train_steps") else train_steps
    vsize = ev.get("val_size", val_size) if not _given(ctx, "val_size") else val_size
    from autocomp.config import check_steps
    # eval fields that flags (or the top level of the configuration) set; run_search takes the rest
    FLAG_SET = ("weights", "train_steps", "finetune_steps", "val_size", "seed", "train_device")

    rsteps = recovery_steps if _given(ctx, "recovery_steps") or "finetune_steps" not in ev else \
        check_steps(ev["finetune_steps"], f"{source}: eval.finetune_steps")
    cfg = search_config(fields, str(config) if config is not None else "search")
    import contextlib
    import sys

    # --json: stdout holds the JSON document alone; everything else the run prints goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext():
        summary = run_search(cfg, train_steps=steps, console=err_console if json_out else console,
                             resume=resume is not None, val_size=vsize,
                             controller_options=stored.get("controller_options") or None, top_k=top_k,
                             distill_steps=distill_steps, calibrate=0 if no_calibrate else calibrate,
                             train_device=train_device, recovery_steps=rsteps,
                             eval_options={k: v for k, v in ev.items() if k not in FLAG_SET})
    if json_out:
        print_json({**summary, "run_dir": str(cfg.out)})


def _overridable(resume: Optional[Path]) -> set[str]:
    """Options that may differ from the stored configuration: where the run executes, not what it
    searches; and with --config, --out (it names the new run)."""
    return {"address", "concurrency"} | ({"out"} if resume is None else set())


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user typed option ``name`` (not its default)."""
    src = ctx.get_parameter_source(name)
    return src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")


def _kd_config(kd: str, steps: int, seed: int = 0):
    from autocomp.distill import KDConfig

    return KDConfig(kinds=tuple(k.strip() for k in kd.split(",") if k.strip()), steps=steps, seed=seed)


@app.command()
def distill(
    run: Path = typer.Argument(..., help="A run directory written by `autocomp search`."),
    top_k: int = typer.Option(3, min=1, help="Winners to distil, export and verify (over-budget ones are replaced)."),
    kd: str = typer.Option("logits", help="Distillation losses: comma-separated subset of logits,features,attention."),
    steps: int = typer.Option(300, min=0, help="Distillation steps per winner (0: export without distilling)."),
    teacher: Optional[str] = typer.Option(None, help="Teacher: default the space's largest subnet; 'module:factory' or 'torchvision:NAME'."),
    teacher_weights: Optional[str] = typer.Option(None, help="Weights for a torchvision teacher (torch.load, weights_only)."),
    train_device: str = typer.Option("auto", help="Distil on: auto (CUDA if there is a GPU), cpu, cuda (mixed precision)."),
) -> None:
    """Distil the top-k candidates under budget from the teacher, export them and verify them on the device."""
    from autocomp.deploy import deploy_run
    from autocomp.rundir import RUN_EXPECTED, run_lock
    from autocomp.training import check_train_device

    if not run.is_dir():
        raise UserError("RUN", f"{str(run)!r} is not a directory", RUN_EXPECTED)
    with run_lock(run, "RUN"):  # one command at a time on a run directory
        kd_cfg = _kd_config(kd, steps)
        kd_cfg.device = check_train_device(train_device)
        deploy_run(run, top_k, kd_cfg, teacher, teacher_weights, console=console)


@app.command("export")
def export_cmd(
    run: Optional[Path] = typer.Argument(None, help="A run directory (with ID)."),
    cand_id: Optional[str] = typer.Argument(None, metavar="ID", help="Candidate id in the run's results.csv."),
    policy: Optional[Path] = typer.Option(None, help="Export this policy.json instead of a run's candidate."),
    out: Optional[Path] = typer.Option(None, help="Output folder for --policy (default exports/<id>)."),
    device: str = typer.Option("cpu-ort", help="Device to verify on (for --policy)."),
    kd_steps: int = typer.Option(0, min=0, help="Distillation steps from the default teacher before export (RUN ID form)."),
) -> None:
    """Re-export one candidate of a run (`RUN ID`) or any policy (`--policy policy.json`)."""
    from autocomp.deploy import export_policy, load_policy, reexport

    if policy is not None:
        cand = load_policy(policy)
        m = export_policy(cand, out or Path("exports") / cand.id, device_name=device, console=console)
    elif run is not None and cand_id is not None:
        from autocomp.rundir import RUN_EXPECTED, run_lock

        if not run.is_dir():
            raise UserError("RUN", f"{str(run)!r} is not a directory", RUN_EXPECTED)
        with run_lock(run, "RUN"):
            m = reexport(run, cand_id, _kd_config("logits", kd_steps) if kd_steps else None, console=console)
    else:
        raise UserError("export", "needs RUN and ID, or --policy", "`autocomp export RUN ID` or `autocomp export --policy policy.json`")
    console.print(f"exported {m['id']}: test accuracy {m['accuracy_test']:.4f}, measured {m['measured_latency_ms']:.3f} ms, "
                  f"opset {m['opset']}, layers {m['onnx_layer_precisions']}")


@app.command()
def spaces(json_out: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
    """List the search spaces shipped with autocomp."""
    from autocomp.space import get_space, list_spaces

    rows = []
    for name in list_spaces():
        s = get_space(name)
        rows.append({"name": name, "stages": len(s.stages), "precisions": list(s.compression.precision),
                     "input": [s.input.channels, s.input.height, s.input.width], "num_classes": s.num_classes})
        if not json_out:
            console.print(f"{name}: {len(s.stages)} stages, precisions {s.compression.precision}", markup=False)
    if json_out:
        print_json(rows)


@app.command()
def devices(
    probe: bool = typer.Option(True, help="Probe the fingerprint of devices measured on this machine (not those reached over ssh)."),
    json_out: bool = typer.Option(False, "--json", help="Print the devices as JSON."),
) -> None:
    """List the measurement devices, the fingerprints their latency predictors were measured on, and
    whether one matches the machine that would measure now (else a search calibrates first)."""
    from autocomp.measure import DEVICES
    from autocomp.measure.fingerprint import fingerprint_id
    from autocomp.predictor import int8_warning, precision_facts, predictor_dirs
    from autocomp.resources import predictors_dir

    t = Table("device", "backend", "precisions", "int8 export", "predictors (fingerprint)", "this machine now", "match")
    rows = []
    for d in DEVICES.values():
        dirs = predictor_dirs(d.name)
        names = [f"{p.name}{'' if p.parent.parent == predictors_dir() else ' (calibrated)'}" for p in dirs]
        here, match, fp = "not probed", "", None
        if probe and not d.options.get("ssh"):
            try:
                fp = d.fingerprint()
                here = fingerprint_id(fp)
            except Exception as e:  # a backend whose runtime is not installed here
                here = f"unavailable ({type(e).__name__})"
            else:
                match = "yes" if here in {p.name for p in dirs} else "no: a search calibrates first"
        # how int8 layers are exported for it (autocomp.measure.Device.int8_scheme), on this machine's CPU
        scheme = d.int8_scheme(fp).label + ("" if d.int8_export else " (default)")
        t.add_row(d.name, d.backend, ",".join(d.precisions), scheme, "\n".join(names) or "none", here, match)
        int8 = {p.name: w for p in dirs if (w := int8_warning(precision_facts(d.name, p.name)))}
        rows.append({"device": d.name, "backend": d.backend, "precisions": list(d.precisions), "int8_export": d.int8_scheme(fp).label,
                     "int8_export_source": "device file" if d.int8_export else "backend default", "description": d.description,
                     "predictors": names, "this_machine": here, "match": match.startswith("yes") if match else None,
                     "int8_slower_than_fp32": int8})
    if json_out:
        print_json(rows)
        return
    console.print(t)
    console.print("descriptions: " + "; ".join(f"{d.name}: {d.description}" for d in DEVICES.values()), soft_wrap=True,
                  markup=False)
    for r in rows:  # measured by benchmarks/precision_latency.py (precision.json beside the predictor)
        for fp, warning in r["int8_slower_than_fp32"].items():
            console.print(f"{r['device']} ({fp}): {warning}", markup=False, soft_wrap=True)


def _mount_subcommands() -> None:
    """Stage-specific command groups live beside their stage."""
    from autocomp.measure.cli import app as measure_app
    from autocomp.predictor.cli import app as predictor_app
    from autocomp.compress.cli import app as sensitivity_app
    from autocomp.families.cli import app as space_app
    from autocomp.models.cli import app as supernet_app
    from autocomp.report.cli import app as report_app

    app.add_typer(measure_app, name="measure", help="Measure a latency campaign on a device (resumable).")
    app.add_typer(predictor_app, name="predictor", help="Train and evaluate latency predictors.")
    app.add_typer(report_app, name="report", help="Write the Pareto report of a run (HTML, summary.md).")
    app.add_typer(supernet_app, name="supernet", help="Train the weight-sharing supernet of a search space.")
    app.add_typer(sensitivity_app, name="sensitivity", help="Per-layer accuracy drop against channel keep ratio.")
    app.add_typer(space_app, name="space", help="Derive the search space of your own network (--model) as YAML.")


_mount_subcommands()


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
