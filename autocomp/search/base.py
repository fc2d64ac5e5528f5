"""The controller contract: ``ask()`` proposes a Candidate, ``tell(candidate, result)`` feeds back.

A new strategy is one module that subclasses :class:`Controller` and registers itself.
Controllers are deterministic given their seed and the sequence of ``tell`` calls.
"""

from __future__ import annotations

import importlib
import random
from typing import Any

from autocomp.errors import UserError
from autocomp.space import Candidate, SearchSpace

CONTROLLERS: dict[str, type["Controller"]] = {}


def register(name: str):
    def deco(cls: type["Controller"]) -> type["Controller"]:
        CONTROLLERS[name] = cls
        cls.name = name
        return cls

    return deco


class Controller:
    name = "base"

    def __init__(self, space: SearchSpace, seed: int = 0, **options: Any):
        self.space = space
        self.rng = random.Random(seed)
        self.options = options
        self.history: list[tuple[Candidate, dict]] = []
        self.seen: set[str] = set()

    def ask(self) -> Candidate:
        raise NotImplementedError

    def tell(self, candidate: Candidate, result: dict) -> None:
        self.history.append((candidate, result))

    def fresh(self, propose, tries: int = 100) -> Candidate:
        """Call ``propose()`` until it yields a candidate not proposed before (or give up and return it)."""
        cand = propose()
        for _ in range(tries):
            if cand.id not in self.seen:
                break
            cand = propose()
        self.seen.add(cand.id)
        return cand


_BUILTIN = {"random": "autocomp.search.random"}


def get_controller(name: str, space: SearchSpace, seed: int = 0, **options: Any) -> Controller:
    if name not in CONTROLLERS and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in CONTROLLERS:
        raise UserError("--controller", f"unknown controller {name!r}", f"one of {sorted(set(CONTROLLERS) | set(_BUILTIN))}")
    return CONTROLLERS[name](space, seed, **options)
