"""`agentmesh tasks` and `agentmesh task ID`: what the scheduler holds, as tables and trees."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click
from google.protobuf.timestamp_pb2 import Timestamp
from rich.text import Text

from agentmesh.cli.app import App, json_option, output_for, pass_app
from agentmesh.cli.client import (
    CALL_TIMEOUT,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    agent_names,
    scheduler_stub,
)
from agentmesh.cli.output import Cell, Output
from agentmesh.cli.subtree import Subtree, read_subtree, show_subtree, subtree_document
from agentmesh.cli.views import (
    STATE_STYLES,
    TERMINAL_STATES,
    ago,
    duration_text,
    first_line,
    seconds,
    state_name,
    state_value,
    task_json,
    title,
)
from agentmesh.v1 import scheduler_pb2, task_pb2

STATES = ["submitted", "working", "input_required", "completed", "failed", "canceled", "rejected"]
_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """`90s`, `15m`, `1h`, `2d`, `1w` ago, or a date or time (`2026-12-01`, ISO 8601; local
    time unless it names a zone)."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(value.strip())
    if match:
        return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CliError(
            f"--since {value!r}: use a duration (30m, 1h, 2d) or a date (2026-12-01)", EXIT_USAGE
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


@click.command()
@click.option("--state", type=click.Choice(STATES), help="only tasks in this state")
@click.option("--user", help="only tasks of this user")
@click.option("--parent", metavar="ID", help="only subtasks of this task")
@click.option("--since", metavar="WHEN", help="created since: 30m, 1h, 2d, or 2026-12-01")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@pass_app
def tasks(
    app: App,
    state: str | None,
    user: str | None,
    parent: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> int:
    """List tasks, newest first (with --json: a list of tasks)."""
    request = scheduler_pb2.ListTasksRequest(
        state=state_value(state) if state else task_pb2.TASK_STATE_UNSPECIFIED,
        user=user or "",
        parent_id=parent or "",
        page_size=limit,
    )
    if since:
        stamp = Timestamp()
        stamp.FromDatetime(parse_since(since).astimezone(UTC))
        request.created_after.CopyFrom(stamp)

    async def command() -> int:
        output = output_for(as_json)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            reply = await stub.ListTasks(request, timeout=CALL_TIMEOUT)
            names = await agent_names(stub) if not output.json else {}
        if output.json:
            output.data([task_json(task) for task in reply.tasks])
            return EXIT_OK
        rows: list[list[Cell]] = []
        for task in reply.tasks:
            name = state_name(task.state)
            rows.append(
                [
                    task.id,
                    Text(name, style=STATE_STYLES.get(name, "")),
                    task.spec.kind or "tree",
                    title(task.spec, 40),
                    names.get(task.assigned_agent, task.assigned_agent) or "-",
                    ago(task.created_at, task.HasField("created_at")),
                    duration_text(seconds(task)),
                ]
            )
        output.table(["ID", "STATE", "KIND", "TASK", "NODE", "CREATED", "TIME"], rows)
        return EXIT_OK

    return app.run(command)


@click.command()
@click.argument("task_id", metavar="ID")
@json_option
@pass_app
def task(app: App, task_id: str, as_json: bool) -> int:
    """Show a task: its subtasks (those its agent delegated marked, with when), attempts,
    placement, waiting reason, usage and events."""

    async def command() -> int:
        output = output_for(as_json)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            subtree = await read_subtree(stub, task_id)
        if output.json:
            output.data(subtree_document(subtree, task_id))
        else:
            _show_task(output, subtree)
            if subtree.children(task_id):
                output.line()
                output.line("subtasks:")
                show_subtree(output, subtree)
        return EXIT_OK

    return app.run(command)


def _show_task(output: Output, subtree: Subtree) -> None:
    item, summary = subtree.tasks[subtree.root_id], subtree.summaries[subtree.root_id]
    state = state_name(item.state)
    output.line(
        Text.assemble(
            (item.id, "bold"),
            "  ",
            (state, STATE_STYLES.get(state, "")),
            f"  {title(item.spec, 80)}",
        )
    )
    facts: list[tuple[str, str]] = [("kind", item.spec.kind or "tree (subtasks only)")]
    if item.spec.command:
        facts.append(("command", item.spec.command))
    if item.spec.prompt:
        facts.append(("prompt", first_line(item.spec.prompt, 80)))
    if item.spec.user:
        facts.append(("user", item.spec.user))
    if item.parent_id:
        delegated = summary.delegated_by_attempt
        facts.append(
            (
                "parent",
                item.parent_id
                + (f" (its agent delegated this task, attempt {delegated})" if delegated else ""),
            )
        )
    if item.replay_of:
        facts.append(("replay of", item.replay_of))
    if item.assigned_agent:
        name = subtree.node_name(item)
        where = subtree.endpoints.get(item.assigned_agent, "")
        facts.append(
            ("placement", f"{name} ({item.assigned_agent})" + (f" at {where}" if where else ""))
        )
    if item.waiting_reason and state not in TERMINAL_STATES:
        facts.append(("waiting", item.waiting_reason))
    attempts = ", ".join(f"#{a.number} on {a.agent or '?'}: {a.outcome}" for a in summary.attempts)
    if item.spec.kind:  # a tree's own node runs nothing unless it has a kind
        tried = f"{item.attempt} of {item.max_attempts}"
        facts.append(("attempts", tried + (f" ({attempts})" if attempts else "")))
    facts.append(("created", ago(item.created_at, item.HasField("created_at"))))
    facts.append(("time", duration_text(seconds(item))))
    usage = item.usage
    if usage.total_tokens or usage.tool_calls:
        facts.append(
            (
                "usage",
                f"{usage.total_tokens} tokens ({usage.input_tokens} in, {usage.output_tokens}"
                f" out, {usage.cached_tokens} cached), {usage.tool_calls} tool calls"
                + (f", {usage.model}" if usage.model else ""),
            )
        )
    children = subtree.children(item.id)
    if children:
        delegated_children = sum(
            subtree.summaries[child].delegated_by_attempt is not None for child in children
        )
        facts.append(
            (
                "subtasks",
                f"{len(children)}"
                + (f" ({delegated_children} delegated by its agent)" if delegated_children else ""),
            )
        )
    counts = ", ".join(f"{kind} {count}" for kind, count in sorted(summary.by_type.items()))
    facts.append(("events", f"{summary.count}" + (f" ({counts})" if counts else "")))
    if item.exit_code:
        facts.append(("exit code", str(item.exit_code)))
    if item.output:
        facts.append(("output", first_line(item.output, 100)))
    if item.error:
        facts.append(("error", first_line(item.error, 100)))
    width = max(len(label) for label, _ in facts)
    for label, value in facts:
        output.line(f"  {label.ljust(width)}  {value}")
