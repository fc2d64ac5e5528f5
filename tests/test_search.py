"""Controllers (every registered strategy: random, regularized evolution, NSGA-II, APQ), the budget
as a hard constraint, and the search on Ray Tune: failures recorded, the resume bookkeeping (the
SIGKILL-and-resume test of a whole run is in test_pipeline.py)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from autocomp.errors import UserError
from autocomp.search import get_controller, list_controllers
from autocomp.search.nsga2 import select
from autocomp.search.pareto import crowding_distance, dominates, hypervolume, non_dominated_sort, pareto_front
from autocomp.space import SearchSpace, get_space

TINY_SPACE = (Path(__file__).parent / "fixtures" / "tiny-space.yaml").read_text()
CONTROLLERS = list_controllers()  # the contract tests run on every registered strategy
# small populations so that a few dozen trials cover several generations (others: their defaults)
SMALL = {"evolution": {"population": 6, "generation": 3}, "nsga2": {"population": 4}, "apq": {"min_train": 4},
         "budget": {"generation": 3, "population": 256, "pool": 128, "min_train": 4, "max_ranked": 64}}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return get_space("mnist-mbv2")


class EncodingLatency:
    """A real (if crude) latency model: a fixed linear function of the candidate's encoding.

    Widths, kernels, expansions, keep and rank ratios raise the cost; int8 halves a layer's share.
    """

    def __init__(self, space: SearchSpace):
        self.space = space

    def predict(self, candidates) -> np.ndarray:
        out = []
        for c in candidates:
            ms = 0.002 * c.stem_width + 0.001 * c.head_width
            for s in c.stages:
                for b in s.blocks:
                    cost = 1e-4 * s.width * b.expand * b.keep * (b.kernel ** 2) * (0.5 + b.rank)
                    out_prec = 0.5 if b.precision == "int8" else (0.75 if b.precision == "fp16" else 1.0)
                    ms += cost * out_prec
            out.append(ms)
        return np.asarray(out)


def synthetic_eval(space: SearchSpace, cand, trial: int) -> dict:
    """Deterministic stand-in for training: accuracy grows with capacity, latency from the model above."""
    v = np.asarray(space.encode(cand))
    lat = float(EncodingLatency(space).predict([cand])[0])
    acc = float(1.0 - np.exp(-0.02 * (v.sum() ** 0.5)) + 0.01 * np.sin(v.sum()))
    return {"trial": trial, "status": "ok", "accuracy": acc, "latency_ms": lat, "params": int(v.sum() * 10)}


def drive(name: str, space: SearchSpace, seed: int, n: int, shuffle_seed: int | None, **opts) -> list[str]:
    """Ask/tell ``n`` trials with up to 4 in flight, telling in a (possibly shuffled) completion order."""
    ctrl = get_controller(name, space, seed, **opts)
    rng = random.Random(shuffle_seed)
    inflight: list[tuple[int, object]] = []
    ids: list[str] = []
    while len(ids) < n or inflight:
        while len(inflight) < 4 and ctrl.asked < n:
            cand = ctrl.ask()
            if cand is None:
                break
            ids.append(cand.id)
            inflight.append((ctrl.asked - 1, cand))
        k = rng.randrange(len(inflight)) if shuffle_seed is not None else 0
        trial, cand = inflight.pop(k)
        ctrl.tell(cand, synthetic_eval(space, cand, trial), trial=trial)
    return ids


# --------------------------------------------------------------------------- controllers


@pytest.mark.parametrize("name", CONTROLLERS)
def test_same_seed_same_candidates_whatever_the_completion_order(name, space):
    opts = SMALL.get(name, {})
    a = drive(name, space, 7, 24, None, **opts)
    b = drive(name, space, 7, 24, 123, **opts)  # results arrive in another order
    c = drive(name, space, 8, 24, None, **opts)
    assert a == b
    assert a != c
    assert len(set(a)) == len(a)  # never the same candidate twice


def test_registry_lists_strategies_and_rejects_unknown(space):
    assert {"random", "evolution", "nsga2", "apq"} <= set(CONTROLLERS)
    with pytest.raises(UserError, match="--controller"):
        get_controller("annealing", space)
    with pytest.raises(UserError, match=r"controller_options.populaton: controller 'nsga2' has no option"):
        get_controller("nsga2", space, population=4, populaton=4)  # a typo is refused, not stored and ignored


def test_controller_help_comes_from_the_registry():
    from autocomp.cli import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["search", "--help"], env={"COLUMNS": "400"})
    assert res.exit_code == 0
    line = next(line for line in res.output.splitlines() if "--controller" in line)
    assert all(name in line for name in CONTROLLERS)


@pytest.mark.parametrize("name", CONTROLLERS)
def test_proposed_candidates_stay_inside_the_space(name, space):
    ctrl = get_controller(name, space, 3, **SMALL.get(name, {}))
    for t in range(40):
        cand = ctrl.ask()
        assert cand is not None
        space.validate_candidate(cand)
        ctrl.tell(cand, synthetic_eval(space, cand, t), trial=t)


def test_mutation_and_crossover_stay_inside_the_space(space):
    rng = random.Random(0)
    pop = [space.sample(rng) for _ in range(8)]
    for _ in range(300):
        a, b = rng.sample(pop, 2)
        child = space.mutate(space.crossover(a, b, rng), rng, prob=0.5)
        space.validate_candidate(child)
        pop[rng.randrange(len(pop))] = child


def test_generation_waits_for_all_results(space):
    ctrl = get_controller("nsga2", space, 0, population=3)
    got = [ctrl.ask() for _ in range(3)]
    assert all(got) and ctrl.ask() is None  # the generation is out
    ctrl.tell(got[1], synthetic_eval(space, got[1], 1), trial=1)
    assert ctrl.ask() is None
    ctrl.tell(got[0], synthetic_eval(space, got[0], 0), trial=0)
    ctrl.tell(got[2], synthetic_eval(space, got[2], 2), trial=2)
    assert ctrl.ask() is not None and ctrl.generation == 1


def test_replaying_results_rebuilds_the_controller(space):
    """The basis of resume: feeding the recorded results in trial order gives the same next proposals."""
    live = get_controller("evolution", space, 5, population=4, generation=2)
    rows = []
    for t in range(10):
        c = live.ask()
        if c is None:
            break
        rows.append((t, c, synthetic_eval(space, c, t)))
        if len(rows) % 2 == 0:
            for tt, cc, rr in reversed(rows[-2:]):
                live.tell(cc, rr, trial=tt)
    replay = get_controller("evolution", space, 5, population=4, generation=2)
    for t, c, r in rows:  # as runner.ControllerSearcher does: ask, then tell the recorded result
        assert replay.ask().id == c.id
        replay.tell(c, r, trial=t)
    assert [replay.ask().id for _ in range(2)] == [live.ask().id for _ in range(2)]


# --------------------------------------------------------------------------- budget


@pytest.mark.parametrize("name", CONTROLLERS)
def test_infeasible_candidates_are_never_asked(name, space):
    pred = EncodingLatency(space)
    rng = random.Random(1)
    lat = pred.predict([space.sample(rng) for _ in range(400)])
    budget = float(np.percentile(lat, 30))  # ~70% of the space is over budget
    ctrl = get_controller(name, space, 0, budget_ms=budget, predictor=pred, **SMALL.get(name, {}))
    for t in range(16):
        c = ctrl.ask()
        assert float(pred.predict([c])[0]) <= budget
        assert ctrl.predicted[c.id] == pytest.approx(float(pred.predict([c])[0]))
        ctrl.tell(c, synthetic_eval(space, c, t), trial=t)
    # what the filter kept out is counted (the budget search: every scored candidate over the limit)
    assert ctrl.skipped == len(ctrl.skipped_log) > 0 and all(p > budget for _, p in ctrl.skipped_log)
    assert len({c for c, _ in ctrl.skipped_log}) == ctrl.skipped  # each once


def test_budget_search_concentrates_near_the_budget(space):
    """The default controller's proposals sit in the band under the budget (predicted 70-100 % of it),
    where uniform samples rarely are; it proposes the largest feasible candidates, not the smallest."""
    pred = EncodingLatency(space)
    lat = pred.predict([space.sample(random.Random(i)) for i in range(400)])
    budget = float(np.percentile(lat, 60))
    shares = {}
    for name in ("budget", "random"):
        ctrl = get_controller(name, space, 0, budget_ms=budget, predictor=pred, **SMALL.get(name, {}))
        got = []
        for t in range(12):
            c = ctrl.ask()
            got.append(float(pred.predict([c])[0]) / budget)
            ctrl.tell(c, synthetic_eval(space, c, t), trial=t)
        shares[name] = got
    assert all(0.7 <= s <= 1.0 for s in shares["budget"])
    assert np.mean(shares["budget"]) > np.mean(shares["random"]) and min(shares["random"]) < 0.7
    assert get_controller("budget", space, 0).prior is not None  # the space ships an accuracy predictor


def test_impossible_budget_is_a_user_error(space):
    ctrl = get_controller("random", space, 0, budget_ms=1e-9, predictor=EncodingLatency(space), max_proposals=64)
    with pytest.raises(UserError, match="--budget"):
        ctrl.ask()


def test_without_budget_the_predictor_does_not_filter(space):
    ctrl = get_controller("random", space, 0, budget_ms=None, predictor=EncodingLatency(space))
    ctrl.ask()
    assert ctrl.skipped == 0 and ctrl.predictor is None


# --------------------------------------------------------------------------- NSGA-II maths


def test_non_dominated_sort_on_a_hand_checked_set():
    #            0       1       2       3       4       5       6
    pts = [(1, 5), (2, 3), (3, 1), (2, 4), (4, 4), (3, 3), (1, 5)]
    # front 0: (1,5) twice (equal points do not dominate each other), (2,3), (3,1)
    # front 1: (2,4) [dominated by (2,3)], (3,3) [by (2,3)]
    # front 2: (4,4) [by (2,4), (3,3)]
    assert non_dominated_sort(pts) == [[0, 1, 2, 6], [3, 5], [4]]
    assert dominates((1, 1), (1, 2)) and not dominates((1, 2), (1, 2)) and not dominates((0, 3), (1, 2))


def test_crowding_distance_hand_checked():
    d = crowding_distance([(0, 4), (1, 2), (2, 1), (4, 0)])
    assert d[0] == d[3] == float("inf")
    assert d[1] == pytest.approx((2 - 0) / 4 + (4 - 1) / 4)
    assert d[2] == pytest.approx((4 - 1) / 4 + (2 - 0) / 4)


def test_survivor_selection_prefers_feasible_then_front_then_spread(space):
    c = space.smallest()
    pool = [
        (0, c, (-0.9, 1.0), 0.0), (1, c, (-0.8, 0.5), 0.0), (2, c, (-0.7, 0.9), 0.0),  # 2 is dominated by 1
        (3, c, (-0.99, 9.0), 4.0), (4, c, (-0.95, 6.0), 1.0),  # over budget by 4 and 1 ms
    ]
    survivors, rank = select(pool, 4)
    assert [s[0] for s in survivors] == [0, 1, 2, 4]
    assert rank[0][0] == rank[1][0] == 0 and rank[2][0] == 1 and rank[4][0] == 2


def test_pareto_front_and_hypervolume():
    rows = [{"accuracy": a, "latency_ms": l} for a, l in [(0.5, 1.0), (0.7, 2.0), (0.6, 3.0), (0.9, 4.0)]]
    assert [r["accuracy"] for r in pareto_front(rows)] == [0.5, 0.7, 0.9]
    assert hypervolume(rows, 5.0) == pytest.approx(1 * 0.5 + 2 * 0.7 + 1 * 0.9)


# --------------------------------------------------------------------------- on Ray Tune


def test_failed_evaluations_are_recorded_and_the_search_goes_on(ray_local, mnist, tmp_path):
    """Images with 3 channels for a 1-channel space: every evaluation raises; each is a row with its
    error. The controller runs under a budget with a latency model, so this also checks the filter in Tune."""
    from autocomp.data import Dataset, Split
    from autocomp.evaluate import EvalSettings
    from autocomp.measure import get_device
    from autocomp.rundir import read_results
    from autocomp.runner import ControllerFactory, run_tune

    sp = space_file(tmp_path)
    from autocomp.space import load_space

    tiny = load_space(sp)
    bad = Split(np.repeat(mnist.train.x[:256], 3, axis=1), mnist.train.y[:256])
    data = Dataset("bad", bad, Split(np.repeat(mnist.val.x[:64], 3, axis=1), mnist.val.y[:64]), bad, 10, mnist.mean, mnist.std)
    pred = EncodingLatency(tiny)
    budget = float(np.percentile(pred.predict([tiny.sample(random.Random(i)) for i in range(200)]), 30))
    factory = ControllerFactory("random", tiny, 0, budget_ms=budget, predictor=pred)
    rows, searcher = run_tune(factory, tiny, data, get_device("cpu-ort"), EvalSettings(train_steps=1, val_size=64), 2, tmp_path)
    assert [r["trial"] for r in rows] == [0, 1]
    assert all(r["status"] == "error" and "RuntimeError" in r["error"] for r in rows)
    # the budget filter ran inside Tune's searcher: predictions recorded, infeasible ones skipped
    assert all(0 < r["predicted_latency_ms"] <= budget for r in rows)
    assert searcher.skipped > 0
    # results.csv is in arrival order (two trials run at once); run_tune returns them by trial
    assert sorted(read_results(tmp_path / "results.csv"), key=lambda r: r["trial"]) == rows
    assert searcher.ctrl.pending == []


def test_device_workers_run_the_measurements_in_one_warm_process(ray_local):
    """Inside device_workers, every on_device call for the device, from the driver or from another
    process of the job (a trial), runs in one long-lived process that holds the device's resource;
    after the block the resource is free again and calls go back to tasks."""
    import os
    import time

    import ray

    from autocomp.cluster import device_workers, on_device
    from autocomp.measure import get_device

    dev = get_device("cpu-ort")
    pid = lambda: os.getpid()  # noqa: E731  (a lambda travels by value; Ray takes no builtin as a task)
    trial = ray.remote(num_cpus=1)(lambda: on_device(dev, pid))
    with device_workers(dev):
        pids = {on_device(dev, pid) for _ in range(3)} | set(ray.get([trial.remote() for _ in range(2)]))
        assert len(pids) == 1 and os.getpid() not in pids
        assert ray.available_resources().get(dev.resource, 0) == 0  # the worker holds the device
    deadline = time.time() + 30
    while ray.available_resources().get(dev.resource, 0) < 1 and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get(dev.resource, 0) == 1
    assert on_device(dev, pid) not in pids  # a task: the worker has ended


def space_file(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY_SPACE)
    return p


def test_searcher_rebuilds_from_results(tmp_path):
    """Resume bookkeeping without Ray: finished trials are replayed from results.csv alone, lost
    in-flight trials are suggested again first, then new ones."""
    from autocomp.rundir import ResultsTable
    from autocomp.runner import ControllerFactory, ControllerSearcher

    space = get_space("mnist-mbv2")
    ref = get_controller("random", space, 4)
    ids = [ref.ask().id for _ in range(5)]
    table = ResultsTable(tmp_path / "results.csv")
    for t in (0, 2):
        table.append({"trial": t, "id": ids[t], "status": "ok", "accuracy": 0.5, "latency_ms": 1.0})
    table.close()

    s = ControllerSearcher(ControllerFactory("random", space, 4), 5, tmp_path / "results.csv")
    assert s.replayed == 2 and [i for i, _ in s.queue] == [1]  # trial 1 was in flight when the driver died
    assert s.suggest("a")["trial"] == 1 and s.suggest("b")["trial"] == 3

    cfg = s.suggest("c")
    assert cfg["trial"] == 4
    from autocomp.space import Candidate

    assert Candidate.from_json(cfg["candidate"]).id == ids[4]
    s.on_trial_complete("a", {"status": "ok", "accuracy": 0.4, "latency_ms": 2.0})
    assert s.ctrl.pending == [3, 4]
    with pytest.raises(UserError, match="--resume"):  # resuming with another seed is refused
        ControllerSearcher(ControllerFactory("random", space, 5), 5, tmp_path / "results.csv")


def test_summary_says_what_share_of_the_budget_the_winner_uses():
    from autocomp.pipeline import summarise

    rows = [{"trial": i, "id": str(i), "status": "ok", "accuracy": a, "latency_ms": ms, "latency_p90_ms": ms,
             "predicted_latency_ms": ms, "params": 1, "summary": ""} for i, (a, ms) in enumerate([(0.9, 1.0), (0.95, 1.6), (0.99, 3.0)])]
    s = summarise(rows, 2.0)
    assert s["best_under_budget"]["id"] == "1" and s["budget_share"] == pytest.approx(0.8)
    assert summarise(rows[2:], 2.0)["budget_share"] is None
