"""Tests of ringlock.checker's lock-history checker (mutual exclusion, fencing-token order)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringlock.checker import LockHold, check_lock_history


def hold(holder: int, token: int, acquired: int, released: int | None,
         lock: str = "L") -> LockHold:
    return LockHold(lock, holder, token, acquired, released)


def valid_history(seed: int, holds: int, locks: int) -> list[LockHold]:
    """Sequential grants per lock with increasing tokens; some releases unknown (the lease
    expired), after which the next grant may come at any later time."""
    rng = random.Random(seed)
    history = []
    for lock_number in range(locks):
        time = rng.randint(0, 10)
        token = rng.randint(1, 5)
        for _ in range(holds):
            acquired = time + rng.randint(1, 10)
            released = None if rng.random() < 0.2 else acquired + rng.randint(0, 10)
            history.append(hold(rng.randint(0, 5), token, acquired, released,
                                lock=f"lock-{lock_number}"))
            time = released if released is not None else acquired + rng.randint(0, 30)
            token += rng.randint(1, 3)
    rng.shuffle(history)
    return history


def test_a_correct_history_is_ok() -> None:
    result = check_lock_history([
        hold(1, 1, 0, 10), hold(2, 2, 11, 20), hold(3, 5, 25, None), hold(1, 6, 40, 41),
        hold(2, 1, 0, 3, lock="M"),
    ])
    assert result.verdict == "ok", result.message
    assert result.ops_checked == 5


def test_an_empty_history_is_ok() -> None:
    assert check_lock_history([]).verdict == "ok"


def test_overlapping_holds_are_a_violation_naming_lock_holders_and_tokens() -> None:
    result = check_lock_history([hold(1, 1, 0, 10), hold(2, 2, 5, 15)])
    assert result.verdict == "violation"
    assert result.key == "L"
    assert "'L'" in result.message
    assert "client 1 (token 1)" in result.message
    assert "client 2 (token 2)" in result.message


def test_a_hold_inside_another_is_a_violation() -> None:
    result = check_lock_history([hold(1, 1, 0, 100), hold(2, 2, 10, 20), hold(3, 3, 30, 40)])
    assert result.verdict == "violation"


def test_a_grant_at_the_instant_of_release_is_a_violation() -> None:
    # The release must reach the server before the next grant, so B.acquired > A.released.
    assert check_lock_history([hold(1, 1, 0, 10), hold(2, 2, 10, 20)]).verdict == "violation"
    assert check_lock_history([hold(1, 1, 0, 10), hold(2, 2, 11, 20)]).verdict == "ok"


def test_holds_of_different_locks_may_overlap() -> None:
    holds = [hold(1, 1, 0, 10, lock="A"), hold(2, 1, 5, 15, lock="B")]
    assert check_lock_history(holds).verdict == "ok"


def test_an_unknown_release_is_not_flagged_as_overlap() -> None:
    # Client 1's lease expired at some unknown time; client 2 was granted afterwards.
    holds = [hold(1, 1, 0, None), hold(2, 2, 5, 15), hold(3, 3, 16, None)]
    assert check_lock_history(holds).verdict == "ok"


def test_tokens_that_do_not_increase_in_grant_order_are_a_violation() -> None:
    result = check_lock_history([hold(1, 7, 0, 10), hold(2, 3, 20, 30)])
    assert result.verdict == "violation"
    assert "token 7" in result.message
    assert "token 3" in result.message
    assert "out of order" in result.message


def test_a_smaller_token_after_an_unknown_release_is_still_checked_against_known_ones() -> None:
    holds = [hold(1, 4, 0, 10), hold(2, 5, 12, None), hold(3, 2, 40, None)]
    assert check_lock_history(holds).verdict == "violation"


def test_the_same_token_granted_twice_is_a_violation() -> None:
    result = check_lock_history([hold(1, 4, 0, None), hold(2, 4, 50, None)])
    assert result.verdict == "violation"
    assert "granted twice" in result.message


def test_the_first_violating_lock_in_sorted_order_is_reported() -> None:
    holds = [hold(1, 1, 0, 10, lock="zeta"), hold(2, 2, 5, 15, lock="zeta"),
             hold(1, 1, 0, 10, lock="beta"), hold(2, 2, 5, 15, lock="beta"),
             hold(1, 1, 0, 10, lock="alpha")]
    result = check_lock_history(holds)
    assert result.key == "beta"
    assert result.ops_checked == 3


def test_a_release_before_the_grant_is_refused() -> None:
    with pytest.raises(ValueError, match="released before acquired"):
        check_lock_history([hold(1, 1, 10, 5)])


@settings(derandomize=True, deadline=None, max_examples=200)
@given(seed=st.integers(0, 2**32), holds=st.integers(1, 30), locks=st.integers(1, 4))
def test_any_valid_history_is_ok(seed: int, holds: int, locks: int) -> None:
    result = check_lock_history(valid_history(seed, holds, locks))
    assert result.verdict == "ok", f"seed {seed}: {result.message}"


@settings(derandomize=True, deadline=None, max_examples=200)
@given(seed=st.integers(0, 2**32), holds=st.integers(2, 30), pick=st.integers(0, 10**6))
def test_swapping_the_tokens_of_two_known_holds_is_always_a_violation(
        seed: int, holds: int, pick: int) -> None:
    history = sorted(valid_history(seed, holds, 1), key=lambda item: item.acquired)
    known = [index for index, item in enumerate(history) if item.released is not None]
    candidates = [(first, second) for first in known for second in range(first + 1, len(history))]
    if not candidates:
        return
    first, second = candidates[pick % len(candidates)]
    history[first], history[second] = (
        dataclasses.replace(history[first], token=history[second].token),
        dataclasses.replace(history[second], token=history[first].token))
    assert check_lock_history(history).verdict == "violation", f"seed {seed}"


@settings(derandomize=True, deadline=None, max_examples=200)
@given(seed=st.integers(0, 2**32), holds=st.integers(2, 30), pick=st.integers(0, 10**6),
       stretch=st.integers(0, 40))
def test_extending_a_known_hold_past_the_next_grant_is_always_a_violation(
        seed: int, holds: int, pick: int, stretch: int) -> None:
    history = sorted(valid_history(seed, holds, 1), key=lambda item: item.acquired)
    known = [index for index in range(len(history) - 1) if history[index].released is not None
             and history[index + 1].released is not None]
    if not known:
        return
    index = known[pick % len(known)]
    history[index] = dataclasses.replace(history[index],
                                         released=history[index + 1].acquired + stretch)
    assert check_lock_history(history).verdict == "violation", f"seed {seed}"
