"""Node settings from flags and TOML: every bad value refused with a message naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringlock.errors import ConfigError
from ringlock.server.config import build_config, load_toml, parse_peers


def base() -> dict[str, object]:
    return {"node_id": 1, "listen": "127.0.0.1:7101", "data_dir": "/tmp/x",
            "peers": {1: "127.0.0.1:7101", 2: "127.0.0.1:7102"}}


def test_a_toml_file_gives_the_same_config_as_flags(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('node_id = 1\nlisten = "127.0.0.1:7101"\ndata_dir = "/tmp/x"\n'
                    'shards = 16\n[peers]\n1 = "127.0.0.1:7101"\n2 = "127.0.0.1:7102"\n')
    assert build_config(load_toml(path)) == build_config({**base(), "shards": 16})


@pytest.mark.parametrize("change, message", [
    ({"node_id": 0}, "node_id"),
    ({"listen": "nohost"}, "HOST:PORT"),
    ({"shards": 0}, "shards"),
    ({"shards": "64"}, "shards"),
    ({"peers": {2: "127.0.0.1:7102"}}, "peers must include"),
    ({"max_value_bytes": 10 << 20}, "max_frame_bytes"),
    ({"election_ticks": 1}, "election_ticks"),
    ({"colour": "red"}, "bad node settings"),
])
def test_bad_settings_are_refused_by_name(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({**base(), **change})


def test_unknown_toml_keys_and_bad_toml_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("colour = 'red'\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_toml(path)
    path.write_text("node_id = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(path)


@pytest.mark.parametrize("text", ["1", "x=127.0.0.1:1", "0=127.0.0.1:1", "1=127.0.0.1"])
def test_bad_peer_lists_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_peers(text)
