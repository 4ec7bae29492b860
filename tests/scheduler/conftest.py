"""Fixtures for scheduler tests: a real scheduler and real nodes in this process, on loopback."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.access.credentials import enroll_local_node
from agentmesh.config import NodeSettings, Settings, load_settings
from agentmesh.node.service import AgentNode
from agentmesh.rpc.channel import open_channel
from agentmesh.scheduler.service import Scheduler
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2
from tests.node.conftest import GEMINI_CLI

HEARTBEAT = 0.3


def mesh_settings(
    tmp_path: Path,
    database_uri: str,
    scheduler: Mapping[str, Any] | None = None,
    sections: Mapping[str, Any] | None = None,
    **env: str,
) -> Settings:
    """Settings from an agent_config.json with fast heartbeats, the `scheduler` options and
    any other `sections` (e.g. `agent_defaults`, `tls`)."""
    config = tmp_path / "agent_config.json"
    config.write_text(
        json.dumps(
            {
                "node": {"heartbeat_interval_seconds": HEARTBEAT},
                "scheduler": {
                    "heartbeat_interval_seconds": HEARTBEAT,
                    "lease_seconds": 3,
                    **(scheduler or {}),
                },
                **(sections or {}),
            }
        )
    )
    return load_settings(
        {
            "DATABASE_URL": database_uri,
            "AGENTMESH_DATA_DIR": str(tmp_path / "data"),
            "AGENTMESH_CONFIG": str(config),
            "GEMINI_CLI_COMMAND": GEMINI_CLI,
            # The emulator fixture's: where the nodes' Gemini API proxies send requests.
            **{k: v for k, v in os.environ.items() if k == "GOOGLE_GEMINI_BASE_URL"},
            **env,
        },
        cwd=tmp_path,
    )


class Mesh:
    """A scheduler and its nodes; stops everything when the test ends."""

    def __init__(self, tmp_path: Path, database_uri: str) -> None:
        self.tmp_path = tmp_path
        self.database_uri = database_uri
        self._scheduler_options: Mapping[str, Any] | None = None
        self._sections: Mapping[str, Any] | None = None
        self._env: dict[str, str] = {}
        self.schedulers: list[Scheduler] = []
        self.nodes: list[AgentNode] = []
        self._channels: list[grpc.aio.Channel] = []

    def configure(
        self,
        scheduler: Mapping[str, Any] | None = None,
        sections: Mapping[str, Any] | None = None,
        **env: str,
    ) -> None:
        """Change the environment (scheduler options, other config sections) the next
        processes start with."""
        self._scheduler_options, self._sections, self._env = scheduler, sections, env

    @property
    def settings(self) -> Settings:
        """What the next process starts with (read when it starts: the emulator fixture may
        have set GOOGLE_GEMINI_BASE_URL after this mesh was made)."""
        return mesh_settings(
            self.tmp_path, self.database_uri, self._scheduler_options, self._sections, **self._env
        )

    async def start_scheduler(self) -> scheduler_pb2_grpc.SchedulerAsyncStub:
        settings = self.settings
        scheduler = await Scheduler.start(settings, "127.0.0.1:0")
        self.schedulers.append(scheduler)
        # As a person would call it: with the user credential and the TLS settings, if any.
        channel = open_channel(scheduler.address, token=settings.token, tls=settings.tls)
        self._channels.append(channel)
        return scheduler_pb2_grpc.SchedulerStub(channel)

    async def start_node(self, name: str, **options: Any) -> AgentNode:
        """A node registered with the first scheduler; in a secured mesh (a token), with a
        node credential of its own. Its ceiling is superuser unless `options` say."""
        assert self.schedulers, "start a scheduler first"
        workdir = self.tmp_path / name
        workdir.mkdir(exist_ok=True)
        settings = await enroll_local_node(self.schedulers[0].pool, self.settings, name)
        node = await AgentNode.start(
            settings,
            NodeSettings.model_validate(
                {
                    "listen": "127.0.0.1:0",
                    "name": name,
                    "scheduler": self.schedulers[0].address,
                    "heartbeat_interval_seconds": HEARTBEAT,
                    "workdir": str(workdir),
                    "max_permission_mode": "superuser",
                    **options,
                }
            ),
        )
        self.nodes.append(node)
        assert node.registration is not None
        await asyncio.wait_for(node.registration.registered.wait(), 10)
        return node

    async def close(self) -> None:
        for node in self.nodes:
            await node.shutdown(grace_seconds=2)
        for scheduler in self.schedulers:
            await scheduler.stop(grace_seconds=1)
        for channel in self._channels:
            await channel.close()


@pytest.fixture
async def mesh(tmp_path: Path, database_uri: str) -> AsyncIterator[Mesh]:
    running = Mesh(tmp_path, database_uri)
    try:
        yield running
    finally:
        await running.close()


async def run_to_end(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, **spec: Any
) -> tuple[task_pb2.Task, list[task_pb2.TaskEvent]]:
    """Submit a task, watch it to its end; return the final task and its events."""
    task = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=task_pb2.TaskSpec(**spec)))
    events = [
        event async for event in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task.id))
    ]
    return await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id)), events


async def start_gemini_mesh(mesh: Mesh, key: str) -> scheduler_pb2_grpc.SchedulerAsyncStub:
    """A scheduler with `key` in its key file and one node ("llm") that runs gemini tasks."""
    key_file = mesh.tmp_path / "keys.txt"
    key_file.write_text(f"# the test key\n{key}\n")
    mesh.configure(GEMINI_API_KEY_FILE=str(key_file))
    stub = await mesh.start_scheduler()
    await mesh.start_node("llm")
    return stub
