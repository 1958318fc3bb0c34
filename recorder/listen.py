"""Where server commands listen: their default ports and the ``--listen`` syntax.
Standard library only and import-free, because the CLI reads it on every start."""

from __future__ import annotations

DEFAULT_PORTS = {"proxy": 8765, "simulate": 8766, "serve": 8767}
"""Where each server command listens unless told otherwise."""


def parse_listen(listen: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``HOST`` or ``:PORT``; raises ``ValueError``."""
    host, port = listen, str(default_port)
    if listen.startswith("["):
        host, _, rest = listen[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif listen.count(":") == 1:
        host, port = listen.split(":")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"bad --listen {listen!r}: expected HOST:PORT")
    return host or "127.0.0.1", int(port)
