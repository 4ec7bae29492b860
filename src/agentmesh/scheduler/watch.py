"""Watching a task: replay its stored trace, then follow it live until it ends.

Any number of watchers, on any replica: each reads from `task_events`, woken by NOTIFY
(through TaskSignals) and by a slow poll, so a lost notification only delays an event.
A watcher leaving never affects the task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from agentmesh.scheduler.notifications import TaskSignals
from agentmesh.scheduler.store import TaskStore
from agentmesh.tasks.events import Result, TaskEvent

POLL_SECONDS = 1.0


async def watch(
    store: TaskStore, signals: TaskSignals, task_id: str, after_seq: int
) -> AsyncIterator[TaskEvent]:
    """Events after `after_seq`, in order, until (and including) the task's final result."""
    await store.state(task_id)  # NotFound for an unknown id, before anything streams
    wake = signals.subscribe(task_id)
    try:
        last = after_seq
        while True:
            wake.clear()
            events = await store.events_after(task_id, last)
            for event in events:
                last = event.seq
                yield event
                if isinstance(event.payload, Result):
                    return
            if events:
                continue  # there may be more than one page
            # Ended, and its result was at or before `last` (after_seq past the end): done.
            # The result is written with the ending, so re-read once to close the race.
            if (await store.state(task_id)).terminal and not await store.events_after(
                task_id, last, 1
            ):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), POLL_SECONDS)
    finally:
        signals.unsubscribe(task_id, wake)


async def wait_for_end(
    store: TaskStore, signals: TaskSignals, task_id: str, seconds: float
) -> None:
    """Return once the task has ended, or after `seconds`, whichever comes first."""
    wake = signals.subscribe(task_id)
    try:
        async with asyncio.timeout(seconds):
            while True:
                wake.clear()
                if (await store.state(task_id)).terminal:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL_SECONDS)
    except TimeoutError:
        return
    finally:
        signals.unsubscribe(task_id, wake)
