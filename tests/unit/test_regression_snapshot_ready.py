"""Regression: a SNAPSHOT stepped in between ready() and advance() (the driver keeps stepping
messages while its fsync runs) moves `log.applied_index` to the snapshot's index at once
(RaftLog.restore), although the state machine will only be restored when the *next*
Ready hands the snapshot out. Until then the core reports an applied index the state
machine has not reached. The ReadState contract says a read "may be served once
`applied_index >= index`", and sim/node.py `_serve_reads` checks exactly
`raft.log.applied_index` right after `advance()`: a read waiting for index I with the
state machine still below I is then answered from stale state.
"""

from __future__ import annotations

from ringlock.raft import Message, Role
from tests.unit.raft_network import ELECTION_TICK, MT, Network


def test_applied_index_does_not_run_ahead_of_the_state_machine() -> None:
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    net.isolate(3)
    for n in range(5):
        net.propose(1, f"v{n}".encode())
    net.compact(1, 6)
    follower = net.nodes[3]
    applied_by_state_machine = max((e.index for e in net.applied[3]), default=0)
    assert follower.log.applied_index == applied_by_state_machine == 1

    # The follower's loop takes a Ready (its pre-vote), and starts the fsync...
    for _ in range(3 * ELECTION_TICK):
        net.tick(3)
        if follower.role == Role.PRE_CANDIDATE:
            break
    rd = follower.ready()
    # ... while it runs, the leader's snapshot arrives and is stepped.
    assert leader.log.snapshot is not None
    follower.step(Message(MT.SNAPSHOT, to=3, frm=1, term=leader.term, snapshot=leader.log.snapshot))
    # fsync done: the driver finishes rd (which carried no snapshot) and advances.
    net.handle(3, rd)
    assert rd.snapshot is None
    assert not net.restored[3], "the state machine has not been restored yet"
    # The core now claims index 6 is applied; the state machine is still at 1, so a
    # driver serving reads by `applied_index >= read_state.index` answers from stale state.
    assert follower.log.applied_index == applied_by_state_machine, (
        f"core applied_index {follower.log.applied_index}, state machine at "
        f"{applied_by_state_machine}"
    )
