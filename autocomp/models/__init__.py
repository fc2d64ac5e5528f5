"""Networks (mbv2: the built-in family's network; supernet: its weight-sharing supernet; teacher:
what distillation learns from; train: plain supervised training), and the one safe loader of the
weight files a user names. What a model family is, and the user's own network, live in
:mod:`autocomp.families`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autocomp.errors import UserError


def load_weights(path: str | Path, field: str, expected: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers, never a
    pickled object. A missing or unloadable file is a UserError naming ``field``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(field, f"no such file {str(path)!r}", expected)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt or unsafe file
        raise UserError(field, f"cannot load {str(path)!r} with weights_only=True ({type(e).__name__}: {str(e)[:120]})",
                        expected) from None
