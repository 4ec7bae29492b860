"""The trace writer with a fake append: order, batching, the bounded backlog, superseding.

The fake append records each batch and can be held, as a slow database round trip would be.
The tests wait on the writer's own progress (events), never on the clock.
"""

from __future__ import annotations

import asyncio

import pytest

from agentmesh.scheduler.trace_writer import MAX_BACKLOG, MIN_EVENT_COST, TraceWriter, trace_cost
from agentmesh.tasks.events import Payload, Refusal, Result, Stdout
from agentmesh.tasks.model import TaskState


class FakeTrace:
    """Records batches; `hold()` makes the next appends wait until `release()`."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.after: list[int] = []
        self.answer = True
        self.error: Exception | None = None
        self.entered = asyncio.Event()
        self._gate = asyncio.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()
        self.entered.clear()

    def release(self) -> None:
        self._gate.set()

    async def append_many(self, batch: list[Payload], after_seq: int) -> int | None:
        """The store's contract: the batch follows event `after_seq`; the new last seq."""
        self.entered.set()
        await self._gate.wait()
        if self.error is not None:
            raise self.error
        self.after.append(after_seq)
        self.batches.append([p.text for p in batch])  # type: ignore[union-attr]
        return after_seq + len(batch) if self.answer else None

    @property
    def written(self) -> list[str]:
        return [text for batch in self.batches for text in batch]


async def settle() -> None:
    """Let every ready task run (no clock involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


def lines(count: int, start: int = 0) -> list[Stdout]:
    return [Stdout(f"line {i}") for i in range(start, start + count)]


async def test_a_quiet_stream_writes_each_event_at_once() -> None:
    trace = FakeTrace()
    writer = TraceWriter(trace.append_many, last_seq=1)

    for payload in lines(3):
        await writer.add(payload)
        await settle()

    assert trace.batches == [["line 0"], ["line 1"], ["line 2"]]
    assert await writer.close()


async def test_what_arrives_during_a_write_goes_in_the_next_batch_in_order() -> None:
    trace = FakeTrace()
    writer = TraceWriter(trace.append_many, last_seq=1)
    trace.hold()
    await writer.add(Stdout("first"))
    await trace.entered.wait()  # the first batch is being written

    for payload in lines(50):
        await writer.add(payload)
    trace.release()

    assert await writer.close()
    assert trace.batches == [["first"], [f"line {i}" for i in range(50)]]


async def test_close_writes_everything_that_is_left() -> None:
    trace = FakeTrace()
    writer = TraceWriter(trace.append_many, last_seq=1)

    for payload in lines(500):
        await writer.add(payload)

    assert await writer.close()
    assert trace.written == [f"line {i}" for i in range(500)]


async def test_after_a_busy_write_the_next_event_is_written_at_once() -> None:
    trace = FakeTrace()
    writer = TraceWriter(trace.append_many, last_seq=1)
    trace.hold()
    await writer.add(Stdout("a"))
    await trace.entered.wait()
    await writer.add(Stdout("b"))  # arrives during the write: the next batch
    trace.release()
    await settle()
    assert trace.batches == [["a"], ["b"]]

    await writer.add(Stdout("c"))  # the stream is quiet again: no linger is left over
    await settle()

    assert trace.batches == [["a"], ["b"], ["c"]]
    assert await writer.close()


async def test_a_full_backlog_makes_the_stream_wait_instead_of_growing() -> None:
    assert MAX_BACKLOG == 256  # events held while a write is in flight, at most
    trace = FakeTrace()
    writer = TraceWriter(trace.append_many, last_seq=1)
    trace.hold()
    await writer.add(Stdout("first"))
    await trace.entered.wait()
    for payload in lines(MAX_BACKLOG):
        await writer.add(payload)

    one_more = asyncio.create_task(writer.add(Stdout("one more")))
    await settle()
    assert not one_more.done(), "the backlog grew past its bound"

    trace.release()
    await one_more
    assert await writer.close()
    assert trace.written == ["first", *(f"line {i}" for i in range(MAX_BACKLOG)), "one more"]
    assert max(len(batch) for batch in trace.batches) == MAX_BACKLOG


async def test_below_the_bound_adding_never_waits() -> None:
    trace = FakeTrace()
    writer = TraceWriter(trace.append_many, last_seq=1)
    trace.hold()
    await writer.add(Stdout("first"))
    await trace.entered.wait()

    last = asyncio.create_task(writer.add(Stdout("last")))
    for payload in lines(MAX_BACKLOG - 2):
        await writer.add(payload)
    await settle()

    assert last.done()
    trace.release()
    assert await writer.close()


async def test_a_superseded_attempt_stops_writing_and_says_so() -> None:
    trace = FakeTrace()
    trace.answer = False  # the attempt lost its lease: the store refuses the batch
    writer = TraceWriter(trace.append_many, last_seq=1)

    await writer.add(Stdout("late"))
    await settle()
    await writer.add(Stdout("later"))  # dropped, without an error

    assert not await writer.close()
    assert writer.superseded
    assert trace.batches == [["late"]]


async def test_a_stream_waiting_on_a_full_backlog_is_let_go_when_superseded() -> None:
    trace = FakeTrace()
    writer = TraceWriter(trace.append_many, last_seq=1)
    trace.hold()
    await writer.add(Stdout("first"))
    await trace.entered.wait()
    for payload in lines(MAX_BACKLOG):
        await writer.add(payload)
    waiting = asyncio.create_task(writer.add(Stdout("waiting")))
    await settle()
    assert not waiting.done()

    trace.answer = False
    trace.release()

    await waiting  # does not hang
    assert not await writer.close()
    assert trace.batches == [["first"]]


async def test_a_failed_write_reaches_the_stream() -> None:
    trace = FakeTrace()
    trace.error = ConnectionResetError("database gone")
    writer = TraceWriter(trace.append_many, last_seq=1)

    await writer.add(Stdout("x"))
    await settle()

    with pytest.raises(ConnectionResetError, match="database gone"):
        await writer.add(Stdout("y"))
    with pytest.raises(ConnectionResetError):
        await writer.close()


async def test_cancel_stops_the_writer() -> None:
    trace = FakeTrace()
    trace.hold()
    writer = TraceWriter(trace.append_many, last_seq=1)
    await writer.add(Stdout("x"))
    await trace.entered.wait()

    writer.cancel()

    with pytest.raises(asyncio.CancelledError):
        await writer.close()
    assert trace.batches == []


async def test_each_batch_follows_the_last_sequence_number_written() -> None:
    trace = FakeTrace()
    writer = TraceWriter(trace.append_many, last_seq=1)
    trace.hold()
    await writer.add(Stdout("a"))
    await trace.entered.wait()
    await writer.add(Stdout("b"))
    await writer.add(Stdout("c"))
    trace.release()

    assert await writer.close()
    assert trace.batches == [["a"], ["b", "c"]]
    assert trace.after == [1, 2]
    assert writer.last_seq == 4


def test_an_event_costs_the_characters_of_all_its_text() -> None:
    refusal = Refusal(command="c" * 300, rule="r" * 10, mode="weak", detail="d" * 100)

    assert trace_cost(Stdout("é" * 1000)) == 1000  # characters, not bytes
    assert trace_cost(refusal) == 300 + 10 + 4 + 100


def test_an_event_costs_at_least_a_rows_overhead() -> None:
    assert MIN_EVENT_COST == 256
    assert trace_cost(Stdout("")) == MIN_EVENT_COST
    assert trace_cost(Stdout("x" * 256)) == 256
    assert trace_cost(Stdout("x" * 257)) == 257
    result = Result(TaskState.COMPLETED, output="o" * 500, error="e")
    assert trace_cost(result) == 500 + 1 + len("completed")


async def test_what_arrives_during_a_linger_joins_its_batch() -> None:
    trace = FakeTrace()
    writer = TraceWriter(trace.append_many, last_seq=1)

    await writer.add(Stdout("running"), linger=3600)
    await writer.add(Stdout("output"))
    await settle()
    assert trace.batches == []  # held

    assert await writer.close()
    assert trace.batches == [["running", "output"]]


async def test_the_rest_of_a_lingering_batch_is_handed_back_unwritten() -> None:
    trace = FakeTrace()
    writer = TraceWriter(trace.append_many, last_seq=1)

    await writer.add(Stdout("running"), linger=3600)
    await writer.add(Stdout("output"))

    assert await writer.take_rest() == [Stdout("running"), Stdout("output")]
    assert trace.batches == []
    assert writer.last_seq == 1


async def test_a_full_backlog_ends_a_linger() -> None:
    trace = FakeTrace()
    writer = TraceWriter(trace.append_many, last_seq=1)

    await writer.add(Stdout("first"), linger=3600)
    for payload in lines(MAX_BACKLOG):  # the last add waits for room: the linger ended
        await writer.add(payload)

    assert await writer.close()
    assert trace.written == ["first", *(p.text for p in lines(MAX_BACKLOG))]


async def test_the_close_ends_a_linger() -> None:
    trace = FakeTrace()
    writer = TraceWriter(trace.append_many, last_seq=1)

    await writer.add(Stdout("running"), linger=3600)

    assert await writer.close()  # not an hour later: the per-test timeout would fail it
    assert trace.batches == [["running"]]


async def test_a_lingering_event_alone_is_written_when_its_linger_ends() -> None:
    trace = FakeTrace()
    writer = TraceWriter(trace.append_many, last_seq=1)

    await writer.add(Stdout("running"), linger=0.001)
    await trace.entered.wait()
    await writer.add(Stdout("later"))
    assert await writer.close()

    assert trace.batches == [["running"], ["later"]]
