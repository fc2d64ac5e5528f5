"""A quiet host while a CPU latency is measured: measurements wait for the other trials' computing
on this node to pause, and hold it paused until they are done.

A search on a laptop or a 2-core VM scores one candidate (BatchNorm statistics, accuracy) while it
measures another on the same CPU. The two share the last-level cache and memory bandwidth, so a
model whose weights don't fit in the measuring core's L2 ran up to 1.7x slower while the other core
computed (measured on a 2-core AMD EPYC VM: a 1.8 MB model, 1.9 ms quiet, 3.2 ms beside a
scoring trial). Pinning to another core does not help; only not computing at the same time does.

So on each node, computing sections (``computing()``, around a trial's scoring) take a shared lock,
and CPU measurements (``measuring()``) an exclusive one. A measurement that waits closes a
turnstile first, so trials that want to start computing queue behind it instead of starving it.
Both are ``flock`` locks on files in the node's temporary directory: they coordinate the processes
of one machine (Ray workers included) and are released by the kernel when a process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Iterator

CPU_BACKENDS = ("onnxruntime", "openvino")  # backends that measure on this node's CPU


def _lock_paths() -> tuple[Path, Path]:
    base = Path(os.environ.get("AUTOCOMP_QUIET_DIR", tempfile.gettempdir()))
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return base / f"autocomp-quiet-{uid}.turnstile", base / f"autocomp-quiet-{uid}.lock"


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def computing() -> Iterator[None]:
    """Around work that loads the CPU (a trial's scoring): runs beside other computing, never beside
    a measurement."""
    turnstile, lock = _lock_paths()
    with _flock(turnstile, fcntl.LOCK_EX):  # passes at once unless a measurement is waiting
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def measuring(backend: str) -> Iterator[None]:
    """Around a latency measurement with ``backend``: for a CPU backend, waits until no computing
    section runs on this node and keeps new ones waiting until it is done; other backends (a GPU,
    a Jetson over ssh) measure elsewhere and pass straight through."""
    if backend not in CPU_BACKENDS:
        yield
        return
    turnstile, lock = _lock_paths()
    with _flock(turnstile, fcntl.LOCK_EX), _flock(lock, fcntl.LOCK_EX):
        yield
