"""The Tune glue: a search runs as a Ray Tune experiment.

The controller runs inside Tune as a Searcher (suggest / on_trial_complete / save / restore); each
trial scores one candidate (1 CPU, anywhere: weights -> compress -> export -> accuracy) and has its
exported ONNX timed on a node that holds the device (``autocomp.cluster.on_device``: the
``device:<name>`` resource, one measurement at a time per device unit). Tune does the scheduling,
the retries of trials whose process died (FailureConfig) and the experiment checkpoints that
Tuner.restore resumes from. results.csv (:mod:`autocomp.rundir`) is the source of truth: a row is
appended (fsynced) by a Tune Callback as each trial ends, and on resume the controller is rebuilt by
replaying those rows in trial order (controllers are deterministic). Ray start-up is
:mod:`autocomp.cluster`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune
from ray.tune.search import Searcher

from autocomp.cluster import on_device
from autocomp.data import Dataset
from autocomp.errors import UserError
from autocomp.evaluate import EvalSettings, measure_onnx, score
from autocomp.measure import Device, get_device
from autocomp.rundir import RESULT_COLUMNS, ResultsTable, read_results
from autocomp.search import check_controller, get_controller
from autocomp.space import Candidate, SearchSpace

def _measure(onnx: bytes, device: str, precision: str) -> dict:
    """On the device's node: the latency of ``onnx``, and where it was measured (errors as a result)."""
    where = {"measure_node": ray.get_runtime_context().get_node_id(), "measure_pid": os.getpid()}
    try:
        return {"ok": True, **measure_onnx(onnx, device, precision), **where}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}", **where}


TUNE_DIR, TUNE_NAME = "tune", "search"
_ROW_KEYS = [c for c in RESULT_COLUMNS if c not in ("trial", "id", "summary", "policy", "precision", "predicted_latency_ms",
                                                    "latency_state")]


@dataclass
class ControllerFactory:
    """Everything needed to build the controller again (picklable: Tune keeps it in its experiment)."""

    name: str
    space: SearchSpace
    seed: int
    budget_ms: float | None = None
    predictor: Any = None  # a latency predictor to filter with (tests, benchmarks)
    options: dict = field(default_factory=dict)
    model_dir: str | None = None  # or the run's latency model (<run>/latency_model/), adapted online
    margin: float = 0.1  # the online model's filter tolerance before the run's first measurements

    def __post_init__(self) -> None:
        check_controller(self.name, self.options)  # an unknown controller or option: one line, before any trial

    def __call__(self):
        pred = self.predictor
        if pred is None and self.model_dir is not None:
            from autocomp.predictor.calibrate import OnlineLatency
            from autocomp.predictor.model import Predictor

            pred = OnlineLatency(Predictor.load(Path(self.model_dir)), self.margin)
        return get_controller(self.name, self.space, self.seed, budget_ms=self.budget_ms, predictor=pred, **self.options)


class ControllerSearcher(Searcher):
    """An autocomp controller as a Tune Searcher. Trial configs are {trial, candidate, predicted_latency_ms}."""

    def __init__(self, factory: ControllerFactory, n_trials: int, results_path: str | Path):
        super().__init__()  # no single metric: the controller reads whole results
        self.factory, self.n_trials, self.results_path = factory, n_trials, str(results_path)
        self._rebuild({})

    # Tune pickles the searcher with its experiment; only the recipe travels, the state is rebuilt.
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("ctrl", "queue", "trial_ids", "told", "cands")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._rebuild({})

    def _rebuild(self, known: dict[str, int]) -> None:
        """Replay results.csv (in trial order) into a fresh controller. ``known``: Tune trial id -> trial
        number of trials Tune still holds (they will run or report again). Trials asked before the
        crash that neither finished nor are held by Tune are queued to be suggested again."""
        self.ctrl = self.factory()
        self.trial_ids: dict[str, int] = dict(known)
        self.queue: list[tuple[int, Candidate]] = []
        self.told: set[int] = set()
        self.cands: dict[int, Candidate] = {}  # trial -> candidate the controller proposed, until told
        done = {r["trial"]: r for r in read_results(Path(self.results_path)) if r.get("trial") is not None}
        held = set(known.values())
        last = max(done.keys() | held, default=-1)
        while self.ctrl.asked <= last:
            state = (done.get(self.ctrl.asked) or {}).get("latency_state")
            if state:  # filter this ask as the recorded run did
                self.ctrl.set_latency_state(json.loads(state))
            cand = self.ctrl.ask()
            if cand is None:
                break
            i = self.ctrl.asked - 1
            if i in done:
                if done[i]["id"] != cand.id:
                    raise UserError("--resume", f"trial {i} of the run is candidate {done[i]['id']} but this configuration "
                                    f"proposes {cand.id}", "the same seed, space, controller and budget as the interrupted run")
                self.ctrl.tell(cand, done[i], trial=i)
                self.told.add(i)
            else:  # held by Tune, or lost with the driver: queued to be suggested again
                self.cands[i] = cand
                if i not in held:
                    self.queue.append((i, cand))
        self.replayed = len(self.told)

    @property
    def skipped(self) -> int:
        return self.ctrl.skipped

    def suggest(self, trial_id: str):
        if self.queue:
            i, cand = self.queue.pop(0)
        else:
            if self.ctrl.asked >= self.n_trials:
                return Searcher.FINISHED
            cand = self.ctrl.ask()
            if cand is None:  # the generation is still out; Tune asks again later
                return None
            i = self.ctrl.asked - 1
            self.cands[i] = cand
        self.trial_ids[trial_id] = i
        state = self.ctrl.latency_state()
        return {"trial": i, "candidate": cand.to_json(), "predicted_latency_ms": self.ctrl.predicted.get(cand.id),
                "latency_state": json.dumps(state) if state else None}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        i = self.trial_ids.get(trial_id)
        if i is None or i in self.told or i not in self.ctrl.pending:
            return
        cand = self.cands.pop(i)
        if error or not result:
            res = {"status": "error", "error": "evaluation process failed"}
        else:
            res = {k: result.get(k) for k in RESULT_COLUMNS if k in result}
            res["predicted_latency_ms"] = self.ctrl.predicted.get(cand.id)
        self.ctrl.tell(cand, res, trial=i)
        self.told.add(i)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"schema_version": 1, "trial_ids": self.trial_ids}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self._rebuild({k: int(v) for k, v in state["trial_ids"].items()})


def _row_from_trial(trial, status: str | None = None, error: str = "") -> dict:
    cfg = trial.config
    cand = Candidate.from_json(cfg["candidate"])
    res = {k: v for k, v in (trial.last_result or {}).items() if k in _ROW_KEYS}
    row = {**res, "trial": cfg["trial"], "id": cand.id, "summary": cand.summary(), "policy": cand.to_json(),
           "precision": cand.precision, "predicted_latency_ms": cfg.get("predicted_latency_ms"),
           "latency_state": cfg.get("latency_state")}
    if status:
        row.update(status=status, error=error)
    return row


class ResultsCallback(tune.Callback):
    """Appends each finished trial to results.csv (fsynced) as it arrives; replayed trials are skipped."""

    def __init__(self, results_path: str | Path, on_row: Callable[[dict], Any] | None = None):
        self.results_path, self.on_row = str(results_path), on_row

    def __getstate__(self):
        return {"results_path": self.results_path, "on_row": None}

    def _append(self, row: dict) -> None:
        if not hasattr(self, "_written"):
            self._written = {r["trial"] for r in read_results(Path(self.results_path))}
        if row["trial"] in self._written:  # a trial is recorded once, whatever Tune re-runs
            return
        self._written.add(row["trial"])
        table = ResultsTable(Path(self.results_path))
        try:
            table.append(row)
        finally:
            table.close()
        if self.on_row:
            self.on_row(row)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (trial.last_result or {}).get("replayed"):
            return
        if "status" not in (trial.last_result or {}):
            self._append(_row_from_trial(trial, "error", "trial ended without reporting"))
        else:
            self._append(_row_from_trial(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        msg = ""
        try:
            msg = (trial.error_message or "").strip().splitlines()[-1][:300]
        except Exception:
            pass
        self._append(_row_from_trial(trial, "error", f"evaluation process failed after retries: {msg}"))


def evaluate_trial(config: dict, space: SearchSpace, data: Dataset, settings: EvalSettings, device: str,
                   done: dict | None = None) -> None:
    """One Tune trial: score the candidate here, time it on a device node, report one result."""
    i = config["trial"]
    if done and i in done:  # finished before the driver was interrupted: report it again, do not re-run
        tune.report({**done[i], "replayed": True})
        return
    cand = Candidate.from_json(config["candidate"])
    import torch

    # as many threads as CPUs the trial holds: concurrent trials must not oversubscribe the cores
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    try:
        s = score(cand, space, data, settings)
    except Exception as e:  # recorded in the table; the search goes on
        tune.report({"status": "error", "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]})
        return
    try:  # on the device's node (a task outside the trial's placement group)
        out = on_device(get_device(device), _measure, s.onnx, device, cand.precision)
    except Exception as e:  # the measuring worker died
        out = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    row = {"accuracy": s.accuracy, "params": s.params, "onnx_bytes": s.onnx_bytes, "score_s": round(s.wall_s, 3)}
    if not out["ok"]:
        tune.report({**row, "status": "error", "error": "measurement: " + out["error"][:300],
                     "measure_node": out.get("measure_node"), "measure_pid": out.get("measure_pid")})
        return
    tune.report({
        **row, "status": "ok", "error": "",
        "latency_ms": out["median_ms"], "latency_p90_ms": out["p90_ms"], "latency_cv": out["cv"],
        "latency_flagged": out["flagged"],
        **{k: out[k] for k in ("device", "backend", "backend_version", "batch", "threads", "warmup", "repeats", "host",
                               "measure_node", "measure_pid", "fingerprint_id", "fingerprint")},
    })


def run_tune(
    factory: ControllerFactory, space: SearchSpace, data: Dataset, device: Device, settings: EvalSettings,
    n_trials: int, run_dir: Path, concurrency: int | None = None, resume: bool = False, max_failures: int = 1,
    on_row: Callable[[dict], Any] | None = None, resources: dict | None = None,
) -> tuple[list[dict], ControllerSearcher]:
    """Run (or resume) the search in Tune; returns the rows of results.csv (by trial) and the searcher."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # experiment state at most 1 s behind results.csv
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: Tune prints nothing; our progress does
    results = run_dir / "results.csv"
    ResultsTable(results).close()  # header now: a crash before the first row still leaves a valid table
    done = {r["trial"]: {k: v for k, v in r.items() if k in _ROW_KEYS and v is not None}
            for r in read_results(results) if r.get("trial") is not None}
    trainable = tune.with_parameters(evaluate_trial, space=space, data=data, settings=settings, device=device.name,
                                     done=done)
    if resources:  # e.g. {"cpu": 1, "gpu": 0.5} on a cluster with GPUs (pipeline: autocomp.training.gpus_per_trial)
        trainable = tune.with_resources(trainable, resources)
    storage = str((run_dir / TUNE_DIR).resolve())
    exp_path = os.path.join(storage, TUNE_NAME)
    searcher = None
    if resume and tune.Tuner.can_restore(exp_path):
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
        searcher, callbacks = _restored(tuner)
    if searcher is None:
        searcher = ControllerSearcher(factory, n_trials, results)
        remaining = n_trials - searcher.replayed
        name = TUNE_NAME if not os.path.exists(exp_path) else f"{TUNE_NAME}-{len(os.listdir(storage))}"
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=max(remaining, 0) or 1,
                                        max_concurrent_trials=concurrency, reuse_actors=True,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=name, storage_path=storage, verbose=0,
                failure_config=tune.FailureConfig(max_failures=max_failures),
                callbacks=[ResultsCallback(results, on_row)],
            ),
        )
        if remaining <= 0:
            tuner = None
    else:
        for cb in callbacks:
            cb.on_row = on_row
    if tuner is not None:
        tuner.fit()
    rows = read_results(results)
    by_trial = {}
    for r in rows:  # one row per trial (the first one recorded)
        by_trial.setdefault(r["trial"], r)
    return [by_trial[k] for k in sorted(by_trial)], searcher


def _trial_name(trial) -> str:
    return f"trial_{int(trial.config.get('trial', -1)):05d}_{trial.trial_id}"


def _restored(tuner) -> tuple[ControllerSearcher | None, list[ResultsCallback]]:
    """The searcher and results callbacks of a Tuner made by ``Tuner.restore`` (rebuilt from its
    experiment state). Ray Tune (2.60) has no public accessor for them: ``Tuner.restore`` takes no
    search_alg or run_config, and only the private ``Tuner._local_tuner`` holds the restored ones.
    This is the one place that reaches into it; (None, []) if that changes or Tune runs through
    Ray Client (the tuner is then remote), and run_tune starts a new experiment instead."""
    internal = getattr(tuner, "_local_tuner", None)
    alg = getattr(getattr(internal, "_tune_config", None), "search_alg", None)
    alg = getattr(alg, "searcher", alg)  # a ConcurrencyLimiter or SearchGenerator wraps it
    callbacks = getattr(getattr(internal, "_run_config", None), "callbacks", None) or []
    return (alg if isinstance(alg, ControllerSearcher) else None), [c for c in callbacks if isinstance(c, ResultsCallback)]
