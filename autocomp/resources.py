"""Where the data folders (search_spaces/, predictors/) live.

From a checkout or an editable install they are the top-level folders of the repository; from a
wheel they are package data under ``autocomp/_data/`` (see ``[tool.setuptools]`` in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent
REPO_ROOT = _PKG.parent


def data_dir(name: str) -> Path:
    installed = _PKG / "_data" / name
    if installed.is_dir():
        return installed
    return REPO_ROOT / name
