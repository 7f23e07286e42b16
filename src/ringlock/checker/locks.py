"""Lock histories: mutual exclusion and fencing-token order, as the clients saw them.

Theory of operation
-------------------
A `LockHold` is one grant as its holder saw it: the grant's response arrived at `acquired`,
and the holder issued its release at `released` (None when unknown: lease expired, crash,
timeout). A hold whose lease may have expired before its release must be recorded with
`released = None`: the checker cannot know when such a hold ended.

The server grants B only after applying A's release, which A issued before that, so when A
was granted first, `A.released < B.acquired` (strictly). Hence, per lock:

1. Tokens are distinct: two grants never carry the same fencing token.
2. Mutual exclusion: two holds with known releases never overlap, touching ends included.
   Sorted by `acquired`, a hold overlaps some earlier one iff it overlaps the earlier one
   that was released last, so one sweep finds any overlap.
3. Token order: if `A.released < B.acquired` then `A.token < B.token`. A sweep in `acquired`
   order keeps the largest token among holds released before the current acquisition.

Holds with unknown release take part in rules 1 and 3 (as B) but not in rule 2. Locks are
checked in sorted order, stopping at the first violation.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from ringlock.checker.history import CheckResult


@dataclass(frozen=True, slots=True)
class LockHold:
    """One grant of `lock` to client `holder` with fencing `token`, as the holder saw it."""

    lock: str
    holder: int
    token: int
    acquired: int
    released: int | None


def format_hold(hold: LockHold) -> str:
    """One line for a hold, e.g. `client 2 (token 7) held [10, 25]` (`?` = unknown release)."""
    released = "?" if hold.released is None else str(hold.released)
    return f"client {hold.holder} (token {hold.token}) held [{hold.acquired}, {released}]"


def check_lock_history(holds: Sequence[LockHold]) -> CheckResult:
    """Check mutual exclusion and fencing-token order of every lock in `holds`.

    Raises ValueError on a malformed hold (released before acquired).

    >>> check_lock_history([LockHold("L", 1, 1, 0, 5), LockHold("L", 2, 2, 6, None)]).verdict
    'ok'
    """
    groups: dict[str, list[LockHold]] = {}
    for index, hold in enumerate(holds):
        if not isinstance(hold.lock, str):
            raise ValueError(f"hold #{index} ({format_hold(hold)}): lock must be a str")
        if hold.released is not None and hold.released < hold.acquired:
            raise ValueError(f"hold #{index} of lock {hold.lock!r} ({format_hold(hold)}): "
                             "released before acquired")
        groups.setdefault(hold.lock, []).append(hold)
    checked = 0
    for lock in sorted(groups):
        lock_holds = groups[lock]
        checked += len(lock_holds)
        problem = (_duplicate_token(lock_holds) or _overlap(lock_holds)
                   or _token_order(lock_holds))
        if problem is not None:
            return CheckResult("violation", f"lock {lock!r}: {problem}", checked, lock)
    return CheckResult("ok", f"{len(holds)} holds over {len(groups)} locks are consistent",
                       checked)


def _duplicate_token(holds: list[LockHold]) -> str | None:
    by_token = sorted(holds, key=lambda hold: (hold.token, hold.acquired))
    for first, second in itertools.pairwise(by_token):
        if first.token == second.token:
            return (f"fencing token {first.token} was granted twice: {format_hold(first)} "
                    f"and {format_hold(second)}")
    return None


def _released(holds: list[LockHold]) -> list[tuple[int, LockHold]]:
    """The holds whose release is known, each paired with its release time."""
    return [(hold.released, hold) for hold in holds if hold.released is not None]


def _overlap(holds: list[LockHold]) -> str | None:
    known = sorted(_released(holds), key=lambda pair: (pair[1].acquired, pair[1].token))
    latest: tuple[int, LockHold] | None = None  # among holds seen so far, the one released last
    for released, hold in known:
        if latest is not None:
            if hold.acquired <= latest[0]:
                return (f"two holders at once: {format_hold(latest[1])} and "
                        f"{format_hold(hold)} (acquired at or before the other's release)")
            if released <= latest[0]:
                continue
        latest = (released, hold)
    return None


def _token_order(holds: list[LockHold]) -> str | None:
    by_release = sorted(_released(holds), key=lambda pair: (pair[0], pair[1].token))
    by_acquire = sorted(holds, key=lambda hold: (hold.acquired, hold.token))
    highest: LockHold | None = None  # the largest token among holds released so far
    next_release = 0
    for hold in by_acquire:
        while next_release < len(by_release) and by_release[next_release][0] < hold.acquired:
            candidate = by_release[next_release][1]
            if highest is None or candidate.token > highest.token:
                highest = candidate
            next_release += 1
        if highest is not None and highest.token > hold.token:
            return (f"fencing tokens out of order: {format_hold(highest)} released before "
                    f"{format_hold(hold)} acquired, yet its token is larger "
                    "(tokens must increase in grant order)")
    return None
