"""Sockets of a job that runs on one machine listen on the loopback interface only.

torch's ``TCPStore`` always listens on every interface (``::``), whatever host it is given; gloo listens on the
address the machine's hostname resolves to (its network address on most clusters). When every rank is on this
machine (the rendezvous address is a loopback address) neither needs the network:

- :func:`tcp_store` hosts a store on a socket bound to the loopback address and hands it to torch
  (``master_listen_fd``); clients connect as usual;
- :func:`use_loopback_gloo` points gloo at the loopback interface (``GLOO_SOCKET_IFNAME``), for every gloo group of
  the process and of the processes it starts (vLLM's included).

Multi-node jobs (a rendezvous address other nodes reach) keep torch's and gloo's own choices.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface only (``127.0.0.1``, ``::1``, ``localhost``)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    try:
        return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)
    except ValueError:
        return False


def loopback_interface() -> str:
    """The name of the interface that holds 127.0.0.1 (``lo`` on Linux)."""
    try:
        # lazy: the launcher uses this module without torch or psutil
        import psutil

        for name, addresses in psutil.net_if_addrs().items():
            if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
                return name
    except Exception:  # noqa: BLE001 - no psutil or no interface list: the Linux name
        pass
    return "lo"


def use_loopback_gloo() -> None:
    """Make gloo (this process's groups and those of the processes it starts) listen on the loopback interface."""
    os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()


def listening_socket(host: str, port: int = 0) -> socket.socket:
    """A TCP socket listening on ``host``'s loopback address at ``port`` (0: a free one)."""
    family, _, _, _, address = next(info for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                                    if info[0] in (socket.AF_INET, socket.AF_INET6))
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


def tcp_store(host: str, port: int, world_size: int | None, *, is_master: bool, timeout: datetime.timedelta,
              wait_for_workers: bool = True, multi_tenant: bool = False):
    """A ``torch.distributed.TCPStore``; hosted on a loopback-bound socket when this process hosts it
    (``is_master``) and ``host`` is a loopback address, exactly as torch would otherwise."""
    # lazy: the launcher uses this module without torch or psutil
    import torch.distributed as dist

    if not (is_master and is_loopback(host)):
        return dist.TCPStore(host, port, world_size, is_master, timeout, wait_for_workers=wait_for_workers,
                             multi_tenant=multi_tenant)
    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]
    # The store (its libuv server) owns the descriptor from here on.
    return dist.TCPStore(host, bound, world_size, True, timeout, wait_for_workers=wait_for_workers,
                         multi_tenant=multi_tenant, master_listen_fd=sock.detach(), use_libuv=True)
