"""`ringlock demo` (what `make run` shows until a node process exists): one
simulated 3-node cluster told as a story, then a batch of checked seeds."""

from __future__ import annotations

import dataclasses

import click

from ringlock.checker import check_kv_history
from ringlock.sim import run_seeds
from ringlock.sim.cluster import Simulation
from ringlock.sim.params import SimParams

DEMO_SEED = 7


@click.command()
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=DEMO_SEED, show_default=True)
@click.option("--seeds", "count", type=click.IntRange(0, 100_000), default=50, show_default=True,
              help="Random seeds to check after the story.")
def demo(seed: int, count: int) -> None:
    """Show a simulated cluster surviving crashes and partitions."""
    params = dataclasses.replace(
        SimParams.from_seed(seed, 3, faults=("crash", "partition", "pause", "transfer")),
        fault_interval_us=700_000,  # calm enough to follow, one fault at a time
        leader_victim_rate=0.7,
    )
    simulation = Simulation(params)
    simulation.run()
    click.echo(f"ringlock demo: a simulated 3-node Raft cluster, seed {seed}, "
               f"{params.clients} clients over {params.keys} keys")
    click.echo(f"  network: {params.net_delay_min_us / 1000:.1f}-"
               f"{params.net_delay_max_us / 1000:.1f} ms delay, {params.drop_rate:.0%} dropped, "
               f"{params.duplicate_rate:.0%} duplicated; fsync "
               f"{params.fsync_min_us / 1000:.1f}-{params.fsync_max_us / 1000:.1f} ms")
    click.echo("")
    for at, text in simulation.timeline[:40]:
        click.echo(f"  {at / 1_000_000:7.3f} s  {text}")
    if len(simulation.timeline) > 40:
        click.echo(f"  ... {len(simulation.timeline) - 40} more moments")
    history = simulation.history
    acknowledged = sum(1 for op in history if op.ret is not None)
    verdict = check_kv_history(history)
    click.echo("")
    click.echo(f"  {len(history)} client operations, {acknowledged} acknowledged, "
               f"{len(history) - acknowledged} with an unknown outcome (timed out)")
    click.echo(f"  linearizability check: {verdict.verdict}")
    click.echo("  election safety, log matching, leader completeness and state machine safety "
               "held after every one of "
               f"{simulation.events} events")
    if count:
        click.echo("")
        click.echo(f"checking {count} more random seeds (ringlock sim --seeds {count}) ...")
        operations = 0
        for result in run_seeds(0, count, 3):
            if not result.ok:
                raise click.ClickException(
                    f"seed {result.seed}: {result.invariant}: {result.detail}\n"
                    f"replay: {result.replay_command()}"
                )
            operations += result.operations
        click.echo(f"sim: {count} seeds passed, {operations} client operations checked")
