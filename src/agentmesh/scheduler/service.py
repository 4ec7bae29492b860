"""A scheduler's life: migrate, serve, dispatch, keep leases, and stop without losing work."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import grpc

from agentmesh.access import credentials
from agentmesh.access.policies import OpenSchedulerAccess, SchedulerAccess
from agentmesh.access.task_credentials import TaskCredentials
from agentmesh.config import Settings
from agentmesh.db.connect import GENERIC_PLANS, create_pool, data_dir
from agentmesh.db.outages import DATABASE_ERRORS
from agentmesh.db.setup import migrated_database
from agentmesh.keys import servicer as key_servicer
from agentmesh.keys.broker import KeyBroker
from agentmesh.keys.forecast import Forecaster, token_report
from agentmesh.keys.pool import load_key_file, read_key_file
from agentmesh.keys.quota import Limits
from agentmesh.keys.reservations import KeyReserver
from agentmesh.keys.vault import Vault, seal_plaintext_keys
from agentmesh.memory import servicer as memory_servicer
from agentmesh.memory.context import ContextBuilder
from agentmesh.memory.embedding import scheduler_embedder
from agentmesh.memory.knowledge import KnowledgeStore
from agentmesh.memory.network import HomeNetwork
from agentmesh.memory.profiles import Profiles
from agentmesh.memory.servicer import MemoryServicer
from agentmesh.rpc.server import RunningServer, split_host_port, start_server
from agentmesh.scheduler import retention
from agentmesh.scheduler.agents import AgentRegistry
from agentmesh.scheduler.approvals import ApprovalBook
from agentmesh.scheduler.delegation import DelegationLimits
from agentmesh.scheduler.dispatch import Dispatcher, DispatchSettings
from agentmesh.scheduler.node_link import Channels
from agentmesh.scheduler.notifications import Listener, TaskSignals
from agentmesh.scheduler.servicer import SERVICE_NAME, SchedulerServicer, register
from agentmesh.scheduler.store import TaskStore
from agentmesh.v1 import keys_pb2

log = logging.getLogger(__name__)


class Scheduler:
    """A started scheduler replica."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        store: TaskStore,
        registry: AgentRegistry,
        dispatcher: Dispatcher,
        channels: Channels,
        server: RunningServer,
        background: list[asyncio.Task[None]],
        side_tasks: set[asyncio.Task[None]],
        owner: str,
        listen_host: str,
        mesh_credentials: TaskCredentials,
    ) -> None:
        self.pool = pool
        # What running agents' mesh tools present (see access.task_credentials).
        self.mesh_credentials = mesh_credentials
        self.store = store
        self.registry = registry
        self.dispatcher = dispatcher
        self._channels = channels
        self.server = server
        self._background = background
        # Short tasks started on the side (cancels, reconciling): each leaves when done.
        self.side_tasks = side_tasks
        self.owner = owner
        self._listen_host = listen_host

    @property
    def address(self) -> str:
        return f"{self._listen_host}:{self.server.port}"

    @classmethod
    async def start(cls, settings: Settings, listen: str) -> Scheduler:
        # The key file is configuration: a mistake in it ends the start before the database.
        key_file = None
        if settings.env.GEMINI_API_KEY_FILE is not None:
            key_file = read_key_file(settings.env.GEMINI_API_KEY_FILE)
        secret_key = settings.env.AGENTMESH_SECRET_KEY
        vault = Vault.open(
            secret_key.get_secret_value() if secret_key is not None else None, data_dir(settings)
        )
        target, _ = await migrated_database(settings)
        pool = await create_pool(target.dsn, min_size=2, max_size=20, settings=GENERIC_PLANS)
        await seal_plaintext_keys(pool, vault)
        if key_file is not None:
            await load_key_file(pool, key_file, vault)
        config = settings.scheduler
        interval = config.heartbeat_interval_seconds
        owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        store = TaskStore(pool, default_max_attempts=config.max_attempts, origin=owner)
        # A user token secures the mesh: nodes come with credentials of their own, and the
        # scheduler dials each with a secret derived for its credential (see access).
        token = settings.token
        registry = AgentRegistry(
            pool,
            ttl_seconds=interval * config.heartbeat_ttl_intervals,
            dispatch_secrets=(
                (lambda credential, agent: vault.derive_secret(f"dispatch:{credential}:{agent}"))
                if token is not None
                else None
            ),
        )
        # Mesh credentials are minted per attempt under the vault's key (see access).
        mesh_credentials = TaskCredentials(vault.derive_secret)
        channels = Channels(settings.tls)
        limits = Limits.of(settings.api_policy)
        reserver = KeyReserver(
            pool,
            Forecaster(pool),
            limits,
            default_model=settings.agent_defaults.model,
            default_tolerance_seconds=settings.api_policy.throttle_tolerance_seconds,
        )
        broker = KeyBroker(pool, vault, limits)
        # The memory: profiles, knowledge and the home network, which every gemini attempt's
        # context is assembled from (see memory.context).
        profiles = Profiles(pool)
        knowledge = KnowledgeStore(pool, scheduler_embedder(pool, vault, settings))
        context = ContextBuilder(profiles.find, knowledge, registry.list_hosts)
        dispatcher = Dispatcher(
            store,
            registry,
            pool,
            channels,
            DispatchSettings(
                owner=owner,
                lease_seconds=config.lease_seconds,
                max_trace_chars=config.max_trace_chars,
            ),
            reserver,
            mesh_credentials,
            context,
        )
        store.on_queued = dispatcher.submitted
        store.placer = dispatcher.place_new
        signals = TaskSignals()
        background: list[asyncio.Task[None]] = []
        side_tasks: set[asyncio.Task[None]] = set()

        def on_the_side(work: Coroutine[Any, Any, None], name: str) -> None:
            task = asyncio.create_task(work, name=name)
            side_tasks.add(task)
            task.add_done_callback(side_tasks.discard)

        def cancel_here(task_ids: list[str]) -> None:
            for task_id in task_ids:
                on_the_side(dispatcher.cancel_local(task_id), f"cancel {task_id}")

        def reconnected() -> None:
            # Notifications sent while we were not listening are lost: look again.
            dispatcher.wake()
            signals.notify_all()
            on_the_side(dispatcher.reconcile(), "reconcile attempts")

        listener = Listener(
            target.dsn,
            on_queue=dispatcher.queue_changed,
            on_slot_freed=dispatcher.slot_freed,
            on_events=signals.notify,
            on_cancel=lambda task_id: cancel_here([task_id]),
            on_reconnect=reconnected,
        )
        servicer = SchedulerServicer(
            store,
            registry,
            signals,
            max_depth=config.max_subtask_depth,
            heartbeat_interval=interval,
            on_cancel=cancel_here,
            default_agent_mode=settings.agent_defaults.mode,
            delegation=DelegationLimits(
                max_depth=config.max_subtask_depth,
                max_delegations=settings.agent_defaults.max_delegations,
                default_agent_mode=settings.agent_defaults.mode,
            ),
            profiles=profiles,
            approvals=ApprovalBook(pool),
        )
        keys = key_servicer.KeyPoolServicer(
            pool,
            vault,
            settings.api_policy,
            broker=broker,
            token_report=functools.partial(_token_report, pool),
        )

        memory = MemoryServicer(
            profiles,
            knowledge,
            HomeNetwork(pool),
            lambda task: store.running_task_user(task.task_id, task.attempt),
        )
        knowledge.start_embedding(on_the_side)

        def register_services(grpc_server: grpc.aio.Server) -> None:
            register(servicer)(grpc_server)
            key_servicer.register(keys)(grpc_server)
            memory_servicer.register(memory)(grpc_server)

        async def verify(token: str) -> credentials.Verified | None:
            async with pool.acquire() as conn:
                return await credentials.verify(conn, token)

        server = await start_server(
            listen,
            register_services,
            [SERVICE_NAME, key_servicer.SERVICE_NAME, memory_servicer.SERVICE_NAME],
            policy=(
                SchedulerAccess(token, verify, mesh_credentials)
                if token is not None
                else OpenSchedulerAccess(mesh_credentials)
            ),
            tls=settings.tls,
            secured=token is not None,
        )
        background += [
            # The rows whose embedding was missed (a restart, no key, a 429 on every key).
            asyncio.create_task(knowledge.keep_embedded(), name="knowledge embedding pass"),
            asyncio.create_task(listener.run(), name="listener"),
            asyncio.create_task(dispatcher.run(), name="dispatcher"),
            asyncio.create_task(
                _maintain(pool, store, registry, dispatcher, owner, config.lease_seconds),
                name="leases",
            ),
            asyncio.create_task(
                _probe_unreachable(dispatcher, config.heartbeat_interval_seconds),
                name="probe unreachable agents",
            ),
        ]
        if config.retention is not None:
            pruning = retention.keep_pruning(pool, config.retention)
            background.append(asyncio.create_task(pruning, name="retention"))
        host, _ = split_host_port(listen)
        log.info("scheduler %s serving on %s:%s", owner, host, server.port)
        if warning := settings.not_enforced_warning("scheduler"):
            log.warning(warning)
        return cls(
            pool=pool,
            store=store,
            registry=registry,
            dispatcher=dispatcher,
            channels=channels,
            server=server,
            background=background,
            side_tasks=side_tasks,
            owner=owner,
            listen_host=host,
            mesh_credentials=mesh_credentials,
        )

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop serving; hand our running attempts back to the queue for another replica."""
        await self.server.set_serving(False)
        await self.server.stop(grace_seconds)
        await _cancel_all([*self._background, *self.side_tasks])
        await self.dispatcher.stop()
        with contextlib.suppress(*DATABASE_ERRORS):
            await self.store.release_owned(self.owner)
        await self._channels.close()
        await self.pool.close()


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel these tasks and wait for them, cancelling again any that caught it (a gRPC
    call cancelled under a loop ends as an RpcError that an `except Exception` swallows)."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


async def _token_report(pool: asyncpg.Pool, days: int) -> keys_pb2.TokenReportResponse:
    async with pool.acquire() as conn:
        return await token_report(conn, days)


async def _probe_unreachable(dispatcher: Dispatcher, interval_seconds: float) -> None:
    """Now and then, dial the agents the scheduler could not reach (a loop of its own, so
    that a slow dial never delays lease renewal)."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await dispatcher.probe_unreachable()
        except DATABASE_ERRORS as exc:
            log.warning("probing unreachable agents skipped, database unavailable: %s", exc)
        except Exception:
            log.exception("probing unreachable agents failed")


async def _maintain(
    pool: asyncpg.Pool,
    store: TaskStore,
    registry: AgentRegistry,
    dispatcher: Dispatcher,
    owner: str,
    lease_seconds: float,
) -> None:
    """Renew our live leases, take over expired ones, and mark silent agents offline."""
    while True:
        try:
            await store.renew_leases(owner, lease_seconds, dispatcher.live_attempts())
            await store.reap_expired_leases(backoff_seconds=0.5)
            await registry.mark_stale_offline()
        except DATABASE_ERRORS as exc:
            log.warning("lease maintenance skipped, database unavailable: %s", exc)
            await pool.expire_connections()
        except Exception:
            log.exception("lease maintenance failed")
        await asyncio.sleep(min(lease_seconds / 3, 1.0))


async def run_scheduler(
    settings: Settings, listen: str, *, announce: Callable[[str], None] = print
) -> int:
    """Serve until SIGTERM or SIGINT; the `agentmesh scheduler` command."""
    scheduler = await Scheduler.start(settings, listen)
    if settings.token is None:
        log.warning("no AGENTMESH_TOKEN set: serving on loopback only, without authentication")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):  # before the announcement: a SIGTERM
        loop.add_signal_handler(signum, stop.set)  # sent as soon as it is read stops cleanly
    announce(f"agentmesh scheduler {scheduler.owner} listening on {scheduler.address}")
    await stop.wait()
    await scheduler.stop()
    return 0
