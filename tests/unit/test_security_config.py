"""Security settings: a secret when any address is not loopback, TLS all or nothing,
a secret file that is readable, not empty and not too big; certificates that load."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from ringlock.certs import make_certs
from ringlock.cli.main import cli
from ringlock.errors import ConfigError
from ringlock.server.config import (
    build_config,
    is_loopback,
    load_toml,
    read_secret_file,
)
from ringlock.transport.auth import MAX_SECRET_BYTES
from ringlock.transport.tls import client_context, server_context


def base(**change: object) -> dict[str, object]:
    return {"node_id": 1, "listen": "127.0.0.1:7101", "data_dir": "/tmp/x",
            "peers": {1: "127.0.0.1:7101", 2: "127.0.0.2:7102"}, **change}


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("10.0.0.1", False), ("example.com", False)])
def test_loopback_is_127_8_and_ipv6_one_and_localhost(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("change", [
    {"listen": "0.0.0.0:7101"},
    {"peers": {1: "127.0.0.1:7101", 2: "10.0.0.2:7101"}},
    {"join": "db1.example.com:7101"},
])
def test_a_non_loopback_address_without_a_secret_is_refused(change: dict[str, object]
                                                            ) -> None:
    with pytest.raises(ConfigError, match="a cluster secret is required"):
        build_config(base(**change))
    assert build_config(base(**change, secret="s")).secret == "s"


def test_loopback_without_a_secret_is_allowed_and_the_secret_is_never_shown() -> None:
    assert build_config(base()).secret == ""
    assert "hunter2" not in repr(build_config(base(secret="hunter2")))
    with pytest.raises(ConfigError, match="secret must be str") as refused:
        build_config(base(secret=b"hunter2"))  # a secret of the wrong type: not echoed
    assert "hunter2" not in str(refused.value)


def test_tls_needs_all_three_files(tmp_path: Path) -> None:
    files = make_certs(tmp_path, nodes=1)
    cert, key = files.nodes[1]
    with pytest.raises(ConfigError, match="together; only tls_cert, tls_key"):
        build_config(base(tls_cert=str(cert), tls_key=str(key)))
    with pytest.raises(ConfigError, match="no such file"):
        build_config(base(tls_cert=str(cert), tls_key=str(key), tls_ca="/nonexistent"))
    assert build_config(base(tls_cert=str(cert), tls_key=str(key), tls_ca=str(files.ca))).tls


def test_secret_files_empty_too_big_or_unreadable_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("abc\n")
    assert read_secret_file(path) == "abc"
    path.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_secret_file(path)
    path.write_text("x" * (MAX_SECRET_BYTES + 1))
    with pytest.raises(ConfigError, match="MAX_SECRET_BYTES"):
        read_secret_file(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="UTF-8"):
        read_secret_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret_file(tmp_path / "missing")


def test_a_toml_file_names_a_secret_file_and_may_not_hold_the_secret(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-file\n")
    path = tmp_path / "node.toml"
    path.write_text('secret_file = "secret"\n')  # relative to the config file
    assert load_toml(path)["secret"] == "from-file"
    path.write_text('secret = "in-the-clear"\n')
    with pytest.raises(ConfigError, match="secret_file"):
        load_toml(path)


def test_serve_refuses_an_empty_secret_file_and_a_public_address_without_one(
        tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("")
    runner = CliRunner()
    common = ["serve", "--id", "1", "--data", str(tmp_path / "d")]
    result = runner.invoke(cli, [*common, "--listen", "127.0.0.1:7101",
                                 "--secret-file", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "is empty" in result.output
    result = runner.invoke(cli, [*common, "--listen", "0.0.0.0:7101"],
                           env={"RINGLOCK_SECRET": ""})
    assert result.exit_code == 2 and "a cluster secret is required" in result.output


def test_certs_are_private_and_load_into_tls_contexts(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["certs", str(tmp_path), "--nodes", "2"])
    assert result.exit_code == 0, result.output
    for name in ("ca-key.pem", "node-1-key.pem", "node-2-key.pem", "client-key.pem",
                 "secret"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert len(read_secret_file(tmp_path / "secret")) == 64
    node = server_context(str(tmp_path / "node-1.pem"), str(tmp_path / "node-1-key.pem"),
                          str(tmp_path / "ca.pem"))
    assert node.verify_mode == ssl.CERT_OPTIONAL
    client_context(str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"),
                   str(tmp_path / "client-key.pem"))
    again = CliRunner().invoke(cli, ["certs", str(tmp_path)])
    assert again.exit_code == 2 and "already holds a CA" in again.output


def test_certs_never_replace_a_secret_or_key_left_without_its_ca(tmp_path: Path) -> None:
    """A directory holding a cluster's secret (or a node key) but no ca.pem is not
    silently given a new one: the running cluster would refuse its restarted nodes."""
    (tmp_path / "secret").write_text("the-cluster-secret\n")
    result = CliRunner().invoke(cli, ["certs", str(tmp_path)])
    assert result.exit_code == 2 and "secret" in result.output
    assert (tmp_path / "secret").read_text() == "the-cluster-secret\n"
    assert not (tmp_path / "ca-key.pem").exists()
    forced = CliRunner().invoke(cli, ["certs", str(tmp_path), "--force"])
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "secret").read_text() != "the-cluster-secret\n"


def test_certs_do_not_follow_a_link_planted_at_a_temporary_name(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "tls", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.write_text("")
    (out / "ca-key.pem.tmp").symlink_to(elsewhere)
    assert CliRunner().invoke(cli, ["certs", str(out)]).exit_code == 0
    assert elsewhere.read_text() == ""  # the CA key was not written through the link
    assert stat.S_IMODE((out / "ca-key.pem").stat().st_mode) == 0o600


def test_plain_http_off_loopback_with_a_secret_is_warned_about() -> None:
    """The HTTP bearer is the cluster secret: plain HTTP off loopback shows it to the
    network, so the node says so at start (and only then)."""
    from ringlock.server.httpapi import secret_in_clear

    exposed = build_config(base(secret="s3cret", http_listen="0.0.0.0:8101"))
    warning = secret_in_clear(exposed)
    assert warning is not None and "0.0.0.0:8101" in warning and "s3cret" not in warning
    assert secret_in_clear(build_config(base(secret="s3cret",
                                             http_listen="127.0.0.1:8101"))) is None
    assert secret_in_clear(build_config(base(http_listen="127.0.0.1:8101"))) is None
    assert secret_in_clear(build_config(base(secret="s3cret"))) is None  # no HTTP API
