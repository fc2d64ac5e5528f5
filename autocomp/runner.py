"""The Tune glue: a search runs as a Ray Tune experiment.

The controller runs inside Tune as a Searcher (suggest / on_trial_complete); each trial scores one
candidate (1 CPU, anywhere: weights -> compress -> export -> accuracy) and has its exported ONNX
timed on a node that holds the device (``autocomp.cluster.on_device``: the ``device:<name>``
resource, one measurement at a time per device unit). Tune does the scheduling and the retries of
trials whose process died (FailureConfig). results.csv (:mod:`autocomp.rundir`) is the source of
truth: a row is appended (fsynced) by a Tune Callback as each trial ends, and a resumed run rebuilds
its controller by replaying those rows in trial order (controllers are deterministic). Tune's own
experiment state (pickles) lives in a temporary directory outside the run and is never restored:
a run directory received from someone else is read as CSV and JSON only. Ray start-up is
:mod:`autocomp.cluster`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune
from ray.tune.search import Searcher

from autocomp.cluster import device_workers, on_device
from autocomp.data import Dataset
from autocomp.errors import UserError
from autocomp.evaluate import EvalSettings, device_int8_scheme, measure_onnx, score
from autocomp.measure import Device, get_device, quiet
from autocomp.rundir import RESULT_COLUMNS, ResultsTable, read_results, set_aside_torn
from autocomp.search import check_controller, get_controller
from autocomp.space import Candidate, SearchSpace

def _measure(onnx: bytes, device: str, precision: str) -> dict:
    """On the device's node: the latency of ``onnx``, and where it was measured (errors as a result)."""
    where = {"measure_node": ray.get_runtime_context().get_node_id(), "measure_pid": os.getpid()}
    try:
        return {"ok": True, **measure_onnx(onnx, device, precision), **where}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}", **where}


TUNE_NAME = "search"
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
        self.stopped: str | None = None  # set when a row could not be recorded: no new trials
        self._rebuild()

    # Tune pickles the searcher with its experiment; only the recipe travels, the state is rebuilt.
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("ctrl", "queue", "trial_ids", "told", "cands")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._rebuild()

    def _rebuild(self) -> None:
        """Replay results.csv (in trial order) into a fresh controller. Trials asked before the
        crash that did not finish (lost with the driver, or torn) are queued to be suggested again."""
        self.ctrl = self.factory()
        self.trial_ids: dict[str, int] = {}
        self.queue: list[tuple[int, Candidate]] = []
        self.told: set[int] = set()
        self.cands: dict[int, Candidate] = {}  # trial -> candidate the controller proposed, until told
        done = {r["trial"]: r for r in read_results(Path(self.results_path)) if r.get("trial") is not None}
        last = max(done, default=-1)
        while self.ctrl.asked <= last:
            state = (done.get(self.ctrl.asked) or {}).get("latency_state")
            if state:  # filter this ask as the recorded run did
                self.ctrl.set_latency_state(_json_object(state, self.ctrl.asked))
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
            else:  # lost with the driver: queued to be suggested again
                self.cands[i] = cand
                self.queue.append((i, cand))
        self.replayed = len(self.told)

    @property
    def skipped(self) -> int:
        return self.ctrl.skipped

    def suggest(self, trial_id: str):
        if self.stopped:
            return Searcher.FINISHED
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

    def save(self, checkpoint_path: str) -> None:  # Tune's experiment checkpoint: nothing it needs
        Path(checkpoint_path).write_text(json.dumps({"schema_version": 1}))

    def restore(self, checkpoint_path: str) -> None:  # never reads Tune's files: results.csv is the state
        self._rebuild()


def _json_object(text: str, trial: int) -> dict:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        raise UserError(f"results.csv, trial {trial}, column latency_state", "not a JSON object", "the state written by the search")
    return obj


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
    """Appends each finished trial to results.csv (fsynced) as it arrives. A row that cannot be
    written stops the search (no new trials) and is reported by :func:`run_tune`: a run never ends
    "successfully" with rows missing."""

    def __init__(self, results_path: str | Path, on_row: Callable[[dict], Any] | None = None,
                 searcher: "ControllerSearcher | None" = None):
        self.results_path, self.on_row, self.searcher = str(results_path), on_row, searcher
        self.failed: str | None = None

    def __getstate__(self):
        return {"results_path": self.results_path, "on_row": None, "searcher": None, "failed": self.failed}

    def _append(self, row: dict) -> None:
        if not hasattr(self, "_written"):
            self._written = {r["trial"] for r in read_results(Path(self.results_path))}
        if row["trial"] in self._written:  # a trial is recorded once, whatever Tune re-runs
            return
        try:
            table = ResultsTable(Path(self.results_path))
            try:
                table.append(row)
            finally:
                table.close()
        except OSError as e:
            if self.failed is None:
                self.failed = f"trial {row['trial']} could not be recorded ({e.strerror or type(e).__name__})"
            if self.searcher is not None:
                self.searcher.stopped = self.failed
            return
        self._written.add(row["trial"])
        if self.on_row:
            self.on_row(row)

    def on_trial_complete(self, iteration, trials, trial, **info):
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
                   int8: dict | None = None) -> None:
    """One Tune trial: score the candidate here (int8 exported as the device's scheme ``int8``:
    :class:`autocomp.measure.base.Int8Scheme` fields), time it on a device node, report one result."""
    from autocomp.measure.base import Int8Scheme

    cand = Candidate.from_json(config["candidate"])
    import torch

    # as many threads as CPUs the trial holds: concurrent trials must not oversubscribe the cores
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    try:
        with quiet.computing():  # never beside a CPU latency measurement on this node
            s = score(cand, space, data, settings, Int8Scheme(**(int8 or {})))
    except Exception as e:  # recorded in the table; the search goes on
        tune.report({"status": "error", "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]})
        return
    try:  # on the device's node (a task outside the trial's placement group)
        out = on_device(get_device(device), _measure, s.onnx, device, cand.precision)
    except Exception as e:  # the measuring worker died
        out = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    row = {"accuracy": s.accuracy, "accuracy_se": round(s.accuracy_se, 5), "params": s.params, "onnx_bytes": s.onnx_bytes,
           "score_s": round(s.wall_s, 3), "int8_export": s.int8_export}
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
    n_trials: int, run_dir: Path, concurrency: int | None = None, max_failures: int = 1,
    on_row: Callable[[dict], Any] | None = None, resources: dict | None = None,
) -> tuple[list[dict], ControllerSearcher]:
    """Run the search in Tune, continuing from the rows already in ``run_dir``/results.csv (a resumed
    run: a torn last row is set aside and its trial runs again); returns the rows of results.csv (by
    trial) and the searcher."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: Tune prints nothing; our progress does
    results = run_dir / "results.csv"
    set_aside_torn(results)
    ResultsTable(results).close()  # header now: a crash before the first row still leaves a valid table
    searcher = ControllerSearcher(factory, n_trials, results)
    remaining = n_trials - searcher.replayed
    callback = ResultsCallback(results, on_row, searcher)
    if remaining > 0:
        # decided on the device's node; a resumed run keeps the scheme its recorded rows were exported with
        # (none recorded: a run from before the column, exported as dequant), so one run never mixes two
        from autocomp.measure.base import Int8Scheme

        done = read_results(results)
        labels = [r["int8_export"] for r in done if r.get("int8_export")]
        scheme = (Int8Scheme.from_label(labels[0]) if labels else Int8Scheme() if done and "int8_export" not in done[0]
                  else device_int8_scheme(device))
        trainable = tune.with_parameters(evaluate_trial, space=space, data=data, settings=settings, device=device.name,
                                         int8={"export": scheme.export, "reduce_range": scheme.reduce_range})
        if resources:  # e.g. {"cpu": 1, "gpu": 0.5} on a cluster with GPUs (pipeline: autocomp.training.gpus_per_trial)
            trainable = tune.with_resources(trainable, resources)
        storage = tempfile.mkdtemp(prefix="autocomp-tune-")  # Tune's state: outside the run, never restored
        try:
            with device_workers(device):  # measurements go to warm processes on the device's node
                tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining, max_concurrent_trials=concurrency,
                                                reuse_actors=True, trial_name_creator=_trial_name,
                                                trial_dirname_creator=_trial_name),
                    run_config=tune.RunConfig(name=TUNE_NAME, storage_path=storage, verbose=0,
                                              failure_config=tune.FailureConfig(max_failures=max_failures),
                                              callbacks=[callback]),
                ).fit()
        finally:
            shutil.rmtree(storage, ignore_errors=True)
    if callback.failed:
        raise UserError(str(results), callback.failed, "a writable run directory; `autocomp search --resume "
                        f"{run_dir}` continues the run from the rows it holds")
    rows = read_results(results)
    by_trial = {}
    for r in rows:  # one row per trial (the first one recorded)
        by_trial.setdefault(r["trial"], r)
    return [by_trial[k] for k in sorted(by_trial)], searcher


def _trial_name(trial) -> str:
    return f"trial_{int(trial.config.get('trial', -1)):05d}_{trial.trial_id}"
