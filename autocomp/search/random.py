"""Random search: uniform samples of the space, never the same candidate twice."""

from __future__ import annotations

from autocomp.search.base import Controller, register
from autocomp.space import Candidate


@register("random")
class RandomSearch(Controller):
    def ask(self) -> Candidate:
        return self.fresh(lambda: self.space.sample(self.rng))
