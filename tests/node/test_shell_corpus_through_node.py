"""The bypass corpus through a real AgentNode: whatever the node accepts does no damage.

`test_shell_permissions.py` checks the planner; this runs every case the way a client does,
over gRPC, with the node's own permission configuration, and judges only by effect: the canary
in the task's directory unchanged, no `pwned.txt`, nothing new beside the task's directory, and
the secret there never in the task's output.  Cases that would act on the machine itself
(`runnable=False`) are sent only once the planner has refused them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc

from agentmesh.node.permissions import CommandRefused, plan_shell_command
from agentmesh.v1 import node_pb2, task_pb2
from tests.node.conftest import StartNode
from tests.node.shell_corpus import CASES, SECRET_TEXT, SUPERUSER_DENYLIST, WEAK_ALLOWLIST, Case
from tests.node.test_node import collect

REJECTED = task_pb2.TASK_STATE_REJECTED


def _refused_by_the_planner(case: Case, command: str) -> bool:
    try:
        plan_shell_command(
            command, case.mode, allowlist=WEAK_ALLOWLIST, denylist=SUPERUSER_DENYLIST
        )
    except CommandRefused:
        return True
    return False


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
    jail = tmp_path / "jail"  # holds only the task's directory and the secret
    workdir = jail / "work"
    secret = jail / "secret.txt"
    workdir.mkdir(parents=True)
    _, stub = await start_node(env={"AGENTMESH_CONFIG": str(config)}, workdir=str(workdir))
    damaged = []
    unsafe = []
    for index, case in enumerate(CASES):
        shutil.rmtree(jail, ignore_errors=True)
        workdir.mkdir(parents=True)
        (workdir / "canary.txt").write_text("canary")
        secret.write_text(SECRET_TEXT)
        command = case.with_secret(str(secret))
        if not case.runnable and not _refused_by_the_planner(case, command):
            unsafe.append(case.id)
            continue
        request = node_pb2.ExecuteTaskRequest(
            task_id=f"corpus-{index}",
            spec=task_pb2.TaskSpec(
                kind="shell",
                command=command,
                permission_mode=str(case.mode),
                timeout_seconds=10,
            ),
        )
        output = ""
        try:
            events = await collect(stub.ExecuteTask(request))
            state = events[-1].result.state
            output = "".join(str(event) for event in events)
        except grpc.aio.AioRpcError as error:
            # Oversized commands may be refused at the door, before any planning.
            invalid = error.code() is grpc.StatusCode.INVALID_ARGUMENT
            state = REJECTED if invalid else task_pb2.TASK_STATE_UNSPECIFIED
        canary = workdir / "canary.txt"
        intact = canary.exists() and canary.read_text() == "canary"
        outside = sorted(p.name for p in jail.iterdir()) != ["secret.txt", "work"]
        leaked = SECRET_TEXT in output or secret.read_text() != SECRET_TEXT
        if not intact or (workdir / "pwned.txt").exists() or outside or leaked:
            damaged.append(case.id)
        assert (state == REJECTED) == (case.expect == "refused"), (case.id, state)
    assert unsafe == []
    assert damaged == []
