"""The endpoint a node advertises is one the scheduler can dial (agentmesh.node.endpoint).

A node that listens on every interface (0.0.0.0) used to advertise 0.0.0.0, which the
scheduler dialled on its own host: every task placed there was lost (seen in the network
namespace mesh, tests/test_network_mesh.py). And an advertised port was replaced by the
listen port, so a node behind a port forward advertised the wrong port.
"""

from __future__ import annotations

import grpc
import pytest

from agentmesh.node.endpoint import advertised_endpoint, is_wildcard
from agentmesh.v1 import node_pb2, node_pb2_grpc
from tests.node.conftest import StartNode


@pytest.mark.parametrize(
    ("listen", "advertise", "expected"),
    [
        ("127.0.0.1:0", None, "127.0.0.1:4321"),
        ("10.1.2.3:50051", None, "10.1.2.3:4321"),
        ("[::1]:0", None, "[::1]:4321"),
        # Given: as it is; port 0 there means the server's port.
        ("0.0.0.0:50051", "node-1:6000", "node-1:6000"),
        ("127.0.0.1:0", "10.1.2.3:0", "10.1.2.3:4321"),
    ],
)
def test_the_listen_or_advertised_address_is_used_as_given(
    listen: str, advertise: str | None, expected: str
) -> None:
    assert advertised_endpoint(listen, advertise, None, 4321) == expected


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:50051"])
def test_a_wildcard_listen_address_advertises_the_address_on_the_route_to_the_scheduler(
    listen: str,
) -> None:
    assert advertised_endpoint(listen, None, "127.0.0.1:50050", 4321) == "127.0.0.1:4321"


def test_a_wildcard_listen_address_without_a_scheduler_advertises_a_real_address() -> None:
    host = advertised_endpoint("0.0.0.0:0", None, None, 4321).rpartition(":")[0]
    assert host
    assert not is_wildcard(host.strip("[]"))


async def test_the_card_carries_the_advertised_port(start_node: StartNode) -> None:
    agent, _ = await start_node(advertise="127.0.0.1:6553")
    # Dialled at the port it listens on (a port forward would lead 6553 there).
    async with grpc.aio.insecure_channel(f"127.0.0.1:{agent.server.port}") as channel:
        stub = node_pb2_grpc.AgentNodeStub(channel)
        card = await stub.GetCapabilities(node_pb2.GetCapabilitiesRequest(), timeout=10)
    assert card.endpoint == agent.address == "127.0.0.1:6553"
