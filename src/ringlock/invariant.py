"""Always-on assertions.

`assert` disappears under `python -O`; these do not. Use `invariant()` for any
condition whose failure means a bug in ringlock (never for bad input, which gets
a typed error instead).
"""

from __future__ import annotations

from ringlock.errors import InvariantViolation


def invariant(condition: bool, message: str, *args: object) -> None:
    """Raise InvariantViolation with `message` unless `condition` holds. With `args`, the
    message is `message % args`, formatted only on failure: checks on a per-entry path
    pay for the test, not for an f-string built every time it passes."""
    if not condition:
        raise InvariantViolation(message % args if args else message)
