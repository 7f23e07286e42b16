"""Entry point of the `ringlock` command."""

from __future__ import annotations

import click

from ringlock.cli.bench import bench
from ringlock.cli.certs import certs
from ringlock.cli.demo import demo
from ringlock.cli.dev import dev
from ringlock.cli.kv import delete, get, node, put, scan, status
from ringlock.cli.locks import lock, locks_command
from ringlock.cli.serve import serve
from ringlock.cli.sim import sim
from ringlock.cli.torture import torture


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ringlock")
def cli() -> None:
    """ringlock: a sharded, replicated key-value store and lock service."""


for command in (sim, demo, serve, dev, put, get, delete, scan, status, node, lock,
                locks_command, bench, torture, certs):
    cli.add_command(command)


def main() -> None:
    cli()
