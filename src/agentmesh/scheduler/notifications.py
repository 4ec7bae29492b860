"""LISTEN/NOTIFY: one dedicated connection that wakes the dispatcher, watchers and cancels.

A LISTEN connection can drop silently (a PostgreSQL restart, a network blip): this one
reconnects with backoff, listens again, and then wakes everyone, since notifications sent
while it was away are lost. Slow polls elsewhere cover the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable

import asyncpg

from agentmesh.db.connect import DatabaseUnavailable, connect
from agentmesh.db.notify import CANCEL_CHANNEL, EVENTS_CHANNEL, QUEUE_CHANNEL, SLOT_FREED

log = logging.getLogger(__name__)


class TaskSignals:
    """Per-task wake-ups for watchers on this replica."""

    def __init__(self) -> None:
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)

    def subscribe(self, task_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters[task_id].add(event)
        return event

    def unsubscribe(self, task_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(task_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[task_id]

    def notify(self, task_id: str) -> None:
        for event in self._waiters.get(task_id, ()):
            event.set()

    def notify_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()


class Listener:
    def __init__(
        self,
        dsn: str,
        *,
        on_queue: Callable[[str], None],
        on_slot_freed: Callable[[], None],
        on_events: Callable[[str], None],
        on_cancel: Callable[[str], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._dsn = dsn
        self._handlers: dict[str, Callable[[str], None]] = {
            QUEUE_CHANNEL: lambda payload: (
                on_slot_freed() if payload == SLOT_FREED else on_queue(payload)
            ),
            EVENTS_CHANNEL: lambda ids: _each(ids, on_events),
            CANCEL_CHANNEL: on_cancel,
        }
        self._on_reconnect = on_reconnect
        self.connected = asyncio.Event()
        self._pinger: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Listen until cancelled, reconnecting whenever the connection is lost."""
        backoff = 0.1
        while True:
            try:
                conn = await connect(self._dsn, connect_timeout=5)
            except DatabaseUnavailable as exc:
                log.warning("LISTEN connection failed, retrying in %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            # One event per connection: closing an old connection must not mark a new one lost.
            lost = asyncio.Event()
            try:
                await self._listen(conn, lost)
                backoff = 0.1
                self.connected.set()
                self._on_reconnect()
                await lost.wait()
                log.warning("LISTEN connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("LISTEN connection failed: %s", exc)
            finally:
                self.connected.clear()
                if self._pinger is not None:
                    self._pinger.cancel()
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=2))
            await asyncio.sleep(backoff)

    async def _listen(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        conn.add_termination_listener(lambda _: lost.set())
        for channel, handler in self._handlers.items():
            await conn.add_listener(
                channel, lambda _c, _pid, _channel, payload, h=handler: h(payload)
            )
        # Detect a dead connection even when nothing is sent: a cheap query now and then.
        self._pinger = asyncio.create_task(self._ping(conn, lost), name="listen ping")

    @staticmethod
    async def _ping(conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        while not conn.is_closed():
            await asyncio.sleep(2.0)
            try:
                await asyncio.wait_for(conn.execute("SELECT 1"), 5)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                lost.set()
                return


def _each(ids: str, handler: Callable[[str], None]) -> None:
    """An events notification names many tasks (see queries.announced)."""
    for task_id in ids.split():
        handler(task_id)
