"""Port checks for the devnet, so that a port in use is a clear message and not a stack trace."""

from __future__ import annotations

import socket

from thinkmesh.devnet.processes import DevnetError


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free_ports(ports: dict[str, int], host: str = "127.0.0.1") -> None:
    taken = {name: port for name, port in ports.items() if not port_is_free(port, host)}
    if taken:
        listing = ", ".join(f"{name} {host}:{port}" for name, port in taken.items())
        raise DevnetError(
            f"port(s) in use: {listing}. Stop what holds them (`thinkmesh devnet down`, or "
            f"`ss -ltnp | grep PORT`), or choose others with --base-port."
        )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
