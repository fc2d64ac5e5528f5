"""One search run, end to end: validate inputs, evaluate candidates on Ray, report the front.

Everything that can be wrong with the user's input is checked before Ray starts or anything is
written; the run directory is never overwritten, one command at a time holds it (its lock), and its
config.json is written only once every check passed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autocomp.config import SearchConfig
from autocomp.data import load_dataset
from autocomp.errors import UserError
from autocomp.evaluate import EvalSettings
from autocomp.measure import Device, get_device
from autocomp.predictor.calibrate import (
    DEFAULT_K,
    LatencyModel,
    initial_margin,
    latency_model,
    live_error,
    record_measurements,
    skip_audit,
)
from autocomp.cluster import check_address, init_ray
from autocomp.rundir import (
    budget_verdict,
    check_out_dir,
    holds_run,
    make_dirs,
    read_json,
    read_results,
    remove_dirs,
    run_lock,
    write_json,
)
from autocomp.runner import ControllerFactory, run_tune
from autocomp.search import check_controller
from autocomp.search.pareto import pareto_front
from autocomp.families.network import live_sha256, space_for

SCHEMA_VERSION = 1
MODEL_DIR = "latency_model"


def _latency_model(device: Device, space, model_dir: Path, resume: bool, k: int, console: Console) -> LatencyModel:
    """The run's latency model: the one it saved (resume), else the device fingerprint's (calibrated if need be)."""
    from autocomp.predictor.campaign import probe_fingerprint
    from autocomp.predictor.model import Predictor

    if resume and (model_dir / "predictor.json").exists():
        pred = Predictor.load(model_dir)
        saved = pred.meta.get("latency_model") or {}
        return LatencyModel(pred, "resumed", saved.get("fingerprint") or pred.fingerprint, calibration=saved.get("calibration") or {})
    fp = probe_fingerprint(device)
    if resume and (model_dir.parent / "config.json").exists():  # it filtered with nothing: so does its replay
        lm = LatencyModel(None, "off", fp, notice="the interrupted run had no latency model: candidates are not filtered")
    else:
        from autocomp.measure import DEVICES

        same_backend = [d for d, dev in DEVICES.items() if dev.backend == device.backend and d != device.name]
        lm = latency_model(device, space, fp, k=k, say=lambda m: console.print(f"[yellow]latency model:[/] {escape(m)}"),
                           source_devices=same_backend)
    if lm.notice:
        console.print(f"[yellow]notice:[/] {escape(lm.notice)}")  # fingerprints hold [lists]: not markup
    elif lm.predictor is not None:
        console.print(f"latency model: {lm.how} predictor of {lm.predictor.fingerprint_id}"
                      + (f" ({lm.calibration.get('method')}, {lm.calibration.get('n_fit')} measurements)" if lm.calibration else "")
                      + (f", rescaled by the host's drift since its table ({lm.anchor['drift']:.3f})" if lm.anchor else ""))
    return lm


def run_search(cfg: SearchConfig, train_steps: int = 100, console: Console | None = None, *, resume: bool = False,
               val_size: int | None = None, controller_options: dict | None = None, predictor=None,
               top_k: int = 0, distill_steps: int = 0, calibrate: int = DEFAULT_K, confirm: int = 2, train_device: str = "auto",
               data=None, space=None, row_callback=None, recovery_steps: int = 0, eval_options: dict | None = None) -> dict:
    """Run (or with ``resume`` continue) a search; writes config.json, results.csv, summary.json in ``cfg.out``.

    A run directory that already holds a run is refused unless ``resume``; a resumed run must use the
    same configuration (checked against config.json) and replays its recorded results.

    The budget filter uses the latency model of the device's fingerprint (probed on the device's
    node): a matching predictor, or one calibrated now with ``calibrate`` measurements (0: no
    filter); see :mod:`autocomp.predictor.calibrate`. It is saved in ``<run>/latency_model/`` (a
    resumed run filters with it again) and adapted online as the run measures.

    The library (:mod:`autocomp.api`) may hand over ``data`` (an :class:`autocomp.data.Dataset`) and
    ``space`` (a SearchSpace) already built, and ``row_callback(row)``, called as each row is recorded.
    Training (from scratch, recovery) runs on ``train_device`` (:mod:`autocomp.training`); trials ask
    Tune for a share of the cluster's GPUs when it has some and training may use them.
    ``recovery_steps``: the recovery of each scored candidate after pruning and factorisation,
    before quantization (the network family distils from the unmodified network; the built-in
    families fine-tune on the labels); 0: none. config.json keeps it as ``eval.finetune_steps``.
    ``eval_options``: the other scoring settings of :class:`~autocomp.evaluate.EvalSettings`
    (BatchNorm and int8 calibration images, batch sizes, ...), from a run's ``eval`` (``--config``,
    ``--resume``): a run is scored as its configuration says.
    """
    from autocomp.config import check_steps

    from autocomp.training import check_train_device

    console = console or Console()
    if space is None and (cfg.model or "").startswith("python:"):  # an nn.Module object of the session that started the run
        raise UserError("--resume" if resume else "--model", f"the run's network {cfg.model[:60]} was a Python object handed to "
                        "autocomp.search; the command line cannot rebuild it",
                        (f"to resume from Python: autocomp.search(model, data, ..., out={str(cfg.out)!r}, resume=True)" if resume
                         else "autocomp.search(model, data, ...) in the Python session that holds the object"))
    device = get_device(cfg.device)
    train_device = check_train_device(train_device)  # cuda without a GPU: one line, before Ray starts
    space = (space if space is not None else space_for(cfg.space, cfg.model, cfg.weights, cfg.input)).restrict_precisions(list(device.precisions))
    check_controller(cfg.controller, controller_options)  # unknown controller or option: fail before anything starts
    settings = eval_settings(eval_options, weights=cfg.weights, train_steps=train_steps, seed=cfg.seed, train_device=train_device,
                             finetune_steps=check_steps(recovery_steps, "recovery_steps"),
                             **({"val_size": val_size} if val_size else {}))
    config = {"schema_version": SCHEMA_VERSION, **json.loads(cfg.model_dump_json()), "eval": settings.model_dump(),
              "device_protocol": device.options, "controller_options": controller_options or {}}
    if live_sha256(space):  # the nn.Module object's state_dict: a resume from Python must hand over the same
        config["model_sha256"] = live_sha256(space)
    check_out_dir(cfg.out, "--resume" if resume else "--out")
    _check_run_dir(cfg, config, resume)
    _check_weights(space, settings)
    check_address(cfg.address)
    if data is None:
        data = load_dataset(cfg.data, (space.input.channels, space.input.height, space.input.width))
    elif tuple(data.input_shape) != (space.input.channels, space.input.height, space.input.width):
        raise UserError("data", f"items are {'x'.join(map(str, data.input_shape))}",
                        f"{space.input.channels}x{space.input.height}x{space.input.width} (the input of space {space.name})")
    if data.num_classes != space.num_classes and space.family == "network":
        raise UserError("--data", f"dataset has {data.num_classes} classes but {cfg.model} outputs {space.num_classes}",
                        f"a dataset with {space.num_classes} classes")
    if data.num_classes != space.num_classes:
        console.print(f"[yellow]dataset has {data.num_classes} classes; the space's classifier is sized to match[/]")
    made = make_dirs(cfg.out)
    try:
        lock = run_lock(cfg.out, "--resume" if resume else "--out")
        lock.__enter__()
    except BaseException:  # another command holds it: leave its directory alone
        remove_dirs(made, lock_file=False)
        raise
    try:
        _check_run_dir(cfg, config, resume)  # again, holding the lock: another search may have just written it
        summary = _run_locked(cfg, config, device, space, settings, data, console, resume, controller_options,
                              predictor, calibrate, confirm, row_callback)
        if top_k and summary["best_under_budget"]:
            from autocomp.deploy import deploy_run
            from autocomp.distill import KDConfig

            kd = KDConfig(steps=distill_steps, seed=cfg.seed) if distill_steps else None
            console.print(f"[bold]exporting the top {top_k} under budget[/] ({'distilled ' + str(distill_steps) + ' steps' if kd else 'no distillation; `autocomp distill RUN` distils'})")
            deploy_run(cfg.out, top_k, kd, console=console)
        from autocomp.report import write_report

        console.print(f"report: {escape(str(write_report(cfg.out)))}")
    except BaseException:
        if not (cfg.out / "config.json").exists():  # a failed start leaves nothing behind (the lock is still ours)
            remove_dirs(made)
        raise
    finally:
        lock.__exit__(None, None, None)
    return summary


def _check_weights(space, settings: EvalSettings) -> None:
    """The candidates' weights load (weights_only) and fit the space: checked once, before any trial."""
    from autocomp.evaluate import supernet_path
    from autocomp.models.supernet import as_supernet

    if space.family == "network":  # --weights is the user's network's state_dict, loaded and fitted when its space was derived
        return
    try:
        ckpt = supernet_path(space, settings.weights)
        if ckpt is not None:
            as_supernet(space, ckpt)
    except UserError as e:
        raise UserError("--weights", e.problem, e.expected) from None


def _run_locked(cfg: SearchConfig, config: dict, device: Device, space, settings: EvalSettings, data, console: Console,
                resume: bool, controller_options: dict | None, predictor, calibrate: int, confirm: int,
                row_callback=None) -> dict:
    """The search itself, in its locked run directory: Ray, the latency model, config.json, Tune."""
    from autocomp.training import gpus_per_trial

    model_dir = cfg.out / MODEL_DIR
    lm = None
    if predictor is None:
        if cfg.address or os.environ.get("RAY_ADDRESS"):
            init_ray(cfg.address, device)  # the device's node probes its fingerprint and measures
        lm = _latency_model(device, space, model_dir, resume, calibrate, console)
    # The factory loads the run's latency model itself.
    factory = ControllerFactory(cfg.controller, space, cfg.seed, budget_ms=cfg.budget_ms, predictor=predictor,
                                options=controller_options or {},
                                model_dir=str(model_dir) if lm is not None and lm.predictor is not None else None,
                                margin=initial_margin(lm) if lm is not None else 0.1)
    init_ray(cfg.address, device)
    if not (cfg.out / "config.json").exists():  # every check passed: from here on the directory holds a run
        write_json(cfg.out / "config.json", config)
    if lm is not None and lm.predictor is not None and lm.how != "resumed":
        lm.predictor.meta["latency_model"] = lm.describe()
        lm.predictor.save(model_dir)
    import ray

    cluster = ray.cluster_resources()
    if not cluster.get(device.resource):
        console.print(f"[yellow]no node of the cluster holds {escape(device.resource)}: measurements will wait for one[/]")
    concurrency = cfg.concurrency or max(1, int(cluster.get("CPU", 1)))
    gpus = gpus_per_trial(cluster.get("GPU", 0), concurrency, settings.train_device)
    console.print(f"[bold]autocomp search[/] budget {cfg.budget_ms:g} ms on {escape(device.name)} ({escape(device.description)}); "
                  f"space {escape(space.name)}, controller {escape(cfg.controller)}, {cfg.trials} trials, up to {concurrency} in flight "
                  f"(Ray Tune), run dir {escape(str(cfg.out))}{' (resumed)' if resume else ''}")
    t0 = time.time()
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        already = len(read_results(cfg.out / "results.csv"))
        task = progress.add_task("evaluating", total=cfg.trials, completed=already)

        def on_row(row: dict) -> None:
            progress.advance(task)
            if row["status"] == "ok":
                progress.console.print(f"  #{row['trial']} {row['id']} acc {float(row['accuracy']):.4f}  "
                                       f"{float(row['latency_ms']):.3f} ms  {escape(str(row['summary']))}")
            else:
                progress.console.print(f"  #{row['trial']} {row['id']} [red]error[/] {escape(str(row['error']))}")
            if row_callback is not None:
                row_callback(row)

        rows, searcher = run_tune(factory, space, data, device, settings, cfg.trials, cfg.out,
                                  concurrency=cfg.concurrency, on_row=on_row,
                                  resources={"cpu": 1, "gpu": gpus} if gpus else None)
    summary = summarise(rows, cfg.budget_ms)
    filtered = predictor is not None or (lm is not None and lm.predictor is not None)
    summary.update(controller=cfg.controller, skipped_infeasible=searcher.skipped, predictor=filtered,
                   resumed=resume, replayed=searcher.replayed)
    if lm is not None:
        summary["latency_model"] = {**lm.describe(), "live_error": live_error(rows)}
        from autocomp.predictor import int8_warning, precision_facts

        warning = int8_warning(precision_facts(device.name, str(summary["latency_model"].get("fingerprint_id"))))
        if warning:  # measured on this fingerprint by benchmarks/precision_latency.py
            summary["latency_model"]["int8_warning"] = warning
        if lm.predictor is not None:
            summary["latency_model"]["online"] = searcher.ctrl.latency_state()
            summary["skip_audit"] = skip_audit(searcher.ctrl.skipped_log, cfg.budget_ms, space, device, progress=True,
                                               predict=searcher.ctrl.predict_ms)
        added = record_measurements(device.name, lm.fingerprint, space, rows)
        if added:
            summary["latency_model"]["recorded"] = added
    if confirm:
        summary["confirmed"] = _confirm(rows, cfg.budget_ms, confirm, space, data, settings)
    summary["wall_s"] = round(time.time() - t0, 1)
    write_json(cfg.out / "summary.json", summary)
    print_summary(summary, cfg.budget_ms, console)
    return summary


# EvalSettings fields a run's configuration sets beyond what its flags set
EVAL_OPTIONS = ("bn_images", "bn_batch_size", "bn_after_extract", "channels_last", "batch_size", "lr", "val_batch_size",
                "calib_images", "calib_batch_size")


def eval_settings(options: dict | None, **flags) -> EvalSettings:
    """:class:`EvalSettings` of the flags plus ``options`` (:data:`EVAL_OPTIONS` of a run's ``eval``);
    a bad option is one line naming it."""
    from pydantic import ValidationError

    options = dict(options or {})
    unknown = [k for k in options if k not in EVAL_OPTIONS]
    if unknown:
        raise UserError(f"eval.{unknown[0]}", "not a scoring option a configuration sets", f"one of {', '.join(EVAL_OPTIONS)}")
    try:
        return EvalSettings(**{**options, **flags})
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"eval.{'.'.join(str(x) for x in err['loc'])}", f"{err['msg']} (got {err.get('input')!r})") from None


def _confirm(rows: list[dict], budget_ms: float, k: int, space, data, settings: EvalSettings) -> list[dict]:
    """The ``k`` best under the budget (scored on a validation subset) re-scored on the whole split."""
    import ray

    from autocomp.measure.base import Int8Scheme
    from autocomp.rundir import under_budget
    from autocomp.space import Candidate

    top = under_budget([r for r in rows if r["status"] == "ok"], budget_ms)[:k]

    # each exported as it was scored (its row's int8 export scheme); side by side on the cluster's CPUs
    jobs = [(Candidate.from_json(r["policy"]), Int8Scheme.from_label(r.get("int8_export"))) for r in top]
    if ray.is_initialized() and len(jobs) > 1:
        task = ray.remote(num_cpus=1, max_retries=0)(_confirm_one)
        refs = [ray.put(x) for x in (space, data, settings)]
        scored = ray.get([task.remote(c, *refs, scheme) for c, scheme in jobs])
    else:
        scored = [_confirm_one(c, space, data, settings, scheme) for c, scheme in jobs]
    return [{"id": r["id"], "accuracy_subset": r["accuracy"], "accuracy": round(s.accuracy, 5),
             "accuracy_se": round(s.accuracy_se, 5), "val_images": s.val_images} for r, s in zip(top, scored)]


def _confirm_one(candidate, space, data, settings: EvalSettings, int8):
    """One candidate scored on the whole validation split (one thread: confirmations run side by side)."""
    import torch

    from autocomp.evaluate import confirm_candidates

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return confirm_candidates([candidate], space, data, settings, int8)[0]
    finally:
        torch.set_num_threads(threads)


def _check_run_dir(cfg: SearchConfig, config: dict, resume: bool) -> None:
    """A new run goes to a directory that holds none; a resumed one to a run with this configuration
    whose results.csv reads (read-only: nothing is written here)."""
    out = cfg.out
    if not resume:
        if holds_run(out):
            raise UserError("--out", f"{out} already holds a run", f"a new run directory, or `--resume {out}` to continue it")
        return
    if not (out / "config.json").is_file():
        raise UserError("--resume", f"{out} holds no run to resume (no config.json)", "the directory of an interrupted run")
    old = read_json(out / "config.json", "run configuration")
    mine, theirs = config.get("model_sha256"), old.get("model_sha256")
    if mine != theirs:  # an nn.Module object's run resumes with an object of the same state_dict only
        was = f"an nn.Module object whose state_dict has sha256 {str(theirs)[:12]}" if theirs else repr(old.get("model") or old.get("space"))
        now = f"one with sha256 {mine[:12]}" if mine else repr(config.get("model") or config.get("space"))
        raise UserError("model", f"the run in {out} searched {was}, this call {now}", "the same network with the same weights to resume the run")
    keys = ("space", "device", "data", "controller", "seed", "budget_ms", "trials", "eval", "controller_options")
    def same(a, b) -> bool:  # settings added since the run was written do not count as changes
        if isinstance(a, dict) and isinstance(b, dict):
            return all(same(a[k], b[k]) for k in a.keys() & b.keys())
        return a == b

    diff = [k for k in keys if k in old and not same(old.get(k), config.get(k))]
    if diff:
        k = diff[0]
        raise UserError(f"--{k.replace('_', '-')}", f"the run in {out} used {old.get(k)!r}, this command {config.get(k)!r}",
                        "the same options as the interrupted run when resuming")
    read_results(out / "results.csv")  # every complete row reads (a torn last one is set aside when the run starts)


def summarise(rows: list[dict], budget_ms: float) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    verdict = budget_verdict(ok, budget_ms)
    keep = ("id", "trial", "accuracy", "latency_ms", "latency_p90_ms", "predicted_latency_ms", "params", "summary")
    slim = lambda r: {k: r[k] for k in keep} if r else None  # noqa: E731
    return {
        "schema_version": SCHEMA_VERSION,
        "budget_ms": budget_ms,
        "evaluated": len(rows),
        "failed": len(rows) - len(ok),
        "pareto_front": [slim(r) for r in pareto_front(ok)],
        "best_under_budget": slim(verdict.best_under_budget),
        "budget_share": (round(float(verdict.best_under_budget["latency_ms"]) / budget_ms, 4)
                         if verdict.best_under_budget else None),  # of the budget, what the winner uses
        "best_overall": slim(verdict.best_overall),
        "binding": verdict.binding,
        "over_budget": verdict.n_over_budget,
        "tightest_changing_budget_ms": verdict.tightest_changing_budget_ms,
        "verdict": verdict.message(budget_ms),
    }


def print_summary(summary: dict, budget_ms: float, console: Console) -> None:
    t = Table(title=f"Pareto front (accuracy vs latency), budget {budget_ms:g} ms")
    for col in ("id", "accuracy", "latency ms", "p90 ms", "params", "fits", "candidate"):
        t.add_column(col)
    for r in summary["pareto_front"]:
        t.add_row(r["id"], f"{r['accuracy']:.4f}", f"{r['latency_ms']:.3f}", f"{r['latency_p90_ms']:.3f}", f"{r['params']:,}",
                  "yes" if r["latency_ms"] <= budget_ms else "[red]no[/]", escape(str(r["summary"])))
    console.print(t)
    best = summary["best_under_budget"]
    if best:
        console.print(f"[bold green]best under {budget_ms:g} ms:[/] {best['id']} accuracy {best['accuracy']:.4f}, "
                      f"{best['latency_ms']:.3f} ms, {best['params']:,} params — {escape(str(best['summary']))}")
        console.print(f"the winner uses {summary['budget_share']:.0%} of the {budget_ms:g} ms budget")
        for c in summary.get("confirmed") or []:
            console.print(f"confirmed on the whole validation split ({c['val_images']} images): {c['id']} accuracy "
                          f"{c['accuracy']:.4f} ± {c['accuracy_se']:.4f} (subset {c['accuracy_subset']:.4f})")
    else:
        console.print(f"[bold red]no evaluated candidate fits {budget_ms:g} ms[/]")
    console.print(escape(summary["verdict"]))
    if summary.get("skipped_infeasible"):
        console.print(f"{summary['skipped_infeasible']} candidate(s) predicted over the budget were skipped (never evaluated)")
    elif not summary.get("predictor"):
        console.print("no latency predictor: no candidate was skipped by the budget")
    lm = summary.get("latency_model")
    if lm:
        live = lm.get("live_error") or {}
        cal = lm.get("calibration") or {}
        how = lm["how"] + (f" ({cal.get('method')}, k={cal.get('k')}, from {cal.get('source_fingerprint_id')})" if cal else "")
        if lm.get("anchor"):
            how += f", rescaled by {lm['anchor']['drift']:.3f} (the host's drift since its table)"
        console.print(f"latency model of {lm['fingerprint_id']}: {how}")
        if live.get("n"):
            console.print(f"its live error on this run ({live['n']} evaluations): median |error| {live['median_abs_error']:.1%}, "
                          f"within ±10% {live['within_10pct']:.0%}, Spearman {live['spearman'] if live['spearman'] is not None else 'n/a'}")
    audit = summary.get("skip_audit")
    if audit and audit.get("audited"):
        console.print(f"skip audit: {audit['audited']} of {audit['skipped']} skipped candidate(s) measured anyway, "
                      f"{audit['fit_budget']} in fact fit the budget")
    if summary["failed"]:
        console.print(f"[yellow]{summary['failed']} evaluation(s) failed; see the error column of results.csv[/]")
