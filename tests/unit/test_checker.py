"""Tests of ringlock.checker's linearizability checker and history generator.

Every random input comes from a seed: generator seeds are listed, and hypothesis runs
derandomized, so a failure replays exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ringlock.checker
from ringlock.checker import CheckResult, Op, check_kv_history, generate_kv_history

SETTINGS = settings(derandomize=True, deadline=None, max_examples=200,
                    suppress_health_check=[HealthCheck.too_slow])


def put(client: int, value: Any, call: int, ret: int | None, key: str = "k") -> Op:
    return Op(client, key, "put", value, None, call, ret)


def get(client: int, result: Any, call: int, ret: int | None, key: str = "k") -> Op:
    return Op(client, key, "get", None, result, call, ret)


def cas(client: int, expected: Any, new: Any, swapped: bool | None, call: int, ret: int | None,
        key: str = "k") -> Op:
    return Op(client, key, "cas", (expected, new), swapped, call, ret)


def delete(client: int, call: int, ret: int | None, key: str = "k") -> Op:
    return Op(client, key, "delete", None, None, call, ret)


def brute_force_linearizable(ops: Sequence[Op]) -> bool:
    """The definition, by enumeration: some subset of the unknown-outcome ops plus all the
    known ones has an order that respects real time and the register model."""
    for key in {op.key for op in ops}:
        key_ops = [op for op in ops if op.key == key and not (op.ret is None and op.kind == "get")]
        known = [op for op in key_ops if op.ret is not None]
        unknown = [op for op in key_ops if op.ret is None]
        subsets = (chosen for size in range(len(unknown) + 1)
                   for chosen in itertools.combinations(unknown, size))
        if not any(_legal(order) for chosen in subsets
                   for order in itertools.permutations(known + list(chosen))):
            return False
    return True


def _legal(order: Sequence[Op]) -> bool:
    for index, first in enumerate(order):
        if any(later.ret is not None and later.ret < first.call for later in order[index + 1:]):
            return False
    state = None
    for op in order:
        if op.kind == "put":
            state = op.arg
        elif op.kind == "delete":
            state = None
        elif op.kind == "get":
            if op.result != state:
                return False
        else:
            expected, new = op.arg
            if op.ret is not None and bool(op.result) != (state == expected):
                return False
            if state == expected:
                state = new
    return True


# The public surface -------------------------------------------------------------------------

def test_public_names_are_exactly_all() -> None:
    assert sorted(ringlock.checker.__all__) == [
        "CheckResult", "LockHold", "Op", "check_kv_history", "check_lock_history",
        "format_hold", "format_op", "generate_kv_history", "validate_history"]


def test_check_result_refuses_an_unknown_verdict() -> None:
    with pytest.raises(ValueError):
        CheckResult("maybe", "", 0)


# Generated histories are linearizable --------------------------------------------------------

@pytest.mark.parametrize(("seed", "ops", "keys", "clients", "unknown_fraction"), [
    (0, 2000, 20, 10, 0.01),
    (1, 2000, 5, 10, 0.05),
    (2, 2000, 1, 10, 0.0),
    (3, 2000, 1, 8, 0.1),
    (4, 1000, 1, 30, 0.0),
    (5, 1000, 3, 20, 0.2),
    (6, 10000, 100, 10, 0.01),
])
def test_generated_histories_are_ok(seed: int, ops: int, keys: int, clients: int,
                                    unknown_fraction: float) -> None:
    history = generate_kv_history(seed, ops=ops, keys=keys, clients=clients,
                                  unknown_fraction=unknown_fraction)
    result = check_kv_history(history)
    assert result.verdict == "ok", result.message
    assert result.ops_checked == ops


@SETTINGS
@given(seed=st.integers(0, 2**32), keys=st.integers(1, 4), clients=st.integers(1, 8),
       unknown_fraction=st.sampled_from([0.0, 0.05, 0.3]))
def test_any_generated_history_is_ok(seed: int, keys: int, clients: int,
                                     unknown_fraction: float) -> None:
    history = generate_kv_history(seed, ops=120, keys=keys, clients=clients,
                                  unknown_fraction=unknown_fraction)
    assert check_kv_history(history).verdict == "ok", f"seed {seed}"


def test_the_generator_is_deterministic_from_its_seed() -> None:
    first = generate_kv_history(42, ops=500, keys=5, clients=6, unknown_fraction=0.1)
    assert first == generate_kv_history(42, ops=500, keys=5, clients=6, unknown_fraction=0.1)
    assert first != generate_kv_history(43, ops=500, keys=5, clients=6, unknown_fraction=0.1)


def test_the_generator_makes_the_requested_mix() -> None:
    history = generate_kv_history(9, ops=3000, keys=10, clients=10, unknown_fraction=0.05)
    assert len(history) == 3000
    assert {op.kind for op in history} == {"put", "get", "cas", "delete"}
    assert {op.result for op in history if op.kind == "cas" and op.ret is not None} == {
        True, False}
    assert 50 < sum(op.ret is None for op in history) < 300
    assert len({op.client for op in history}) == 10
    assert all(op.ret is None or op.ret >= op.call for op in history)


# Violations ---------------------------------------------------------------------------------

def test_a_stale_read_is_a_violation_that_names_the_key_and_ops() -> None:
    result = check_kv_history([put(1, "old", 0, 10), put(2, "new", 20, 30),
                               get(3, "old", 40, 50), put(4, "other", 0, 5, key="j")])
    assert result.verdict == "violation"
    assert result.key == "k"
    assert "'k'" in result.message
    assert "get('k') -> 'old' [40, 50]" in result.message
    assert "put('k', 'new') [20, 30]" in result.message


def test_a_lost_write_is_a_violation() -> None:
    # An acknowledged put, then a read that finds the key absent, with no delete.
    result = check_kv_history([put(1, 7, 0, 10), get(2, None, 20, 30)])
    assert result.verdict == "violation"


def test_a_lost_update_by_two_successful_cas_is_a_violation() -> None:
    result = check_kv_history([put(1, 0, 0, 1), cas(2, 0, 1, True, 10, 20),
                               cas(3, 0, 2, True, 10, 20), get(1, 2, 30, 31)])
    assert result.verdict == "violation"


def test_a_cas_that_failed_although_it_should_have_swapped_is_a_violation() -> None:
    assert check_kv_history([put(1, 1, 0, 10), cas(2, 1, 2, False, 20, 30)]).verdict == "violation"


def test_a_cas_that_swapped_a_value_never_present_is_a_violation() -> None:
    assert check_kv_history([put(1, 1, 0, 10), cas(2, 5, 6, True, 20, 30)]).verdict == "violation"


def test_a_cas_result_explained_by_a_concurrent_write_is_ok() -> None:
    ops = [put(1, 1, 0, 10), cas(2, 1, 2, False, 20, 30), put(3, 9, 15, 25)]
    assert check_kv_history(ops).verdict == "ok"


def test_a_get_of_a_value_never_written_is_a_violation() -> None:
    assert check_kv_history([put(1, 1, 0, 10), get(2, 99, 5, 30)]).verdict == "violation"


def test_a_read_after_delete_must_find_nothing() -> None:
    assert check_kv_history([put(1, 1, 0, 1), delete(2, 2, 3), get(1, 1, 4, 5)]).verdict == (
        "violation")
    assert check_kv_history([put(1, 1, 0, 1), delete(2, 2, 3), get(1, None, 4, 5)]).verdict == (
        "ok")


def test_the_first_violating_key_in_sorted_order_is_reported() -> None:
    ops = [get(1, 1, 0, 1, key="zeta"), get(1, 1, 2, 3, key="alpha"), put(2, 5, 0, 9, key="m")]
    result = check_kv_history(ops)
    assert result.key == "alpha"
    assert result.ops_checked == 1


@SETTINGS
@given(seed=st.integers(0, 2**32), keys=st.integers(1, 3), pick=st.integers(0, 10**6))
def test_a_get_mutated_to_a_value_never_written_is_always_a_violation(
        seed: int, keys: int, pick: int) -> None:
    history = generate_kv_history(seed, ops=150, keys=keys, clients=6, unknown_fraction=0.05)
    gets = [index for index, op in enumerate(history) if op.kind == "get" and op.ret is not None]
    index = gets[pick % len(gets)]
    history[index] = dataclasses.replace(history[index], result="never written")
    result = check_kv_history(history)
    assert result.verdict == "violation", f"seed {seed}"
    assert result.key == history[index].key


# Unknown outcomes ---------------------------------------------------------------------------

def test_an_unknown_write_that_took_effect_is_accepted() -> None:
    assert check_kv_history([put(1, 1, 0, None), get(2, 1, 10, 20)]).verdict == "ok"


def test_an_unknown_write_that_did_not_take_effect_is_accepted() -> None:
    assert check_kv_history([put(1, 1, 0, None), get(2, None, 10, 20)]).verdict == "ok"


def test_an_unknown_write_may_take_effect_long_after_later_ops() -> None:
    ops = [put(1, 1, 0, None), get(2, None, 10, 20), put(1, 2, 30, 40), get(2, 2, 50, 60),
           get(2, 1, 70, 80)]
    assert check_kv_history(ops).verdict == "ok"


def test_an_unknown_write_cannot_take_effect_before_its_call() -> None:
    assert check_kv_history([get(2, 1, 0, 5), put(1, 1, 10, None)]).verdict == "violation"


def test_an_unknown_write_takes_effect_at_most_once() -> None:
    ops = [put(1, 1, 0, None), get(2, 1, 10, 20), put(3, 2, 30, 40), get(2, 1, 50, 60)]
    assert check_kv_history(ops).verdict == "violation"


def test_an_unknown_cas_may_or_may_not_swap() -> None:
    swapped = [put(1, 1, 0, 1), cas(2, 1, 2, None, 5, None), get(3, 2, 10, 11)]
    not_swapped = [put(1, 1, 0, 1), cas(2, 1, 2, None, 5, None), get(3, 1, 10, 11)]
    cannot_swap = [put(1, 1, 0, 1), cas(2, 7, 2, None, 5, None), get(3, 2, 10, 11)]
    assert check_kv_history(swapped).verdict == "ok"
    assert check_kv_history(not_swapped).verdict == "ok"
    assert check_kv_history(cannot_swap).verdict == "violation"


def test_an_unknown_get_constrains_nothing() -> None:
    assert check_kv_history([put(1, 1, 0, 10), get(2, "anything", 20, None)]).verdict == "ok"


# Real time ----------------------------------------------------------------------------------

def test_intervals_that_touch_are_concurrent() -> None:
    assert check_kv_history([put(1, 1, 0, 10), get(2, None, 10, 20)]).verdict == "ok"
    assert check_kv_history([put(1, 1, 0, 10), get(2, None, 11, 20)]).verdict == "violation"


def test_an_op_that_returns_at_its_call_time_is_fine() -> None:
    assert check_kv_history([put(1, 1, 5, 5), get(2, 1, 5, 5)]).verdict == "ok"


def test_input_order_does_not_matter() -> None:
    history = generate_kv_history(11, ops=400, keys=3, clients=6, unknown_fraction=0.05)
    index = next(i for i, op in enumerate(history) if op.kind == "get" and op.ret is not None)
    broken = [*history[:index], dataclasses.replace(history[index], result=-1),
              *history[index + 1:]]
    for ops, verdict in ((history, "ok"), (broken, "violation")):
        for seed in range(3):
            shuffled = list(ops)
            random.Random(seed).shuffle(shuffled)
            assert check_kv_history(shuffled).verdict == verdict


# Agreement with the definition --------------------------------------------------------------

_VALUES = st.sampled_from([None, 1, 2, 3])


@st.composite
def tiny_histories(draw: st.DrawFn) -> list[Op]:
    ops = []
    for client in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["put", "get", "get", "cas", "cas", "delete"]))
        call = draw(st.integers(0, 6))
        ret = draw(st.one_of(st.none(), st.integers(call, call + 6)))
        arg: Any
        result: Any
        if kind == "put":
            arg, result = draw(st.sampled_from([1, 2, 3])), None
        elif kind == "get":
            arg, result = None, draw(_VALUES)
        elif kind == "cas":
            arg, result = (draw(_VALUES), draw(_VALUES)), draw(st.booleans())
        else:
            arg, result = None, None
        ops.append(Op(client, "k", kind, arg, result, call, ret))
    return ops


@settings(derandomize=True, deadline=None, max_examples=1500)
@given(ops=tiny_histories())
def test_the_checker_agrees_with_brute_force_on_tiny_histories(ops: list[Op]) -> None:
    expected = "ok" if brute_force_linearizable(ops) else "violation"
    assert check_kv_history(ops).verdict == expected


def plain_search_linearizable(ops: Sequence[Op], steps_max: int = 200_000) -> bool | None:
    """Wing & Gong / Lowe with no reductions at all: slower, but simple enough to trust.
    Unknown ops return at +infinity; done once every known op is linearized. None when
    `steps_max` steps per key were not enough."""
    for key in sorted({op.key for op in ops}):
        key_ops = [op for op in ops if op.key == key and not (op.ret is None and op.kind == "get")]
        events = sorted([(op.call, 0, index) for index, op in enumerate(key_ops)]
                        + [(math.inf if op.ret is None else op.ret, 1, index)
                           for index, op in enumerate(key_ops)])
        size = len(events)
        nxt = list(range(1, size + 2))
        prv = list(range(-1, size + 1))
        returns = {index: position for position, (_, is_return, index)
                   in enumerate(events, start=1) if is_return}
        known_left = sum(op.ret is not None for op in key_ops)
        cache: set[tuple[int, Any]] = set()
        stack: list[tuple[int, Any, int]] = []
        state: Any = None
        linearized = 0
        entry = nxt[0]
        for _ in range(steps_max):
            if not known_left:
                break
            _, is_return, index = events[entry - 1] if entry <= size else (0, 1, -1)
            if not is_return:
                legal = _legal_step(key_ops[index], state)
                if legal is not None and (linearized | 1 << index, legal[0]) not in cache:
                    cache.add((linearized | 1 << index, legal[0]))
                    stack.append((entry, state, linearized))
                    state, linearized = legal[0], linearized | 1 << index
                    for position in (entry, returns[index]):
                        nxt[prv[position]], prv[nxt[position]] = nxt[position], prv[position]
                    known_left -= key_ops[index].ret is not None
                    entry = nxt[0]
                else:
                    entry = nxt[entry]
                continue
            if not stack:
                return False
            entry, state, linearized = stack.pop()
            index = events[entry - 1][2]
            for position in (returns[index], entry):
                nxt[prv[position]] = prv[nxt[position]] = position
            known_left += key_ops[index].ret is not None
            entry = nxt[entry]
        else:
            return None
    return True


def _legal_step(op: Op, state: Any) -> tuple[Any] | None:
    """The state after `op`, in a 1-tuple, or None if `op` cannot happen in `state`."""
    if op.kind == "put":
        return (op.arg,)
    if op.kind == "delete":
        return (None,)
    if op.kind == "get":
        return (state,) if op.result == state else None
    expected, new = op.arg
    if op.ret is not None and bool(op.result) != (state == expected):
        return None
    return (new,) if state == expected else (state,)


def _mutated(seed: int) -> list[Op]:
    """A generated history with up to two random faults: a read of another written value, a
    flipped cas result, a put whose answer is lost, an op moved later in time."""
    rng = random.Random(seed)
    history = generate_kv_history(seed, ops=rng.choice([20, 40, 80]), keys=rng.choice([1, 2]),
                                  clients=rng.choice([2, 4, 8]),
                                  unknown_fraction=rng.choice([0.0, 0.1, 0.3]))
    written = [None, *(op.arg for op in history if op.kind == "put")]
    for _ in range(rng.randint(0, 2)):
        index = rng.randrange(len(history))
        op = history[index]
        if op.ret is None:
            continue
        if op.kind == "get":
            history[index] = dataclasses.replace(op, result=rng.choice(written))
        elif op.kind == "cas":
            history[index] = dataclasses.replace(op, result=not op.result)
        elif op.kind == "put":
            history[index] = dataclasses.replace(op, ret=None)
        else:
            shift = rng.randint(0, 30)
            history[index] = dataclasses.replace(op, call=op.call + shift, ret=op.ret + shift)
    return history


def test_the_checker_agrees_with_a_plain_search_on_mutated_histories() -> None:
    verdicts = []
    for seed in range(300):
        history = _mutated(seed)
        plain = plain_search_linearizable(history)
        if plain is None:
            continue  # too hard for the plain search
        expected = "ok" if plain else "violation"
        assert check_kv_history(history).verdict == expected, f"seed {seed}"
        verdicts.append(expected)
    assert len(verdicts) > 290
    assert 50 < verdicts.count("violation") < 250  # both outcomes are exercised


# The time bound -----------------------------------------------------------------------------

def _hard_history(concurrent_puts: int) -> list[Op]:
    """All puts overlap; then two reads that no order of them can explain."""
    ops = [put(client, client, 0, 100) for client in range(1, concurrent_puts + 1)]
    return [*ops, get(0, 1, 200, 201), get(0, 2, 202, 203)]


def test_a_hard_history_runs_out_of_time_as_unknown() -> None:
    started = time.monotonic()
    result = check_kv_history(_hard_history(30), time_limit_s=0.05)
    assert result.verdict == "unknown"
    assert result.key == "k"
    assert "time limit" in result.message
    assert time.monotonic() - started < 1.0


def test_a_small_version_of_the_hard_history_is_decided() -> None:
    assert check_kv_history(_hard_history(8)).verdict == "violation"


@SETTINGS
@given(seed=st.integers(0, 2**32))
def test_no_time_at_all_is_never_ok(seed: int) -> None:
    history = generate_kv_history(seed, ops=50, keys=2, clients=3)
    assert check_kv_history(history, time_limit_s=0.0).verdict == "unknown"


def test_an_empty_history_is_ok() -> None:
    assert check_kv_history([]) == CheckResult("ok", "linearizable: 0 ops over 0 keys", 0)


# Malformed input ----------------------------------------------------------------------------

def test_a_return_before_the_call_is_refused() -> None:
    with pytest.raises(ValueError, match="before call"):
        check_kv_history([put(1, 1, 10, 9)])


@pytest.mark.parametrize("op", [
    Op(1, "k", "incr", None, None, 0, 1),
    Op(1, "k", "cas", 5, True, 0, 1),
    Op(1, "k", "cas", (1, 2), "yes", 0, 1),
    Op(1, 7, "get", None, None, 0, 1),  # type: ignore[arg-type]
])
def test_malformed_ops_are_refused(op: Op) -> None:
    with pytest.raises(ValueError):
        check_kv_history([op])


def test_a_negative_time_limit_is_refused() -> None:
    with pytest.raises(ValueError):
        check_kv_history([], time_limit_s=-1.0)


def test_unhashable_values_are_compared_by_equality() -> None:
    assert check_kv_history([put(1, [1, 2], 0, 1), get(2, [1, 2], 2, 3)]).verdict == "ok"
    assert check_kv_history([put(1, [1, 2], 0, 1), get(2, [2, 1], 2, 3)]).verdict == "violation"
