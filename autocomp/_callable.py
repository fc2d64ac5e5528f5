"""``autocomp.search``, ``autocomp.compress`` and ``autocomp.measure`` are both packages (the
stages) and the library's functions (:mod:`autocomp.api`): each of the three packages is made
callable, and calling it calls the function of the same name in :mod:`autocomp.api` (imported then,
so importing a stage stays as cheap as it was)."""

from __future__ import annotations

import importlib
import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        fn = getattr(importlib.import_module("autocomp.api"), self.__name__.rpartition(".")[2])
        return fn(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Make the (already imported) module ``autocomp.<name>`` call ``autocomp.api.<name>``."""
    sys.modules[module_name].__class__ = _CallableModule
