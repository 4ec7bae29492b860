"""TLS from configuration: server certificates, and client certificates when asked for."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from agentmesh.config import TlsSettings
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import node_pb2, node_pb2_grpc
from tests.node.conftest import StartNode
from tests.support.pki import make_pki


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "pki", "server", "client")


async def test_node_serves_tls_and_verifies_client_certificates(
    start_node: StartNode, pki: Path, tmp_path: Path
) -> None:
    config = tmp_path / "tls.json"
    tls = {
        "cert_file": str(pki / "server.crt"),
        "key_file": str(pki / "server.key"),
        "client_ca_file": str(pki / "ca.crt"),
    }
    config.write_text(json.dumps({"tls": tls}))
    agent, _ = await start_node(env={"AGENTMESH_CONFIG": str(config)})
    with_cert = TlsSettings(
        ca_file=pki / "ca.crt", cert_file=pki / "client.crt", key_file=pki / "client.key"
    )
    async with open_channel(agent.address, token=None, tls=with_cert) as channel:
        card = await node_pb2_grpc.AgentNodeStub(channel).GetCapabilities(
            node_pb2.GetCapabilitiesRequest()
        )
    assert card.agent_id == agent.card().agent_id

    without_cert = TlsSettings(ca_file=pki / "ca.crt")
    async with open_channel(agent.address, token=None, tls=without_cert) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await node_pb2_grpc.AgentNodeStub(channel).GetCapabilities(
                node_pb2.GetCapabilitiesRequest(), timeout=5
            )
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

    async with grpc.aio.insecure_channel(agent.address) as plain:
        with pytest.raises(grpc.aio.AioRpcError):
            await node_pb2_grpc.AgentNodeStub(plain).GetCapabilities(
                node_pb2.GetCapabilitiesRequest(), timeout=5
            )
