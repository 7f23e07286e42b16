"""The checker of the checker: plant a classic Raft bug into the core and the
simulator must report a violation within a bounded number of seeds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from click.testing import CliRunner

from ringlock.cli.main import cli
from ringlock.sim import run_seed
from tests.sim.planted_bugs import PLANTED_BUGS
from tests.unit.test_raft_replication import (
    test_figure8_old_term_entry_not_committed_by_counting_replicas,
)

LEADER_CRASHES = {"leader_victim_rate": 0.9, "fault_interval_us": 100_000}
"""Faults every ~100 ms, nine in ten aimed at the leader."""

@dataclass(frozen=True)
class Search:
    nodes: int
    faults: tuple[str, ...] | None
    """None: each seed draws its own faults (the default profile of `ringlock sim`)."""
    seeds: int
    overrides: dict[str, Any] = field(default_factory=dict)


# Each bug is caught by several seeds well inside its bound today (seeds are
# deterministic, so the margin is room for the simulator to change, not for luck).
SEARCH: dict[str, Search] = {
    "vote_without_log_check": Search(3, None, 40),
    "apply_before_commit": Search(3, None, 40),
    "forget_vote_on_restart": Search(
        3, ("crash", "partition"), 120, {"fault_interval_us": 100_000}
    ),
    # An isolated leader that keeps serving reads; few keys, so that stale reads show.
    "read_index_without_quorum": Search(
        3, ("partition",), 60,
        {"leader_victim_rate": 1.0, "check_quorum": False, "get_fraction": 0.5,
         "fault_interval_us": 300_000, "partition_shapes": ("isolate",),
         "quick_heal_rate": 0.0, "keys": 2, "clients": 16, "op_timeout_us": 300_000},
    ),
    # The leader crashes mid-fsync after its appends went out early.
    "ack_before_persist": Search(
        3, ("crash",), 200,
        {**LEADER_CRASHES, "fault_interval_us": 50_000, "leader_sends_before_sync": True,
         "fsync_min_us": 5_000, "fsync_max_us": 30_000, "quick_heal_rate": 1.0},
    ),
}
"""`commit_old_term_by_counting` needs the whole Figure 8 choreography (three leader
changes with crashes in one-round-trip windows); random seeds reach it too rarely to
bound, so the hand-built Figure 8 unit test is its checker (see the last test)."""


def _plant(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    for owner, attribute, replacement in PLANTED_BUGS[name]():
        monkeypatch.setattr(owner, attribute, replacement)


@pytest.mark.interpreted_core
@pytest.mark.parametrize("name", sorted(SEARCH))
def test_simulator_catches_planted_bug(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    search = SEARCH[name]
    _plant(monkeypatch, name)
    for seed in range(search.seeds):
        result = run_seed(seed, search.nodes, faults=search.faults, overrides=search.overrides)
        if not result.ok:
            assert result.invariant
            return
    pytest.fail(f"planted bug {name!r} went unnoticed in {search.seeds} seeds")


@pytest.mark.interpreted_core
def test_violation_report_names_seed_invariant_and_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _plant(monkeypatch, "vote_without_log_check")
    result = CliRunner().invoke(cli, ["sim", "--seeds", "40"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    failed = next(line for line in lines if "FAILED" in line)
    seed = int(failed.split()[2])
    assert f"replay: ringlock sim --seeds 1 --start-seed {seed} --nodes 3" in lines
    assert "last events:" in lines
    assert not any(line.startswith("sim: ") and "passed" in line for line in lines)


@pytest.mark.parametrize("name", sorted(SEARCH))
def test_correct_core_passes_the_planted_bug_profiles(name: str) -> None:
    """Without the bug the same profiles pass: the seeds above fail because of it."""
    search = SEARCH[name]
    for seed in range(0, 200, 20):
        result = run_seed(seed, search.nodes, faults=search.faults, overrides=search.overrides)
        assert result.ok, f"seed {seed}: {result.invariant}: {result.detail}"


@pytest.mark.interpreted_core
def test_figure8_unit_test_catches_commit_of_old_term(monkeypatch: pytest.MonkeyPatch) -> None:
    _plant(monkeypatch, "commit_old_term_by_counting")
    with pytest.raises(AssertionError):
        test_figure8_old_term_entry_not_committed_by_counting_replicas()
