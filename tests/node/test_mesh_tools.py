"""The node's MCP server for its agents' mesh tools, on its own: it answers only a live run's
token, lists its tools to one, and leaves the process's signal handlers alone."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from agentmesh.config import TlsSettings
from agentmesh.node.mesh_tools import MeshTools

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}
LIST_TOOLS = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}


@pytest.fixture
async def tools() -> AsyncIterator[MeshTools]:
    # Nothing here calls the scheduler: its channel connects lazily, to nowhere.
    running = await MeshTools.start("127.0.0.1:9", TlsSettings())
    try:
        yield running
    finally:
        await running.stop()


async def post(tools: MeshTools, body: dict[str, Any], token: str | None) -> tuple[int, Any]:
    headers = {"Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(tools.url, json=body, headers=headers) as reply,
    ):
        text = await reply.text()
        return reply.status, json.loads(text) if text else None


async def test_only_a_live_runs_token_is_answered(tools: MeshTools) -> None:
    grant = tools.grant("t-0123", "amt_credential", lambda: 0)
    for token in (None, "guess", grant.token + "x"):
        status, _ = await post(tools, INITIALIZE, token)
        assert status == 403

    status, reply = await post(tools, INITIALIZE, grant.token)
    assert status == 200
    assert reply["result"]["serverInfo"]["name"] == "mesh"
    status, reply = await post(tools, LIST_TOOLS, grant.token)
    assert status == 200
    names = {tool["name"] for tool in reply["result"]["tools"]}
    assert names == {
        "list_agents",
        "delegate",
        "delegate_many",
        "task_status",
        "search_knowledge",
        "remember",
    }

    tools.revoke(grant)
    status, _ = await post(tools, LIST_TOOLS, grant.token)
    assert status == 403


async def test_the_cli_settings_carry_the_runs_token_not_its_credential(
    tools: MeshTools,
) -> None:
    grant = tools.grant("t-0123", "amt_the-schedulers-credential", lambda: 0)
    settings = json.dumps(tools.cli_settings(grant, timeout_seconds=60))
    assert grant.token in settings
    assert "amt_" not in settings
    assert tools.url in settings


async def test_serving_leaves_the_signal_handlers_alone() -> None:
    def handler(signum: int, frame: object) -> None:
        raise AssertionError("not called")

    before = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        tools = await MeshTools.start("127.0.0.1:9", TlsSettings())
        try:
            assert signal.getsignal(signal.SIGTERM) is handler
            assert signal.getsignal(signal.SIGINT) is handler
        finally:
            await tools.stop()
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        for sig, previous in before.items():
            signal.signal(sig, previous)
