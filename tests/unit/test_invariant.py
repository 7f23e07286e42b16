"""invariant(): raises only when the condition fails, formatting its args only then."""

from __future__ import annotations

import pytest

from ringlock.errors import InvariantViolation
from ringlock.invariant import invariant


class Unformattable:
    def __repr__(self) -> str:
        raise AssertionError("formatted although the invariant held")


def test_a_holding_invariant_formats_nothing() -> None:
    invariant(True, "never shown: %r", Unformattable())


def test_a_failing_invariant_formats_its_args() -> None:
    with pytest.raises(InvariantViolation, match=r"^apply of 3 after 5 in b'k'$"):
        invariant(False, "apply of %d after %d in %r", 3, 5, b"k")


def test_a_message_without_args_is_taken_as_it_is() -> None:
    with pytest.raises(InvariantViolation, match=r"^100% wrong$"):
        invariant(False, "100% wrong")
