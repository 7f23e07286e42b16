"""The checker of the checker: plant a classic Raft bug into the core and the
simulator must report a violation within a bounded number of seeds."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ringlock.cli.main import cli
from ringlock.sim import run_seed
from tests.sim.planted_bugs import PLANTED_BUGS

# bug -> (nodes, faults or None for the seed's own choice, first seed, seeds to try)
SEARCH: dict[str, tuple[int, tuple[str, ...] | None, int, int]] = {
    "vote_without_log_check": (3, None, 0, 40),
    "apply_before_commit": (3, None, 0, 40),
    "commit_old_term_by_counting": (3, None, 0, 400),
    "ack_before_persist": (3, None, 0, 400),
    "forget_vote_on_restart": (3, None, 0, 400),
    "read_index_without_quorum": (3, None, 0, 400),
}


def _plant(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    for owner, attribute, replacement in PLANTED_BUGS[name]():
        monkeypatch.setattr(owner, attribute, replacement)


@pytest.mark.parametrize("name", sorted(SEARCH))
def test_simulator_catches_planted_bug(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    nodes, faults, start, count = SEARCH[name]
    _plant(monkeypatch, name)
    for seed in range(start, start + count):
        result = run_seed(seed, nodes, faults=faults)
        if not result.ok:
            assert result.invariant
            return
    pytest.fail(f"planted bug {name!r} went unnoticed in {count} seeds from {start}")


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


def test_correct_core_passes_the_planted_bug_seeds() -> None:
    """The seeds above fail because of the bug, not because the simulator is wrong."""
    for seed in range(0, 10):
        assert run_seed(seed, 3).ok
