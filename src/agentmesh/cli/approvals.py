"""`agentmesh approvals`, `approve` and `deny`: answering the commands tasks ask about.

A task submitted with `--on-refusal ask` whose command weak mode refuses waits for its user
(TASK_STATE_INPUT_REQUIRED) instead of ending rejected. `approve` runs it again with the
command permitted (`--always`: the user's later tasks too, without asking; `--prefix`:
every command that begins so); `deny` ends it rejected. `approvals --remembered` lists what
was approved with `--always`, and `approvals forget ID` takes one back.
"""

from __future__ import annotations

from typing import Any

import click

from agentmesh.cli.app import App, json_option, output_for, pass_app
from agentmesh.cli.client import CALL_TIMEOUT, EXIT_OK, scheduler_stub
from agentmesh.cli.views import ago, state_name
from agentmesh.v1 import scheduler_pb2


def approval_json(approval: scheduler_pb2.Approval, remembered: bool) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": approval.id,
        "user": approval.user,
        "command": approval.command,
        "prefix": approval.prefix,
    }
    if remembered:
        stamp = approval.last_used
        values["last_used"] = stamp.ToJsonString() if approval.HasField("last_used") else None
    else:
        values.update(
            task_id=approval.task_id, rule=approval.rule, mode=approval.mode, detail=approval.detail
        )
    return values


@click.group(invoke_without_command=True)
@click.option("--remembered", is_flag=True, help="the approvals kept with --always instead")
@click.option("--user", default="", help="only this user's")
@json_option
@pass_app
@click.pass_context
def approvals(
    ctx: click.Context, app: App, remembered: bool, user: str, as_json: bool
) -> int | None:
    """List the tasks waiting for an approval (or, --remembered, the approvals kept)."""
    if ctx.invoked_subcommand is not None:
        return None

    async def command() -> int:
        request = scheduler_pb2.ListApprovalsRequest(remembered=remembered, user=user)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            reply = await stub.ListApprovals(request, timeout=CALL_TIMEOUT)
        output = output_for(as_json)
        if output.json:
            output.data([approval_json(a, remembered) for a in reply.approvals])
            return EXIT_OK
        if remembered:
            rows = [
                [
                    str(a.id),
                    a.user or "-",
                    a.command + (" ..." if a.prefix else ""),
                    ago(a.last_used, a.HasField("last_used")),
                ]
                for a in reply.approvals
            ]
            output.table(["ID", "USER", "COMMAND", "LAST USED"], rows)
            return EXIT_OK
        rows = [
            [a.task_id, a.user or "-", a.command, f"{a.rule} ({a.mode})", ago(a.created_at)]
            for a in reply.approvals
        ]
        output.table(["TASK", "USER", "COMMAND", "REFUSED BY", "ASKED"], rows)
        return EXIT_OK

    return app.run(command)


@approvals.command()
@click.argument("approval_id", metavar="ID", type=int)
@pass_app
def forget(app: App, approval_id: int) -> int:
    """Forget a remembered approval: its command is asked about again."""

    async def command() -> int:
        request = scheduler_pb2.ForgetApprovalRequest(id=approval_id)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            gone = await stub.ForgetApproval(request, timeout=CALL_TIMEOUT)
        output_for(False).line(f"forgot approval {gone.id}: {gone.user} `{gone.command}`")
        return EXIT_OK

    return app.run(command)


@click.command()
@click.argument("task_id")
@click.option("--always", is_flag=True, help="also let the user's later tasks run it")
@click.option("--prefix", default="", help="approve every command that begins with these words")
@json_option
@pass_app
def approve(app: App, task_id: str, always: bool, prefix: str, as_json: bool) -> int:
    """Approve the command TASK_ID waits on: it runs again with the command permitted."""

    async def command() -> int:
        request = scheduler_pb2.ApproveTaskRequest(task_id=task_id, always=always, prefix=prefix)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            task = await stub.ApproveTask(request, timeout=CALL_TIMEOUT)
        output = output_for(as_json)
        if output.json:
            output.data({"task_id": task.id, "state": state_name(task.state)})
        else:
            kept = " (remembered)" if always else ""
            output.line(f"task {task.id}: approved{kept}; {state_name(task.state)}")
        return EXIT_OK

    return app.run(command)


@click.command()
@click.argument("task_id")
@click.option("--reason", default="", help="why, for the task's trace")
@pass_app
def deny(app: App, task_id: str, reason: str) -> int:
    """Deny the command TASK_ID waits on: the task ends rejected."""

    async def command() -> int:
        request = scheduler_pb2.DenyTaskRequest(task_id=task_id, reason=reason)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            task = await stub.DenyTask(request, timeout=CALL_TIMEOUT)
        output_for(False).line(f"task {task.id}: {state_name(task.state)} ({task.error})")
        return EXIT_OK

    return app.run(command)
