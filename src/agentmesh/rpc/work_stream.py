"""The handshake of a Work stream (AgentNode.Work): a node that takes a stream says so in
its headers, at once, with ACCEPTED; a refusal is headers and status together (gRPC's
trailers-only answer), without it. A client writes only once it has the mark, so no write
races a refusal: grpcio reports such a write's call as INTERNAL (grpc/grpc#36066), which
hid the refusal's status. Headers alone did not tell the two apart: a refusal's empty
headers arrive a moment before its status does."""

from __future__ import annotations

from collections.abc import Iterable

ACCEPTED = ("agentmesh-work", "accepted")


def accepted(headers: Iterable[tuple[str, str | bytes]] | None) -> bool:
    """Whether a Work stream's headers say the node took it."""
    return headers is not None and any(tuple(item) == ACCEPTED for item in headers)
