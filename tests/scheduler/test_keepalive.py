"""Keepalive pings find a node that stopped answering (see test_recovery's frozen node);
they must not break a task that is only quiet.

Schedulers ping their nodes' connections every few seconds (agentmesh.rpc.channel). A gRPC
server answers pings that come more often than every five minutes, while it sends nothing,
with a GOAWAY ("too_many_pings") that breaks every stream on the connection: a task silent
for half a minute would be lost and run again. The servers accept the pings (rpc.server).
"""

from __future__ import annotations

import pytest

from agentmesh.rpc.server import KEEPALIVE_SECONDS
from agentmesh.v1 import task_pb2
from tests.scheduler.conftest import Mesh, run_to_end

pytestmark = pytest.mark.slow

# Past three pings: a server that does not accept them sends its GOAWAY by then.
QUIET_SECONDS = 3 * KEEPALIVE_SECONDS + 5


async def test_a_task_silent_for_many_keepalive_pings_completes_in_one_attempt(
    mesh: Mesh,
) -> None:
    stub = await mesh.start_scheduler()
    await mesh.start_node("quiet")

    task, events = await run_to_end(
        stub,
        kind="shell",
        command=f"sleep {QUIET_SECONDS}; echo done",
        permission_mode="superuser",
    )

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    assert task.output.strip() == "done"
    assert task.attempt == 1, [e.status.message for e in events if e.HasField("status")]
    assert [e.WhichOneof("payload") for e in events].count("result") == 1
