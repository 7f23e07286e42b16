"""HOST:PORT strings, parsed in one place for the server, the client and the CLI."""

from __future__ import annotations

from ringlock.errors import ConfigError


def parse_address(text: str) -> tuple[str, int]:
    if not isinstance(text, str):
        raise ConfigError(f"address must be a HOST:PORT string, got {text!r:.40}")
    host, sep, port = text.rpartition(":")
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if (not sep or not host or not (port.isascii() and port.isdigit())
            or not 0 < int(port) < 65536):
        raise ConfigError(f"address must be HOST:PORT, got {text!r}")
    return host, int(port)
