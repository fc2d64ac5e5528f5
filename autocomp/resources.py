"""Where things live: the shipped data folders (search_spaces/, predictors/, supernets/) and the
user's cache (``$AUTOCOMP_CACHE``, default ``~/.cache/autocomp``: MNIST, the reference model's
nominal latency, calibrated predictors per device fingerprint).

From a checkout or an editable install the data folders are the top-level folders of the
repository; from a wheel they are package data under ``autocomp/_data/`` (see ``[tool.setuptools]``
in pyproject.toml).
"""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent
REPO_ROOT = _PKG.parent


def data_dir(name: str) -> Path:
    installed = _PKG / "_data" / name
    if installed.is_dir():
        return installed
    return REPO_ROOT / name


def cache_dir() -> Path:
    return Path(os.environ.get("AUTOCOMP_CACHE", Path.home() / ".cache" / "autocomp"))


def predictors_dir() -> Path:
    """The shipped predictors: ``predictors/<device>/<fingerprint id>/``."""
    return data_dir("predictors")


def user_predictors_dir() -> Path:
    """Predictors calibrated on this user's devices, same layout as :func:`predictors_dir`."""
    return cache_dir() / "predictors"
