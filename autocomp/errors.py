"""User-facing errors: one line, naming what was wrong and what was expected (CLI exit code 2)."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user (flag, YAML, path, artifact). The CLI prints it on one line and exits 2."""

    def __init__(self, field: str, problem: str, expected: str | None = None):
        self.field = field
        self.problem = problem
        self.expected = expected
        msg = f"{field}: {problem}"
        if expected:
            msg += f"; expected {expected}"
        super().__init__(msg)
