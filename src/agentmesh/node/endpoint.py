"""The endpoint a node advertises: the address the scheduler dials to reach it.

`advertise` (HOST:PORT) is used as given; port 0 there, as in `listen`, means the port the
node's server was given. Without `advertise`, the listen address is advertised, except that
a wildcard host (0.0.0.0, ::) is nobody's address: from another host, dialling it reaches
that host itself. The node then advertises its own address on the route to the scheduler,
or, with no scheduler configured, its first address that is not loopback.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from agentmesh.node.card import ip_addresses
from agentmesh.rpc.server import split_host_port

log = logging.getLogger(__name__)


def is_wildcard(host: str) -> bool:
    """True for the "every interface" addresses 0.0.0.0 and :: (and an empty host)."""
    if not host:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def advertised_endpoint(
    listen: str, advertise: str | None, scheduler: str | None, port: int
) -> str:
    """HOST:PORT for the node's card; `port` is the port its server listens on.

    May resolve the scheduler's host name: call it off the event loop.
    """
    if advertise is not None:
        host, advertised_port = split_host_port(advertise)
        return join_host_port(host, advertised_port or port)
    host, _ = split_host_port(listen)
    if is_wildcard(host):
        host = route_source(scheduler) or first_routable_address() or socket.gethostname()
        log.info(
            "listening on %s; advertising %s (set node.advertise to choose another)",
            listen,
            host,
        )
    return join_host_port(host, port)


def route_source(scheduler: str | None) -> str | None:
    """This host's address on the route to the scheduler; None when there is none.

    Connecting a UDP socket picks the route and the source address without sending a packet.
    """
    if scheduler is None:
        return None
    host, port = split_host_port(scheduler)
    try:
        candidates = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, kind, proto, _, address in candidates:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.connect(address)
                source: str = probe.getsockname()[0]
        except OSError:
            continue
        return source.split("%", 1)[0]
    return None


def first_routable_address() -> str | None:
    """The first address of this host that is neither loopback nor link-local."""
    for address in ip_addresses():
        parsed = ipaddress.ip_address(address)
        if not (parsed.is_loopback or parsed.is_link_local or parsed.is_unspecified):
            return address
    return None
