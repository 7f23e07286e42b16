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


# --------------------------------------------------------------------------- client-facing
# What a client call can raise. Each has a wire `code`, so a server's answer maps back to
# the same class on the client; `retryable` says whether the client may try again.


class RequestError(RinglockError):
    """A request was answered with an error (or could not be answered at all)."""

    code = "Error"
    retryable = False
    version = 0
    """The answering node's map version, on routing errors: a client whose map is
    older fetches the map again before retrying."""


class NotLeader(RequestError):
    """The replica asked does not lead the shard; `leader` is its best guess (an address)."""

    code = "NotLeader"
    retryable = True

    def __init__(self, message: str = "not the leader", leader: str | None = None, *,
                 version: int = 0) -> None:
        super().__init__(message)
        self.leader = leader
        self.version = version


class WrongShard(RequestError):
    """The node holds no replica of the shard, or the client's shard map is stale."""

    code = "WrongShard"
    retryable = True

    def __init__(self, message: str = "wrong shard", *, version: int = 0) -> None:
        super().__init__(message)
        self.version = version


class Unavailable(RequestError):
    """No node answered, or the shard has no leader yet; retried inside the deadline."""

    code = "Unavailable"
    retryable = True


class RequestTimeout(RequestError, TimeoutError):
    """The call's deadline passed; a write may or may not have been applied."""

    code = "Timeout"
    retryable = False


class TooLarge(RequestError, ValueError):
    """A key, value, frame or batch exceeded its named limit; nothing was changed."""

    code = "TooLarge"


class BadRequest(RequestError, ValueError):
    """The request was malformed or names an unknown command; nothing was changed."""

    code = "BadRequest"


class CommandFailed(RequestError):
    """The state machine refused the command (e.g. an unknown lease); nothing changed."""

    code = "CommandFailed"


class FencedOut(CommandFailed):
    """A fenced write carried a lock's token older than one the key's shard has seen (the
    lock was granted again since), or the client knows its hold is lost: a paused or
    partitioned holder must not write. Nothing changed."""

    code = "FencedOut"


class NotHolder(CommandFailed):
    """A release of a lock this waiter does not hold (its lease ended, and the lock may
    have gone to the next waiter); nothing changed."""

    code = "NotHolder"


class LockLimitExceeded(CommandFailed, TooLarge):
    """A lock name, a lock's queue, or a shard's number of locks exceeded its limit."""

    code = "LockLimit"


class LockWaitAborted(RequestError):
    """A wait for a lock ended without a grant: the waiter's lease ended or its wait was
    cancelled (the client re-queues when it can)."""

    code = "LockWaitAborted"
    retryable = True


class WaitSuperseded(RequestError):
    """A lock wait was answered because the same connection opened another for the same
    waiter: only one is listened to, so the listening one asks again, at once."""

    code = "WaitSuperseded"
    retryable = True


class Unauthorized(RequestError):
    """The cluster requires a secret and this connection has not proved it knows it (none
    was given, or a wrong one): nothing was read or changed. Not retried: another try
    with the same secret fails the same way."""

    code = "Unauthorized"


class TlsError(RequestError):
    """A TLS handshake with a node failed: a plain-text client at a TLS port, a TLS
    client at a plain-text port, or a certificate the given CA did not sign. Not
    retried: the configuration must change first."""

    code = "TlsError"


class NotFound(RequestError):
    """The lease (or other named object) does not exist: it expired or was revoked."""

    code = "NotFound"


ERROR_CODES: dict[str, type[RequestError]] = {
    cls.code: cls
    for cls in (NotLeader, WrongShard, Unavailable, RequestTimeout, TooLarge, BadRequest,
                CommandFailed, NotFound, FencedOut, NotHolder, LockLimitExceeded,
                LockWaitAborted, WaitSuperseded, Unauthorized, TlsError)
}


# --------------------------------------------------------------------------- watches
# Errors that end a watch stream (server/watches.py, client/watch.py).


class Compacted(RequestError):
    """A watch asked to start at a revision older than the shard still remembers;
    `floor`: every change above it is remembered, so start at `floor + 1` or later
    (re-read the keys first: changes in between are lost to this watch)."""

    code = "Compacted"

    def __init__(self, message: str = "revision compacted", *, floor: int = 0) -> None:
        super().__init__(message)
        self.floor = floor


class WatchLagged(Unavailable):
    """The node ended a watch whose connection fell too far behind in reading its
    events; the client resumes it from its last revision."""

    code = "WatchLagged"


ERROR_CODES.update({cls.code: cls for cls in (Compacted, WatchLagged)})
