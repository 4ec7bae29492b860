"""TLS from configuration: server certificates, and client certificates when asked for."""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agentmesh.config import TlsSettings
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import node_pb2, node_pb2_grpc
from tests.node.conftest import StartNode


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    directory: Path,
    stem: str,
    subject: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = _issue(directory, "ca", "agentmesh test CA", None)
    _issue(directory, "server", "node", ca)
    _issue(directory, "client", "scheduler", ca)
    return directory


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
