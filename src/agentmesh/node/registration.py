"""A node keeps itself registered with the scheduler: a heartbeat every interval.

The scheduler decides the interval (it also decides when a silent agent is offline): each
answer carries it, and the node's own configured interval only serves until the first one.
While the scheduler is away the node goes on serving and retries with backoff; when the
node shuts down, its last heartbeat says it is draining, so it gets no new work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from agentmesh.config import TlsSettings
from agentmesh.node.card import AgentCard
from agentmesh.rpc import convert
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc

log = logging.getLogger(__name__)

REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# Bounds on an interval the scheduler asks for: never a busy loop, never silence.
MIN_INTERVAL_SECONDS = 0.05
MAX_INTERVAL_SECONDS = 300.0


class Registration:
    def __init__(
        self,
        scheduler: str,
        card: Callable[[], AgentCard],
        running: Callable[[], tuple[str, ...]],
        *,
        interval_seconds: float,
        token: str | None,
        tls: TlsSettings,
        on_dispatch_secret: Callable[[str], None] | None = None,
    ) -> None:
        """`token` is the node's credential; `on_dispatch_secret` hears what the scheduler
        will present when it calls this node (each reply says it again)."""
        self._scheduler = scheduler
        self._card = card
        self._running = running
        self._interval = interval_seconds
        self._on_dispatch_secret = on_dispatch_secret
        self._channel = open_channel(scheduler, token=token, tls=tls)
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)
        self.registered = asyncio.Event()

    async def beat(self) -> None:
        request = scheduler_pb2.HeartbeatRequest(
            card=convert.card_to_proto(self._card()), running_task_ids=self._running()
        )
        reply = await self._stub.Heartbeat(request, timeout=max(self._interval, 2.0))
        if self._on_dispatch_secret is not None:
            self._on_dispatch_secret(reply.dispatch_secret)
        if reply.interval_seconds > 0:
            interval = min(max(reply.interval_seconds, MIN_INTERVAL_SECONDS), MAX_INTERVAL_SECONDS)
            if interval != self._interval:
                log.info("heartbeat every %gs, as scheduler %s asks", interval, self._scheduler)
                self._interval = interval

    async def run(self) -> None:
        """Heartbeat until cancelled."""
        backoff = self._interval
        while True:
            try:
                await self.beat()
            except grpc.aio.AioRpcError as error:
                if self.registered.is_set() or backoff == self._interval:
                    # A refused credential says why (its messages name no secret).
                    why = error.details() if error.code() in REFUSED else ""
                    log.warning(
                        "heartbeat to %s failed (%s%s); retrying",
                        self._scheduler,
                        error.code().name,
                        f": {why}" if why else "",
                    )
                self.registered.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if not self.registered.is_set():
                log.info("registered with scheduler %s", self._scheduler)
            self.registered.set()
            backoff = self._interval
            await asyncio.sleep(self._interval)

    async def close(self, *, final_beat: bool) -> None:
        if final_beat:
            try:
                await self.beat()
            except grpc.aio.AioRpcError as error:
                log.info("last heartbeat failed: %s", error.code().name)
        await self._channel.close()
