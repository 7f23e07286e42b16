"""The replicated state machine of one shard (pure: no clock, no I/O).

See `ringlock.statemachine.kv` for its rules.
"""

from ringlock.statemachine.kv import (
    Compare,
    KeyValue,
    ShardStateMachine,
    StateMachineError,
)

__all__ = ["Compare", "KeyValue", "ShardStateMachine", "StateMachineError"]
