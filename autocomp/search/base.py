"""The controller contract: ``ask()`` proposes a Candidate, ``tell(candidate, result)`` feeds back.

A new strategy is one module that subclasses :class:`Controller`, implements ``propose()`` (one
candidate from the current state) and optionally ``update(batch)`` (learn from a finished
generation), and registers itself with ``@register("name")``.

Determinism. Trials are numbered in ask order. A controller with a ``generation_size`` proposes
that many candidates from a frozen state, then ``ask()`` returns ``None`` until every one of them
has been told; the generation is then folded in *in trial order* (``update``). So the sequence of
candidates depends only on the seed and the results, never on the order in which parallel
evaluations complete; replaying the recorded results of a run rebuilds the controller exactly
(that is how a run resumes).

The budget is a hard constraint: with a latency ``predictor`` and ``budget_ms``, a proposal whose
predicted latency exceeds the budget is never returned (counted in ``skipped``, logged in
``skipped_log`` for the skip audit). A predictor that adapts online (``observe``, see
:class:`autocomp.predictor.calibrate.OnlineLatency`) is shown every measured latency as it is told,
and may widen the filter by its live error (``limit``); its state at each ask is recorded with
the trial (``latency_state``), which is what makes a replay propose the same candidates.
"""

from __future__ import annotations

import random
from typing import Any, Protocol, Sequence

import numpy as np

from autocomp.errors import UserError
from autocomp.space import Candidate, SearchSpace

CONTROLLERS: dict[str, type["Controller"]] = {}


class LatencyPredictor(Protocol):
    def predict(self, candidates: Sequence[Candidate]) -> np.ndarray: ...


def register(name: str):
    def deco(cls: type["Controller"]) -> type["Controller"]:
        CONTROLLERS[name] = cls
        cls.name = name
        return cls

    return deco


class Controller:
    name = "base"
    generation_size: int | None = None  # None: proposals never wait for results

    def __init__(self, space: SearchSpace, seed: int = 0, *, budget_ms: float | None = None,
                 predictor: LatencyPredictor | None = None, max_proposals: int = 5000, chunk: int = 16, **options: Any):
        self.space = space
        self.seed = seed
        self.rng = random.Random(seed)
        self.budget_ms = budget_ms
        self.predictor = predictor if budget_ms is not None else None
        self.max_proposals = max_proposals
        self.chunk = chunk
        self.options = options
        self.history: list[tuple[Candidate, dict]] = []  # in tell order
        self.seen: set[str] = set()
        self.skipped_log: list[tuple[Candidate, float]] = []  # (proposal, predicted ms) of the skipped ones
        self.predicted: dict[str, float] = {}  # candidate id -> predicted latency (ms)
        self.asked = 0
        self._pending: dict[int, Candidate] = {}
        self._gen: list[tuple[int, Candidate, dict]] = []
        self._gen_asked = 0
        self.generation = 0

    # ----------------------------------------------------------------------- strategy hooks

    def propose(self) -> Candidate:
        raise NotImplementedError

    def update(self, batch: list[tuple[int, Candidate, dict]]) -> None:
        """A finished generation (every result told), in trial order."""

    # ----------------------------------------------------------------------- contract

    def ask(self) -> Candidate | None:
        """The next candidate (trial number ``self.asked - 1``), or None while a generation is still out."""
        if self.generation_size and self._gen_asked >= self.generation_size:
            return None
        cand = self._feasible_fresh()
        self._pending[self.asked] = cand
        self.asked += 1
        self._gen_asked += 1
        return cand

    def tell(self, candidate: Candidate, result: dict, trial: int | None = None) -> None:
        if trial is None:
            trial = result.get("trial")
        if trial is None or trial not in self._pending:
            trial = next((i for i, c in self._pending.items() if c.id == candidate.id), None)
        if trial is None:
            raise ValueError(f"tell() for candidate {candidate.id} that was not asked (or told twice)")
        del self._pending[trial]
        self._observe_latency(candidate, result)
        self.history.append((candidate, result))
        self._gen.append((trial, candidate, result))
        if not self.generation_size:
            self._close_generation()
        elif self._gen_asked >= self.generation_size and not self._pending:
            self._close_generation()

    def _observe_latency(self, candidate: Candidate, result: dict) -> None:
        observe = getattr(self.predictor, "observe", None)
        if observe is None or result.get("status", "ok") != "ok" or result.get("latency_ms") in (None, ""):
            return
        predicted = result.get("predicted_latency_ms")
        observe(candidate, float(result["latency_ms"]), None if predicted in (None, "") else float(predicted))

    def latency_state(self) -> dict | None:
        """The online latency model's state now (what the next ask filters with), or None."""
        state = getattr(self.predictor, "state", None)
        return state() if state else None

    def set_latency_state(self, state: dict) -> None:
        """Replay: filter the next ask as the recorded run did."""
        if hasattr(self.predictor, "set_state"):
            self.predictor.set_state(state)

    @property
    def pending(self) -> list[int]:
        return sorted(self._pending)

    def _close_generation(self) -> None:
        batch = sorted(self._gen, key=lambda t: t[0])
        self._gen, self._gen_asked = [], 0
        self.generation += 1
        self.update(batch)

    # ----------------------------------------------------------------------- helpers

    def predict_ms(self, candidates: Sequence[Candidate]) -> list[float] | None:
        if self.predictor is None:
            return None
        return [float(x) for x in np.asarray(self.predictor.predict(list(candidates)), dtype=float).reshape(-1)]

    @property
    def skipped(self) -> int:
        """Proposals never evaluated because their predicted latency exceeds the filter's limit."""
        return len(self.skipped_log)

    def limit_ms(self) -> float | None:
        """The filter's limit: a candidate is skipped only when predicted above it (the budget,
        widened by the live error when the predictor adapts online)."""
        if self.predictor is not None and hasattr(self.predictor, "limit"):
            return self.predictor.limit(self.budget_ms)
        return self.budget_ms

    def _feasible_fresh(self) -> Candidate:
        """A proposal not asked before whose predicted latency fits the budget.

        Proposals are scored in chunks (one batched predictor call); those before the first
        feasible one that exceed the budget count as skipped. After half the allowed proposals the
        strategy's own proposals are replaced by uniform samples of the space.
        """
        tried = 0
        limit = self.limit_ms()
        while tried < self.max_proposals:
            use_space = tried >= self.max_proposals // 2
            chunk = [self.space.sample(self.rng) if use_space else self.propose() for _ in range(self.chunk)]
            tried += len(chunk)
            chunk = [c for c in chunk if c.id not in self.seen]
            if not chunk:
                continue
            lat = self.predict_ms(chunk)
            for k, c in enumerate(chunk):
                if lat is not None and lat[k] > limit:
                    self.skipped_log.append((c, lat[k]))
                    self.seen.add(c.id)  # never proposed again
                    continue
                if lat is not None:
                    self.predicted[c.id] = lat[k]
                self.seen.add(c.id)
                return c
        if self.predictor is not None:
            raise UserError("--budget", f"no new candidate of space {self.space.name!r} is predicted under "
                            f"{self.budget_ms:g} ms after {tried} proposals", "a larger budget or a space with smaller members")
        raise UserError("--trials", f"no new candidate found in space {self.space.name!r} after {tried} proposals",
                        "fewer trials than the space has members")


def fitness(result: dict, budget_ms: float | None) -> float:
    """Single-objective score: accuracy, minus 1 when the selection latency breaks the budget; -inf on error."""
    if result.get("status", "ok") != "ok" or result.get("accuracy") in (None, ""):
        return float("-inf")
    acc = float(result["accuracy"])
    lat = selection_latency(result)
    if budget_ms is not None and lat is not None and lat > budget_ms:
        return acc - 1.0
    return acc


def selection_latency(result: dict) -> float | None:
    """Latency used to *select* (not to report): the predicted one when there is one (deterministic
    for a seed), else the measured one."""
    for k in ("predicted_latency_ms", "latency_ms"):
        v = result.get(k)
        if v not in (None, ""):
            return float(v)
    return None


def list_controllers() -> list[str]:
    """The registered strategies (``@register``); the built-in ones register when
    :mod:`autocomp.search` is imported, which importing this module always does first."""
    return sorted(CONTROLLERS)


def controller_options(name: str) -> list[str]:
    """The options a controller takes: the keyword parameters of its constructor and of every base
    constructor up to :class:`Controller` (``budget_ms``, ``predictor``, ``max_proposals``, ``chunk``)."""
    import inspect

    names: set[str] = set()
    for klass in CONTROLLERS[name].__mro__:
        if "__init__" in klass.__dict__:
            params = inspect.signature(klass.__dict__["__init__"]).parameters.values()
            names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if klass is Controller:
            break
    return sorted(names - {"self", "space", "seed"})


def check_controller(name: str, options: dict | None = None) -> None:
    """A UserError naming the field unless ``name`` is registered and takes every one of ``options``."""
    if name not in CONTROLLERS:
        raise UserError("--controller", f"unknown controller {name!r}", f"one of {list_controllers()}")
    known = controller_options(name)
    unknown = sorted(set(options or {}) - set(known))
    if unknown:
        raise UserError(f"controller_options.{unknown[0]}", f"controller {name!r} has no option {unknown[0]!r}",
                        f"one of {known}")


def get_controller(name: str, space: SearchSpace, seed: int = 0, **options: Any) -> Controller:
    check_controller(name, options)
    return CONTROLLERS[name](space, seed, **options)
