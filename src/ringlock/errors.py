"""The one exception tree of ringlock.

    RinglockError
    ├── InvariantViolation      a rule the code relies on was broken (a bug, never bad input)
    ├── ConfigError             a configuration was refused by its validate()
    └── ProposalDropped         the Raft core could not accept a proposal right now
        ├── NotLeaderError      this replica is not the leader (carries a leader hint)
        ├── TransferInProgress  leadership is moving; retry on the new leader
        └── ConfChangeInProgress  another membership change is not yet committed

Low-level errors from later layers (transport, storage) are mapped onto this
tree at their boundary, so users catch one family.
"""

from __future__ import annotations


class RinglockError(Exception):
    """Base of every error ringlock raises on purpose."""


class InvariantViolation(RinglockError):
    """A condition that must always hold did not: the process state is suspect."""


class ConfigError(RinglockError, ValueError):
    """A configuration value is out of its allowed range."""


class ProposalDropped(RinglockError):
    """The Raft core refused a proposal; nothing was appended."""


class NotLeaderError(ProposalDropped):
    """Proposals go to the leader; `leader_hint` names it when known (0 if not)."""

    def __init__(self, leader_hint: int = 0) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint


class TransferInProgress(ProposalDropped):
    """Leadership transfer is under way; proposals are refused until it ends."""


class ConfChangeInProgress(ProposalDropped):
    """Only one membership change may be pending at a time."""
