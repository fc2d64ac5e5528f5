"""Budget search (the default): spend the evaluations on the most accurate candidates that fit the budget.

A user who gives 10 ms wants the most accurate model that runs in 10 ms, and the most accurate
members of a space are, as a rule, the largest that fit. Uniform samples rarely are (most of them
sit far below a budget that binds), so this controller concentrates its proposals in a **band**
under the budget: predicted latency (the run's calibrated, online-adapted latency model) between
``band * budget`` and the budget.

* **Warm start.** ``population`` uniform samples of the space are scored with the latency model
  (batched: a fraction of a second) and those in the band ranked by the accuracy predictor shipped
  beside the space's supernet (:func:`autocomp.predictor.accuracy.default_accuracy_predictor`,
  trained on supernet-inherited accuracies of compressed candidates). The first generation is a
  diverse set of the best ranked: farthest-point selection in the (scaled) encoding among the top
  ``shortlist``.
* **Skipped.** Every scored candidate predicted over the filter's limit (the budget widened by
  the live error, :meth:`Controller.limit_ms`) counts as skipped, once: those are what the latency
  model kept out of the search, and the skip audit measures the ones predicted nearest the limit.
* **Later generations.** An accuracy predictor is fitted on the run's own results (once it has
  ``min_train``) and averaged, by rank, with the shipped one; it ranks a fresh pool of band samples
  and mutations of the best candidates found so far under the budget; the next generation is again
  a diverse set of the best ranked.

Without a latency model the band is the whole space; without a shipped accuracy predictor the
first generation is a diverse set of the band. Like every controller it is generation-synchronous
(deterministic for a seed whatever the completion order, so a run resumes by replay).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from autocomp.predictor.accuracy import AccuracyPredictor, default_accuracy_predictor
from autocomp.search.base import Controller, fitness, register
from autocomp.space import Candidate, SearchSpace


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r / max(1, len(x) - 1)


@register("budget")
class BudgetSearch(Controller):
    def __init__(self, space: SearchSpace, seed: int = 0, *, generation: int = 4, population: int = 4096,
                 pool: int = 1024, band: float = 0.7, shortlist: int = 32, min_train: int = 8, parents: int = 4,
                 mutation_prob: float = 0.2, prior: bool = True, max_ranked: int = 512, **kw):
        super().__init__(space, seed, **kw)
        if generation < 1 or not 0.0 <= band < 1.0:
            raise ValueError("budget search needs generation >= 1 and 0 <= band < 1")
        self.generation_size = generation
        self.chunk = 1  # each proposal is chosen: none is drawn and dropped
        self.population_size, self.pool_size, self.band, self.shortlist = population, pool, band, shortlist
        self.min_train, self.n_parents, self.mutation_prob, self.max_ranked = min_train, parents, mutation_prob, max_ranked
        self.prior: AccuracyPredictor | None = default_accuracy_predictor(space) if prior else None
        self.model: AccuracyPredictor | None = None
        self._queue: list[Candidate] = []
        self._data: list[tuple[Candidate, float]] = []
        self._started = False
        self._proposed: set[Candidate] = set()
        self._skipped: set[Candidate] = set()  # scored candidates predicted over the filter's limit

    # ----------------------------------------------------------------------- strategy

    def propose(self) -> Candidate:
        if not self._started:
            self._started = True
            self._queue = self._choose([self.space.sample(self.rng) for _ in range(self.population_size)], warm=True)
        while self._queue:
            c = self._queue.pop(0)
            if c.id not in self.seen:
                self._proposed.add(c)
                return c
        return self.space.sample(self.rng)  # the base class filters it by the budget

    def update(self, batch) -> None:
        for _, cand, result in batch:
            if result.get("status", "ok") == "ok" and result.get("accuracy") not in (None, ""):
                self._data.append((cand, float(result["accuracy"])))
        if len(self._data) >= self.min_train:
            cands, accs = zip(*self._data)
            self.model = AccuracyPredictor(self.space).fit(cands, accs, seed=self.seed)
        best = sorted((cr for cr in self.history if fitness(cr[1], self.budget_ms) > float("-inf")),
                      key=lambda cr: (-fitness(cr[1], self.budget_ms), cr[0].id))[: self.n_parents]
        fresh = [self.space.sample(self.rng) for _ in range(self.pool_size // 2)]
        mutants = [self.space.mutate(best[i % len(best)][0], self.rng, self.mutation_prob)
                   for i in range(self.pool_size - len(fresh))] if best else []
        self._queue = self._choose(mutants + fresh, warm=False)

    # ----------------------------------------------------------------------- helpers

    def _in_band(self, cands: list[Candidate]) -> tuple[list[Candidate], np.ndarray | None]:
        lat = self.predict_ms(cands)  # batched, before any per-candidate work
        if lat is not None and self.budget_ms is not None:
            lat = np.asarray(lat)
            self._log_skipped(cands, lat)
            fits = lat <= self.budget_ms
            near = fits & (lat >= self.band * self.budget_ms)
            keep = near if near.sum() >= self.generation_size else fits  # a band too thin: everything that fits
            cands, lat = [c for c, k in zip(cands, keep) if k], lat[keep]
        else:
            lat = None
        if len(cands) > self.max_ranked:  # ranking is per candidate: a fixed-size random share of the band
            idx = sorted(self.rng.sample(range(len(cands)), self.max_ranked))
            cands, lat = [cands[i] for i in idx], (lat[idx] if lat is not None else None)
        fresh, seen = [], set(self._proposed)  # by value (ids hash the JSON: too slow for thousands)
        for i, c in enumerate(cands):
            if c not in seen:
                seen.add(c)
                fresh.append(i)
        return [cands[i] for i in fresh], (lat[fresh] if lat is not None else None)

    def _log_skipped(self, cands: list[Candidate], lat: np.ndarray) -> None:
        """What the latency model kept out of the search: every scored candidate predicted over the
        filter's limit counts as skipped once (the skip audit measures those nearest the limit)."""
        for i in np.flatnonzero(lat > self.limit_ms()):
            c = cands[i]
            if c not in self._skipped:
                self._skipped.add(c)
                self.skipped_log.append((c, float(lat[i])))

    def _score(self, cands: Sequence[Candidate]) -> np.ndarray | None:
        """Predicted accuracy, as a rank in [0, 1] (prior and run-fitted predictors averaged)."""
        parts = [_ranks(m.predict(cands)) for m in (self.prior, self.model) if m is not None]
        return np.mean(parts, axis=0) if parts else None

    def _choose(self, cands: list[Candidate], warm: bool) -> list[Candidate]:
        """A diverse generation among the best-ranked candidates of the band."""
        band, lat = self._in_band(cands)
        if not band:
            return []
        score = self._score(band)
        if score is None and lat is not None:
            score = _ranks(lat)  # no accuracy model yet: nearer the budget first
        order = np.argsort(-score, kind="stable") if score is not None else np.arange(len(band))
        top = [band[i] for i in order[: max(self.shortlist, self.generation_size)]]
        return self._diverse(top, self.generation_size)

    def _diverse(self, ranked: list[Candidate], n: int) -> list[Candidate]:
        """Farthest-point selection in the scaled encoding, starting from the best ranked."""
        x = np.asarray([self.space.encode(c) for c in ranked], dtype=float)
        x = (x - x.min(0)) / np.maximum(x.max(0) - x.min(0), 1e-9)
        chosen = [0]
        dist = np.linalg.norm(x - x[0], axis=1)
        while len(chosen) < min(n, len(ranked)):
            i = int(np.argmax(dist))
            chosen.append(i)
            dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
        return [ranked[i] for i in chosen]

