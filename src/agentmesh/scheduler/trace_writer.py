"""Writes an attempt's events to the trace in batches, while the node goes on streaming.

Events are written in arrival order; whatever arrived while the previous batch was being
written goes in the next one, so a quiet stream writes each event at once and a busy one
writes many per round trip. An event added with a `linger` is held that long, with what
arrives meanwhile, unless the writer closes or its backlog fills first: a short task's
whole trace then goes with its result (see `take_rest`). A bounded backlog slows the stream
instead of growing memory.
Each batch names the sequence number it follows, so a batch sent again after a lost reply
is recognised by the store instead of being written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from agentmesh.tasks.events import Payload

MAX_BACKLOG = 256
# What an event costs the trace at the least: a row's own overhead, so that a stream of
# one-byte events runs out of budget too.
MIN_EVENT_COST = 256


# Writes a batch after the given sequence number; returns the new last one, or None if the
# attempt was superseded.
AppendMany = Callable[[list[Payload], int], Awaitable[int | None]]


class TraceWriter:
    def __init__(self, append_many: AppendMany, last_seq: int) -> None:
        self._append_many = append_many
        self.last_seq = last_seq
        self._pending: list[Payload] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        # Ends a linger: the close, or a full backlog.
        self._flush = asyncio.Event()
        self._closing = False
        # Set by `take_rest`: what is pending is handed back, not written.
        self._handing_back = False
        # How long the pending batch may wait for company (see `add`).
        self._linger = 0.0
        self.superseded = False
        # Started with the first batch to write: a short task's first event lingers on a
        # timer alone, and its whole trace goes with its result, without a writer at all.
        self._task: asyncio.Task[None] | None = None
        self._lingering: asyncio.TimerHandle | None = None

    async def add(self, payload: Payload, *, linger: float = 0.0) -> None:
        """Queue an event; waits while the backlog is full. Raises if the writer died.

        With `linger`, an event that would start a batch holds it up to that many seconds
        (what arrives meanwhile joins it), unless the writer closes or its backlog fills."""
        if self._task is not None and self._task.done():
            self._task.result()  # re-raise the writer's error, if any
            return
        await self._room.wait()
        if not self._pending:
            self._linger = linger
        self._pending.append(payload)
        if len(self._pending) >= MAX_BACKLOG:
            self._room.clear()
            self._flush.set()
        self._wake.set()
        if self._task is None:
            if self._linger and not self._flush.is_set():
                if self._lingering is None:
                    loop = asyncio.get_running_loop()
                    self._lingering = loop.call_later(self._linger, self._start)
            else:
                self._start()

    def _start(self) -> None:
        """Start writing (a linger that ran on the timer has ended: it is not waited again)."""
        if self._lingering is not None:
            self._lingering.cancel()
            if not self._closing:
                self._linger = 0.0
            self._lingering = None
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="trace writer")

    async def close(self) -> bool:
        """Write what is left; False if the attempt was superseded meanwhile."""
        self._closing = True
        self._flush.set()
        self._wake.set()
        self._start()
        assert self._task is not None
        await self._task
        return not self.superseded

    async def take_rest(self) -> list[Payload] | None:
        """Stop writing: wait for the batch being written, and hand back the events not
        written yet (they follow `last_seq`), for the caller to write with what ends the
        attempt; None if the attempt was superseded meanwhile."""
        self._closing = True
        self._handing_back = True
        self._flush.set()
        self._wake.set()
        if self._lingering is not None:
            self._lingering.cancel()  # nothing was written: all of it is handed back
            self._lingering = None
        if self._task is not None:
            await self._task
        if self.superseded:
            return None
        rest, self._pending = self._pending, []
        return rest

    def cancel(self) -> None:
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if (linger := self._linger) and not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(linger):
                        await self._flush.wait()
            while self._pending and not self._handing_back:
                batch, self._pending = self._pending, []
                self._linger = 0.0
                self._room.set()
                last_seq = await self._append_many(batch, self.last_seq)
                if last_seq is None:
                    self.superseded = True
                    self._room.set()
                    return
                self.last_seq = last_seq
            if self._closing:
                return


def trace_cost(payload: Payload) -> int:
    """What storing `payload` counts against an attempt's `scheduler.max_trace_chars`: the
    characters of its text, and at least `MIN_EVENT_COST`. (Characters, not bytes: a node
    cuts output at a number of bytes, and decoded output never has more characters.)"""
    text = sum(len(v) for name in payload.__slots__ if isinstance(v := getattr(payload, name), str))
    return max(MIN_EVENT_COST, text)
