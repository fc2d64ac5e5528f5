"""APQ-style search: an accuracy predictor, refitted on every finished generation, ranks a pool of
proposals (uniform samples and mutations of the best so far) and only the most promising feasible
ones are evaluated. The first generation is uniform random (the predictor needs data)."""

from __future__ import annotations

from autocomp.predictor.accuracy import AccuracyPredictor
from autocomp.search.base import Controller, fitness, register
from autocomp.space import Candidate


@register("apq")
class APQSearch(Controller):
    generation_size = 4

    def __init__(self, space, seed: int = 0, *, pool: int = 256, min_train: int = 8, parents: int = 5, **kw):
        super().__init__(space, seed, **kw)
        self.pool, self.min_train, self.n_parents = pool, min_train, parents
        self.model: AccuracyPredictor | None = None
        self._queue: list[Candidate] = []
        self._data: list[tuple[Candidate, float]] = []

    def update(self, batch) -> None:
        for _, cand, result in batch:
            if result.get("status", "ok") == "ok" and result.get("accuracy") not in (None, ""):
                self._data.append((cand, float(result["accuracy"])))
        self._queue = []
        if len(self._data) >= self.min_train:
            cands, accs = zip(*self._data)
            self.model = AccuracyPredictor(self.space).fit(cands, accs, seed=self.seed)

    def propose(self) -> Candidate:
        if self.model is None:
            return self.space.sample(self.rng)
        if not self._queue:
            self._queue = self._ranked_pool()
        return self._queue.pop(0) if self._queue else self.space.sample(self.rng)

    def _ranked_pool(self) -> list[Candidate]:
        best = sorted(self.history, key=lambda cr: -fitness(cr[1], self.budget_ms))[: self.n_parents]
        pool = [self.space.sample(self.rng) for _ in range(self.pool // 2)]
        pool += [self.space.mutate(best[i % len(best)][0], self.rng, prob=0.15) for i in range(self.pool - len(pool))] if best else []
        pool = [c for c in {c.id: c for c in pool}.values() if c.id not in self.seen]
        lat = self.predict_ms(pool)
        if lat is not None:
            pool = [c for c, ms in zip(pool, lat) if ms <= self.budget_ms]
        if not pool:
            return []
        acc = self.model.predict(pool)
        order = sorted(range(len(pool)), key=lambda i: -acc[i])
        return [pool[i] for i in order[: self.generation_size]]
