"""Majority arithmetic over a set of voters.

Only voters count; learners receive the log but never decide anything. Kept
apart from the protocol so each rule is one small, testable function.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def majority(voter_count: int) -> int:
    """Smallest number of voters that forms a quorum."""
    return voter_count // 2 + 1


def committed_index(voters: Collection[int], match_index: Mapping[int, int]) -> int:
    """Highest index stored by a quorum of voters (0 when there are no voters)."""
    if not voters:
        return 0
    matches = sorted((match_index.get(v, 0) for v in voters), reverse=True)
    return matches[majority(len(voters)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> bool | None:
    """True when a quorum granted, False when a quorum can no longer grant, else None."""
    granted = 0
    rejected = 0
    for voter in voters:
        answer = votes.get(voter)
        if answer is True:
            granted += 1
        elif answer is False:
            rejected += 1
    need = majority(len(voters))
    if granted >= need:
        return True
    if len(voters) - rejected < need:
        return False
    return None


def has_quorum(voters: Collection[int], responders: Collection[int]) -> bool:
    """Whether the responders include a quorum of the voters."""
    count = sum(1 for v in voters if v in responders)
    return count >= majority(len(voters))
