"""A scheduler in this process and clients of its KeyPool and Scheduler services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest

from agentmesh.v1 import agent_pb2, keys_pb2, keys_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from tests.scheduler.conftest import Mesh
from tests.scheduler.conftest import mesh as mesh  # the fixture


@dataclass
class KeyMesh:
    """A started scheduler: its KeyPool, its Scheduler service and its database."""

    mesh: Mesh
    keys: keys_pb2_grpc.KeyPoolAsyncStub
    scheduler: scheduler_pb2_grpc.SchedulerAsyncStub

    async def rows(self, query: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.mesh.database_uri)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def execute(self, statement: str, *args: object) -> None:
        conn = await asyncpg.connect(self.mesh.database_uri)
        try:
            await conn.execute(statement, *args)
        finally:
            await conn.close()

    async def add(self, label: str, secret: str, **fields: object) -> keys_pb2.ApiKey:
        request = keys_pb2.AddKeyRequest(label=label, secret=secret, **fields)  # type: ignore[arg-type]
        return await self.keys.AddKey(request, timeout=10)

    async def listed(self) -> dict[str, keys_pb2.ApiKey]:
        reply = await self.keys.ListKeys(keys_pb2.ListKeysRequest(), timeout=10)
        return {key.label: key for key in reply.keys}

    async def heartbeat(
        self, agent_id: str, name: str, held: list[tuple[str, str]]
    ) -> scheduler_pb2.HeartbeatResponse:
        """A node's heartbeat, as the node sends it, holding these (label, fingerprint)."""
        card = agent_pb2.AgentCard(
            agent_id=agent_id,
            name=name,
            hostname=f"{name}.lan",
            endpoint="127.0.0.1:9",
            max_concurrency=1,
            held_keys=[agent_pb2.HeldKey(label=label, fingerprint=fp) for label, fp in held],
        )
        return await self.scheduler.Heartbeat(scheduler_pb2.HeartbeatRequest(card=card), timeout=10)


@pytest.fixture
async def key_mesh(mesh: Mesh) -> AsyncIterator[KeyMesh]:
    scheduler = await mesh.start_scheduler()
    channel = grpc.aio.insecure_channel(mesh.schedulers[0].address)
    try:
        yield KeyMesh(mesh, keys_pb2_grpc.KeyPoolStub(channel), scheduler)
    finally:
        await channel.close()
