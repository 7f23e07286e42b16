"""Deterministic simulation of whole ringlock clusters.

The harness drives the same pure Raft core the server runs, with a simulated
clock, network and disk; it depends on the core, never the reverse.
"""

from ringlock.sim.runner import SeedResult, run_seed, run_seeds

__all__ = ["SeedResult", "run_seed", "run_seeds"]
