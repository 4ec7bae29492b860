"""Following a task to its end: its events (and its subtasks') as they come, a spinner while
nothing happens, and why it waits; `run`, `watch` and `replay` share it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from rich.status import Status

from agentmesh.cli.client import (
    CALL_TIMEOUT,
    Stub,
    agent_names,
    get_task,
    task_events,
    task_tree,
)
from agentmesh.cli.output import Output
from agentmesh.cli.render import EventRenderer
from agentmesh.cli.views import event_json, state_name, title
from agentmesh.rpc import convert
from agentmesh.v1 import scheduler_pb2, task_pb2

WAITING_POLL_SECONDS = 1.0
# The spinner shows after this long without an event.
IDLE_SECONDS = 0.4


class _Spinner:
    """A spinner on stderr while nothing happens (a terminal only); hidden before output."""

    def __init__(self, output: Output, *, enabled: bool) -> None:
        self._status: Status | None = None
        if enabled and output.err_is_terminal and not output.json:
            self._status = Status("", console=output.err, spinner="dots")
        self._shown = False
        self.text = "waiting for the scheduler"

    def show(self) -> None:
        if self._status is None:
            return
        self._status.update(self.text)
        if not self._shown:
            self._status.start()
            self._shown = True

    def hide(self) -> None:
        if self._status is not None and self._shown:
            self._status.stop()
            self._shown = False


async def follow(stub: Stub, output: Output, root_id: str, *, quiet: bool = False) -> task_pb2.Task:
    """Show a task's (and its subtasks') events until it ends; return the ended task.

    `quiet`: show nothing, only wait for the end."""
    tree = await task_tree(stub, root_id)
    names = await agent_names(stub)
    renderer = EventRenderer(output, names)
    renderer.labelled = len(tree) > 1
    for task in tree:
        if task.id == root_id:
            label = task.spec.description[:24] or "task"
        else:
            what = task.spec.command or task.spec.prompt
            label = title(task.spec, 24) if task.spec.description or what else task.id
        renderer.add_task(task.id, label)
    spinner = _Spinner(output, enabled=not quiet)
    last_event = time.monotonic()
    done: set[str] = set()

    async def watch(task_id: str) -> None:
        nonlocal last_event
        async for message in task_events(stub, task_id):
            event = convert.event_from_proto(message)
            spinner.hide()
            last_event = time.monotonic()
            if quiet:
                continue
            if output.json:
                output.data(event_json(event))
            else:
                renderer.render(event)
        done.add(task_id)

    async def explain() -> None:
        """Why tasks wait (GetTask's waiting_reason), and the spinner while idle."""
        reasons: dict[str, str] = {}
        polled = 0.0
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if now - polled >= WAITING_POLL_SECONDS:
                polled = now
                for task in await _unfinished(stub, tree, done):
                    reason = task.waiting_reason if state_name(task.state) == "submitted" else ""
                    if reason and reasons.get(task.id) != reason and not (output.json or quiet):
                        spinner.hide()
                        renderer.waiting(task.id, reason)
                    reasons[task.id] = reason
                waiting = [r for r in reasons.values() if r]
                spinner.text = f"waiting: {waiting[0]}" if waiting else "working"
            # Not in the middle of an answer's line: the spinner would draw over it.
            if now - last_event >= IDLE_SECONDS and not renderer.mid_line:
                spinner.show()

    async with _background(explain()):
        try:
            await asyncio.gather(*(watch(task.id) for task in tree))
        finally:
            spinner.hide()
            renderer.finish()
    return await get_task(stub, root_id)


async def _unfinished(stub: Stub, tree: list[task_pb2.Task], done: set[str]) -> list[task_pb2.Task]:
    """The tasks of the tree not ended yet, as they are now: one call for the root and one
    per parent (its children in one listing), however many subtasks there are."""
    current = [await get_task(stub, tree[0].id)] if tree[0].id not in done else []
    for parent in (task for task in tree if task.child_ids):
        if set(parent.child_ids) <= done:
            continue
        listing = await stub.ListTasks(
            scheduler_pb2.ListTasksRequest(parent_id=parent.id, page_size=1000),
            timeout=CALL_TIMEOUT,
        )
        current += [task for task in listing.tasks if task.id not in done]
    return current


@contextlib.asynccontextmanager
async def _background(coroutine: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(coroutine)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
