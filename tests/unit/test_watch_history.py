"""The shard's change history that watches replay: what each write records, its bounds,
and its floor after eviction and after a snapshot restore."""

from __future__ import annotations

import pytest

from ringlock.statemachine import ShardStateMachine
from ringlock.statemachine.history import MAX_WATCH_HISTORY, Change, HistoryBudget, WatchHistory
from ringlock.statemachine.kv import encode


class Log:
    """Apply commands to a fresh machine with consecutive indexes."""

    def __init__(self, machine: ShardStateMachine | None = None) -> None:
        self.machine = machine if machine is not None else ShardStateMachine()
        self.index = self.machine.applied_index

    def __call__(self, op: str, *args: object, client: int = 0, seq: int = 0) -> object:
        self.index += 1
        return self.machine.apply(self.index, encode(op, client, seq, *args))


def test_puts_and_deletes_are_recorded_at_their_revisions() -> None:
    run = Log()
    run("put", b"a", b"1", 0, False)
    run("put", b"b", b"2", 0, False)
    run("delete", b"a", False)
    run("delete", b"missing", False)  # changes nothing, so records nothing
    assert list(run.machine.history) == [
        Change(1, "put", b"a", b"1", 0), Change(2, "put", b"b", b"2", 0),
        Change(3, "delete", b"a", None, 0)]
    assert run.machine.history.floor == 0
    assert run.machine.history.since(2) == list(run.machine.history)[1:]
    assert run.machine.history.since(4) == []


def test_cas_records_only_when_it_changes_something() -> None:
    run = Log()
    run("put", b"a", b"1", 0, False)
    assert run("cas", b"a", "value", b"0", "put", b"2") is False
    assert run("cas", b"a", "value", b"1", "put", b"2") is True
    assert run("cas", b"a", "version", 2, "delete", b"") is True
    assert [(c.revision, c.kind, c.value) for c in run.machine.history] == [
        (1, "put", b"1"), (2, "put", b"2"), (3, "delete", None)]


def test_an_ended_lease_records_its_keys_as_expired() -> None:
    run = Log()
    run("lease_grant", 7, 1000)
    run("put", b"{t}x", b"1", 7, False)
    run("put", b"{t}y", b"2", 7, False)
    run("put", b"{t}z", b"3", 0, False)
    run("delete", b"{t}y", False)
    assert run("lease_revoke", 7) == 1
    changes = list(run.machine.history)
    assert changes[1] == Change(2, "put", b"{t}y", b"2", 7)
    assert changes[3] == Change(4, "delete", b"{t}y", None, 7)
    assert changes[4] == Change(5, "expire", b"{t}x", None, 7)
    assert len(changes) == 5


def test_a_retried_write_and_a_failed_write_record_nothing() -> None:
    run = Log()
    run("put", b"a", b"1", 0, False, client=9, seq=1)
    run("put", b"a", b"1", 0, False, client=9, seq=1)  # the retry: de-duplicated
    run("put", b"a", b"2", 99, False)  # an unknown lease: refused
    assert len(run.machine.history) == 1 and run.machine.revision == 1


def test_the_history_is_bounded_by_count_and_raises_its_floor() -> None:
    history = WatchHistory(budget=HistoryBudget(max_events=3))
    for revision in range(1, 6):
        history.record(revision, "put", b"k", b"v", 0)
    assert [c.revision for c in history] == [3, 4, 5]
    assert history.floor == 2  # every change above 2 is remembered
    assert history.since(1) == list(history)  # the caller checks the floor first


def test_the_history_is_bounded_by_bytes_but_keeps_the_newest_change() -> None:
    history = WatchHistory(budget=HistoryBudget(max_bytes=1000))
    history.record(1, "put", b"a", b"x" * 600, 0)
    history.record(2, "put", b"b", b"y" * 600, 0)
    assert [c.revision for c in history] == [2] and history.floor == 1
    history.record(3, "put", b"c", b"z" * 5000, 0)  # larger than the bound on its own
    assert [c.revision for c in history] == [3] and history.floor == 2
    assert history.size_bytes < 5000 + 200


def test_revisions_must_rise() -> None:
    history = WatchHistory()
    history.record(5, "put", b"a", b"", 0)
    with pytest.raises(ValueError):
        history.record(5, "put", b"a", b"", 0)


def test_a_machine_on_its_own_keeps_the_budgets_default_count() -> None:
    run = Log()
    for n in range(MAX_WATCH_HISTORY + 50):
        run("put", b"k%d" % (n % 10), b"v", 0, False)
    history = run.machine.history
    assert len(history) == MAX_WATCH_HISTORY and history.floor == 50
    assert history.last_revision == run.machine.revision == MAX_WATCH_HISTORY + 50


def test_a_put_is_kept_as_the_shards_record_not_a_copy() -> None:
    run = Log()
    run("put", b"a", b"x" * 100, 0, False)
    (kept,) = run.machine.history._changes
    assert kept[1] is run.machine.data[b"a"]  # one object: the change costs a reference
    assert list(run.machine.history) == [Change(1, "put", b"a", b"x" * 100, 0)]
    run("put", b"a", b"y", 0, False)  # the old record lives on in the history only
    assert [c.value for c in run.machine.history] == [b"x" * 100, b"y"]


def test_shards_sharing_a_budget_forget_the_nodes_oldest_change_first() -> None:
    budget = HistoryBudget(max_events=4)
    hot, cold = Log(ShardStateMachine(budget)), Log(ShardStateMachine(budget))
    cold("put", b"c", b"1", 0, False)
    for n in range(4):
        hot("put", b"h%d" % n, b"v", 0, False)
    # the cold shard's change was the node's oldest: it went, and its floor rose
    assert len(cold.machine.history) == 0 and cold.machine.history.floor == 1
    assert [c.revision for c in hot.machine.history] == [1, 2, 3, 4]
    hot("put", b"h4", b"v", 0, False)
    assert hot.machine.history.floor == 1 and budget.events == 4
    assert budget.bytes == sum(h.size_bytes for h in (hot.machine.history, cold.machine.history))


def test_the_budgets_bytes_are_shared_too() -> None:
    budget = HistoryBudget(max_bytes=1000)
    first, second = WatchHistory(budget=budget), WatchHistory(budget=budget)
    first.record(1, "put", b"a", b"x" * 500, 0)
    second.record(1, "put", b"b", b"y" * 500, 0)
    assert len(first) == 0 and first.floor == 1 and len(second) == 1
    assert budget.bytes == second.size_bytes


def test_a_replaced_history_leaves_the_budget_as_its_changes_age() -> None:
    budget = HistoryBudget(max_events=3)
    run = Log(ShardStateMachine(budget))
    for n in range(3):
        run("put", b"k%d" % n, b"v", 0, False)
    restored = ShardStateMachine.restore(run.machine.snapshot(), history_budget=budget)
    assert restored.history.budget is budget and budget.events == 3
    more = Log(restored)
    more("put", b"new", b"v", 0, False)
    assert budget.events == 3 and len(run.machine.history) == 2  # the old shard's oldest went
    assert [c.revision for c in restored.history] == [4]


def test_a_restored_replica_starts_with_an_empty_history_floored_at_the_snapshot() -> None:
    run = Log()
    for n in range(5):
        run("put", b"k%d" % n, b"v", 0, False)
    restored = ShardStateMachine.restore(run.machine.snapshot())
    assert len(restored.history) == 0 and restored.history.floor == 5
    more = Log(restored)
    more("delete", b"k1", False)
    assert list(restored.history) == [Change(6, "delete", b"k1", None, 0)]
    assert restored.history.floor == 5


def test_every_replica_records_the_same_history() -> None:
    commands = [("lease_grant", 3, 500), ("put", b"{a}1", b"x", 3, False),
                ("put", b"b", b"y", 0, False), ("cas", b"b", "value", b"y", "delete", b""),
                ("lease_revoke", 3)]
    runs = [Log(), Log()]
    for run in runs:
        for op, *args in commands:
            run(op, *args)
    assert list(runs[0].machine.history) == list(runs[1].machine.history)


def test_a_closed_machine_gives_its_changes_back_at_once() -> None:
    budget = HistoryBudget(max_events=4)
    gone, staying = Log(ShardStateMachine(budget)), Log(ShardStateMachine(budget))
    for n in range(3):
        gone("put", b"g%d" % n, b"x" * 100, 0, False)
    gone.machine.close()  # the replica left the node, or a snapshot replaced its state
    assert budget.events == 0 and budget.bytes == 0 and len(gone.machine.history) == 0
    for n in range(4):  # room for four again: nothing of the closed shard is kept
        staying("put", b"s%d" % n, b"v", 0, False)
    assert [c.revision for c in staying.machine.history] == [1, 2, 3, 4]
    staying("put", b"s4", b"v", 0, False)
    assert staying.machine.history.floor == 1 and budget.events == 4
    assert len(budget._order) == 4  # the closed shard's places went as they came up
    with pytest.raises(Exception, match="released"):
        gone("put", b"g9", b"v", 0, False)


def test_since_copies_out_only_the_changes_of_keys_that_match() -> None:
    run = Log()
    for n in range(6):
        run("put", b"%s%d" % (b"ab"[n % 2 : n % 2 + 1], n), b"v%d" % n, 0, False)
    run("delete", b"a0", False)
    history = run.machine.history
    wanted = history.since(2, lambda key: key.startswith(b"a"))
    assert wanted == [c for c in history.since(2) if c.key.startswith(b"a")]
    assert [(c.revision, c.kind) for c in wanted] == [(3, "put"), (5, "put"), (7, "delete")]
