"""`ringlock sim`: run seeds of the deterministic cluster simulator."""

from __future__ import annotations

import sys
import time

import click

from ringlock.sim import SeedResult, run_seeds


@click.command()
@click.option("--seeds", "count", type=click.IntRange(1, 10_000_000), default=100,
              show_default=True, help="How many seeds to run.")
@click.option("--start-seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="First seed; seeds run in order from it.")
@click.option("--nodes", type=click.Choice(["3", "5"]), default="3", show_default=True,
              help="Voters in the simulated cluster.")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes to run seeds in; the output does not depend on it.")
@click.option("--verbose", "-v", is_flag=True, help="Print one line per seed.")
@click.option("--placement", is_flag=True,
              help="Simulate sharded clusters that add, drain and kill nodes and move "
                   "replicas (the meta group and the rebalancer) instead of one group.")
def sim(count: int, start_seed: int, nodes: str, jobs: int, verbose: bool,
        placement: bool) -> None:
    """Simulate whole clusters from seeds and check every safety property.

    Stops at the first violation, prints it with the command that replays it, and
    exits 1. The same seed gives the same run, byte for byte.
    """
    if placement:
        from ringlock.sim.placement import main as placement_main

        argv = ["--seeds", str(count), "--start-seed", str(start_seed)]
        sys.exit(placement_main(argv + (["-v"] if verbose else [])))
    started = time.monotonic()
    passed = 0
    operations = 0
    for result in run_seeds(start_seed, count, int(nodes), jobs=jobs):
        if not result.ok:
            _report_failure(result)
            sys.exit(1)
        passed += 1
        operations += result.operations
        if verbose:
            click.echo(f"seed {result.seed}: ok, {result.operations} operations, "
                       f"{result.events} events")
    elapsed = time.monotonic() - started
    click.echo(f"sim: {elapsed:.1f} s wall, {operations / max(elapsed, 1e-9):,.0f} "
               "client operations per second", err=True)
    click.echo(f"sim: {passed} seeds passed, {operations} client operations checked")


def _report_failure(result: SeedResult) -> None:
    echo = click.echo
    echo(f"sim: seed {result.seed} FAILED: {result.invariant}")
    for line in result.detail.splitlines():
        echo(f"  {line}")
    if result.faults:
        echo("timeline (last faults and leaders):")
        for line in result.faults:
            echo(f"  {line}")
    if result.trace:
        echo("last events:")
        for line in result.trace:
            echo(f"  {line}")
    echo(f"replay: {result.replay_command()}")
