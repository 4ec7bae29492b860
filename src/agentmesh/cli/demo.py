"""`agentmesh demo`: the mesh at work on this machine, with nothing prepared.

Starts the embedded PostgreSQL (unless a server is configured), a scheduler and three nodes
on loopback with different capabilities, then an inventory of every node's host. With a
Gemini API key (and the Gemini CLI), an agent plans it: it lists the machines and delegates
a command to each (see agentmesh.cli.demo_agent). Without one, the inventory is a fixed
tree whose subtasks fan out over the nodes, and the demo says how to add a key; it prints
where each part ran, its state, its time and its output's first line as the tree finishes
(on a terminal: a live tree of the subtasks on their nodes). Last, a command that weak mode
refuses; then it stops everything it started. `AGENTMESH_TOKEN` and the `tls` settings
apply to every part of it, as they do to a deployed mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text
from rich.tree import Tree

from agentmesh.access.credentials import enroll_local_node
from agentmesh.cli.app import App, pass_app
from agentmesh.cli.db import status_text
from agentmesh.cli.demo_agent import run_planned_inventory, usable_keys, with_gemini_cli
from agentmesh.config import NodeSettings, Settings
from agentmesh.db import embedded
from agentmesh.db.connect import data_dir
from agentmesh.db.setup import migrated_database
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2

if TYPE_CHECKING:  # imported where used: the services load slowly, --help must not
    from agentmesh.node.service import AgentNode

NODES = {
    "alpha": ["inventory", "cpu"],
    "beta": ["inventory", "disk"],
    "gamma": ["inventory", "net"],
}
# Read-only commands that the default weak allowlist permits.
INVENTORY = [
    ("kernel", "uname -srm"),
    ("disk", "df -h /"),
    ("memory", "free -m"),
    ("uptime", "uptime"),
]
REFUSED = "rm -rf /tmp/agentmesh-demo-scratch"
NO_KEY = (
    "no Gemini API key: the inventory is a fixed tree. To see an agent plan it itself, put"
    " GEMINI_API_KEY_FILE=/path/to/a/file/with/your/key in .env and run the demo again."
)
NO_CLI = (
    "a Gemini API key is configured, but the nodes found no Gemini CLI (GEMINI_CLI_COMMAND):"
    " the inventory is a fixed tree. To see an agent plan it itself, run `make gemini-cli`"
    " (`make demo` then uses it) or set GEMINI_CLI_COMMAND."
)


@click.command()
@pass_app
def demo(app: App) -> int:
    """Run the mesh on this machine and show it at work (with a Gemini API key, an agent
    plans the inventory itself)."""
    # `make demo` names the Gemini CLI that `make gemini-cli` installs.
    installed_cli = os.environ.get("AGENTMESH_GEMINI_CLI")
    return app.run(lambda: run_demo(app.settings(), installed_cli=installed_cli))


def inventory_spec() -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(
        description="inventory of the mesh",
        subtasks=[
            task_pb2.TaskSpec(
                description=f"inventory of {name}",
                subtasks=[
                    task_pb2.TaskSpec(
                        kind="shell",
                        command=command,
                        target_host=name,
                        description=f"{what} of {name}",
                    )
                    for what, command in INVENTORY
                ],
            )
            for name in NODES
        ],
    )


@contextlib.asynccontextmanager
async def _mesh(
    settings: Settings, work: Path, installed_cli: str | None
) -> AsyncIterator[tuple[str, list[AgentNode], int]]:
    """The scheduler and the nodes, and how many keys the scheduler may lease to the demo
    (with some, the nodes look for the installed Gemini CLI too)."""
    from agentmesh.node.service import AgentNode
    from agentmesh.scheduler.service import Scheduler

    scheduler = await Scheduler.start(settings, "127.0.0.1:0")
    nodes: list[AgentNode] = []
    try:
        keys = await usable_keys(settings, scheduler.address)
        node_settings = with_gemini_cli(settings, installed_cli) if keys else settings
        for name, capabilities in NODES.items():
            node = await AgentNode.start(
                # With a token, each node has a credential of its own, as in a deployed mesh.
                await enroll_local_node(scheduler.pool, node_settings, name),
                NodeSettings(
                    listen="127.0.0.1:0",
                    name=name,
                    capabilities=tuple(capabilities),
                    scheduler=scheduler.address,
                    heartbeat_interval_seconds=0.5,
                    workdir=work,
                ),
                hold_keys=False,
            )
            nodes.append(node)
        for node in nodes:
            assert node.registration is not None
            await asyncio.wait_for(node.registration.registered.wait(), 15)
        yield scheduler.address, nodes, keys
    finally:
        for node in nodes:
            await node.shutdown(grace_seconds=2)
        await scheduler.stop(grace_seconds=1)


def _first_line(text: str, width: int = 60) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0] if len(lines[0]) <= width else lines[0][: width - 1] + "…"
    return first if len(lines) == 1 else f"{first}  (+{len(lines) - 1} lines)"


def _seconds(task: task_pb2.Task) -> str:
    if not task.HasField("finished_at"):
        return "-"
    start = task.started_at if task.HasField("started_at") else task.created_at
    return f"{(task.finished_at.ToMicroseconds() - start.ToMicroseconds()) / 1e6:.2f}s"


def _state(task: task_pb2.Task) -> str:
    return task_pb2.TaskState.Name(task.state).removeprefix("TASK_STATE_").lower()


async def _follow_leaves(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, root: str, names: dict[str, str]
) -> None:
    """Print each leaf as it finishes, in the order they finish."""
    groups = await stub.ListTasks(scheduler_pb2.ListTasksRequest(parent_id=root))
    leaves = []
    for group in groups.tasks:
        children = await stub.ListTasks(scheduler_pb2.ListTasksRequest(parent_id=group.id))
        leaves += [child.id for child in children.tasks]

    async def follow(task_id: str) -> None:
        async for _ in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id)):
            pass
        task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))
        where = names.get(task.assigned_agent, task.assigned_agent or "-")
        print(
            f"  {_state(task):<9} {task.spec.description:<18} on {where:<6} {_seconds(task):>6}"
            f"  {_first_line(task.output or task.error)}",
            flush=True,
        )

    await asyncio.gather(*(follow(leaf) for leaf in leaves))


_STYLES = {"completed": "green", "failed": "red", "working": "cyan", "submitted": "yellow"}


async def _live_tree(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, root: str, names: dict[str, str], console: Console
) -> None:
    """A tree of the subtasks, redrawn as they are placed on their nodes and finish."""

    async def grow(branch: Tree | None, task_id: str) -> Tree:
        task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))
        state = _state(task)
        where = names.get(task.assigned_agent, task.assigned_agent)
        label = Text.assemble(
            (f"{state:<9} ", _STYLES.get(state, "")),
            task.spec.description or task.id,
            (f"  on {where}" if where else "", "dim"),
            (f"  {_seconds(task)}" if task.HasField("finished_at") else "", "dim"),
            (f"  {_first_line(task.output or task.error, 30)}" if task.spec.kind else "", "dim"),
        )
        node = Tree(label) if branch is None else branch.add(label)
        for child in task.child_ids:
            await grow(node, child)
        return node

    with Live(await grow(None, root), console=console, refresh_per_second=8) as live:
        while True:
            tree = await grow(None, root)
            live.update(tree)
            done = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=root))
            if _state(done) in ("completed", "failed", "canceled", "rejected"):
                break
            await asyncio.sleep(0.2)


async def _print_tree(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, task_id: str, names: dict[str, str], depth: int
) -> None:
    task = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id))
    indent = "  " * depth + ("└─ " if depth else "")
    where = (
        f" on {names.get(task.assigned_agent, task.assigned_agent)}" if task.assigned_agent else ""
    )
    title = task.spec.description or task.spec.command or task.id
    print(f"  {indent}{title}{where}: {_state(task)} in {_seconds(task)}")
    for child in task.child_ids:
        await _print_tree(stub, child, names, depth + 1)


async def run_demo(settings: Settings, *, installed_cli: str | None = None) -> int:
    started_database = settings.uses_embedded_database and not embedded.is_running(
        data_dir(settings)
    )
    await migrated_database(settings)
    print(await status_text(settings))
    print()
    try:
        with tempfile.TemporaryDirectory(prefix="agentmesh-demo-") as work:
            async with _mesh(settings, Path(work), installed_cli) as (address, nodes, keys):
                names = {node.card().agent_id: node.card().name for node in nodes}
                print(f"scheduler on {address}; nodes:")
                for node in nodes:
                    card = node.card()
                    configured = [c for c in card.capabilities if ":" not in c]
                    print(f"  {card.name:<6} {node.address:<16} {', '.join(configured)}")
                print()
                async with open_channel(address, token=settings.token, tls=settings.tls) as channel:
                    stub = scheduler_pb2_grpc.SchedulerStub(channel)
                    agents_run_gemini = any("gemini" in node.card().executors for node in nodes)
                    if keys and agents_run_gemini:
                        await run_planned_inventory(
                            stub, names, lambda: usable_keys(settings, address)
                        )
                    else:
                        print(NO_CLI if keys else NO_KEY)
                        print()
                        await _run_inventory(stub, names)
                    await _run_refused(stub, names)
    finally:
        if started_database:
            embedded.stop(data_dir(settings))
    return 0


async def _run_inventory(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, names: dict[str, str]
) -> None:
    began = time.monotonic()
    root = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=inventory_spec()))
    print(f"task {root.id}: inventory of the mesh, {len(NODES) * len(INVENTORY)} commands")
    console = Console(highlight=False)
    if console.is_terminal:
        await _live_tree(stub, root.id, names, console)
    else:
        await _follow_leaves(stub, root.id, names)
    async for _ in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=root.id)):
        pass
    print(f"\nthe tree, finished in {time.monotonic() - began:.2f}s:")
    await _print_tree(stub, root.id, names, 0)
    print()


async def _run_refused(stub: scheduler_pb2_grpc.SchedulerAsyncStub, names: dict[str, str]) -> None:
    spec = task_pb2.TaskSpec(
        description="clean up scratch",
        subtasks=[task_pb2.TaskSpec(kind="shell", command=REFUSED, description="clean up")],
    )
    task = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec))
    child = task.child_ids[0]
    refusal = None
    async for event in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=child)):
        if event.WhichOneof("payload") == "refusal":
            refusal = event.refusal
    final = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=child))
    print(f"task {child}: `{REFUSED}`")
    where = names.get(final.assigned_agent, final.assigned_agent)
    if refusal is not None:
        print(
            f"  {_state(final)} on {where}: `{refusal.command}` refused in {refusal.mode} mode"
            f" by rule {refusal.rule}: {refusal.detail}"
        )
    else:
        print(f"  {_state(final)} on {where}: {final.error}")
