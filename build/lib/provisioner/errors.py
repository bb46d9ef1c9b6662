"""Errors a user can act on. Each one names where the problem is and how to fix it.

Anything raised as a `UserError` is printed by the task layer as plain text and turns into a
non-zero exit; it never reaches the user as a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with an input file: `FILE:LINE: key: what is wrong (how to fix)`."""

    file: str
    line: int
    key: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        fix = f" ({self.fix})" if self.fix else ""
        return f"{self.file}:{self.line}: {self.key}: {self.message}{fix}"


class UserError(Exception):
    """A problem with what the user asked for or supplied; the message says how to fix it."""


class InvalidInventory(UserError):
    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
