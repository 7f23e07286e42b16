"""The per-key search behind `check_kv_history`: Wing & Gong with Lowe's memo, plus reductions.

Theory of operation
-------------------
Model: the key is a register holding a value or None (absent). put(v) sets v; delete sets
None; get must return the current value; cas((expected, new)) swaps and returns True when the
value equals `expected`, else returns False and changes nothing.

1. Values are interned to small ints (None is 0) and each op becomes a (code, a, b) step. A get
   whose outcome is unknown constrains nothing and is dropped. Other unknown ops have their
   return at +infinity: they may be linearized anywhere after their call, and the search
   succeeds once every op with a known outcome is linearized (the rest go at the end, which is
   the same as never).
2. Events are sorted by time, calls before returns at equal times, so intervals that touch are
   concurrent (the conservative reading); an event's rank in that order is its position.
   Known ops' calls and returns sit in a doubly linked list over int arrays (head at 0).
   Unknown ops are grouped in classes of equal steps, in call order.
3. The search walks the list from the head. At a call, it tries to linearize that op: if the
   model accepts it and (linearized set, state) is not in the cache, it pushes the choice,
   unlinks the op's events and restarts from the head. At a return R, no known op can go next,
   so it tries the unknown ops called before R. When those run out too, it pops the last
   choice, relinks it and tries the next candidate after it. Popping an empty stack means no
   linearization exists. The linearized set is a Python int used as a bitset.
4. Reductions, each exact (it never removes the last way to linearize):
   a. A pending op that reads without writing (a get, or a cas that fails) and is enabled now
      may go now: any linearization from here can be rearranged to start with it. Such a
      choice is "forced": when it fails, its whole configuration fails.
   b. A step that moves the state away from a value x is a dead end if an unlinearized op must
      still read x and no unlinearized op can write x again before that reader returns.
   c. An unknown op is tried only if it changes the state and a pending op could observe the
      new value right after it; otherwise the next op overwrites it, or nothing follows, and
      leaving the unknown op out does as well.
   d. Within a class of unknown ops (equal steps), only the earliest-called unlinearized one
      is a candidate: from the later call on, they are interchangeable.
   e. Values that no op reads or compares against share one id: the model cannot tell them
      apart, so the cache need not either.
5. A wall-clock deadline (time.monotonic, read every 256 steps) yields "unknown".
6. The search is deterministic, so a violation is replayed up to the step at which it got
   deepest, to capture the longest linearizable prefix and the op it could not place.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ringlock.checker.history import Op
from ringlock.invariant import invariant

_CLOCK_CHECK_MASK = 255  # read the clock when (steps & mask) == 0

# Step codes of the register model; a step is (code, a, b) over interned value ids.
_WRITE = 0  # put / delete: state := a
_READ = 1  # get: requires state == a
_CAS_SWAPPED = 2  # cas -> True: requires state == a; state := b
_CAS_FAILED = 3  # cas -> False: requires state != a
_CAS_MAYBE = 4  # cas, outcome unknown: state := b if state == a
_ABSENT = 0  # interned id of None

_CHOSEN = 0  # stack entry kinds: a known op chosen among alternatives
_FORCED = 1  # a known op that reads without writing (4a): no alternatives
_UNKNOWN = 2  # an unknown-outcome op, chosen at a return


class _UnreadValue:
    """Stands for every value that no op of the key reads or compares against (4e)."""

    def __repr__(self) -> str:
        return "<a value no op reads>"


class _Interner:
    """Maps values to small ints by equality (None -> 0); copes with unhashable values."""

    def __init__(self) -> None:
        self.values: list[Any] = [None]
        self._ids: dict[Any, int] = {None: _ABSENT}
        self._unhashable: list[tuple[Any, int]] = []

    def intern(self, value: Any) -> int:
        try:
            found = self._ids.get(value)
        except TypeError:
            for known, known_id in self._unhashable:
                if known == value:
                    return known_id
            self._unhashable.append((value, len(self.values)))
            self.values.append(value)
            return len(self.values) - 1
        if found is None:
            found = len(self.values)
            self._ids[value] = found
            self.values.append(value)
        return found


@dataclass(slots=True)
class KeyProblem:
    """One key's history, ready for the search. Op index = bit in the linearized set."""

    ops: list[Op]  # known-outcome ops first, then unknown ones, each in call order
    known_count: int
    steps: list[tuple[int, int, int]]  # per op: (code, a, b)
    reads: list[int]  # per op: the value id it requires the state to equal, or -1
    writes: list[int]  # per op: the value id it may write, or -1
    events: list[int]  # per position: op (call) or ~op (return); position 0 = head sentinel
    return_position: list[int]  # per known call position: the position of its return
    values: list[Any]  # value id -> value
    # Unknown ops, in classes of equal steps; class ids from 1, in order of first call.
    class_members: list[list[int]]  # per class: its ops, in call order
    class_calls: list[list[int]]  # per class: its ops' call positions
    write_class: dict[int, int]  # value id -> the class of unknown puts/deletes writing it
    cas_classes_expecting: dict[int, list[int]]  # value id -> unknown cas classes expecting it
    cas_classes_writing: dict[int, list[int]]  # value id -> unknown cas classes writing it
    unknown_expected: frozenset[int]  # value ids that some unknown cas expects
    writing_expected: list[int]  # write classes whose value some unknown cas expects


@dataclass(slots=True)
class Outcome:
    verdict: str  # "ok" | "violation" | "unknown" | "captured"
    steps: int
    best_step: int = -1  # violation: the step to replay to for the deepest failure
    prefix: tuple[int, ...] = ()  # captured: ops linearized, in order
    state: int = _ABSENT  # captured: register state after the prefix
    blocked: int = -1  # captured: the op whose return was reached unlinearized
    pending: tuple[int, ...] = ()  # captured: other ops called, not linearized, at that point
    waiting: tuple[int, ...] = ()  # captured: unlinearized ops that must read `state`


def prepare(key_ops: Sequence[Op]) -> KeyProblem:
    """Turn one key's ops into the arrays the search runs on (steps 1, 2 and 4e)."""
    kept = [op for op in key_ops if not (op.ret is None and op.kind == "get")]
    known = sorted((op for op in kept if op.ret is not None), key=lambda op: op.call)
    unknown = sorted((op for op in kept if op.ret is None), key=lambda op: op.call)
    ordered = known + unknown
    interner = _Interner()
    steps = _anonymise([_step(op, interner) for op in ordered], interner.values)
    # (time, 0 = call / 1 = return, op): calls sort before returns at equal times
    timeline = [(op.call, 0, index) for index, op in enumerate(ordered)]
    timeline += [(op.ret, 1, index) for index, op in enumerate(known) if op.ret is not None]
    timeline.sort()
    events = [~len(ordered)]  # the head sentinel reads as a return of no op
    return_position = [0] * (len(timeline) + 1)
    call_position = [0] * len(ordered)
    for position, (_, is_return, index) in enumerate(timeline, start=1):
        if is_return:
            events.append(~index)
            return_position[call_position[index]] = position
        else:
            events.append(index)
            call_position[index] = position
    reads = [a if code in (_READ, _CAS_SWAPPED) else -1 for code, a, _ in steps]
    writes = [-1 if code in (_READ, _CAS_FAILED) else (a if code == _WRITE else b)
              for code, a, b in steps]
    problem = KeyProblem(ordered, len(known), steps, reads, writes, events, return_position,
                         interner.values, [[]], [[]], {}, {}, {}, frozenset(), [])
    _classify_unknown(problem, call_position)
    return problem


def _classify_unknown(problem: KeyProblem, call_position: list[int]) -> None:
    """Group unknown ops into classes of equal steps (4d) and index the classes by value."""
    class_of_step: dict[tuple[int, int, int], int] = {}
    for index in range(problem.known_count, len(problem.ops)):
        step = problem.steps[index]
        class_id = class_of_step.setdefault(step, len(problem.class_members))
        if class_id == len(problem.class_members):
            problem.class_members.append([])
            problem.class_calls.append([])
            code, a, b = step
            if code == _WRITE:
                problem.write_class[a] = class_id
            else:
                problem.cas_classes_expecting.setdefault(a, []).append(class_id)
                problem.cas_classes_writing.setdefault(b, []).append(class_id)
        problem.class_members[class_id].append(index)
        problem.class_calls[class_id].append(call_position[index])
    problem.unknown_expected = frozenset(problem.cas_classes_expecting)
    problem.writing_expected = sorted(class_id for value, class_id in problem.write_class.items()
                                      if value in problem.unknown_expected)


def _step(op: Op, interner: _Interner) -> tuple[int, int, int]:
    if op.kind == "put":
        return (_WRITE, interner.intern(op.arg), 0)
    if op.kind == "delete":
        return (_WRITE, _ABSENT, 0)
    if op.kind == "get":
        return (_READ, interner.intern(op.result), 0)
    expected, new = interner.intern(op.arg[0]), interner.intern(op.arg[1])
    if op.ret is None:
        return (_CAS_MAYBE, expected, new)
    return (_CAS_SWAPPED, expected, new) if op.result else (_CAS_FAILED, expected, 0)


def _anonymise(steps: list[tuple[int, int, int]], values: list[Any]) -> list[tuple[int, int, int]]:
    """4e: give every written value that no step compares against one shared new id."""
    compared = {_ABSENT} | {a for code, a, _ in steps if code != _WRITE}
    unread = len(values)
    values.append(_UnreadValue())

    def rename(value: int) -> int:
        return value if value in compared else unread

    return [(code, rename(a), b) if code == _WRITE else (code, a, rename(b))
            for code, a, b in steps]


def search(problem: KeyProblem, deadline: float, capture_step: int = -1) -> Outcome:
    """Decide one key (steps 3-5). With `capture_step` >= 0, stop at that step (a return
    event reached by an earlier run) and capture the stack there (step 6)."""
    remaining = problem.known_count
    if remaining == 0:
        return Outcome("ok", 0)
    events = problem.events
    return_position = problem.return_position
    model = problem.steps
    reads = problem.reads
    writes = problem.writes
    class_members = problem.class_members
    readers_left, writers_left = _value_counts(problem)
    nxt, prv = _linked(len(events), [p for p in range(1, len(events))
                                     if events[p] < problem.known_count])
    class_used = [0] * len(class_members)  # per unknown class: how many ops are linearized
    cache: set[tuple[int, int]] = set()
    # (position or class, op, state before, linearized before, kind, blocking return)
    stack: list[tuple[int, int, int, int, int, int]] = []
    push = stack.append
    pop = stack.pop
    monotonic = time.monotonic
    state = _ABSENT
    linearized = 0
    steps = 0
    best_depth = -1
    best_step = -1
    entry = nxt[0]  # cursor in the known-op list
    blocked = 0  # the return at which known ops got stuck, or 0 while scanning known ops
    candidates: list[int] = []  # while blocked: the unknown classes worth trying, by id
    candidate_index = 0  # while blocked: the next candidate to try
    while True:
        steps += 1
        if not steps & _CLOCK_CHECK_MASK and monotonic() >= deadline:
            return Outcome("unknown", steps)
        if blocked:  # known ops are stuck: try the unknown ones called before `blocked`
            if candidate_index < len(candidates):
                class_id = candidates[candidate_index]
                candidate_index += 1
                used = class_used[class_id]
                op = class_members[class_id][used]
                code, a, b = model[op]
                new_state = a if code == _WRITE else b
                memo = (linearized | (1 << op), new_state)
                if memo in cache or (readers_left[state] and (not writers_left[state] or _too_late(
                        state, op, problem, nxt, class_used))):
                    continue  # a dead end (4b)
                cache.add(memo)
                push((class_id, op, state, linearized, _UNKNOWN, blocked))
                linearized, state = memo
                writers_left[writes[op]] -= 1
                class_used[class_id] = used + 1
                blocked = 0
                entry = nxt[0]
                continue
        else:
            op = events[entry]
            if op < 0:  # a return: no known op can go next
                invariant(entry != 0, "search ran past the last event with ops unlinearized")
                depth = len(stack)
                if depth > best_depth:
                    best_depth = depth
                    best_step = steps
                if steps == capture_step:
                    return _capture(problem, stack, state, entry, nxt, class_used)
                blocked = entry
                candidates = _candidates(problem, state, blocked, nxt, class_used)
                candidate_index = 0
                continue
            code, a, b = model[op]  # a call: try to linearize this op now
            kind = _CHOSEN
            if code == _WRITE:
                new_state = a
            elif code == _READ:
                if state != a:
                    entry = nxt[entry]
                    continue
                new_state = state
                kind = _FORCED
            elif code == _CAS_SWAPPED:
                if state != a:
                    entry = nxt[entry]
                    continue
                new_state = b
            else:  # _CAS_FAILED
                if state == a:
                    entry = nxt[entry]
                    continue
                new_state = state
                kind = _FORCED
            if new_state != state and readers_left[state] > (reads[op] == state) and (
                    not writers_left[state] or _too_late(state, op, problem, nxt, class_used)):
                entry = nxt[entry]  # a dead end (4b)
                continue
            memo = (linearized | (1 << op), new_state)
            if memo not in cache:
                cache.add(memo)
                push((entry, op, state, linearized, kind, 0))
                linearized, state = memo
                value = reads[op]
                if value >= 0:
                    readers_left[value] -= 1
                value = writes[op]
                if value >= 0:
                    writers_left[value] -= 1
                after = nxt[entry]
                before = prv[entry]
                nxt[before] = after
                prv[after] = before
                returned = return_position[entry]
                after = nxt[returned]
                before = prv[returned]
                nxt[before] = after
                prv[after] = before
                remaining -= 1
                if not remaining:
                    return Outcome("ok", steps)
                entry = nxt[0]
                continue
            if kind == _CHOSEN:
                entry = nxt[entry]
                continue
            # A forced op whose next configuration already failed: this one fails too.
        # Backtrack: undo the last choice (and every forced one before it), then resume the
        # scan just after it.
        while True:
            if not stack:
                return Outcome("violation", steps, best_step)
            position, op, state, linearized, kind, blocked = pop()
            if kind == _UNKNOWN:
                writers_left[writes[op]] += 1
                class_used[position] -= 1
                candidates = _candidates(problem, state, blocked, nxt, class_used)
                candidate_index = bisect.bisect_right(candidates, position)
                break
            value = reads[op]
            if value >= 0:
                readers_left[value] += 1
            value = writes[op]
            if value >= 0:
                writers_left[value] += 1
            returned = return_position[position]
            prv[nxt[returned]] = returned
            nxt[prv[returned]] = returned
            prv[nxt[position]] = position
            nxt[prv[position]] = position
            remaining += 1
            if kind == _CHOSEN:
                entry = nxt[position]
                break


def _value_counts(problem: KeyProblem) -> tuple[list[int], list[int]]:
    """Per value id: how many ops must read it, and how many may write it."""
    readers = [0] * len(problem.values)
    writers = [0] * len(problem.values)
    for value in problem.reads:
        if value >= 0:
            readers[value] += 1
    for value in problem.writes:
        if value >= 0:
            writers[value] += 1
    return readers, writers


def _linked(size: int, positions: list[int]) -> tuple[list[int], list[int]]:
    """A circular doubly linked list (next, previous) over `positions`, head sentinel at 0."""
    nxt = [0] * size
    prv = [0] * size
    previous = 0
    for position in positions:
        nxt[previous] = position
        prv[position] = previous
        previous = position
    nxt[previous] = 0
    prv[0] = previous
    return nxt, prv


def _candidates(problem: KeyProblem, state: int, blocked: int, nxt: list[int],
                class_used: list[int]) -> list[int]:
    """The unknown classes worth trying when known ops are stuck at the return `blocked`:
    those whose next op was called before `blocked` and would change the state to a value
    that a pending op could observe right after (4c, 4d), sorted by class id."""
    observed = _observers(problem, blocked, nxt)
    members = problem.class_members
    chosen: set[int] = set()
    if observed is None:  # any change would do
        chosen.update(class_id for value, class_id in problem.write_class.items()
                      if value != state)
    else:
        chosen.update(problem.write_class[value] for value in observed
                      if value in problem.write_class)
        chosen.update(problem.writing_expected)
        chosen.discard(problem.write_class.get(state, 0))  # rewriting the state changes nothing
    for class_id in problem.cas_classes_expecting.get(state, ()):
        new = problem.steps[members[class_id][0]][2]
        if new != state and (observed is None or new in observed
                             or new in problem.unknown_expected):
            chosen.add(class_id)
    calls = problem.class_calls
    return sorted(class_id for class_id in chosen
                  if class_used[class_id] < len(members[class_id])
                  and calls[class_id][class_used[class_id]] < blocked)


def _observers(problem: KeyProblem, blocked: int, nxt: list[int]) -> set[int] | None:
    """4c: the values a pending known op (called before the return at `blocked`) would observe
    if the state became that value; None when any change would do, because a failing cas is
    pending (stuck, so it expects the current state)."""
    events = problem.events
    model = problem.steps
    observed: set[int] = set()
    position = nxt[0]
    while position and position < blocked:
        event = events[position]
        if event >= 0:
            code, a, _ = model[event]
            if code == _CAS_FAILED:
                return None
            if code != _WRITE:
                observed.add(a)
        position = nxt[position]
    return observed


def _too_late(value: int, op: int, problem: KeyProblem, nxt: list[int],
              class_used: list[int]) -> bool:
    """4b: True if an unlinearized reader of `value` returns before any unlinearized writer of
    `value` other than `op` (about to be linearized) is called."""
    events = problem.events
    reads = problem.reads
    writes = problem.writes
    position = nxt[0]
    while position:
        event = events[position]
        if event >= 0:
            if writes[event] == value and event != op:
                return False
        elif reads[~event] == value and ~event != op:
            break
        position = nxt[position]
    else:
        return False
    writer_classes = problem.cas_classes_writing.get(value, [])
    if value in problem.write_class:
        writer_classes = [*writer_classes, problem.write_class[value]]
    for class_id in writer_classes:
        members = problem.class_members[class_id]
        used = class_used[class_id]
        if used < len(members) and members[used] == op:
            used += 1
        if used < len(members) and problem.class_calls[class_id][used] < position:
            return False
    return True


def _capture(problem: KeyProblem, stack: list[tuple[int, int, int, int, int, int]], state: int,
             entry: int, nxt: list[int], class_used: list[int]) -> Outcome:
    """Step 6: what the search saw when it reached the return at `entry` unlinearized."""
    events = problem.events
    blocked = ~events[entry]
    pending: list[int] = []
    position = nxt[0]
    while position and position < entry:
        if events[position] >= 0 and events[position] != blocked:
            pending.append(events[position])
        position = nxt[position]
    for class_id in range(1, len(problem.class_members)):
        calls = problem.class_calls[class_id]
        members = problem.class_members[class_id]
        pending.extend(members[used] for used in range(class_used[class_id], len(members))
                       if calls[used] < entry)
    prefix = tuple(item[1] for item in stack)
    done = set(prefix)
    waiting = tuple(op for op in range(problem.known_count)
                    if problem.reads[op] == state and op not in done)
    return Outcome("captured", steps=0, prefix=prefix, state=state, blocked=blocked,
                   pending=tuple(sorted(pending)), waiting=waiting)
