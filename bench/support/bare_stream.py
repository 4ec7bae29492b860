"""grpcio's own floor for a one-event-a-message replay: a bare Scheduler server whose
WatchTask yields COUNT prebuilt events (no database, no conversion), run as a process of its
own as the scheduler is. `python bench/support/bare_stream.py COUNT` prints `listening on
HOST:PORT` and serves until killed; `replay_floor_ms` measures it from a client."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc, task_pb2


class _Bare(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, count: int) -> None:
        self._events = [
            task_pb2.TaskEvent(
                task_id="t-bare", seq=seq, attempt=1, text=task_pb2.TextDelta(text=f"line {seq}\n")
            )
            for seq in range(1, count + 1)
        ]

    async def WatchTask(self, request: Any, context: Any) -> AsyncIterator[task_pb2.TaskEvent]:
        for event in self._events:
            yield event


async def _serve(count: int) -> None:
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(_Bare(count), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


async def replay_floor_ms(count: int, replays: int) -> float:
    """Median time, in ms, for this process to receive `count` one-event messages from the
    bare server."""
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        address = server.stdout.readline().split()[-1]
        async with grpc.aio.insecure_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            request = scheduler_pb2.WatchTaskRequest(task_id="t-bare")
            times = []
            for _ in range(replays):
                started = time.perf_counter()
                received = len([event async for event in stub.WatchTask(request)])
                times.append((time.perf_counter() - started) * 1000)
                assert received == count, received
        return statistics.median(times)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
