"""The event loop ringlock's processes run (ringlock.eventloop): uvloop unless told
otherwise, the standard loop on request, and a clear error for a setting it cannot obey."""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from ringlock import eventloop
from ringlock.cli.main import cli
from ringlock.client import Client
from ringlock.errors import ConfigError
from ringlock.eventloop import EVENT_LOOP_ENV


async def running_loop() -> str:
    return eventloop.loop_name(asyncio.get_running_loop())


def test_unset_or_empty_means_uvloop_where_it_imports() -> None:
    assert eventloop.chosen({}) == "uvloop"
    assert eventloop.chosen({EVENT_LOOP_ENV: ""}) == "uvloop"
    assert eventloop.chosen({EVENT_LOOP_ENV: " uvloop "}) == "uvloop"
    assert eventloop.chosen({EVENT_LOOP_ENV: "asyncio"}) == "asyncio"


def test_without_uvloop_unset_falls_back_and_asking_for_it_is_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop, "_uvloop_importable", lambda: False)
    assert eventloop.chosen({}) == "asyncio"
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        eventloop.chosen({EVENT_LOOP_ENV: "uvloop"})


def test_an_unknown_loop_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=f"{EVENT_LOOP_ENV}='trio': expected one of"):
        eventloop.chosen({EVENT_LOOP_ENV: "trio"})
    main = running_loop()
    with pytest.raises(ConfigError, match="event loop 'trio': expected one of"):
        eventloop.run(main, "trio")
    assert main.cr_frame is None


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_run_runs_the_coroutine_on_the_loop_asked_for(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert eventloop.run(running_loop(), name) == name
    monkeypatch.setenv(EVENT_LOOP_ENV, name)
    assert eventloop.run(running_loop()) == name
    loop = eventloop.new_event_loop()
    try:
        assert eventloop.loop_name(loop) == name
    finally:
        loop.close()


def test_run_with_a_bad_setting_raises_and_leaves_no_coroutine_unawaited(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "nope")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        main = running_loop()
        with pytest.raises(ConfigError):
            eventloop.run(main)
        assert main.cr_frame is None  # closed, not left to be collected with a warning


def test_the_sync_client_runs_its_private_loop_as_chosen(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("asyncio", "uvloop"):
        monkeypatch.setenv(EVENT_LOOP_ENV, name)
        client = Client(["127.0.0.1:1"], timeout=0.1)
        try:
            assert client._run_sync(running_loop()) == name
        finally:
            client.close()


def test_serve_refuses_a_bad_loop_setting_before_starting(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["serve", "--id", "1", "--listen", "127.0.0.1:1", "--data", str(tmp_path)],
        env={EVENT_LOOP_ENV: "nope"})
    assert result.exit_code == 2, result.output
    assert f"{EVENT_LOOP_ENV}='nope'" in result.output
    assert not os.listdir(tmp_path)  # nothing written


@pytest.mark.skipif(os.environ.get("CI") != "true" or sys.platform == "win32",
                    reason="CI must run what users get; elsewhere uvloop may be missing")
def test_ci_has_uvloop() -> None:
    """Under CI the nodes must run uvloop, the loop users get: if it failed to install,
    every other test would quietly run the standard loop only."""
    assert eventloop.chosen() == "uvloop"
