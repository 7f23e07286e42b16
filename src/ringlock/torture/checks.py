"""The checks `ringlock torture` runs on what its clients saw and what the nodes hold.

Each check returns a `Check`: a name, ok or not, what it covered and, when it fails,
the evidence. They are plain functions of recorded data, so a test can feed them a
planted violation and see it caught.

  * kv_linearizable: the register history (final reads after the heal included) is
    linearizable per key (the simulator's checker, ringlock.checker).
  * locks_safe: per lock, no two holds overlap as the holders saw them, tokens are
    distinct and grow in grant order (ringlock.checker.check_lock_history); in the
    cluster's view, the accepted fenced writes of a lock, in the order its shard
    applied them (mod revision), carry non-decreasing tokens; and no fenced write was
    accepted after a newer grant of its lock had been acknowledged to its holder: an
    expired holder's writes are refused.
  * no_ack_lost: every acknowledged write is there after the heal with its value, no
    refused fenced write is, and nothing is there that no client tried to write.
  * replicas_identical: every replica of every shard, at the same applied index, has
    the same state-machine digest.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ringlock.checker import LockHold, Op, check_kv_history, check_lock_history


@dataclass
class Check:
    name: str
    ok: bool
    message: str
    checked: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, "checked": self.checked,
                "seconds": round(self.seconds, 3), **self.extra}


@dataclass(frozen=True)
class FencedWrite:
    client: int
    lock: str
    token: int
    write: int
    call: int
    ret: int
    outcome: str
    """"ok" (acknowledged), "fenced" (refused with FencedOut), "unknown"."""


def check_kv(history: Sequence[Op], time_limit_s: float = 60.0) -> Check:
    started = time.monotonic()
    result = check_kv_history(history, time_limit_s=time_limit_s)
    message = result.message if result.verdict != "ok" else (
        f"{len(history)} ops over {len({op.key for op in history})} keys are linearizable")
    if result.verdict == "unknown":
        message = f"checker undecided within {time_limit_s} s: {result.message}"
    return Check("kv_linearizable", result.ok, message, result.ops_checked,
                 time.monotonic() - started,
                 {"unknown_outcome": sum(op.ret is None for op in history)})


def check_locks(holds: Sequence[LockHold], writes: Sequence[FencedWrite],
                stored: dict[str, tuple[str, int]], key_of: Any) -> Check:
    """`stored`: key -> (value, mod revision) of the fenced-write keys after the heal;
    `key_of(lock, token, write)`: the key a fenced write went to."""
    started = time.monotonic()

    def done(ok: bool, message: str) -> Check:
        refused = sum(w.outcome == "fenced" for w in writes)
        return Check("locks_safe", ok, message, len(holds) + len(writes),
                     time.monotonic() - started,
                     {"holds": len(holds), "fenced_writes": len(writes),
                      "fenced_writes_refused": refused})

    verdict = check_lock_history(holds)
    if not verdict.ok:
        return done(False, f"client view: {verdict.message}")
    by_lock: dict[str, list[LockHold]] = {}
    for hold in holds:
        by_lock.setdefault(hold.lock, []).append(hold)
    for w in writes:
        if w.outcome != "ok":
            continue
        newer = [h for h in by_lock.get(w.lock, ()) if h.token > w.token and h.acquired < w.call]
        if newer:
            first = min(newer, key=lambda h: h.acquired)
            return done(False, f"lock {w.lock!r}: a fenced write with token {w.token} by "
                        f"client {w.client} was accepted, though token {first.token} had "
                        f"been granted to client {first.holder} before the write was sent")
    for lock in sorted({w.lock for w in writes}):
        applied = sorted((stored[key][1], w.token, key) for w in writes if w.lock == lock
                         if (key := key_of(w.lock, w.token, w.write)) in stored)
        for (rev_a, token_a, key_a), (rev_b, token_b, key_b) in itertools.pairwise(applied):
            if token_b < token_a:
                return done(False, f"lock {lock!r}, cluster view: {key_b} (token {token_b}, "
                            f"revision {rev_b}) was applied after {key_a} (token {token_a}, "
                            f"revision {rev_a}): a stale holder wrote after a newer one")
    return done(True, f"{len(holds)} holds of {len(by_lock)} locks exclusive and in token "
                f"order; {len(writes)} fenced writes, none accepted from a stale holder")


def check_stored(acked: dict[str, str], unknown: dict[str, str], refused: set[str],
                 stored: dict[str, tuple[str, int]]) -> Check:
    """Acknowledged writes are there; refused ones are not; nothing else is."""
    started = time.monotonic()
    lost = [k for k, v in acked.items() if stored.get(k, (None, 0))[0] != v]
    present_refused = sorted(refused & set(stored))
    stray = sorted(k for k, (v, _) in stored.items()
                   if acked.get(k, unknown.get(k)) != v and k not in refused)
    problems = []
    if lost:
        problems.append(f"{len(lost)} acknowledged writes lost or changed, e.g. "
                        f"{lost[:3]} (stored: {[stored.get(k) for k in lost[:3]]})")
    if present_refused:
        problems.append(f"{len(present_refused)} refused writes stored, e.g. {present_refused[:3]}")
    if stray:
        problems.append(f"{len(stray)} keys no client wrote with that value, e.g. {stray[:3]}")
    ok = not problems
    message = "; ".join(problems) if problems else (
        f"all {len(acked)} acknowledged writes read back ({len(unknown)} unknown-outcome "
        f"writes may or may not be there)")
    return Check("no_ack_lost", ok, message, len(acked), time.monotonic() - started,
                 {"unknown_writes": len(unknown),
                  "unknown_present": sum(k in stored for k in unknown)})


def compare_digests(reports: dict[int, dict[int, list[Any]]]) -> tuple[dict[int, int], list[str]]:
    """reports: node -> group -> [applied index, digest]. Returns, per group whose
    replicas are all at one applied index, how many replicas agreed, and a message per
    group whose replicas at one index differ (a divergence)."""
    by_group: dict[int, list[tuple[int, int, str]]] = {}
    for node, groups in reports.items():
        for group, (applied, digest) in groups.items():
            by_group.setdefault(int(group), []).append((node, applied, digest))
    agreed: dict[int, int] = {}
    diverged: list[str] = []
    for group, replicas in sorted(by_group.items()):
        if len({applied for _, applied, _ in replicas}) != 1:
            continue  # not at one index yet: ask again
        if len({digest for _, _, digest in replicas}) != 1:
            diverged.append(f"group {group} at index {replicas[0][1]}: " + ", ".join(
                f"node {n} {d[:12]}" for n, _, d in sorted(replicas)))
        else:
            agreed[group] = len(replicas)
    return agreed, diverged
