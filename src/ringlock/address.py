"""HOST:PORT strings, parsed in one place for the server, the client and the CLI."""

from __future__ import annotations

from ringlock.errors import ConfigError


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"address must be HOST:PORT, got {text!r}")
    return host, int(port)
