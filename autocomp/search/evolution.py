"""Regularized (aging) evolution (Real et al., 2019), generation-synchronous.

The population is a queue of the last ``population`` successfully evaluated candidates. A child is
the mutation of the fittest of ``sample`` members drawn at random (tournament); each finished
generation of ``generation`` children joins the queue in trial order and pushes the oldest members
out (aging), so a candidate lives for a fixed time regardless of its fitness. Fitness is accuracy,
penalised when the latency breaks the budget (see :func:`autocomp.search.base.fitness`).
The first ``population`` trials are uniform samples of the space.
"""

from __future__ import annotations

from collections import deque

from autocomp.search.base import Controller, fitness, register
from autocomp.space import Candidate, SearchSpace


@register("evolution")
class RegularizedEvolution(Controller):
    def __init__(self, space: SearchSpace, seed: int = 0, *, population: int = 16, sample: int = 4,
                 generation: int = 4, mutation_prob: float = 0.15, **kw):
        super().__init__(space, seed, **kw)
        if not (1 <= sample <= population) or generation < 1:
            raise ValueError("evolution needs 1 <= sample <= population and generation >= 1")
        self.population_size, self.sample_size, self.mutation_prob = population, sample, mutation_prob
        self.generation_size = generation
        self.population: deque[tuple[int, Candidate, float]] = deque()
        self._told_ok = 0

    def propose(self) -> Candidate:
        if len(self.population) < self.population_size:
            return self.space.sample(self.rng)
        contenders = self.rng.sample(list(self.population), self.sample_size)
        parent = max(contenders, key=lambda t: (t[2], -t[0]))[1]
        return self.space.mutate(parent, self.rng, self.mutation_prob)

    def update(self, batch):
        for trial, cand, result in batch:
            f = fitness(result, self.budget_ms)
            if f == float("-inf"):
                continue  # a failed evaluation does not enter the population
            self.population.append((trial, cand, f))
            while len(self.population) > self.population_size:
                self.population.popleft()  # aging: the oldest goes, however fit
