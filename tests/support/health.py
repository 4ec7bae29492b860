"""Asks a server's gRPC health service, over and over, while a test does something heavy.

The one timing a test asserts: every answer comes within a second (a node whose event loop
is stuck stops answering health checks and heartbeats, and the scheduler marks it offline).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

WITHIN_SECONDS = 1.0


@dataclass
class HealthWatch:
    address: str
    # (seconds the answer took, status or error) of every check.
    checks: list[tuple[float, str]] = field(default_factory=list)

    @property
    def slowest(self) -> float:
        return max((seconds for seconds, _ in self.checks), default=0.0)

    def assert_answered_within_a_second(self) -> None:
        assert self.checks, f"no health check of {self.address} ended"
        late = [(round(s, 3), status) for s, status in self.checks if s >= WITHIN_SECONDS]
        failed = [(round(s, 3), status) for s, status in self.checks if status != "SERVING"]
        assert not late, (
            f"{self.address}: {len(late)} of {len(self.checks)} health checks took a second or"
            f" more: {late[:5]}"
        )
        assert not failed, f"{self.address}: {len(failed)} health checks failed: {failed[:5]}"


@contextlib.asynccontextmanager
async def watching_health(
    *addresses: str, interval: float = 0.1
) -> AsyncIterator[list[HealthWatch]]:
    """Check each address's health every `interval` until the block ends."""
    watches = [HealthWatch(address) for address in addresses]
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    stop = asyncio.Event()

    async def probe(watch: HealthWatch, channel: grpc.aio.Channel) -> None:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            started = time.monotonic()
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.aio.AioRpcError as error:
                status = error.code().name
            watch.checks.append((time.monotonic() - started, status))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    probes = [asyncio.create_task(probe(w, c)) for w, c in zip(watches, channels, strict=True)]
    try:
        yield watches
    finally:
        stop.set()
        await asyncio.gather(*probes, return_exceptions=True)
        for channel in channels:
            await channel.close()
