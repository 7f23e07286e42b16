"""Entry point of the `ringlock` command."""

from __future__ import annotations

import click

from ringlock.cli.demo import demo
from ringlock.cli.sim import sim


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ringlock")
def cli() -> None:
    """ringlock: a sharded, replicated key-value store and lock service."""


cli.add_command(sim)
cli.add_command(demo)


def main() -> None:
    cli()
