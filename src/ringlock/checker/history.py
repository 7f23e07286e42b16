"""Client histories of the key-value store: the `Op` record, the `CheckResult` verdict, a generator.

Theory of operation
-------------------
A history is what the clients saw, nothing more: for each operation, who issued it, on which
key, with which argument, what came back, when it was called and when the answer arrived.
Times are integers in any monotonic unit shared by all clients (simulated ticks, or
nanoseconds of one host's monotonic clock).

An operation whose answer never came (timeout, crash) has `ret = None`: its outcome is
unknown. It may have taken effect at any instant after its call, or never, and its result
says nothing. Checkers must treat it so; "timed out" never means "failed".

Two intervals that touch (`a.ret == b.call`) are concurrent: no order is imposed between
them. This is the conservative reading: a correct history is never refused because two
clocks ticked at the same instant.

`generate_kv_history` builds histories that are linearizable by construction: it runs a real
register per key, makes each operation take effect at one instant between its call and its
return, and records what each client saw. It is deterministic from its seed, and its times
are distinct across clients, so it does not depend on the touching-interval convention.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

OP_KINDS = frozenset({"put", "get", "cas", "delete"})
VERDICTS = frozenset({"ok", "violation", "unknown"})


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation on one key, as the client saw it.

    `arg`: put: the value; cas: an `(expected, new)` tuple; get/delete: None.
    `result`: get: the value read (None = absent); cas: True if it swapped; put/delete: ignored.
    `ret` is None when the outcome is unknown; otherwise `ret >= call`.
    """

    client: int
    key: str
    kind: str
    arg: Any
    result: Any
    call: int
    ret: int | None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict of a checker.

    `verdict` is "ok" (proven correct), "violation" (proven incorrect; `message` shows the
    evidence and `key` names the offending key or lock) or "unknown" (the time bound ran out
    before a decision; `key` names the undecided one). "ok" is never a guess.
    `ops_checked` counts the records (ops, or lock holds) of the keys or locks decided, the
    offending one included on a violation; on "unknown", the undecided one is not counted.
    """

    verdict: str
    message: str
    ops_checked: int
    key: str | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {sorted(VERDICTS)}, not {self.verdict!r}")

    @property
    def ok(self) -> bool:
        """True when the history was proven correct."""
        return self.verdict == "ok"


def format_op(op: Op) -> str:
    """One line for an operation, e.g. `client 3: get('k') -> 7 [12, 30]` (`?` = unknown)."""
    ret = "?" if op.ret is None else str(op.ret)
    result = "?" if op.ret is None else repr(op.result)
    if op.kind == "put":
        text = f"put({op.key!r}, {op.arg!r})"
    elif op.kind == "get":
        text = f"get({op.key!r}) -> {result}"
    elif op.kind == "cas" and isinstance(op.arg, tuple) and len(op.arg) == 2:
        text = f"cas({op.key!r}, {op.arg[0]!r} -> {op.arg[1]!r}) -> {result}"
    elif op.kind == "delete":
        text = f"delete({op.key!r})"
    else:
        text = f"{op.kind}({op.key!r}, {op.arg!r}) -> {result}"
    return f"client {op.client}: {text} [{op.call}, {ret}]"


def validate_history(ops: Sequence[Op]) -> None:
    """Raise ValueError on the first malformed op (the history's fault, not the checker's)."""
    for index, op in enumerate(ops):
        problem = _op_problem(op)
        if problem is not None:
            raise ValueError(f"op #{index} ({format_op(op)}): {problem}")


def _op_problem(op: Op) -> str | None:
    if op.kind not in OP_KINDS:
        return f"kind must be one of {sorted(OP_KINDS)}"
    if not isinstance(op.key, str):
        return "key must be a str"
    if not isinstance(op.call, int):
        return "call must be an int"
    if op.ret is not None:
        if not isinstance(op.ret, int):
            return "ret must be an int or None"
        if op.ret < op.call:
            return f"ret {op.ret} is before call {op.call}"
    if op.kind == "cas":
        if not (isinstance(op.arg, tuple) and len(op.arg) == 2):
            return "cas arg must be an (expected, new) tuple"
        if op.ret is not None and not isinstance(op.result, bool):
            return "a cas with a known outcome must have a bool result"
    return None


def ops_by_key(ops: Sequence[Op]) -> dict[str, list[Op]]:
    """Group operations by key, keeping their order within each key."""
    groups: dict[str, list[Op]] = {}
    for op in ops:
        groups.setdefault(op.key, []).append(op)
    return groups


# Generator tuning, in ticks (one tick = `clients` time units, see below).
_LATENCY_TICKS_MAX = 10  # call -> effect, and effect -> return
_THINK_TICKS_MIN = 1
_THINK_TICKS_MAX = 5
_TIMEOUT_TICKS = 2 * _LATENCY_TICKS_MAX + 5  # a client gives up on an op after this
_CAS_EXPECTS_CURRENT_PROBABILITY = 0.7
_UNKNOWN_TAKES_EFFECT_PROBABILITY = 0.5


def generate_kv_history(
    seed: int, *, ops: int, keys: int, clients: int, unknown_fraction: float = 0.01
) -> list[Op]:
    """A linearizable history of `ops` operations by `clients` sequential clients over `keys` keys.

    Each client issues one operation at a time (mix: 40% get, 30% put, 20% cas, 10% delete),
    with random latencies, so clients overlap each other. Each operation takes effect at a
    random instant between its call and its return on a real register. A fraction
    `unknown_fraction` of operations time out (`ret = None`); half of those take effect anyway,
    possibly after the client has moved on. Put and cas write fresh values (1, 2, 3, ...).
    Deterministic from `seed`; sorted by call time.

    >>> history = generate_kv_history(7, ops=100, keys=3, clients=4)
    >>> len(history)
    100
    """
    if ops < 0 or keys < 1 or clients < 1:
        raise ValueError("need ops >= 0, keys >= 1, clients >= 1")
    if not 0.0 <= unknown_fraction <= 1.0:
        raise ValueError("unknown_fraction must be within [0, 1]")
    rng = random.Random(seed)
    width = len(str(keys - 1))
    key_names = [f"k{index:0{width}d}" for index in range(keys)]
    state: dict[str, Any] = {}
    written: list[int] = []
    history: list[Op] = []
    # Heap entries: (time, sequence, action). Real time = tick * clients + client, so times are
    # distinct across clients; `sequence` keeps equal times in push order.
    heap: list[tuple[int, int, tuple[Any, ...]]] = []
    sequence = 0
    issued = 0

    def push(tick: int, client: int, action: tuple[Any, ...]) -> None:
        nonlocal sequence
        heapq.heappush(heap, (tick * clients + client, sequence, action))
        sequence += 1

    for client in range(clients):
        push(rng.randint(0, _THINK_TICKS_MAX), client, ("call", client))
    while heap:
        time, _, action = heapq.heappop(heap)
        tick, client = divmod(time, clients)
        if action[0] == "call":
            if issued == ops:
                continue
            issued += 1
            key = rng.choice(key_names)
            kind, arg = _choose_op(rng, state.get(key), written)
            effect_tick = tick + rng.randint(0, _LATENCY_TICKS_MAX)
            if rng.random() < unknown_fraction:
                history.append(Op(client, key, kind, arg, None, time, None))
                if kind != "get" and rng.random() < _UNKNOWN_TAKES_EFFECT_PROBABILITY:
                    push(effect_tick, client, ("orphan", key, kind, arg))
                push(tick + _TIMEOUT_TICKS, client, ("call", client))
            else:
                push(effect_tick, client, ("effect", key, kind, arg, time))
        else:
            _, key, kind, arg = action[:4]
            result = _apply(state, key, kind, arg)
            if action[0] == "effect":
                ret_tick = tick + rng.randint(0, _LATENCY_TICKS_MAX)
                call_time = action[4]
                ret_time = ret_tick * clients + client
                history.append(Op(client, key, kind, arg, result, call_time, ret_time))
                push(ret_tick + rng.randint(_THINK_TICKS_MIN, _THINK_TICKS_MAX), client,
                     ("call", client))
    history.sort(key=lambda op: (op.call, op.client))
    return history


def _choose_op(rng: random.Random, current: Any, written: list[int]) -> tuple[str, Any]:
    roll = rng.random()
    if roll < 0.4:
        return "get", None
    if roll < 0.9:
        value = len(written) + 1
        written.append(value)
        if roll < 0.7:
            return "put", value
        if rng.random() < _CAS_EXPECTS_CURRENT_PROBABILITY or len(written) == 1:
            expected = current
        else:
            expected = rng.choice(written[:-1])
        return "cas", (expected, value)
    return "delete", None


def _apply(state: dict[str, Any], key: str, kind: str, arg: Any) -> Any:
    """Apply one operation to the reference registers; return what the client would see."""
    if kind == "get":
        return state.get(key)
    if kind == "put":
        state[key] = arg
        return None
    if kind == "delete":
        state.pop(key, None)
        return None
    expected, new = arg
    if state.get(key) == expected:
        state[key] = new
        return True
    return False
