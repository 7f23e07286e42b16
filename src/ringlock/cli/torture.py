"""`ringlock torture`: start a cluster, load it, break it on a seeded schedule, check it."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import click

from ringlock.torture.faults import FAULT_KINDS, NETNS_ONLY_KINDS


@click.command()
@click.option("--nodes", type=click.Choice(["3", "5"]), default="3", show_default=True)
@click.option("--seconds", type=click.FloatRange(5, 86_400), default=60.0, show_default=True,
              help="How long the clients run while faults are injected.")
@click.option("--faults", default=",".join(FAULT_KINDS), show_default=True,
              help=f"Comma list of fault kinds: {', '.join(FAULT_KINDS)} "
                   f"({', '.join(NETNS_ONLY_KINDS)}: netns only, skipped otherwise).")
@click.option("--net", type=click.Choice(["auto", "netns", "transport"]), default="auto",
              show_default=True,
              help="netns: a network namespace per node, cuts by iptables, slow links by tc "
                   "(root); transport: loopback and the nodes' fault layer; auto: netns "
                   "when possible.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("torture-out"), show_default=True,
              help="Folder for history.jsonl, verdict.json and the cluster (node logs).")
def torture(nodes: str, seconds: float, faults: str, seed: int, out: Path, net: str) -> None:
    """Run real nodes under faults, then check linearizability, locks, data, replicas.

    The last line is `torture: PASS ...` or `torture: FAIL <reason>`; the exit status
    is 0 on PASS, 1 on FAIL.
    """
    from ringlock.torture.runner import Options, run

    kinds = [k.strip() for k in faults.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown or not kinds:
        raise click.BadParameter(f"unknown fault kinds {unknown}; known: {FAULT_KINDS}",
                                 param_hint="--faults")
    signal.signal(signal.SIGTERM, _interrupt)  # teardown runs on SIGTERM as on Ctrl-C
    outcome = run(Options(int(nodes), seconds, kinds, seed, out, net),
                  log=lambda text: click.echo(text, err=True))
    click.echo(outcome.line)
    sys.exit(0 if outcome.passed else 1)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
