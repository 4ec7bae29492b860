"""What the command line stores and asks for: a replay's link to its original, tasks created
after a time, and the `home_network` inventory."""

from __future__ import annotations

import datetime

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from agentmesh.v1 import scheduler_pb2, task_pb2
from tests.scheduler.conftest import Mesh


async def test_replay_link_created_after_filter_and_hosts(mesh: Mesh) -> None:
    stub = await mesh.start_scheduler()
    spec = task_pb2.TaskSpec(kind="echo", prompt="hi", required_capabilities=["nobody-has"])
    original = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
    between = Timestamp()
    between.FromDatetime(datetime.datetime.now(datetime.UTC))
    tree = task_pb2.TaskSpec(subtasks=[spec])

    replay = await stub.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(spec=tree, replay_of=original.id)
    )

    stored = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=replay.id))
    assert stored.replay_of == original.id
    assert len(stored.child_ids) == 1
    assert (await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=original.id))).replay_of == ""
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec, replay_of="t-nothing"))
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    assert unknown.value.details() == "no task t-nothing"

    recent = await stub.ListTasks(scheduler_pb2.ListTasksRequest(created_after=between))
    assert original.id not in {task.id for task in recent.tasks}
    assert {replay.id, *stored.child_ids} <= {task.id for task in recent.tasks}

    node = await mesh.start_node("alpha")
    hosts = await stub.ListHosts(scheduler_pb2.ListHostsRequest())
    assert [(h.host_name, h.service) for h in hosts.hosts] == [
        (node.card().hostname, "agentmesh-node")
    ]
    assert hosts.hosts[0].HasField("last_seen")
