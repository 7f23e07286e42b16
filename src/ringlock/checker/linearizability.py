"""Linearizability checking of key-value histories, one key at a time.

Theory of operation
-------------------
Each key is a register (a value, or None for absent) with put, get, cas and delete; an op
whose outcome is unknown may take effect at any instant after its call, or never.

1. P-compositionality: a history is linearizable iff each key's sub-history is, so keys are
   checked one by one, in sorted order, stopping at the first violation.
2. Per key, `ringlock.checker._search` runs the Wing & Gong / Lowe search that Porcupine
   uses (a linked list of call/return events, a bitset of linearized ops, a cache of
   (bitset, state) pairs, a backtracking stack), with exact reductions that keep highly
   concurrent keys and unknown outcomes tractable. Its docstring tells how.
3. One wall-clock deadline covers the whole history (time.monotonic, read before each key
   and every 256 search steps). When it passes, the verdict is "unknown", naming the key
   being checked; "ok" and "violation" are always proven, never guessed.
4. On a violation the search is replayed to its deepest point, and the message shows the
   longest linearizable prefix it found, the op it could not place, and the pending ops.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from ringlock.checker._search import KeyProblem, Outcome, prepare, search
from ringlock.checker.history import CheckResult, Op, format_op, ops_by_key, validate_history
from ringlock.invariant import invariant

_SHOW_OPS_MAX = 10  # ops listed per section of a violation message


def check_kv_history(ops: Sequence[Op], *, time_limit_s: float = 10.0) -> CheckResult:
    """Decide whether `ops` is linearizable against per-key registers.

    Returns "ok", "violation" (with the key and the ops involved) or "unknown" when
    `time_limit_s` of wall-clock time ran out first (0 means decide nothing). Raises
    ValueError on a malformed history (e.g. ret < call).

    >>> from ringlock.checker import Op
    >>> put = Op(client=1, key="k", kind="put", arg=5, result=None, call=0, ret=2)
    >>> get = Op(client=2, key="k", kind="get", arg=None, result=5, call=3, ret=4)
    >>> check_kv_history([put, get]).verdict
    'ok'
    """
    if not time_limit_s >= 0.0:
        raise ValueError(f"time_limit_s must be >= 0, not {time_limit_s}")
    validate_history(ops)
    deadline = time.monotonic() + time_limit_s
    groups = ops_by_key(ops)
    keys = sorted(groups)
    ops_checked = 0
    for key_number, key in enumerate(keys):
        key_ops = groups[key]
        if time.monotonic() >= deadline:
            return _unknown(key, key_number, len(keys), ops_checked, time_limit_s)
        problem = prepare(key_ops)
        outcome = search(problem, deadline)
        if outcome.verdict == "unknown":
            return _unknown(key, key_number, len(keys), ops_checked, time_limit_s)
        ops_checked += len(key_ops)
        if outcome.verdict == "violation":
            captured = search(problem, math.inf, capture_step=outcome.best_step)
            invariant(captured.verdict == "captured", "replay of the search diverged")
            message = _violation_message(key, len(key_ops), problem, captured)
            return CheckResult("violation", message, ops_checked, key)
        invariant(outcome.verdict == "ok", f"unexpected search outcome {outcome.verdict}")
    message = f"linearizable: {len(ops)} ops over {len(keys)} keys"
    return CheckResult("ok", message, ops_checked)


def _unknown(key: str, key_number: int, key_count: int, ops_checked: int,
             time_limit_s: float) -> CheckResult:
    message = (f"time limit of {time_limit_s} s ran out while checking key {key!r} "
               f"({key_number} of {key_count} keys decided, no violation found in them)")
    return CheckResult("unknown", message, ops_checked, key)


def _violation_message(key: str, op_count: int, problem: KeyProblem, captured: Outcome) -> str:
    ops = problem.ops
    prefix = captured.prefix
    value = problem.values[captured.state]
    lines = [f"key {key!r} is not linearizable ({op_count} ops on it).",
             f"Longest linearizable prefix found ({len(prefix)} ops):"]
    lines += _op_lines([ops[index] for index in prefix], from_end=True)
    lines.append(f"After it the value is {value!r}, and the search found no way to place this "
                 "op before it returns:")
    lines += _op_lines([ops[captured.blocked]])
    if captured.waiting:
        lines.append(f"Ops not yet linearized that must still read {value!r}:")
        lines += _op_lines([ops[index] for index in captured.waiting])
    if captured.pending:
        lines.append(f"Other ops pending at that point ({len(captured.pending)}):")
        lines += _op_lines([ops[index] for index in captured.pending])
    return "\n".join(lines)


def _op_lines(ops: list[Op], *, from_end: bool = False) -> list[str]:
    """Indented lines for at most _SHOW_OPS_MAX ops, saying how many were left out."""
    if len(ops) <= _SHOW_OPS_MAX:
        return [f"    {format_op(op)}" for op in ops]
    left_out = f"    ... {len(ops) - _SHOW_OPS_MAX} more"
    if from_end:
        return [left_out] + [f"    {format_op(op)}" for op in ops[-_SHOW_OPS_MAX:]]
    return [f"    {format_op(op)}" for op in ops[:_SHOW_OPS_MAX]] + [left_out]
