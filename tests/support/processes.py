"""Real `agentmesh scheduler` and `agentmesh node` processes for end-to-end tests.

Each process runs in a session of its own, with stdout and stderr in files under the test's
tmp_path; starting one waits for its ready line. `kill()` is `kill -9` of the process group
and of everything the process started (task commands run in sessions of their own);
leaving the harness kills whatever is still running, so no test leaves a process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import asyncpg
import grpc
import psutil

from agentmesh.access import credentials
from agentmesh.v1 import scheduler_pb2, scheduler_pb2_grpc

READY_TIMEOUT_SECONDS = 60.0
LOG_TAIL_CHARS = 6000

SCHEDULER_READY = re.compile(r"^agentmesh scheduler (?P<owner>\S+) listening on (?P<address>\S+)$")
NODE_READY = re.compile(
    r"^agentmesh node (?P<name>\S+) \((?P<agent_id>[^)]+)\) listening on (?P<address>[^;\s]+);"
)
# Settings that would leak from the developer's environment into the processes.
_CLEARED_ENV_PREFIXES = ("AGENTMESH_", "POSTGRES_", "GEMINI_")
_CLEARED_ENV_NAMES = ("DATABASE_URL",)

T = TypeVar("T")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class MeshProcess:
    """One started agentmesh process: its ready line's facts and its logs."""

    label: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    address: str = ""
    # The scheduler's owner name, or the node's agent id.
    identity: str = ""
    ready_line: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """`kill -9` the process, its group and every process it started."""
        if not self.alive:
            return  # reaped already: its pid may belong to another process by now
        descendants = _frozen_tree(self.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for process in descendants:
            with contextlib.suppress(psutil.Error):
                process.kill()
        self.popen.wait()
        for process in descendants:
            with contextlib.suppress(psutil.Error):
                process.wait(timeout=5)

    async def terminate(self, grace_seconds: float = 10.0) -> int:
        """SIGTERM the process group; `kill -9` it if it is still running after the grace."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while self.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.alive:
            self.kill()
        return self.popen.wait()

    def logs(self) -> str:
        parts = [f"--- {self.label} (pid {self.pid}, exit {self.popen.poll()})"]
        for path in (self.stdout_path, self.stderr_path):
            text = path.read_text(errors="replace") if path.exists() else ""
            if len(text) > LOG_TAIL_CHARS:
                text = "...\n" + text[-LOG_TAIL_CHARS:]
            parts.append(f"--- {path.name}:\n{text}")
        return "\n".join(parts)


def _frozen_tree(pid: int) -> list[psutil.Process]:
    """Stop the process group and every descendant (in any session); return the descendants.

    Stopped processes start nothing new, so the tree collected after the second pass is
    complete and can be killed without leaving an orphan.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGSTOP)
    found: dict[int, psutil.Process] = {}
    for _ in range(2):
        try:
            children = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            break
        for child in children:
            if child.pid not in found:
                found[child.pid] = child
                with contextlib.suppress(psutil.Error):
                    child.suspend()
    return list(found.values())


@dataclass
class ProcessHarness:
    """Starts agentmesh processes on one database; an async context manager that kills all."""

    tmp_path: Path
    database_uri: str
    config: Mapping[str, Any]
    # Extra environment for every process (AGENTMESH_TOKEN, say), set after the defaults.
    env: Mapping[str, str] = field(default_factory=dict)
    # Start every process with --verbose (debug logging).
    verbose: bool = False
    # node.max_permission_mode unless the config sets it: tests run superuser tasks (the
    # ceiling's own tests set it); None writes the config exactly as given.
    node_ceiling: str | None = "superuser"
    processes: list[MeshProcess] = field(default_factory=list)
    # The node credential each node was started with (by node name), in a secured mesh.
    node_tokens: dict[str, str] = field(default_factory=dict)
    _channels: list[grpc.aio.Channel] = field(default_factory=list)
    _serial: int = 0

    def __post_init__(self) -> None:
        self.logs_dir = self.tmp_path / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.tmp_path / "agent_config.json"
        config = dict(self.config)
        if self.node_ceiling is not None:
            config["node"] = {"max_permission_mode": self.node_ceiling, **config.get("node", {})}
        self.config_path.write_text(json.dumps(config, indent=2))

    async def __aenter__(self) -> ProcessHarness:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def environment(self) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(_CLEARED_ENV_PREFIXES) and name not in _CLEARED_ENV_NAMES
        }
        env.update(
            DATABASE_URL=self.database_uri,
            AGENTMESH_DATA_DIR=str(self.tmp_path / "data"),
            AGENTMESH_CONFIG=str(self.config_path),
            GEMINI_CLI_COMMAND="/nonexistent",  # no Gemini CLI probe: a faster start
            PYTHONUNBUFFERED="1",  # the ready line reaches the file when it is printed
        )
        env.update(self.env)
        return env

    async def start_scheduler(
        self,
        listen: str = "127.0.0.1:0",
        *,
        launcher: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> MeshProcess:
        """`launcher` is a command the process runs under (`ip netns exec NS`, say); `env`
        is set on top of the harness's environment for this process alone."""
        process = self._spawn(
            "scheduler", ["scheduler", "--listen", listen], launcher=launcher, env=env
        )
        match = await self._wait_ready(process, SCHEDULER_READY)
        process.identity = match["owner"]
        process.address = match["address"]
        return process

    async def start_node(
        self,
        name: str,
        *,
        scheduler: str,
        capabilities: Iterable[str] = (),
        max_concurrency: int = 4,
        listen: str = "127.0.0.1:0",
        advertise: str | None = None,
        launcher: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> MeshProcess:
        """A node registered with `scheduler`; `launcher` and `env` as for the scheduler.

        In a secured mesh (AGENTMESH_TOKEN set) it is enrolled first and started with its
        own AGENTMESH_NODE_TOKEN, unless `env` names one."""
        environment = {**self.environment(), **(env or {})}
        if environment.get("AGENTMESH_TOKEN") and "AGENTMESH_NODE_TOKEN" not in environment:
            token = await self.enroll(f"test:{name}")
            self.node_tokens[name] = token
            env = {**(env or {}), "AGENTMESH_NODE_TOKEN": token}
        argv = [
            "node",
            "--listen",
            listen,
            *(["--advertise", advertise] if advertise is not None else []),
            "--name",
            name,
            "--capabilities",
            ",".join(capabilities),
            "--max-concurrency",
            str(max_concurrency),
            "--scheduler",
            scheduler,
        ]
        process = self._spawn(f"node-{name}", argv, launcher=launcher, env=env)
        match = await self._wait_ready(process, NODE_READY)
        process.identity = match["agent_id"]
        process.address = match["address"]
        return process

    async def enroll(self, name: str) -> str:
        """A fresh node credential named `name` (replacing a live one of that name)."""
        conn = await asyncpg.connect(self.database_uri, timeout=10)
        try:
            _, token = await credentials.enroll(conn, name, replace=True)
        finally:
            await conn.close()
        return token

    def stub(self, process: MeshProcess) -> scheduler_pb2_grpc.SchedulerAsyncStub:
        """A client of a scheduler process, on a channel closed with the harness."""
        channel = grpc.aio.insecure_channel(process.address)
        self._channels.append(channel)
        return scheduler_pb2_grpc.SchedulerStub(channel)

    async def wait_registered(
        self, stub: scheduler_pb2_grpc.SchedulerAsyncStub, nodes: Iterable[MeshProcess]
    ) -> None:
        """Until every node heartbeats as online (so placement sees it)."""
        expected = {node.identity for node in nodes}

        async def online() -> bool:
            response = await stub.ListAgents(scheduler_pb2.ListAgentsRequest(), timeout=10)
            return expected <= {a.card.agent_id for a in response.agents if a.status == "online"}

        await self.wait_until(online, f"nodes {sorted(expected)} online", timeout=30)

    async def wait_until(
        self,
        condition: Callable[[], Awaitable[T | None]],
        what: str,
        *,
        timeout: float,
        interval: float = 0.1,
        progress: Callable[[], str] | None = None,
    ) -> T:
        """Poll `condition` until it returns something true; fail with every log otherwise.

        `progress` says how far things got, for the failure message.
        """
        deadline = time.monotonic() + timeout
        last: T | None = None
        while True:
            last = await condition()
            if last:
                return last
            if time.monotonic() > deadline:
                seen = progress() if progress is not None else repr(last)
                raise AssertionError(
                    f"gave up after {timeout:g}s waiting for {what} (last: {seen})\n"
                    + self.describe()
                )
            await asyncio.sleep(interval)

    def describe(self) -> str:
        """Every process's state and the tail of its logs, for failure messages."""
        tails = "\n".join(process.logs() for process in self.processes)
        return f"{tails}\n(full logs in {self.logs_dir})"

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        # Under coverage (make mutate's first run) a process killed outright would lose what
        # it measured: those stop as they would on SIGTERM.
        measured = "COVERAGE_PROCESS_CONFIG" in os.environ
        for process in self.processes:
            if measured:
                await process.terminate(grace_seconds=5.0)
            else:
                process.kill()

    def _spawn(
        self,
        label: str,
        argv: list[str],
        *,
        launcher: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> MeshProcess:
        self._serial += 1
        stem = f"{self._serial:02d}-{label}"
        stdout_path = self.logs_dir / f"{stem}.stdout"
        stderr_path = self.logs_dir / f"{stem}.stderr"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            popen = subprocess.Popen(
                [
                    *launcher,
                    sys.executable,
                    "-m",
                    "agentmesh.cli.main",
                    *(["--verbose"] if self.verbose else []),
                    *argv,
                ],
                env={**self.environment(), **(env or {})},
                cwd=self.tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        process = MeshProcess(stem, popen, stdout_path, stderr_path)
        self.processes.append(process)
        return process

    async def _wait_ready(self, process: MeshProcess, pattern: re.Pattern[str]) -> re.Match[str]:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            for line in process.stdout_path.read_text(errors="replace").splitlines():
                match = pattern.match(line)
                if match:
                    process.ready_line = line
                    return match
            if not process.alive:
                raise AssertionError(
                    f"{process.label} exited with {process.popen.returncode} before it was"
                    f" ready\n{process.logs()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{process.label} printed no ready line within"
                    f" {READY_TIMEOUT_SECONDS:g}s\n{process.logs()}"
                )
            await asyncio.sleep(0.05)
