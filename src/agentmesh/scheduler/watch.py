"""Watching a task: replay its stored trace, then follow it live until it ends.

Any number of watchers, on any replica: each reads from `task_events`, woken by NOTIFY
(through TaskSignals) and by a slow poll, so a lost notification only delays an event.
A watcher leaving never affects the task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

from agentmesh.scheduler.notifications import TaskSignals
from agentmesh.scheduler.store import TaskStore
from agentmesh.tasks.events import Result

POLL_SECONDS = 1.0
# Events read at a time.
PAGE = 500


async def watch_pages(
    store: TaskStore, signals: TaskSignals, task_id: str, after_seq: int
) -> AsyncIterator[list[asyncpg.Record]]:
    """The stored events after `after_seq` (see `TaskStore.event_rows_after`), in order and
    a page at a time, until (and including) the task's final result. While a full page is
    sent the next one is read, so a long replay's reads and its sending overlap."""
    await store.state(task_id)  # NotFound for an unknown id, before anything streams
    wake = signals.subscribe(task_id)
    ahead: asyncio.Future[list[asyncpg.Record]] | None = None
    try:
        last = after_seq
        while True:
            if ahead is not None:
                page, ahead = await ahead, None
            else:
                wake.clear()
                page = await store.event_rows_after(task_id, last, PAGE)
            if page:
                if page[-1]["kind"] == Result.KIND:  # a task's result is its last event
                    yield page
                    return
                last = page[-1]["seq"]
                if len(page) == PAGE:  # there may be more: read on while this page goes
                    ahead = asyncio.ensure_future(store.event_rows_after(task_id, last, PAGE))
                yield page
                continue
            # Ended, and its result was at or before `last` (after_seq past the end): done.
            # The result is written with the ending, so re-read once to close the race.
            if (await store.state(task_id)).terminal and not await store.event_rows_after(
                task_id, last, 1
            ):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), POLL_SECONDS)
    finally:
        if ahead is not None:  # the watcher left (or failed) while a page was read
            ahead.cancel()
            ahead.add_done_callback(lambda read: read.cancelled() or read.exception())
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
