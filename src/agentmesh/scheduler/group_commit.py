"""Group commit: many callers' writes of one kind, one statement.

A caller hands its item over and waits for its own answer. When nothing is being written,
the item goes at once, alone: a quiet scheduler waits for nobody. Items that arrive while
a statement runs wait for it and then go together, in the next one. Under load, a batch is
whatever arrived during the last statement: the busier the database, the bigger the
batches and the fewer the statements, with no timer anywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class GroupCommit(Generic[In, Out]):
    """Runs `write` on batches of items; each caller gets its own item's answer.

    `write` answers the items in order. Its error reaches every caller of that batch (and
    only them): each may retry alone, which puts its item in a later batch."""

    def __init__(
        self, write: Callable[[Sequence[In]], Awaitable[Sequence[Out]]], *, max_batch: int = 256
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write = write
        self._max_batch = max_batch
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def __call__(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain(), name="group commit")
        # The write goes on if this caller stops waiting: other callers share the batch,
        # and an item handed over is written (as a single statement would have been). Only
        # this caller's own future is cancelled then, which the writer passes over.
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    answers = await self._write([item for item, _ in batch])
                    if len(answers) != len(batch):
                        raise RuntimeError(
                            f"a batch write answered {len(answers)} of {len(batch)} items"
                        )
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._writer = None
            for _, future in self._pending:
                if not future.done():
                    future.set_exception(RuntimeError("the group commit was stopped"))
            self._pending.clear()
