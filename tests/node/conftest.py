"""Fixtures for AgentNode tests: real in-process nodes on real loopback ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.config import NodeSettings, Settings, load_settings
from agentmesh.node.service import AgentNode
from agentmesh.v1 import node_pb2_grpc

GEMINI_CLI = os.environ.get(
    "AGENTMESH_GEMINI_CLI",
    str(Path(__file__).resolve().parents[2] / ".cache/gemini-cli/node_modules/.bin/gemini"),
)

StartNode = Callable[..., Coroutine[Any, Any, tuple[AgentNode, node_pb2_grpc.AgentNodeStub]]]


def node_settings(tmp_path: Path, env: dict[str, str] | None = None) -> Settings:
    # The `emulator` fixture names the Gemini API in the environment: the proxy's upstream.
    upstream = {"GOOGLE_GEMINI_BASE_URL": os.environ.get("GOOGLE_GEMINI_BASE_URL", "")}
    return load_settings(
        {
            "AGENTMESH_DATA_DIR": str(tmp_path / "data"),
            "GEMINI_CLI_COMMAND": GEMINI_CLI,
            **upstream,
            **(env or {}),
        },
        cwd=tmp_path,
    )


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[StartNode]:
    """Start nodes in this process; each gets a client stub. All stop when the test ends."""
    started: list[tuple[AgentNode, grpc.aio.Channel]] = []

    async def start(
        *, env: dict[str, str] | None = None, token: str | None = None, **node: Any
    ) -> tuple[AgentNode, node_pb2_grpc.AgentNodeStub]:
        settings = node_settings(tmp_path, env)
        options = NodeSettings.model_validate(
            {
                "listen": "127.0.0.1:0",
                "name": f"node{len(started)}",
                "workdir": str(tmp_path),
                # Tests run superuser tasks; the ceiling's own tests set it lower.
                "max_permission_mode": "superuser",
                **node,
            }
        )
        agent = await AgentNode.start(settings, options)
        metadata = [("authorization", f"Bearer {token}")] if token else []
        channel = grpc.aio.insecure_channel(agent.address)
        started.append((agent, channel))
        stub = node_pb2_grpc.AgentNodeStub(channel)
        if metadata:
            stub = _AuthorizedStub(stub, metadata)  # type: ignore[assignment]
        return agent, stub

    yield start
    for agent, channel in started:
        await channel.close()
        await agent.shutdown(grace_seconds=5)


class _AuthorizedStub:
    """A stub that adds the bearer token to every call."""

    def __init__(self, stub: node_pb2_grpc.AgentNodeStub, metadata: list[tuple[str, str]]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        return lambda request, **kwargs: method(request, metadata=self._metadata, **kwargs)
