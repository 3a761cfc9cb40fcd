"""Whether this process can listen on an address, asked before a server or exporter starts.

BentoML and Prometheus's exporter both stop with a page of traceback on a port another process
holds; asked first, the command can say so in a line and exit 2.
"""

from __future__ import annotations

import errno
import socket

from training.errors import ConfigError


def require_free_port(host: str, port: int, hint: str) -> None:
    """Refuse an address this process cannot listen on.

    Args:
        host: the address to listen on.
        port: the port.
        hint: how the user picks another address, e.g. "pass --port (or --host)".

    Raises:
        ConfigError: binding ``host:port`` failed (another process listens there, the host is no
            address of this machine); the message says which.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers' own sockets
        try:
            probe.bind((host, port))
        except OSError as exc:
            busy = "another process listens there (another Refit process, or any service)"
            why = busy if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ConfigError(
                f"Cannot listen on {host}:{port}: {why}. Expected a free port on an address of this "
                f"machine: {hint}, or stop what holds it."
            ) from exc
