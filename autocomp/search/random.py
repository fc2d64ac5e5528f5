"""Random search: uniform samples of the space, never the same candidate twice."""

from __future__ import annotations

from autocomp.search.base import Controller, register
from autocomp.space import Candidate


@register("random")
class RandomSearch(Controller):
    def propose(self) -> Candidate:
        return self.space.sample(self.rng)
