"""The event loop ringlock's own processes run on: uvloop where it is installed.

A lock handoff is a chain of loopback round trips (client, leader, followers, leader,
next client), each a few socket reads and writes and callbacks. libuv does one such round
trip in about a third of the standard loop's time (29 us against 85 us ping-pong on the
reference machine), and that is what the contended-lock figure is made of
(docs/PERFORMANCE.md, issue 5). The standard loop stays one setting away:
`RINGLOCK_EVENT_LOOP=asyncio`, to debug with asyncio's tools or to compare.

Only processes ringlock starts use this: a node, the sync `Client`'s private thread, the
benchmark's load generators. An `AsyncClient` runs on whatever loop its caller runs.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ringlock.errors import ConfigError

T = TypeVar("T")

EVENT_LOOP_ENV = "RINGLOCK_EVENT_LOOP"
"""`uvloop`, `asyncio`, or unset/empty for uvloop when it can be imported."""

CHOICES = ("uvloop", "asyncio")


def chosen(environ: dict[str, str] | None = None) -> str:
    """The loop this process is to run, from the environment: "uvloop" or "asyncio".

    Unset or empty means uvloop if it imports (it is a dependency on every platform it
    supports) and asyncio if not. Asking for uvloop where it is missing, or for a loop
    that does not exist, is a ConfigError: a benchmark must not quietly measure the
    other loop."""
    value = (os.environ if environ is None else environ).get(EVENT_LOOP_ENV, "").strip()
    if value and value not in CHOICES:
        raise ConfigError(f"{EVENT_LOOP_ENV}={value!r}: expected one of {', '.join(CHOICES)}"
                          " (or unset for uvloop where installed)")
    if value == "asyncio":
        return "asyncio"
    if _uvloop_importable():
        return "uvloop"
    if value == "uvloop":
        raise ConfigError(f"{EVENT_LOOP_ENV}=uvloop but uvloop is not installed "
                          "(pip install uvloop, or unset it for the standard loop)")
    return "asyncio"


def _import_uvloop() -> Any:
    """uvloop by name: the Raft core's build type-checks everything the package imports
    (setup.py), in an environment that holds only the build's own dependencies."""
    return importlib.import_module("uvloop")


def _uvloop_importable() -> bool:
    try:
        _import_uvloop()
    except ImportError:
        return False
    return True


def loop_factory(name: str | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory for new loops of the chosen kind (`name`, else from the environment)."""
    name = name or chosen()
    if name not in CHOICES:
        raise ConfigError(f"event loop {name!r}: expected one of {', '.join(CHOICES)}")
    if name == "uvloop":
        try:
            uvloop = _import_uvloop()
        except ImportError as error:
            raise ConfigError(f"event loop uvloop: cannot import it ({error})") from error
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the kind the environment chooses (the sync `Client`'s thread)."""
    return loop_factory()()


def run(main: Coroutine[Any, Any, T], name: str | None = None) -> T:
    """`asyncio.run(main)` on the chosen loop (`name`, else from the environment)."""
    try:
        factory = loop_factory(name)
    except ConfigError:
        main.close()  # never started: closed, so that it is not reported as never awaited
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """"uvloop" or "asyncio": what a status report says this process runs."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
