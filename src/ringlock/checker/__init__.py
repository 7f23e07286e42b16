"""History checkers: is what the clients saw consistent with a correct store and lock service?

No networking and no simulation here: a checker takes a finished history and returns a
`CheckResult`. `check_kv_history` decides linearizability of key-value operations (per key,
Wing & Gong / Lowe search); `check_lock_history` checks mutual exclusion and fencing-token
order of lock holds. `generate_kv_history` builds linearizable histories for tests.

    >>> from ringlock.checker import check_kv_history, generate_kv_history
    >>> check_kv_history(generate_kv_history(1, ops=200, keys=5, clients=4)).verdict
    'ok'
"""

from ringlock.checker.history import (
    CheckResult,
    Op,
    format_op,
    generate_kv_history,
    validate_history,
)
from ringlock.checker.linearizability import check_kv_history
from ringlock.checker.locks import LockHold, check_lock_history, format_hold

__all__ = [
    "CheckResult",
    "LockHold",
    "Op",
    "check_kv_history",
    "check_lock_history",
    "format_hold",
    "format_op",
    "generate_kv_history",
    "validate_history",
]
