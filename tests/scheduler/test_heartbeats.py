"""Heartbeats: the scheduler sets the pace, so a node never looks silent to it."""

from __future__ import annotations

import asyncio

from agentmesh.v1 import scheduler_pb2
from tests.scheduler.conftest import HEARTBEAT, Mesh


async def test_a_node_configured_slower_than_the_scheduler_never_goes_offline(
    mesh: Mesh,
) -> None:
    stub = await mesh.start_scheduler()
    # Ten of the scheduler's intervals: far longer than it waits before calling it offline.
    await mesh.start_node("slow", heartbeat_interval_seconds=HEARTBEAT * 10)

    heartbeats: set[int] = set()
    while len(heartbeats) < 8:  # several of the scheduler's offline periods
        reply = await stub.ListAgents(scheduler_pb2.ListAgentsRequest(include_offline=True))
        (agent,) = reply.agents
        assert agent.status == "online", f"offline after {len(heartbeats)} heartbeats"
        heartbeats.add(agent.last_heartbeat.ToNanoseconds())
        await asyncio.sleep(HEARTBEAT / 6)
