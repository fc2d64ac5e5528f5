"""NSGA-II (Deb et al., 2002): multi-objective search, accuracy up and latency down (optionally size down).

Generation-synchronous: generation 0 is ``population`` uniform samples; each later generation is
``population`` children of binary tournaments on (front rank, crowding distance), uniform
crossover (``space.crossover``) and mutation (``space.mutate``), so children stay inside the space.
Survivors are the best ``population`` of parents + children by non-dominated sorting, the last
front cut by crowding distance. Budget violations use constrained domination: any candidate
within the budget beats any candidate over it; among those over it, the smaller excess wins.
Latency for selection is the predicted one when a predictor is loaded (deterministic for a seed),
else the measured one.
"""

from __future__ import annotations

from autocomp.search.base import Controller, register, selection_latency
from autocomp.search.pareto import crowding_distance, non_dominated_sort
from autocomp.space import Candidate, SearchSpace

OBJECTIVES = ("accuracy", "latency", "params")


@register("nsga2")
class NSGA2(Controller):
    def __init__(self, space: SearchSpace, seed: int = 0, *, population: int = 8, crossover_prob: float = 0.9,
                 mutation_prob: float = 0.15, objectives: tuple[str, ...] = ("accuracy", "latency"), **kw):
        super().__init__(space, seed, **kw)
        if population < 2:
            raise ValueError("nsga2 needs population >= 2")
        bad = [o for o in objectives if o not in OBJECTIVES]
        if bad:
            raise ValueError(f"unknown objectives {bad}; choose from {OBJECTIVES}")
        self.generation_size = population
        self.population_size, self.crossover_prob, self.mutation_prob = population, crossover_prob, mutation_prob
        self.objectives = tuple(objectives)
        # survivors: (trial, candidate, objective vector (minimised), budget violation)
        self.population: list[tuple[int, Candidate, tuple[float, ...], float]] = []
        self._rank: dict[int, tuple[int, float]] = {}  # trial -> (front rank, -crowding)

    def _objectives(self, result: dict) -> tuple[tuple[float, ...], float] | None:
        if result.get("status", "ok") != "ok" or result.get("accuracy") in (None, ""):
            return None
        lat = selection_latency(result)
        if lat is None:
            return None
        vals = {"accuracy": -float(result["accuracy"]), "latency": lat, "params": float(result.get("params") or 0)}
        violation = max(0.0, lat - self.budget_ms) if self.budget_ms is not None else 0.0
        return tuple(vals[o] for o in self.objectives), violation

    def _tournament(self) -> Candidate:
        a, b = self.rng.sample(self.population, 2)
        return min((a, b), key=lambda t: (self._rank[t[0]], t[0]))[1]

    def propose(self) -> Candidate:
        if len(self.population) < 2:
            return self.space.sample(self.rng)
        p1, p2 = self._tournament(), self._tournament()
        child = self.space.crossover(p1, p2, self.rng) if self.rng.random() < self.crossover_prob else p1
        return self.space.mutate(child, self.rng, self.mutation_prob)

    def update(self, batch):
        pool = list(self.population)
        for trial, cand, result in batch:
            o = self._objectives(result)
            if o is not None:
                pool.append((trial, cand, o[0], o[1]))
        self.population, self._rank = select(pool, self.population_size)


def select(pool: list[tuple[int, Candidate, tuple[float, ...], float]], n: int):
    """NSGA-II survivor selection with constrained domination; returns (survivors, trial -> sort key)."""
    feasible = [p for p in pool if p[3] <= 0.0]
    infeasible = sorted((p for p in pool if p[3] > 0.0), key=lambda p: (p[3], p[0]))
    ranked: list[tuple[tuple[int, float], tuple]] = []
    for r, front in enumerate(non_dominated_sort([p[2] for p in feasible])):
        members = [feasible[i] for i in front]
        crowd = crowding_distance([m[2] for m in members])
        for m, d in sorted(zip(members, crowd), key=lambda t: (-t[1], t[0][0])):
            ranked.append(((r, -d), m))
    base = len(ranked) and ranked[-1][0][0] + 1
    for k, m in enumerate(infeasible):
        ranked.append(((base + k, 0.0), m))
    survivors = ranked[:n]
    return [m for _, m in survivors], {m[0]: key for key, m in survivors}
