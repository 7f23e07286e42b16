"""Always-on assertions.

`assert` disappears under `python -O`; these do not. Use `invariant()` for any
condition whose failure means a bug in ringlock (never for bad input, which gets
a typed error instead).
"""

from __future__ import annotations

from ringlock.errors import InvariantViolation


def invariant(condition: bool, message: str) -> None:
    """Raise InvariantViolation with `message` unless `condition` holds."""
    if not condition:
        raise InvariantViolation(message)
