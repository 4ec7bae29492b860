"""A dispatcher on the test database with agents that only heartbeat: no node listens at
their endpoints, so a test looks at what a round placed and stops the attempts before they
dial."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from agentmesh.config import ApiPolicy, TlsSettings
from agentmesh.keys.forecast import Forecaster
from agentmesh.keys.quota import Limits
from agentmesh.keys.reservations import KeyReserver
from agentmesh.node.card import AgentCard, HeldKey
from agentmesh.scheduler.agents import AgentRegistry
from agentmesh.scheduler.dispatch import Dispatcher, DispatchSettings
from agentmesh.scheduler.node_link import Channels
from agentmesh.scheduler.notifications import Listener
from agentmesh.scheduler.store import TaskStore


def card(
    name: str,
    *,
    slots: int,
    capabilities: tuple[str, ...] = (),
    held_keys: tuple[HeldKey, ...] = (),
    hostname: str = "",
) -> AgentCard:
    return AgentCard(
        agent_id=f"agent-{name}",
        name=name,
        hostname=hostname or f"{name}.lan",
        ip_addresses=("127.0.0.1",),
        version="test",
        executors=("echo", "shell", "gemini"),
        models=(),
        capabilities=capabilities,
        os="linux",
        arch="x86_64",
        cpu_count=2,
        memory_bytes=1 << 30,
        max_concurrency=slots,
        permission_mode="weak",
        endpoint="127.0.0.1:9",  # nothing listens there
        started_at="2026-12-01T00:00:00Z",
        held_keys=held_keys,
    )


async def dispatcher_on(
    pool: asyncpg.Pool,
    cards: list[AgentCard],
    owner: str,
    *,
    poll_seconds: float = 1.0,
    snapshot_seconds: float = 0.25,
) -> tuple[Dispatcher, TaskStore, Channels]:
    """A dispatcher, its store and its channels (close them after `dispatcher.stop()`),
    with `cards` heartbeating. The store hands what it queues to the dispatcher, as the
    scheduler's does."""
    store = TaskStore(pool, default_max_attempts=3, origin=owner)
    registry = AgentRegistry(pool, ttl_seconds=60)
    for each in cards:
        await registry.heartbeat(each, ())
    keys = KeyReserver(
        pool,
        Forecaster(pool),
        Limits.of(ApiPolicy()),
        default_model="gemini-2.5-flash",
        default_tolerance_seconds=30,
    )
    channels = Channels(TlsSettings())
    settings = DispatchSettings(
        owner=owner,
        lease_seconds=30,
        max_trace_chars=32 << 20,
        poll_seconds=poll_seconds,
        snapshot_seconds=snapshot_seconds,
    )
    dispatcher = Dispatcher(store, registry, pool, channels, settings, keys)
    store.on_queued = dispatcher.submitted
    return dispatcher, store, channels


async def hold_attempts(dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Attempts run (hold their slots) until the event is set."""
    finish = asyncio.Event()

    async def streamed(*args: object) -> None:
        await finish.wait()

    monkeypatch.setattr(dispatcher._runner, "run", streamed)
    return finish


@contextlib.asynccontextmanager
async def listening(
    database_uri: str,
    *,
    on_queue: Callable[[str], object] = lambda _: None,
    on_slot_freed: Callable[[], object] = lambda: None,
    on_events: Callable[[str], object] = lambda _: None,
) -> AsyncIterator[Listener]:
    """A Listener on the test database for the block, connected before it starts: what it
    hears goes to the handlers given (see Listener), the rest nowhere."""
    listener = Listener(
        database_uri,
        on_queue=on_queue,
        on_slot_freed=on_slot_freed,
        on_events=on_events,
        on_cancel=lambda _: None,
        on_reconnect=lambda: None,
    )
    running = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(20):
            await listener.connected.wait()
        yield listener
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
