"""`agentmesh tasks` and `agentmesh task ID`: what the scheduler holds, as tables and trees."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from google.protobuf.timestamp_pb2 import Timestamp
from rich.text import Text
from rich.tree import Tree

from agentmesh.cli.app import App, json_option, output_for, pass_app
from agentmesh.cli.client import (
    CALL_TIMEOUT,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Stub,
    agent_names,
    scheduler_stub,
    task_tree,
)
from agentmesh.cli.output import Cell, Output
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
_PLACED = re.compile(r"^attempt (\d+) placed on (\S+)")


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


@dataclass(frozen=True)
class Attempt:
    number: int
    agent: str
    outcome: str


@dataclass(frozen=True)
class EventSummary:
    count: int
    by_type: dict[str, int]
    attempts: list[Attempt]


async def summarize_events(stub: Stub, task: task_pb2.Task, names: dict[str, str]) -> EventSummary:
    """Its stored events, counted by type, and its attempts: where each ran, how it ended."""
    kinds: Counter[str] = Counter()
    agents: dict[int, str] = {}
    outcomes: dict[int, str] = {}
    call = stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task.id))
    try:
        async for event in call:  # every task has a first event: `submitted`
            kind = event.WhichOneof("payload") or ""
            kinds[kind] += 1
            if event.attempt and event.agent_id:
                agents.setdefault(event.attempt, event.agent_id)
            if kind == "status":
                placed = _PLACED.match(event.status.message)
                if placed:
                    agents.setdefault(int(placed[1]), placed[2])
                if event.attempt:
                    outcomes[event.attempt] = event.status.message
            elif kind == "result" and event.attempt:
                outcomes[event.attempt] = state_name(event.result.state)
            if event.seq >= task.last_seq:
                break  # what was stored when we looked; a running task goes on
    finally:
        call.cancel()
    attempts = [
        Attempt(number, names.get(agents.get(number, ""), agents.get(number, "")), outcomes[number])
        for number in sorted(set(agents) | set(outcomes))
        if number in outcomes
    ]
    return EventSummary(sum(kinds.values()), dict(kinds), attempts)


@click.command()
@click.argument("task_id", metavar="ID")
@json_option
@pass_app
def task(app: App, task_id: str, as_json: bool) -> int:
    """Show a task: its subtasks, attempts, placement, waiting reason, usage and events."""

    async def command() -> int:
        output = output_for(as_json)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            tree = await task_tree(stub, task_id)
            names = await agent_names(stub)
            summaries = await asyncio.gather(*(summarize_events(stub, t, names) for t in tree))
            agents = await stub.ListAgents(
                scheduler_pb2.ListAgentsRequest(include_offline=True), timeout=CALL_TIMEOUT
            )
        endpoints = {a.card.agent_id: a.card.endpoint for a in agents.agents}
        by_id = {t.id: (t, s) for t, s in zip(tree, summaries, strict=True)}
        if output.json:
            output.data(_task_document(task_id, by_id, names, endpoints))
        else:
            _show_task(output, by_id[task_id][0], by_id[task_id][1], names, endpoints)
            if len(tree) > 1:
                _show_tree(output, task_id, by_id, names)
        return EXIT_OK

    return app.run(command)


def _task_document(
    task_id: str,
    by_id: dict[str, tuple[task_pb2.Task, EventSummary]],
    names: dict[str, str],
    endpoints: dict[str, str],
) -> dict[str, Any]:
    """`task ID --json`: the task's fields, plus node, attempts, events and subtasks."""
    item, summary = by_id[task_id]
    document = task_json(item)
    document["node"] = (
        {
            "agent_id": item.assigned_agent,
            "name": names.get(item.assigned_agent, ""),
            "endpoint": endpoints.get(item.assigned_agent, ""),
        }
        if item.assigned_agent
        else None
    )
    document["attempts"] = [
        {"attempt": a.number, "node": a.agent, "outcome": a.outcome} for a in summary.attempts
    ]
    document["events"] = {"count": summary.count, "by_type": summary.by_type}
    document["subtasks"] = [
        _task_document(child, by_id, names, endpoints) for child in item.child_ids
    ]
    return document


def _show_task(
    output: Output,
    item: task_pb2.Task,
    summary: EventSummary,
    names: dict[str, str],
    endpoints: dict[str, str],
) -> None:
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
        facts.append(("parent", item.parent_id))
    if item.replay_of:
        facts.append(("replay of", item.replay_of))
    if item.assigned_agent:
        name = names.get(item.assigned_agent, item.assigned_agent)
        where = endpoints.get(item.assigned_agent, "")
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


def _tree_label(item: task_pb2.Task, names: dict[str, str]) -> Text:
    state = state_name(item.state)
    where = names.get(item.assigned_agent, item.assigned_agent)
    return Text.assemble(
        (state.ljust(9), STATE_STYLES.get(state, "")),
        f" {item.id}  {title(item.spec, 40)}",
        (f"  on {where}" if where else "", "dim"),
        (f"  {duration_text(seconds(item))}", "dim"),
    )


def _show_tree(
    output: Output,
    root_id: str,
    by_id: dict[str, tuple[task_pb2.Task, EventSummary]],
    names: dict[str, str],
) -> None:
    output.line()
    output.line("subtasks:")
    if output.out_is_terminal:
        tree = Tree(_tree_label(by_id[root_id][0], names))

        def grow(branch: Tree, task_id: str) -> None:
            for child in by_id[task_id][0].child_ids:
                grow(branch.add(_tree_label(by_id[child][0], names)), child)

        grow(tree, root_id)
        output.out.print(tree)
        return

    def lines(task_id: str, depth: int) -> None:
        output.line("  " * depth + str(_tree_label(by_id[task_id][0], names)))
        for child in by_id[task_id][0].child_ids:
            lines(child, depth + 1)

    lines(root_id, 1)
