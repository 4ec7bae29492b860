"""An AgentNode's life: detect what the host can run, serve, and shut down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from agentmesh import log_format
from agentmesh.access.policies import NodeAccess
from agentmesh.config import ConfigError, NodeSettings, Settings
from agentmesh.db.embedded import default_data_dir
from agentmesh.node.card import (
    AgentCard,
    HeldKey,
    build_card,
    gemini_cli_version,
    stable_agent_id,
)
from agentmesh.node.command_check import CommandChecker
from agentmesh.node.endpoint import advertised_endpoint
from agentmesh.node.executors.base import Executor
from agentmesh.node.executors.echo import EchoExecutor
from agentmesh.node.executors.gemini import GeminiExecutor
from agentmesh.node.executors.shell import ShellExecutor
from agentmesh.node.gemini_proxy import GeminiProxy
from agentmesh.node.key_source import KeySources, LocalKeys, SchedulerKeySource
from agentmesh.node.leftovers import Ledger, start_watchdog, stop_watchdog
from agentmesh.node.mesh_tools import MeshTools
from agentmesh.node.registration import Registration
from agentmesh.node.runner import RunnerLimits, TaskRunner
from agentmesh.node.sandbox import Sandbox, choose_sandbox
from agentmesh.node.servicer import SERVICE_NAME, AgentNodeServicer, register
from agentmesh.rpc.server import RunningServer, is_loopback, split_host_port, start_server

log = logging.getLogger(__name__)


class AgentNode:
    """A started node: its runner, its card and its gRPC server."""

    def __init__(
        self,
        runner: TaskRunner,
        card: AgentCard,
        server: RunningServer,
        resources: contextlib.AsyncExitStack,
        access: NodeAccess | None = None,
    ) -> None:
        self.runner = runner
        # Who may call it; it learns its scheduler's dispatch secret from heartbeat replies.
        self._access = access
        # Its endpoint is the advertised one (see agentmesh.node.endpoint).
        self._card = card
        self.server = server
        # What its tasks use and outlive them: the Gemini API proxy, the key pool's channel.
        self._resources = resources
        self.registration: Registration | None = None
        self._heartbeats: asyncio.Task[None] | None = None

    def register_with(self, scheduler: str, settings: Settings, interval: float) -> None:
        """Start heartbeating to the scheduler (in the background)."""
        self.registration = Registration(
            scheduler,
            self.card,
            self.runner.running_task_ids,
            interval_seconds=interval,
            token=scheduler_credential(settings),
            tls=settings.tls,
            on_dispatch_secret=self._access.accept_dispatch_secret if self._access else None,
        )
        self._heartbeats = asyncio.create_task(self.registration.run(), name="heartbeats")

    @property
    def address(self) -> str:
        """Where the node is reached: the endpoint it advertises."""
        return self._card.endpoint

    def card(self) -> AgentCard:
        return replace(
            self._card,
            running_tasks=self.runner.running,
            draining=self.runner.draining,
        )

    @classmethod
    async def start(
        cls, settings: Settings, node: NodeSettings, *, hold_keys: bool = True
    ) -> AgentNode:
        """Start a node. With `hold_keys` (not when a scheduler in the same process loads
        the same GEMINI_API_KEY_FILE) it holds that file's keys as its own."""
        resources = contextlib.AsyncExitStack()
        try:
            return await cls._start(settings, node, hold_keys, resources)
        except BaseException:
            await resources.aclose()
            raise

    @classmethod
    async def _start(
        cls,
        settings: Settings,
        node: NodeSettings,
        hold_keys: bool,
        resources: contextlib.AsyncExitStack,
    ) -> AgentNode:
        name = node.name or socket.gethostname()
        default_mode = settings.agent_defaults.permissions
        if default_mode.exceeds(node.max_permission_mode):
            raise ConfigError(
                f"agent_defaults.permissions is {default_mode}, above node.max_permission_mode"
                f" ({node.max_permission_mode}): raise the ceiling or lower the default"
            )
        key_file = settings.env.GEMINI_API_KEY_FILE if hold_keys else None
        # Read at start: a bad file stops the node here (KeyFileError, a ConfigError).
        held = LocalKeys.from_file(key_file) if key_file is not None else None
        held_secrets = tuple(key.secret for key in held.keys) if held else ()
        log_format.redact(*held_secrets)
        data_dir = settings.env.AGENTMESH_DATA_DIR or default_data_dir()
        agent_id = stable_agent_id(data_dir, name)
        ledger, killed = await asyncio.to_thread(
            Ledger.claim, data_dir / "nodes" / name / "sessions"
        )
        if killed:
            log.warning("stopped %d processes a previous run of this node left running", killed)
        resources.callback(ledger.close)
        resources.push_async_callback(stop_watchdog, await start_watchdog(ledger))
        sandbox = await asyncio.to_thread(_sandbox, settings, node, data_dir)
        log.info("sandbox: %s", sandbox.describe())
        grace = node.cancel_grace_seconds
        checker = CommandChecker(
            settings.permissions, time_limit_seconds=node.command_check_seconds
        )
        resources.push_async_callback(checker.close)
        executors: dict[str, Executor] = {
            "echo": EchoExecutor(),
            "shell": ShellExecutor(
                checker, settings.permissions, sandbox=sandbox, grace_seconds=grace, ledger=ledger
            ),
        }
        # Both start a process: the checker's first worker, and the CLI for its version.
        _, gemini_version = await asyncio.gather(
            checker.start(), gemini_cli_version(settings.env.GEMINI_CLI_COMMAND)
        )
        if gemini_version is not None:
            proxy = await GeminiProxy.start(settings.env.GOOGLE_GEMINI_BASE_URL)
            resources.push_async_callback(proxy.stop)
            scheduler_keys = None
            mesh_tools = None
            if node.scheduler:
                # Its agents act on the mesh through it (see agentmesh.node.mesh_tools).
                mesh_tools = await MeshTools.start(node.scheduler, settings.tls)
                resources.push_async_callback(mesh_tools.stop)
                scheduler_keys = SchedulerKeySource.connect(
                    node.scheduler,
                    token=scheduler_credential(settings),
                    tls=settings.tls,
                    agent_id=agent_id,
                    held=held,
                )
                resources.push_async_callback(scheduler_keys.close)
            executors["gemini"] = GeminiExecutor(
                settings.env.GEMINI_CLI_COMMAND,
                settings.permissions,
                default_model=settings.agent_defaults.model,
                sandbox=sandbox,
                grace_seconds=grace,
                proxy=proxy,
                keys=KeySources(held, scheduler_keys),
                mesh_tools=mesh_tools,
                checker=checker,
                ledger=ledger,
            )
        limits = RunnerLimits(
            max_concurrency=node.max_concurrency,
            default_timeout_seconds=settings.agent_defaults.timeout_seconds,
            default_permission_mode=settings.agent_defaults.permissions,
            default_agent_mode=settings.agent_defaults.mode,
            workdir=node.workdir,
            max_permission_mode=node.max_permission_mode,
            max_output_bytes=node.max_output_bytes,
        )
        token, node_token = settings.token, settings.node_token
        secrets = tuple(secret for secret in (token, node_token) if secret)
        log_format.redact(*secrets)
        runner = TaskRunner(agent_id, executors, limits, secrets=(*secrets, *held_secrets))
        holder: list[AgentNode] = []
        servicer = AgentNodeServicer(runner, lambda: holder[0].card())
        # Secured by either credential: the user's lets its holders call the node directly,
        # the node's makes its scheduler present a dispatch secret.
        access = NodeAccess(token) if secrets else None
        server = await start_server(
            node.listen,
            register(servicer),
            [SERVICE_NAME],
            policy=access,
            tls=settings.tls,
            credentials="AGENTMESH_NODE_TOKEN or AGENTMESH_TOKEN",
        )
        resources.push_async_callback(server.stop, 1.0)
        endpoint = await asyncio.to_thread(
            advertised_endpoint, node.listen, node.advertise, node.scheduler, server.port
        )
        card = build_card(
            agent_id=agent_id,
            name=name,
            executors=tuple(executors),
            models=node.models,
            configured_capabilities=node.capabilities,
            max_concurrency=node.max_concurrency,
            permission_mode=str(settings.agent_defaults.permissions),
            endpoint=endpoint,
            gemini_version=gemini_version,
            sandbox=sandbox.describe(),
            held_keys=tuple(HeldKey(k.label, k.fingerprint) for k in held.keys)
            if held and "gemini" in executors
            else (),
            max_permission_mode=str(node.max_permission_mode),
        )
        started = cls(runner, card, server, resources, access)
        holder.append(started)
        if warning := settings.not_enforced_warning("node"):
            log.warning(warning)
        if node.scheduler:
            started.register_with(node.scheduler, settings, node.heartbeat_interval_seconds)
        return started

    async def shutdown(self, grace_seconds: float) -> None:
        """Stop taking work, let running tasks finish for a grace period, then stop them."""
        self.runner.drain()
        await self.server.set_serving(False)
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            await asyncio.gather(self._heartbeats, return_exceptions=True)
        if self.registration is not None:
            await self.registration.close(final_beat=True)  # says: draining
        if not await self.runner.wait_idle(grace_seconds):
            log.warning("grace period over: cancelling %d running task(s)", self.runner.running)
            self.runner.cancel_all()
            await self.runner.wait_idle(grace_seconds + 5)
        await self._resources.aclose()  # the server, the proxy, the key pool's channel


def _sandbox(settings: Settings, node: NodeSettings, data_dir: Path) -> Sandbox:
    """The node's sandbox, hiding from tasks the node's home, data directory and the files
    that hold its secrets, and showing again what runs need from inside them."""
    env = settings.env
    hidden = [
        Path.home(),
        data_dir,
        env.GEMINI_API_KEY_FILE,
        settings.env_path,
        settings.tls.key_file,
    ]
    cli = shutil.which(shlex.split(env.GEMINI_CLI_COMMAND or "gemini")[0])
    shown = [*_install_roots(cli), *_install_roots(shutil.which("node"))]
    return choose_sandbox(
        node.sandbox,
        settings.permissions,
        hidden=hidden,
        shown=shown,
        build_dir=_cache_dir() / "sandbox",
    )


def _cache_dir() -> Path:
    """Where built artifacts are kept per host user (the C Landlock launcher, built once by
    its source's hash, not once per node or data directory)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agentmesh"


def _install_roots(program: str | None) -> list[Path]:
    """The directories a program needs to run: its own, its real file's, and the package
    trees (`node_modules`) they sit in."""
    if program is None:
        return []
    roots = []
    for path in (Path(program), Path(program).resolve()):
        roots.append(path.parent)
        roots += [p for p in path.parents if p.name == "node_modules"][-1:]
    return roots


def scheduler_credential(settings: Settings) -> str | None:
    """What the node presents to its scheduler: its node credential; else the user token,
    which a secured scheduler refuses for heartbeats, saying a node credential is needed."""
    return settings.node_token or settings.token


async def run_node(
    settings: Settings, node: NodeSettings, *, announce: Callable[[str], None] = print
) -> int:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; the `agentmesh node` command."""
    started = await AgentNode.start(settings, node)
    card = started.card()
    host, _ = split_host_port(node.listen)
    if settings.token is None and settings.node_token is None:
        log.warning(
            "neither AGENTMESH_NODE_TOKEN nor AGENTMESH_TOKEN set: serving on loopback only,"
            " without authentication"
        )
    elif not is_loopback(host) and not settings.tls.enabled:
        log.warning("serving without TLS: credentials cross the network in clear text")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):  # before the announcement: a SIGTERM
        loop.add_signal_handler(signum, stop.set)  # sent as soon as it is read drains too
    announce(
        f"agentmesh node {card.name} ({card.agent_id}) listening on {started.address};"
        f" executors: {', '.join(card.executors)}; sandbox: {card.sandbox};"
        f" modes up to {card.max_permission_mode}"
    )
    await stop.wait()
    log.info("shutting down: draining %d running task(s)", started.runner.running)
    await started.shutdown(node.shutdown_grace_seconds)
    return 0
