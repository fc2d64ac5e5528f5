"""autocomp: hardware-aware compression search (architecture, pruning, low-rank, quantization)
under a device latency budget.

The library: :func:`search` (returns a :class:`~autocomp.api.Run`), :func:`compress`,
:func:`measure` (see :mod:`autocomp.api`). ``autocomp.search``, ``autocomp.compress`` and
``autocomp.measure`` are also the packages of those stages: calling one calls the library function
(:mod:`autocomp._callable`). They are imported on first use, so that ``import autocomp.data`` (Ray
workers, subprocesses) stays cheap.
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("autocomp")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.1.0"

__all__ = ["__version__", "search", "compress", "measure", "Run"]


def __getattr__(name: str):
    import importlib

    if name in ("search", "compress", "measure"):  # the stage packages, callable (autocomp._callable)
        return importlib.import_module(f"autocomp.{name}")
    if name == "Run":
        return importlib.import_module("autocomp.api").Run
    raise AttributeError(f"module 'autocomp' has no attribute {name!r}")
