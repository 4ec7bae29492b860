"""A task and every subtask below it, as `agentmesh task ID` (and the demo) shows them.

Each subtask appears under its parent in the order it was created, with its state, its
node, its title, its time and, when its parent's agent started it through the mesh tools,
that it was delegated and when (seconds after the shown task was created). Submitted
subtasks exist when their parent does; delegated ones appear as the agent plans, so the
times tell how the tree grew. Whether a subtask was delegated is read from its trace: the
scheduler's first event of a delegated task says `delegated by the agent of PARENT
(attempt N)` (see TaskStore.delegate).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from rich.tree import Tree

from agentmesh.cli.client import CALL_TIMEOUT, Stub, task_events, task_tree
from agentmesh.cli.output import Output
from agentmesh.cli.views import (
    STATE_STYLES,
    duration_text,
    first_line,
    seconds,
    state_name,
    task_json,
    title,
)
from agentmesh.v1 import scheduler_pb2, task_pb2

_PLACED = re.compile(r"^attempt (\d+) placed on (\S+)")
_DELEGATED = re.compile(r"^delegated by the agent of \S+ \(attempt (\d+)\)")


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
    # The attempt of its parent whose agent delegated it; None: submitted with its parent.
    delegated_by_attempt: int | None = None


async def summarize_events(stub: Stub, task: task_pb2.Task, names: dict[str, str]) -> EventSummary:
    """Its stored events, counted by type, its attempts (where each ran, how it ended) and
    whether it was delegated."""
    kinds: Counter[str] = Counter()
    agents: dict[int, str] = {}
    outcomes: dict[int, str] = {}
    delegated_by: int | None = None
    async with contextlib.aclosing(task_events(stub, task.id)) as events:
        async for event in events:  # every task has a first event: `submitted`
            kind = event.WhichOneof("payload") or ""
            kinds[kind] += 1
            if event.attempt and event.agent_id:
                agents.setdefault(event.attempt, event.agent_id)
            if kind == "status":
                if event.seq == 1 and (delegated := _DELEGATED.match(event.status.message)):
                    delegated_by = int(delegated[1])
                placed = _PLACED.match(event.status.message)
                if placed:
                    agents.setdefault(int(placed[1]), placed[2])
                if event.attempt:
                    outcomes[event.attempt] = event.status.message
            elif kind == "result" and event.attempt:
                outcomes[event.attempt] = state_name(event.result.state)
            if event.seq >= task.last_seq:
                break  # what was stored when we looked; a running task goes on
    attempts = [
        Attempt(number, names.get(agents.get(number, ""), agents.get(number, "")), outcomes[number])
        for number in sorted(set(agents) | set(outcomes))
        if number in outcomes
    ]
    return EventSummary(sum(kinds.values()), dict(kinds), attempts, delegated_by)


@dataclass(frozen=True)
class Subtree:
    """A task and every subtask below it, as they stood when read."""

    root_id: str
    tasks: dict[str, task_pb2.Task]
    summaries: dict[str, EventSummary]
    # Agent id -> node name, and -> the address the node serves on, for every agent the
    # scheduler knows.
    names: dict[str, str]
    endpoints: dict[str, str]

    def children(self, task_id: str) -> list[str]:
        """Its subtasks, in the order they were created."""
        return list(self.tasks[task_id].child_ids)

    def node_name(self, task: task_pb2.Task) -> str:
        return self.names.get(task.assigned_agent, task.assigned_agent)

    def created_after_root(self, task: task_pb2.Task) -> float:
        """Seconds from the shown task's creation to this one's."""
        root = self.tasks[self.root_id].created_at
        return max(task.created_at.ToMicroseconds() - root.ToMicroseconds(), 0) / 1e6


async def read_subtree(stub: Stub, task_id: str) -> Subtree:
    tree = await task_tree(stub, task_id)
    agents = await stub.ListAgents(
        scheduler_pb2.ListAgentsRequest(include_offline=True), timeout=CALL_TIMEOUT
    )
    names = {agent.card.agent_id: agent.card.name for agent in agents.agents}
    summaries = await asyncio.gather(*(summarize_events(stub, t, names) for t in tree))
    return Subtree(
        root_id=task_id,
        tasks={t.id: t for t in tree},
        summaries={t.id: s for t, s in zip(tree, summaries, strict=True)},
        names=names,
        endpoints={agent.card.agent_id: agent.card.endpoint for agent in agents.agents},
    )


def delegation_text(subtree: Subtree, task_id: str) -> str:
    """`delegated at +4.2s` (and the attempt, past the first), or "" if it was submitted."""
    attempt = subtree.summaries[task_id].delegated_by_attempt
    if attempt is None:
        return ""
    when = f"delegated at +{subtree.created_after_root(subtree.tasks[task_id]):.1f}s"
    return when + (f" by attempt {attempt}" if attempt > 1 else "")


def tree_label(subtree: Subtree, task_id: str) -> Text:
    item = subtree.tasks[task_id]
    state = state_name(item.state)
    where = subtree.node_name(item)
    command = item.spec.command if item.spec.description else ""
    delegated = delegation_text(subtree, task_id) if task_id != subtree.root_id else ""
    return Text.assemble(
        (state.ljust(9), STATE_STYLES.get(state, "")),
        f" {item.id}  {title(item.spec, 40)}",
        (f"  $ {first_line(command, 40)}" if command else "", "dim"),
        (f"  on {where}" if where else "", "dim"),
        (f"  {duration_text(seconds(item))}", "dim"),
        (f"  {delegated}" if delegated else "", "magenta"),
    )


def show_subtree(output: Output, subtree: Subtree) -> None:
    """The tree on stdout: drawn on a terminal, indented lines when piped."""
    if output.out_is_terminal:
        tree = Tree(tree_label(subtree, subtree.root_id))

        def grow(branch: Tree, task_id: str) -> None:
            for child in subtree.children(task_id):
                grow(branch.add(tree_label(subtree, child)), child)

        grow(tree, subtree.root_id)
        output.out.print(tree)
        return

    def lines(task_id: str, depth: int) -> None:
        output.line("  " * depth + str(tree_label(subtree, task_id)))
        for child in subtree.children(task_id):
            lines(child, depth + 1)

    lines(subtree.root_id, 1)


def subtree_document(subtree: Subtree, task_id: str) -> dict[str, Any]:
    """`task ID --json`: the task's fields, plus node, attempts, events, whether it was
    delegated, and its subtasks (the same, nested, in the order they were created)."""
    item, summary = subtree.tasks[task_id], subtree.summaries[task_id]
    document = task_json(item)
    document["node"] = (
        {
            "agent_id": item.assigned_agent,
            "name": subtree.names.get(item.assigned_agent, ""),
            "endpoint": subtree.endpoints.get(item.assigned_agent, ""),
        }
        if item.assigned_agent
        else None
    )
    document["attempts"] = [
        {"attempt": a.number, "node": a.agent, "outcome": a.outcome} for a in summary.attempts
    ]
    document["events"] = {"count": summary.count, "by_type": summary.by_type}
    document["delegated"] = summary.delegated_by_attempt is not None
    document["delegated_by_attempt"] = summary.delegated_by_attempt
    document["subtasks"] = [subtree_document(subtree, child) for child in subtree.children(task_id)]
    return document
