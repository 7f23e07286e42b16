"""Shared pieces of the fuzz tests: one deterministic hypothesis profile, the strategies
for junk values, and the record of how many inputs each fuzz test ran.

Every fuzz test runs a fixed, derandomized number of examples (no example database), so
a CI run is bounded and repeatable; the counts are printed (`pytest -s`) and appended
to the file named by `RINGLOCK_FUZZ_REPORT` when set (docs/RELIABILITY.md quotes them).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def fuzz_settings(max_examples: int) -> Any:
    """Bounded, derandomized, no deadline (CI machines stall), no example database."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


class Counter:
    def __init__(self) -> None:
        self.inputs = 0


def record(name: str, inputs: int) -> None:
    line = f"fuzz {name}: {inputs} inputs"
    print(line)
    report = os.environ.get("RINGLOCK_FUZZ_REPORT")
    if report:
        with open(report, "a") as file:
            file.write(line + "\n")


EDGE_INTS = st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)])
ints = st.integers(-(2**63), 2**64 - 1) | EDGE_INTS
scalars = (st.none() | st.booleans() | ints | st.floats(allow_nan=True)
           | st.text(max_size=12) | st.binary(max_size=12))
msgpack_values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=5)
                   | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), inner,
                                     max_size=4)),
    max_leaves=16,
)
"""Anything msgpack can carry (extension types aside): the junk a peer could send."""
