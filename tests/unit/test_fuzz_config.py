"""Fuzzing the node's configuration: `build_config` on random settings, `load_toml` on
random files, and `ringlock serve` on random arguments. Only ConfigError (from the
library) or a click usage error (exit code 2 from the CLI) may come out, with a message;
never a traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from ringlock.errors import ConfigError
from ringlock.server.config import NodeConfig, build_config, load_toml, parse_peers
from tests.fuzzing import Counter, fuzz_settings, record, scalars

FIELDS = list(NodeConfig.__dataclass_fields__)
addresses = st.one_of(st.sampled_from(["127.0.0.1:7101", "h:0", "h:65536", ":1", "h:",
                                       "h:\u00b2", "h:\u0663", "127.0.0.1:7101:1", ""]),
                      st.text(max_size=12))
values = st.one_of(scalars, addresses, st.dictionaries(st.integers(-3, 3), addresses,
                                                       max_size=3),
                   st.lists(scalars, max_size=2))


def test_build_config_random_settings_only_config_errors() -> None:
    counter = Counter()
    base = {"node_id": 1, "listen": "127.0.0.1:7101", "data_dir": "/tmp/x",
            "peers": {1: "127.0.0.1:7101"}}

    @fuzz_settings(400)
    @given(st.dictionaries(st.sampled_from([*FIELDS, "bogus"]), values, max_size=4))
    def run(changes: dict[str, Any]) -> None:
        counter.inputs += 1
        try:
            config = build_config({**base, **changes})
        except ConfigError as error:
            assert str(error)
            return
        assert config.validate() is config

    run()
    record("build_config random settings", counter.inputs)
    assert counter.inputs >= 300


def test_parse_peers_random_text_only_config_errors() -> None:
    counter = Counter()

    @fuzz_settings(300)
    @given(st.one_of(st.text(max_size=30),
                     st.lists(st.tuples(st.one_of(st.text(max_size=3), st.sampled_from(
                         ["1", "0", "-1", "\u00b2", "\u0663", " 1", "1.0"])), addresses),
                              max_size=3).map(
                         lambda items: ",".join(f"{n}={a}" for n, a in items))))
    def run(text: str) -> None:
        counter.inputs += 1
        try:
            peers = parse_peers(text)
        except ConfigError:
            return
        assert all(type(node) is int and node > 0 for node in peers)

    run()
    record("parse_peers random text", counter.inputs)
    assert counter.inputs >= 250


toml_lines = st.one_of(
    st.tuples(st.sampled_from([*FIELDS, "bogus"]),
              st.sampled_from(["1", "0", "-1", "1.5", "nan", "inf", "true", '"x"',
                               '"127.0.0.1:7101"', "[1]", "{a = 1}", "99999999999999999999",
                               '"h:\u00b2"', "{1 = \"127.0.0.1:7101\"}", "{x = 1}"]))
    .map(lambda t: f"{t[0]} = {t[1]}"),
    st.text(max_size=20),
)


def test_load_toml_random_files_only_config_errors() -> None:
    counter = Counter()

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "node.toml"

        @fuzz_settings(300)
        @given(st.one_of(st.lists(toml_lines, max_size=5).map(
            lambda lines: "\n".join(lines).encode()), st.binary(max_size=40)))
        def run(content: bytes) -> None:
            counter.inputs += 1
            path.write_bytes(content)
            try:
                settings = load_toml(path, {"data_dir": "/tmp/x"})
                build_config({"node_id": 1, "listen": "127.0.0.1:7101",
                              "peers": {1: "127.0.0.1:7101"}, **settings})
            except ConfigError as error:
                assert str(error)

        run()
    record("load_toml random files", counter.inputs)
    assert counter.inputs >= 250


def test_serve_random_arguments_give_usage_errors_not_tracebacks() -> None:
    from ringlock.cli.serve import serve

    counter = Counter()
    runner = CliRunner()
    options = ["--id", "--listen", "--peers", "--data", "--shards", "--cluster", "--tick-ms",
               "--election-ticks", "--compact-every", "--join", "--replicas", "--dead-after",
               "--max-moves", "--log-level"]
    words = st.one_of(addresses, st.sampled_from(["1", "0", "-5", "1.5", "1=127.0.0.1:7101",
                                                  "\u00b2=127.0.0.1:1", "x", "nan"]),
                      st.text(max_size=8))

    @fuzz_settings(150)
    @given(st.lists(st.tuples(st.sampled_from(options), words), max_size=5),
           st.booleans())
    def run(pairs: list[tuple[str, str]], invalid: bool) -> None:
        counter.inputs += 1
        args = [part for pair in pairs for part in pair]
        # Always leave the node unable to start, so a valid mix never runs a server:
        # a bad tick (click refuses it) or, failing that, a missing --data.
        args = [a for a in args if a != "--data"]
        args += ["--tick-ms", "0"] if invalid else []
        result = runner.invoke(serve, args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            args, repr(result.exception))

    run()
    record("ringlock serve random arguments", counter.inputs)
    assert counter.inputs >= 100


def test_regression_config_junk_is_a_config_error() -> None:
    base = {"node_id": 1, "listen": "127.0.0.1:7101", "data_dir": "/tmp/x"}
    for settings in ({**base, "peers": None}, {**base, "peers": {1: 5}},
                     {**base, "peers": {"1": "127.0.0.1:7101"}},
                     {**base, "peers": {1: "127.0.0.1:7101"}, "listen": "h:\u00b2"}):
        # "\u00b2" (superscript two) passed str.isdigit() and then made int() raise
        try:
            build_config(settings)
        except ConfigError:
            continue
        raise AssertionError(f"{settings} was accepted")
    try:
        parse_peers("\u00b2=127.0.0.1:1")
    except ConfigError:
        pass
    else:
        raise AssertionError("a non-ASCII digit node id was accepted")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "node.toml"
        path.write_bytes(b"\x80")  # not UTF-8: was a UnicodeDecodeError
        try:
            load_toml(path)
        except ConfigError as error:
            assert "not valid TOML" in str(error)
        else:
            raise AssertionError("a non-UTF-8 file was accepted")
