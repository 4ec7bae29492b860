"""`agentmesh nodes` through the real entry point, on the scheduler's database: a credential
enrolled, printed once, bound by its node's first heartbeat, listed, and revoked (after
which its heartbeats are refused); mistakes are one line."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from agentmesh.config import TlsSettings
from agentmesh.node.card import build_card
from agentmesh.node.registration import Registration
from tests.cli.conftest import Cli, cli_environment
from tests.scheduler.conftest import Mesh

FIELDS = {"id", "name", "agent_id", "state", "created_at", "last_used_at", "revoked_at"}


async def _beat(mesh: Mesh, token: str, agent_id: str) -> None:
    card = build_card(
        agent_id=agent_id,
        name="desk",
        executors=("echo",),
        models=(),
        configured_capabilities=(),
        max_concurrency=1,
        permission_mode="weak",
        endpoint="127.0.0.1:9",
        gemini_version=None,
    )
    registration = Registration(
        mesh.schedulers[0].address,
        lambda: card,
        lambda: (),
        interval_seconds=1.0,
        token=token,
        tls=TlsSettings(),
    )
    try:
        await registration.beat()
    finally:
        await registration.close(final_beat=False)


async def test_enroll_list_and_revoke_a_node_credential(
    mesh_with_token: Mesh, tmp_path: Path
) -> None:
    mesh = mesh_with_token
    cli = Cli(
        tmp_path,
        cli_environment(DATABASE_URL=mesh.database_uri, AGENTMESH_DATA_DIR=str(tmp_path / "d")),
    )

    enrolled = await cli("nodes", "enroll", "--name", "desk")
    assert enrolled.returncode == 0, enrolled
    token = enrolled.stdout.strip()
    assert token.startswith("amn_")
    assert enrolled.stdout == token + "\n"
    assert "AGENTMESH_NODE_TOKEN" in enrolled.stderr
    assert token not in enrolled.stderr

    await _beat(mesh, token, "desk-agent-1")
    listed = await cli("nodes", "list", "--json")
    assert listed.returncode == 0, listed
    assert token not in listed.stdout + listed.stderr
    (desk,) = [c for c in json.loads(listed.stdout) if c["name"] == "desk"]
    assert set(desk) == FIELDS
    assert desk["agent_id"] == "desk-agent-1"
    assert desk["state"] == "live"
    assert desk["last_used_at"] is not None

    again = await cli("nodes", "enroll", "--name", "desk")
    again.assert_one_error_line("a live node credential is named desk already")

    revoked = await cli("nodes", "revoke", "desk")
    assert revoked.returncode == 0, revoked
    assert "revoked node credential" in revoked.stderr
    assert "desk-agent-1" in revoked.stderr
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _beat(mesh, token, "desk-agent-1")
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    table = await cli("nodes", "list")
    assert "revoked" in table.stdout
    assert "desk-agent-1" in table.stdout

    missing = await cli("nodes", "revoke", "desk")
    missing.assert_one_error_line("no live node credential has the id or name desk")
    bad = await cli("nodes", "enroll", "--name", "no spaces")
    bad.assert_one_error_line("name: 1-64 of letters")
    assert bad.returncode == 2
