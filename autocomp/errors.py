"""User-facing errors: one line, naming what was wrong and what was expected (CLI exit code 2)."""

from __future__ import annotations

MAX_PART = 300  # characters of each part of a message: a user's value is echoed, never a 50 MB YAML


def clip(text: object, limit: int = MAX_PART) -> str:
    """``text`` on one line and at most ``limit`` characters (an ellipsis marks what was cut)."""
    s = str(text)[: limit * 4]
    if any(c in s for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"):
        s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


class UserError(ValueError):
    """Bad input from the user (flag, YAML, path, artifact). The CLI prints it on one line and exits 2."""

    def __init__(self, field: str, problem: str, expected: str | None = None):
        self.field = clip(field, 200)
        self.problem = clip(problem)
        self.expected = clip(expected) if expected else expected
        msg = f"{self.field}: {self.problem}"
        if self.expected:
            msg += f"; expected {self.expected}"
        super().__init__(msg)
