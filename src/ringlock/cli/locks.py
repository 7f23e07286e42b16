"""`ringlock lock NAME -- COMMAND` (like flock(1), for a cluster) and `ringlock locks`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import click

from ringlock.cli.kv import _client, _fail, cluster_option, timeout_option
from ringlock.errors import RequestError

LOCK_TIMEOUT_EXIT_CODE = 1
"""As `flock -w`: the lock was not acquired in time."""
LOCK_LOST_EXIT_CODE = 75
"""EX_TEMPFAIL: the lock was lost while the command ran; the command was stopped."""
KILL_AFTER_S = 10.0
"""A command still running this long after the SIGTERM of a lost lock gets SIGKILL."""


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--ttl", type=click.FloatRange(0.5, 86_400), default=10.0, show_default=True,
              help="Lease TTL in seconds: how long a crashed holder blocks the others.")
@click.option("-w", "--wait", "wait", type=click.FloatRange(0, 86_400), default=None,
              help="Give up (exit 1) after this many seconds in the queue; default: wait.")
@click.option("--keep-going", is_flag=True,
              help="If the lock is lost, let COMMAND run on (default: SIGTERM it, exit 75).")
@cluster_option
@timeout_option
def lock(name: str, command: tuple[str, ...], ttl: float, wait: float | None,
         keep_going: bool, cluster: str | None, timeout: float) -> None:
    """Run COMMAND while holding lock NAME (FIFO), like flock(1).

    COMMAND gets RINGLOCK_LOCK_NAME and RINGLOCK_FENCE_TOKEN: pass the token on with
    writes that must be refused once a newer holder exists. Example:

        ringlock lock backups/db -- ./backup.sh
    """
    with _client(cluster, timeout) as client:
        lost = threading.Event()
        held = client.lock(name, ttl=ttl, on_lost=lambda _: lost.set())
        try:
            if not held.acquire(timeout=-1 if wait is None else wait):
                click.echo(f"lock {name!r}: not acquired within {wait:g} s", err=True)
                sys.exit(LOCK_TIMEOUT_EXIT_CODE)
        except RequestError as error:
            _fail(error)
        env = {**os.environ, "RINGLOCK_LOCK_NAME": name,
               "RINGLOCK_FENCE_TOKEN": str(held.token)}
        child = subprocess.Popen(list(command), env=env)
        stopped_for_loss = False
        stopped_at = 0.0
        while child.poll() is None:
            if lost.wait(0.1) and not keep_going and not stopped_for_loss:
                click.echo(f"lock {name!r} lost ({held.lost_reason}): stopping the command "
                           f"(pid {child.pid})", err=True)
                child.send_signal(signal.SIGTERM)
                stopped_for_loss, stopped_at = True, time.monotonic()
            elif stopped_for_loss and time.monotonic() - stopped_at > KILL_AFTER_S:
                click.echo(f"command (pid {child.pid}) ignored SIGTERM for {KILL_AFTER_S:g} s:"
                           " SIGKILL", err=True)
                child.kill()
                stopped_at = float("inf")
        code = child.returncode
        try:
            held.release()
        except RequestError as error:
            click.echo(f"lock {name!r}: release failed: {error}", err=True)
        if stopped_for_loss:
            sys.exit(LOCK_LOST_EXIT_CODE)
        sys.exit(code)


@click.command(name="locks")
@click.option("--json", "as_json", is_flag=True, help="One JSON list for scripts.")
@cluster_option
@timeout_option
def locks_command(as_json: bool, cluster: str | None, timeout: float) -> None:
    """Every held lock: holder, fencing token, waiters, the holder's lease TTL left."""
    with _client(cluster, timeout) as client:
        try:
            found = client.locks()
        except RequestError as error:
            _fail(error)
    rows = [{"name": s.name.decode(errors="replace"), "shard": s.shard, "holder": s.holder,
             "lease": s.lease, "token": s.token, "waiters": [w for w, _ in s.waiters],
             "ttl_remaining_s": s.ttl_remaining} for s in found]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("(no lock is held)")
        return
    click.echo(f"{'name':<28}{'shard':>6}{'token':>10}{'waiters':>9}{'ttl left':>10}  holder")
    for row in rows:
        left = row["ttl_remaining_s"]
        ttl = f"{left:.1f} s" if left is not None else "-"
        click.echo(f"{row['name']:<28}{row['shard']:>6}{row['token']:>10}"
                   f"{len(row['waiters']):>9}{ttl:>10}  waiter {row['holder']} "
                   f"(lease {row['lease']})")
