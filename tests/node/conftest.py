"""Fixtures for AgentNode tests: real in-process nodes on real loopback ports."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
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


NodeProcess = tuple["subprocess.Popen[str]", str]  # the process and the address it serves
StartNodeProcess = Callable[[dict[str, Any]], NodeProcess]


@pytest.fixture
def node_processes(tmp_path: Path) -> Iterator[StartNodeProcess]:
    """Starts `agentmesh node` processes in `tmp_path` with the given `node` settings (all
    on one data directory, as one machine's restarts are); each killed at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH")}
    env.update(AGENTMESH_DATA_DIR=str(tmp_path / "data"), GEMINI_CLI_COMMAND="/nonexistent")
    started: list[subprocess.Popen[str]] = []

    def start(node: dict[str, Any]) -> NodeProcess:
        (tmp_path / "agent_config.json").write_text(json.dumps({"node": node}))
        process = subprocess.Popen(
            [sys.executable, "-m", "agentmesh.cli.main", "node", "--listen", "127.0.0.1:0"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (\S+);", line)
        assert match, (line, process.stderr.read() if process.stderr else "")
        return process, match[1]

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
