"""GroupCommit: a lone write goes at once; writes that arrive meanwhile share the next one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agentmesh.scheduler.group_commit import GroupCommit


class Writer:
    """Records each batch; a batch waits for `release` when `hold` is set."""

    def __init__(self, *, hold: bool = False, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        if not hold:
            self.release.set()
        self.fail_on = fail_on

    async def __call__(self, items: Sequence[int]) -> list[str]:
        self.batches.append(list(items))
        self.started.set()
        await self.release.wait()
        if self.fail_on in items:
            raise ValueError(f"cannot write {self.fail_on}")
        return [f"wrote {item}" for item in items]


async def test_a_lone_item_is_written_at_once_and_alone() -> None:
    writer = Writer()
    commit = GroupCommit(writer)
    assert await commit(7) == "wrote 7"
    assert await commit(8) == "wrote 8"
    assert writer.batches == [[7], [8]]


async def test_items_that_arrive_during_a_write_share_the_next_one() -> None:
    writer = Writer(hold=True)
    commit = GroupCommit(writer)
    first = asyncio.create_task(commit(0))
    await writer.started.wait()
    rest = [asyncio.create_task(commit(n)) for n in range(1, 6)]
    await asyncio.sleep(0)
    writer.release.set()
    answers = await asyncio.gather(first, *rest)
    assert answers == [f"wrote {n}" for n in range(6)]
    assert writer.batches == [[0], [1, 2, 3, 4, 5]]


async def test_items_handed_over_together_go_together() -> None:
    writer = Writer()
    commit = GroupCommit(writer)
    answers = await asyncio.gather(*(commit(n) for n in range(4)))
    assert answers == [f"wrote {n}" for n in range(4)]
    assert writer.batches == [[0, 1, 2, 3]]


async def test_a_batch_holds_at_most_max_batch_items() -> None:
    writer = Writer()
    commit = GroupCommit(writer, max_batch=3)
    answers = await asyncio.gather(*(commit(n) for n in range(7)))
    assert answers == [f"wrote {n}" for n in range(7)]
    assert writer.batches == [[0, 1, 2], [3, 4, 5], [6]]


async def test_a_failed_write_fails_its_own_batch_only() -> None:
    writer = Writer(hold=True, fail_on=0)
    commit = GroupCommit(writer)
    first = asyncio.create_task(commit(0))
    await writer.started.wait()
    later = asyncio.create_task(commit(1))
    await asyncio.sleep(0)
    writer.release.set()
    with pytest.raises(ValueError, match="cannot write 0"):
        await first
    assert await later == "wrote 1"
    # And the commit still works afterwards.
    assert await commit(2) == "wrote 2"


async def test_a_caller_that_stops_waiting_does_not_stop_the_write() -> None:
    writer = Writer(hold=True)
    commit = GroupCommit(writer)
    impatient = asyncio.create_task(commit(0))
    await writer.started.wait()
    patient = asyncio.create_task(commit(1))
    await asyncio.sleep(0)
    impatient.cancel()
    writer.release.set()
    assert await patient == "wrote 1"
    assert writer.batches == [[0], [1]]


async def test_a_write_that_answers_the_wrong_count_is_an_error() -> None:
    async def short(items: Sequence[int]) -> list[str]:
        return ["only one"]

    commit = GroupCommit(short)
    with pytest.raises(RuntimeError, match="answered 1 of 2 items"):
        await asyncio.gather(commit(1), commit(2))


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(Writer(), max_batch=0)


async def test_a_write_that_answers_too_many_is_an_error_too() -> None:
    async def long(items: Sequence[int]) -> list[str]:
        return ["a", "b", "c"]

    commit = GroupCommit(long)
    with pytest.raises(RuntimeError, match="answered 3 of 2 items"):
        await asyncio.gather(commit(1), commit(2))


async def test_a_batch_of_one_is_allowed_and_the_default_batch_is_256() -> None:
    one_by_one = Writer()
    assert await asyncio.gather(*(GroupCommit(one_by_one, max_batch=1)(n) for n in range(3)))
    assert one_by_one.batches == [[0], [1], [2]]
    default = Writer()
    commit = GroupCommit(default)
    await asyncio.gather(*(commit(n) for n in range(300)))
    assert [len(b) for b in default.batches] == [256, 44]


async def test_a_stopped_commit_fails_its_callers_instead_of_leaving_them_waiting() -> None:
    """The event loop shutting down cancels the writer: every caller hears of it."""
    writer = Writer(hold=True)
    commit = GroupCommit(writer)
    writing = asyncio.create_task(commit(0))
    await writer.started.wait()
    waiting = asyncio.create_task(commit(1))
    await asyncio.sleep(0)
    assert commit._writer is not None
    commit._writer.cancel()

    with pytest.raises(asyncio.CancelledError):
        await writing
    with pytest.raises(RuntimeError, match="stopped"):
        await waiting
