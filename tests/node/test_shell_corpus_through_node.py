"""The bypass corpus through a real AgentNode: whatever the node accepts, the canary survives.

`test_shell_permissions.py` checks the planner; this runs every case the way a client does,
over gRPC, with the node's own permission configuration, and judges only by the canary file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc

from agentmesh.v1 import node_pb2, task_pb2
from tests.node.conftest import StartNode
from tests.node.shell_corpus import CASES, SUPERUSER_DENYLIST, WEAK_ALLOWLIST
from tests.node.test_node import collect

REJECTED = task_pb2.TASK_STATE_REJECTED


async def test_every_corpus_case_through_the_node(start_node: StartNode, tmp_path: Path) -> None:
    config = tmp_path / "agent_config.json"
    config.write_text(
        json.dumps(
            {
                "permissions": {
                    "weak": {"allowlist": sorted(WEAK_ALLOWLIST)},
                    "superuser": {"denylist": sorted(SUPERUSER_DENYLIST)},
                }
            }
        )
    )
    workdir = tmp_path / "work"
    _, stub = await start_node(env={"AGENTMESH_CONFIG": str(config)}, workdir=str(workdir))
    damaged = []
    for index, case in enumerate(CASES):
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir()
        (workdir / "canary.txt").write_text("canary")
        request = node_pb2.ExecuteTaskRequest(
            task_id=f"corpus-{index}",
            spec=task_pb2.TaskSpec(
                kind="shell",
                command=case.command,
                permission_mode=str(case.mode),
                timeout_seconds=10,
            ),
        )
        try:
            events = await collect(stub.ExecuteTask(request))
            state = events[-1].result.state
        except grpc.aio.AioRpcError as error:
            # Oversized commands may be refused at the door, before any planning.
            invalid = error.code() is grpc.StatusCode.INVALID_ARGUMENT
            state = REJECTED if invalid else task_pb2.TASK_STATE_UNSPECIFIED
        intact = (workdir / "canary.txt").exists() and (
            workdir / "canary.txt"
        ).read_text() == "canary"
        if not intact or (workdir / "pwned.txt").exists():
            damaged.append(case.id)
        assert (state == REJECTED) == (case.expect == "refused"), (case.id, state)
    assert damaged == []
